/**
 * The API's resources, as the server sends them (its JSON field names: snake_case).
 */

import type { Problem } from './errors.js';

/** A job's status. `failed` means dead-lettered (attempts exhausted or a fatal error). */
export type JobStatus = 'queued' | 'running' | 'retry_scheduled' | 'succeeded' | 'failed' | 'cancelled';

/** The statuses a job ends in. */
export const TERMINAL_STATUSES: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];

/** The short names (`event:` of a server-sent event) of the events that end a job. */
export const TERMINAL_EVENTS: readonly string[] = ['job.succeeded', 'job.dead_lettered', 'job.cancelled'];

/** Links from a job to its sub-resources. */
export interface JobLinks {
  self: string;
  events: string;
}

/** The answer to an accepted submission. */
export interface AcceptedJob {
  id: string;
  kind: string;
  status: JobStatus;
  created_at: string;
  /** EVENTS stream sequence of `job.submitted`. */
  seq: number;
  links: JobLinks;
}

/** {@link AcceptedJob}, and whether it repeats an earlier submission with the same idempotency key. */
export interface Submission extends AcceptedJob {
  /** `true` when the API answered `200` (a repeat: this is the original job), `false` on `202`. */
  repeated: boolean;
}

/** A job's progress, as its handler last reported it. */
export interface JobProgress {
  current: number;
  total?: number | null;
  message?: string | null;
  [extra: string]: unknown;
}

/** A failed or dead-lettered job's error. */
export interface JobErrorInfo {
  message?: string;
  class?: string;
  [extra: string]: unknown;
}

/** A job as `GET /v1/jobs/{id}` shows it. */
export interface Job {
  id: string;
  kind: string;
  status: JobStatus;
  attempt: number;
  max_attempts: number;
  timeout_ms: number;
  payload: unknown;
  progress: JobProgress | null;
  /** The result when inlined; when too large, `null` and see `result_url` ({@link Client.result}). */
  result: unknown;
  result_url?: string;
  error: JobErrorInfo | null;
  run_at: string | null;
  trace_id: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
  /** -100 to 100 (0 by default): higher starts first among the waiting jobs of its kind. */
  priority: number;
  /**
   * While the scheduler holds it back: why, as its attempt's latest `job.waiting` said. Absent
   * for a job that only waits for a free worker, and once the attempt starts or the job ends.
   */
  waiting?: JobWaiting;
  /** The jobs it waits for before it starts (docs/workflows.md); absent when none. */
  depends_on?: string[];
  /** The batch it is a member of (the batch's id); absent for a job of no batch. */
  batch?: string;
  /**
   * `true` when the job is a batch (its callback: `GET /v1/batches/{id}` shows the batch with
   * {@link Client.getBatch}); absent otherwise.
   */
  is_batch?: boolean;
  /** When its batch was sealed (a batch's own job, once sealed). */
  sealed_at?: string;
  /**
   * The job whose handler submitted it as a child ({@link JobContext.submitChildren}); absent
   * for a job of no parent. A parent's children are listed by {@link Client.listChildren}.
   */
  parent?: string;
}

/**
 * Why the scheduler holds a job back: jobs it depends on have not all ended (`dependencies`), it
 * is a batch not yet sealed or with members not all ended (`batch`), its handler waits for its
 * children, which have not all ended (`children`), its concurrency key is full,
 * its rate limit's key reached its limit, its kind is paused (for its tenant or all), its tenant
 * runs as many jobs of the kind as its share allows, jobs of a higher priority go first, or other
 * tenants' jobs take their turns.
 */
export type WaitReason =
  | 'dependencies'
  | 'batch'
  | 'children'
  | 'concurrency_key'
  | 'rate_limit'
  | 'paused'
  | 'tenant_cap'
  | 'priority'
  | 'tenant_share';

/** The `data` of a `job.waiting` CloudEvent: the scheduler holds the attempt back, and says why. */
export interface JobWaitingData {
  /** The attempt held back. */
  attempt: number;
  reason: WaitReason;
  /** The concurrency key or rate limit key, for `concurrency_key` and `rate_limit`. */
  key?: string;
}

/** {@link Job.waiting}: the latest `job.waiting` of the attempt to start, and when it came. */
export interface JobWaiting extends JobWaitingData {
  /** The time of that event (RFC 3339). */
  since: string;
}

/** A page of `GET /v1/jobs`. */
export interface JobPage {
  items: Job[];
  /** Pass as `cursor` for the next page; `null` on the last one. */
  next_cursor: string | null;
}

/** The answer to a cancellation request. */
export interface CancelAnswer {
  id: string;
  status: string;
}

/** What became of one job of a batch: `job` on 202/200, `problem` otherwise. */
export interface BatchItem {
  status: number;
  job?: AcceptedJob;
  problem?: Problem;
}

/** The answer to `POST /v1/jobs/batch`: one item per job, in the order sent. */
export interface BatchResult {
  accepted: number;
  repeated: number;
  failed: number;
  items: BatchItem[];
}

// Scheduling (docs/scheduling.md): how a job waits its turn, schedules, pauses.

/**
 * A concurrency key: never more than `limit` of the tenant's jobs holding `key` run at once,
 * whatever their kind, across all workers. A slot is taken when a job is handed to a worker and
 * given back when its attempt ends (a retry waits for a slot again).
 */
export interface ConcurrencyKey {
  /** Any name, 1 to 255 bytes (`account-42`); the tenant's own (two tenants' keys never meet). */
  key: string;
  /** How many of the tenant's jobs with this key may run at once, 1 to 10,000. */
  limit: number;
}

/**
 * A rate limit, as the SDK takes it: at most `limit` starts of the tenant's jobs holding `key`
 * (of any kind) in any window of `periodMs`; the others wait their turn, they never fail for it.
 * Sent as `rate_limit: {key, limit, period_ms}`.
 */
export interface RateLimit {
  /** Any name, 1 to 255 bytes (`partner-api`); the tenant's own. */
  key: string;
  /** Starts allowed per period, 1 to 1,000. */
  limit: number;
  /** The period in ms, 1 to 86,400,000 (a day). */
  periodMs: number;
}

/** A rate limit as the API shows it (`rate_limit` of a `job.submitted` or a schedule's job). */
export interface RateLimitInfo {
  key: string;
  limit: number;
  period_ms: number;
}

/**
 * What decides when a job starts among the waiting jobs of its kind, besides the order of
 * arrival and the tenants' fair share: options of {@link Client.submit}, each job of
 * {@link Client.submitBatch}, and {@link Client.createSchedule}. A job keeps them for every
 * attempt (retries and re-drives too).
 */
export interface SchedulingOptions {
  /**
   * -100 to 100 (the server's default is 0): higher starts first among the waiting jobs of its
   * kind, across tenants and processes.
   */
  priority?: number;
  /** Never more than `limit` of the tenant's jobs with this `key` running at once (any kind). */
  concurrency?: ConcurrencyKey;
  /** At most `limit` starts of the tenant's jobs with this `key` per `periodMs`; the others wait. */
  rateLimit?: RateLimit;
}

/**
 * What a job waits for besides its turn (docs/workflows.md): options of {@link Client.submit},
 * each job of {@link Client.submitBatch}, and each member (and the callback) of
 * {@link Client.createBatch} and {@link Client.addBatchJobs}.
 */
export interface WorkflowOptions {
  /**
   * Ids of up to 32 jobs of the tenant, already submitted, that must all end before this one
   * starts (sent as `depends_on`; an unknown id is a `422`). If all succeed it runs, their
   * results in its handler's `upstream.dependencies`; if one fails or is cancelled, this job is
   * cancelled unrun (its `job.cancelled` says `reason: "dependency <id> failed"`).
   */
  dependsOn?: string[];
}

/** The schedule tick that submitted a job (`schedule` of its `job.submitted`). */
export interface FromSchedule {
  /** The schedule's id. */
  id: string;
  /** The tick (RFC 3339). */
  tick: string;
}

/**
 * The `data` of a job's `job.submitted` CloudEvent (see {@link Client.timeline}): everything it
 * runs with. `priority` is absent when 0.
 */
export interface JobSubmittedData {
  payload: unknown;
  max_attempts: number;
  timeout_ms: number;
  run_at?: string;
  webhook?: { url: string };
  priority?: number;
  concurrency?: ConcurrencyKey;
  rate_limit?: RateLimitInfo;
  /** Set when a schedule submitted the job. */
  schedule?: FromSchedule;
  /** The jobs it waits for (docs/workflows.md). */
  depends_on?: string[];
  /** For a member of a batch: the batch's id. */
  batch?: string;
  /** For a batch's own job (its callback): `true`. */
  is_batch?: boolean;
  /** For a child (or a continuation): the job whose handler submitted it. */
  parent?: string;
  [extra: string]: unknown;
}

/**
 * The `data` of a `job.suspended` CloudEvent: the handler submitted children and waits for them
 * ({@link JobContext.waitForChildren}); its attempt ended without an outcome, the job is `queued`
 * again (`waiting.reason` `children`), and its next attempt starts once every child has ended.
 */
export interface JobSuspendedData {
  /** The attempt that ended waiting. */
  attempt: number;
  /** The attempt that resumes it (`attempt + 1`). */
  next_attempt: number;
  /** The new limit of attempts: one more, since a wait is no failure. */
  max_attempts: number;
}

/**
 * The `data` of a `job.cancelled` CloudEvent. `reason` says why when the job was not cancelled on
 * request: `dependency <id> failed` (or `cancelled`) for a job whose dependency did not succeed.
 */
export interface JobCancelledData {
  /** The attempt that was running, if one was. */
  attempt?: number;
  reason?: string;
  [extra: string]: unknown;
}

/** The job each tick of a schedule submits. `priority` is absent when 0. */
export interface ScheduleJob {
  payload: unknown;
  max_attempts: number;
  timeout_ms: number;
  webhook?: { url: string };
  priority?: number;
  concurrency?: ConcurrencyKey;
  rate_limit?: RateLimitInfo;
  [extra: string]: unknown;
}

/**
 * What ticks missed by more than a minute (everything was down) get: `skip` (the default) runs
 * none of them, `once` runs one job for the latest of them. Ticks up to a minute late all run.
 */
export type CatchUp = 'skip' | 'once';

/** A schedule as `GET /v1/schedules/{id}` shows it: `cron` and `timezone`, or `every_ms`. */
export interface Schedule {
  id: string;
  kind: string;
  /** The cron expression (5 fields, or 6 with seconds first). */
  cron?: string;
  /** The IANA time zone `cron` is read in. */
  timezone?: string;
  /** The interval, in ms (a schedule made with `every`). */
  every_ms?: number;
  catch_up: CatchUp;
  /** A paused schedule fires nothing; resumed, it goes on from its next tick. */
  paused: boolean;
  /** Its next tick (RFC 3339; absent while paused). */
  next_run_at?: string;
  /** The last tick it acted on. */
  last_run_at?: string;
  created_at: string;
  /** The job each tick submits. */
  job: ScheduleJob;
}

/** The answer to {@link Client.createSchedule}. */
export interface CreatedSchedule extends Schedule {
  /** `true` when the API answered `201` (a new schedule), `false` on `200` (replaced, its ticks so far kept). */
  created: boolean;
}

/** A pause of a kind: its waiting jobs stay queued and none starts; running ones finish. */
export interface KindPause {
  kind: string;
  /** The tenant it holds; `null`: every tenant (an operator's pause). */
  tenant: string | null;
  paused: boolean;
  /** When it was paused (absent once resumed). */
  since?: string;
  /** Who paused it (the token's subject). */
  by?: string;
  /** Paused by an operator: the tenant's own resume does not lift it. */
  by_operator: boolean;
}

// Workflows (docs/workflows.md): dependencies between jobs, batches with a callback, children.

/** How a job that a workflow waited for ended: an item of {@link Upstream}. */
export interface Ended {
  id: string;
  /** `succeeded`, `failed` or `cancelled`. */
  status: JobStatus;
  /**
   * A dependency's result, when it succeeded with one small enough to pass on (up to 16 KiB of
   * JSON each, and all of the job's dependencies' within a budget of 256 KiB); absent otherwise.
   * Never set for the members of a batch or for children.
   */
  result?: unknown;
  /**
   * Where to read a dependency's result that was not passed on (too large, or kept in the object
   * store), e.g. `/v1/jobs/<id>/result`: read it with {@link Client.result} (a token with
   * `jobs:read`). Absent when `result` is set, or when the job had no result to pass on.
   */
  result_url?: string;
}

/**
 * How a group of jobs ended: the members of a batch, as its callback's handler is told
 * (`upstream.members`), or a job's children, as its handler is told when it resumes after
 * waiting for them (`upstream.children`).
 */
export interface Members {
  total: number;
  succeeded: number;
  /** Dead-lettered. */
  failed: number;
  cancelled: number;
  /**
   * Each member with its status (no result), in submission order, for up to 1,000 of them;
   * absent for more (page through {@link Client.listBatchJobs} or {@link Client.listChildren}).
   */
  jobs?: Ended[];
}

/**
 * What a job waited for, as it ended: given to the handler of a job with dependencies
 * (`dependencies`, in the order of `depends_on`), of a batch's callback or a continuation
 * (`members`: the batch's members, or the children the continuation followed), or of an attempt
 * that resumes a handler which waited for its children (`children`). A retry of the job is given
 * the same.
 */
export interface Upstream {
  dependencies?: Ended[];
  members?: Members;
  /**
   * The children the job's handler submitted (every attempt's), once all have ended: given to
   * the attempt after {@link JobContext.waitForChildren}.
   */
  children?: Members;
}

/** Links from a batch. */
export interface BatchLinks {
  self: string;
  /** Its members ({@link Client.listBatchJobs}). */
  jobs: string;
  /** Its callback job (`/v1/jobs/{id}`): the batch's status, timeline and result. */
  callback: string;
}

/** The answer to {@link Client.addBatchJobs}: the batch, and the members this request submitted. */
export interface AcceptedBatch {
  /** The batch's id, which is also its callback job's (follow or wait for it as a job). */
  id: string;
  /** Whether the batch is sealed (no member can be added; its callback runs once all ended). */
  sealed: boolean;
  /** The ids of the members this request submitted, in the order sent. */
  jobs: string[];
  links: BatchLinks;
}

/** The answer to {@link Client.createBatch} and {@link Client.addBatchJobs}. */
export interface BatchSubmission extends AcceptedBatch {
  /**
   * `true` when the API answered `200` (a repeat with the same idempotency key: the same batch
   * and member ids, or the same page's member ids), `false` on `202`.
   */
  repeated: boolean;
}

/** A batch's members by status, as the read model shows them now. */
export interface BatchMemberCounts {
  total: number;
  queued: number;
  running: number;
  retry_scheduled: number;
  succeeded: number;
  failed: number;
  cancelled: number;
}

/** A batch as `GET /v1/batches/{id}` shows it: its callback job, and its members' progress. */
export interface Batch {
  id: string;
  /** The callback's kind (`batch` when none was given). */
  kind: string;
  /** The callback's status: `queued` until the batch is sealed and every member ended, then as any job's. */
  status: JobStatus;
  sealed: boolean;
  sealed_at: string | null;
  members: BatchMemberCounts;
  created_at: string;
  finished_at: string | null;
  /** The callback's result, once it succeeded (for the built-in `batch`, the members' counts). */
  result: unknown;
  links: BatchLinks;
}

/**
 * The answer to `POST /v1/batches/{id}/cancel`, and to {@link Client.cancelBatch} (which calls it
 * again while `more` is `true`, summing `cancelled`).
 */
export interface BatchCancelAnswer {
  id: string;
  /**
   * Members whose cancellation was requested (those not ended yet): across the calls of
   * {@link Client.cancelBatch}, a member still open when a later call came is counted again.
   */
  cancelled: number;
  /**
   * Whether members are left to cancel: one request cancels at most 10,000, call again. Always
   * `false` from {@link Client.cancelBatch}, which does so.
   */
  more: boolean;
}

/** The answer to {@link JobContext.submitChildren} (`POST /v1/workers/jobs/{id}/children`). */
export interface ChildrenAccepted {
  /** The children's ids, in the order sent. */
  jobs: string[];
  /** The continuation's id, when one was asked for (`then`). */
  then?: string;
}

/** A CloudEvent (1.0) of the log. `subject` is the job id; `type` is `dev.conveyor.job.<name>`. */
export interface CloudEvent<D = unknown> {
  specversion: string;
  id: string;
  source: string;
  type: string;
  subject?: string;
  time?: string;
  datacontenttype?: string;
  tenant?: string;
  jobkind?: string;
  traceparent?: string;
  data?: D;
  [extension: string]: unknown;
}

/** One event of a live stream (`GET /v1/events`, or a job's timeline followed live). */
export interface StreamEvent {
  /** The EVENTS stream sequence (the SSE `id:`), which resumes the stream exactly after it. */
  seq: number;
  /** The short type, e.g. `job.succeeded` (the SSE `event:`). */
  event: string;
  /** The CloudEvent. */
  data: CloudEvent;
}

/** A job kind as `GET /v1/kinds` shows it. */
export interface KindInfo {
  kind: string;
  builtin: boolean;
  schema: unknown;
}

/** A JSON Schema (draft 2020-12 or earlier): any JSON object. */
export type JsonSchema = Record<string, unknown>;

// The worker protocol (docs/workers.md).

/** A job handed to a worker by `POST /v1/workers/lease`. */
export interface LeasedJob {
  id: string;
  tenant: string;
  kind: string;
  payload: unknown;
  attempt: number;
  max_attempts: number;
  /** When the attempt's `timeout_ms` runs out (RFC 3339). */
  deadline: string;
  /** The lease token: opaque; replace it with the one each heartbeat answers. */
  lease: string;
  /** When the job goes to another worker unless a heartbeat comes first (RFC 3339). */
  lease_expires_at: string;
  /** How often to heartbeat, in ms. */
  heartbeat_ms: number;
  /** How the jobs it waited for ended (docs/workflows.md); absent when it waited for none. */
  upstream?: Upstream;
  [extra: string]: unknown;
}

/**
 * The body of the POST a push kind's endpoint receives (signed per Standard Webhooks with the
 * kind's secret: verify it with `verifyWebhook<PushJob>(secret, headers, body)`).
 */
export interface PushJob {
  id: string;
  tenant: string;
  kind: string;
  payload: unknown;
  attempt: number;
  max_attempts: number;
  /** How the jobs it waited for ended (docs/workflows.md); absent when it waited for none. */
  upstream?: Upstream;
  [extra: string]: unknown;
}

/** The answer to a heartbeat. */
export interface HeartbeatAnswer {
  lease: string;
  lease_expires_at: string;
  /** The job was cancelled: stop and report `fail` with class `cancelled`. */
  cancelled: boolean;
}

/** How a failure is classed: `retryable` (another attempt), `fatal` (dead-letter now), `timeout`, `cancelled`. */
export type FailureClass = 'retryable' | 'fatal' | 'timeout' | 'cancelled';

/** A failure to report. */
export interface FailureReport {
  message: string;
  class: FailureClass;
}

/** What the API made of one report (`complete`, `fail`, `release`, or an item of a batch). */
export interface ReportOutcome {
  id: string;
  /**
   * `succeeded`, `retry_scheduled`, `dead_lettered`, `cancelled`, `released`,
   * `waiting_for_children` (a wait), or for an item of a batch `lease_lost`.
   */
  status: string;
  detail?: string;
  [extra: string]: unknown;
}
