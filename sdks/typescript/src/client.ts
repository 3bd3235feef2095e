/**
 * The client of conveyor's jobs API: submit, read, list, cancel, results, live event streams
 * over server-sent events with automatic reconnection, schedules and pauses of kinds, and
 * workflows (dependencies between jobs, batches with a callback, a job's children).
 */

import { ConveyorError, isTransient } from './errors.js';
import { anySignal, sleep, Transport, type TokenSource, type TransportOptions } from './http.js';
import { readSse } from './sse.js';
import {
  TERMINAL_EVENTS,
  TERMINAL_STATUSES,
  type AcceptedBatch,
  type AcceptedJob,
  type Batch,
  type BatchCancelAnswer,
  type BatchResult,
  type BatchSubmission,
  type CancelAnswer,
  type CatchUp,
  type CloudEvent,
  type CreatedSchedule,
  type Job,
  type JobPage,
  type JobStatus,
  type KindInfo,
  type KindPause,
  type Schedule,
  type SchedulingOptions,
  type StreamEvent,
  type Submission,
  type WorkflowOptions,
} from './types.js';

/** Options of a {@link Client}. */
export interface ClientOptions extends TransportOptions {
  /** First delay before reconnecting a live stream, in ms (default 250); doubles up to `maxReconnectDelayMs`. */
  reconnectDelayMs?: number;
  /** Longest delay between reconnection attempts, in ms (default 5,000). */
  maxReconnectDelayMs?: number;
  /**
   * A live stream that sends nothing for this long is taken as dead and reconnected, in ms
   * (default 45,000; the server sends a keep-alive comment every 15 s).
   */
  idleTimeoutMs?: number;
}

/**
 * Options of one submission. With {@link SchedulingOptions}: `priority`, `concurrency` and
 * `rateLimit` (docs/scheduling.md); with {@link WorkflowOptions}: `dependsOn`
 * (docs/workflows.md).
 */
export interface SubmitOptions extends SchedulingOptions, WorkflowOptions {
  /** Makes retries safe: the same key and body give the original job (`repeated: true`), another body `409`. */
  idempotencyKey?: string;
  /** Attempts before dead-lettering (1 to 100; the server's default is 3). */
  maxAttempts?: number;
  /** Per-attempt time limit in ms (1 to 86,400,000; the server's default is 300,000). */
  timeoutMs?: number;
  /** Not before this time. */
  runAt?: Date | string;
  /** Where to POST the terminal event (a signed Standard Webhooks delivery). */
  webhook?: string | { url: string };
  /** Aborts the request. */
  signal?: AbortSignal;
}

/** One job of {@link Client.submitBatch}. */
export interface BatchJob extends Omit<SubmitOptions, 'signal'> {
  kind: string;
  payload?: unknown;
}

/**
 * The job options a schedule's ticks submit with (no `runAt` or `idempotencyKey`: the ticks give
 * both; no `dependsOn`).
 */
export type ScheduleJobOptions = Omit<SubmitOptions, 'signal' | 'runAt' | 'idempotencyKey' | 'dependsOn'>;

/**
 * One job of a batch of {@link Client.createBatch} and {@link Client.addBatchJobs} (a member, or
 * the callback): a {@link BatchJob} without its own `idempotencyKey` (the request's covers them
 * all).
 */
export type BatchMember = Omit<BatchJob, 'idempotencyKey'>;

/**
 * One child a handler submits with {@link JobContext.submitChildren} (or its continuation,
 * `then`): a {@link BatchJob} without its own `idempotencyKey` (the request's covers them all).
 */
export type ChildJob = BatchMember;

/** Options of {@link Client.createBatch}. */
export interface CreateBatchOptions {
  /**
   * The job that runs once, when the batch is sealed and every member has ended (whatever their
   * outcomes), its handler told how they ended (`upstream.members`). Default: a job of the
   * built-in kind `batch`, whose result is the members' counts `{total, succeeded, failed, cancelled}`.
   */
  callback?: BatchMember;
  /** Seal the batch with these members (the server's default, `true`); `false` keeps it open for {@link Client.addBatchJobs}. */
  seal?: boolean;
  /** Makes retries safe: a repeat answers the same batch and member ids (`repeated: true`). */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

/** Options of {@link Client.addBatchJobs}. */
export interface AddBatchJobsOptions {
  /** Seal the batch after these members (default `false`). */
  seal?: boolean;
  /** One key per page: a repeated page adds its members once, even after the batch was sealed. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

/** Filters of {@link Client.listBatchJobs} and {@link Client.listChildren}. */
export interface BatchJobsOptions {
  /** Only jobs in this status. */
  status?: JobStatus;
  /** Page size, 1 to 1,000 (the server's default is 100). */
  limit?: number;
  /** `next_cursor` of the previous page. */
  cursor?: string | null;
  signal?: AbortSignal;
}

/** A schedule's own fields, with its job's. */
interface ScheduleBase extends ScheduleJobOptions {
  /** Its name: 1 to 128 letters, digits, `-` and `_`. Creating it again replaces it, keeping its ticks. */
  id: string;
  /** The kind of the job each tick submits. */
  kind: string;
  /** That job's payload. */
  payload?: unknown;
  /** What ticks missed by more than a minute get: `skip` (the server's default) or `once`. */
  catchUp?: CatchUp;
}

/**
 * A schedule for {@link Client.createSchedule}: `cron` (with its `timezone`) or `every`, and the
 * job each tick submits, with any job option of {@link Client.submit} but `runAt` and
 * `idempotencyKey`.
 */
export type ScheduleSpec =
  | (ScheduleBase & {
      /** A cron expression: 5 fields, or 6 with seconds first (`0 30 2 * * *`). */
      cron: string;
      /** The IANA time zone `cron` is read in (default `UTC`, daylight saving included). */
      timezone?: string;
      every?: never;
    })
  | (ScheduleBase & {
      /**
       * An interval from 1 s to 366 days, counted from the schedule's creation: a duration
       * (`'30s'`, `'1h 30m'`) or a number of ms.
       */
      every: string | number;
      cron?: never;
      timezone?: never;
    });

/** Filters of {@link Client.list}. */
export interface ListOptions {
  /** `queued` lists them in the order they will start: highest priority first, then oldest. */
  status?: JobStatus;
  kind?: string;
  /** Page size, 1 to 500 (the server's default is 50). */
  limit?: number;
  /** `next_cursor` of the previous page. */
  cursor?: string | null;
  signal?: AbortSignal;
}

/** Filters of {@link Client.events}. */
export interface EventsOptions {
  /** Only these types, e.g. `job.succeeded` or `['job.succeeded', 'job.dead_lettered']`. */
  type?: string | string[];
  /** Only jobs of this kind. */
  kind?: string;
  /** Only this job. */
  job?: string;
  /** Start exactly after this stream sequence (a {@link StreamEvent.seq}); default: from now on. */
  after?: number | string;
  /** Ends the stream (the iteration just ends). */
  signal?: AbortSignal;
}

/** Options of {@link Client.follow} and {@link Client.wait}. */
export interface FollowOptions {
  /** Ends the stream (the iteration just ends; {@link Client.wait} rejects). */
  signal?: AbortSignal;
}

/** Options of {@link Client.wait}. */
export interface WaitOptions extends FollowOptions {
  /** Gives up after this many ms (rejects with a `TimeoutError`). */
  timeoutMs?: number;
}

/** Adds a job's options (but `run_at` and the idempotency key) to a request body, in the API's names. */
function addJobOptions(body: Record<string, unknown>, options: ScheduleJobOptions): Record<string, unknown> {
  if (options.maxAttempts !== undefined) body['max_attempts'] = options.maxAttempts;
  if (options.timeoutMs !== undefined) body['timeout_ms'] = options.timeoutMs;
  if (options.webhook !== undefined) {
    body['webhook'] = typeof options.webhook === 'string' ? { url: options.webhook } : { url: options.webhook.url };
  }
  if (options.priority !== undefined) body['priority'] = options.priority;
  if (options.concurrency !== undefined) {
    body['concurrency'] = { key: options.concurrency.key, limit: options.concurrency.limit };
  }
  if (options.rateLimit !== undefined) {
    const { key, limit, periodMs } = options.rateLimit;
    body['rate_limit'] = { key, limit, period_ms: periodMs };
  }
  return body;
}

/** A job as `POST /v1/jobs` takes it (without its idempotency key), in the API's names. */
export function submitBody(
  kind: string,
  payload: unknown,
  options: Omit<SubmitOptions, 'signal' | 'idempotencyKey'>,
): Record<string, unknown> {
  const body: Record<string, unknown> = { kind };
  if (payload !== undefined) body['payload'] = payload;
  addJobOptions(body, options);
  if (options.runAt !== undefined) {
    body['run_at'] = options.runAt instanceof Date ? options.runAt.toISOString() : options.runAt;
  }
  if (options.dependsOn !== undefined) body['depends_on'] = [...options.dependsOn];
  return body;
}

function batchPath(id: string): string {
  return `/v1/batches/${encodeURIComponent(id)}`;
}

function scheduleBody(spec: ScheduleSpec): Record<string, unknown> {
  const body: Record<string, unknown> = { id: spec.id, kind: spec.kind };
  if (spec.payload !== undefined) body['payload'] = spec.payload;
  if (spec.cron !== undefined) body['cron'] = spec.cron;
  if (spec.timezone !== undefined) body['timezone'] = spec.timezone;
  if (spec.every !== undefined) body['every'] = typeof spec.every === 'number' ? `${Math.round(spec.every)}ms` : spec.every;
  if (spec.catchUp !== undefined) body['catch_up'] = spec.catchUp;
  return addJobOptions(body, spec);
}

function jobPath(id: string): string {
  return `/v1/jobs/${encodeURIComponent(id)}`;
}

function schedulePath(id: string): string {
  return `/v1/schedules/${encodeURIComponent(id)}`;
}

function kindPath(kind: string): string {
  return `/v1/kinds/${encodeURIComponent(kind)}`;
}

/** Where a live stream connects, given the last sequence seen. */
interface LiveTarget {
  path: string;
  query: Record<string, string | number | undefined>;
  /** Whether the server resumes after `Last-Event-ID` (else it starts over and seen events are skipped). */
  resumable: boolean;
  /** The stream ends after a terminal event. */
  untilTerminal: boolean;
}

/**
 * A client of the jobs API.
 *
 * ```ts
 * const client = new Client('http://127.0.0.1:8080', process.env.CONVEYOR_TOKEN!);
 * const job = await client.submit('report.monthly', { month: '2026-10' });
 * for await (const ev of client.follow(job.id)) console.log(ev.event);
 * ```
 */
export class Client {
  /** The HTTP layer (base URL, token). */
  readonly transport: Transport;
  private readonly reconnectDelayMs: number;
  private readonly maxReconnectDelayMs: number;
  private readonly idleTimeoutMs: number;
  private readonly connectTimeoutMs: number;

  constructor(url: string, token: TokenSource, options: ClientOptions = {}) {
    this.transport = new Transport(url, token, options);
    this.reconnectDelayMs = options.reconnectDelayMs ?? 250;
    this.maxReconnectDelayMs = options.maxReconnectDelayMs ?? 5_000;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 45_000;
    this.connectTimeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Submits a job: resolves once the API accepted it (`202`), or found the original of a repeat (`200`). */
  async submit(kind: string, payload?: unknown, options: SubmitOptions = {}): Promise<Submission> {
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers['Idempotency-Key'] = options.idempotencyKey;
    const res = await this.transport.request<AcceptedJob>('POST', '/v1/jobs', {
      body: submitBody(kind, payload, options),
      headers,
      signal: options.signal,
    });
    return { ...res.body, repeated: res.status === 200 };
  }

  /**
   * Submits up to 1,000 independent jobs at once; each is answered on its own, in order (see
   * {@link BatchResult}). For a batch whose members are followed together, with a callback once
   * all ended, see {@link Client.createBatch}.
   */
  async submitBatch(jobs: BatchJob[], options: { signal?: AbortSignal } = {}): Promise<BatchResult> {
    const body = {
      jobs: jobs.map((j) => {
        const item = submitBody(j.kind, j.payload, j);
        if (j.idempotencyKey !== undefined) item['idempotency_key'] = j.idempotencyKey;
        return item;
      }),
    };
    const res = await this.transport.request<BatchResult>('POST', '/v1/jobs/batch', { body, signal: options.signal });
    return res.body;
  }

  /** The job (never `404` right after its submission). */
  async get(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    return (await this.transport.request<Job>('GET', jobPath(id), { signal: options.signal })).body;
  }

  /** One page of the tenant's jobs, newest first (`status: 'queued'`: in the order they will start). */
  async list(options: ListOptions = {}): Promise<JobPage> {
    const res = await this.transport.request<JobPage>('GET', '/v1/jobs', {
      query: {
        status: options.status,
        kind: options.kind,
        limit: options.limit,
        cursor: options.cursor ?? undefined,
      },
      signal: options.signal,
    });
    return res.body;
  }

  /** Every page of the tenant's jobs, in the order of {@link Client.list}, from `cursor` (or the start) to the last. */
  async *pages(options: ListOptions = {}): AsyncGenerator<JobPage, void, undefined> {
    let cursor = options.cursor ?? null;
    do {
      const page = await this.list({ ...options, cursor });
      yield page;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** Every job matching the filters, in the order of {@link Client.list}, across all pages. */
  async *listAll(options: ListOptions = {}): AsyncGenerator<Job, void, undefined> {
    for await (const page of this.pages(options)) yield* page.items;
  }

  /** Requests cancellation: `202`; throws a {@link ConveyorError} with status `409` if the job already ended. */
  async cancel(id: string, options: { signal?: AbortSignal } = {}): Promise<CancelAnswer> {
    return (await this.transport.request<CancelAnswer>('POST', `${jobPath(id)}/cancel`, { signal: options.signal })).body;
  }

  /** The result of a succeeded job, also when it was too large to inline. `404` until it succeeded. */
  async result<T = unknown>(id: string, options: { signal?: AbortSignal } = {}): Promise<T> {
    return (await this.transport.request<T>('GET', `${jobPath(id)}/result`, { signal: options.signal })).body;
  }

  /** The job's timeline: its CloudEvents so far, oldest first. */
  async timeline(id: string, options: { signal?: AbortSignal } = {}): Promise<CloudEvent[]> {
    return (await this.transport.request<CloudEvent[]>('GET', `${jobPath(id)}/events`, { signal: options.signal })).body;
  }

  /** The job kinds the API accepts, with their payload schemas. */
  async kinds(options: { signal?: AbortSignal } = {}): Promise<KindInfo[]> {
    return (await this.transport.request<{ items: KindInfo[] }>('GET', '/v1/kinds', { signal: options.signal })).body
      .items;
  }

  // Batches (docs/workflows.md).

  /**
   * Submits a batch (`POST /v1/batches`): its callback (the batch's own job, whose id is the
   * batch's), then up to 1,000 members, then seals it unless `seal: false`. All jobs are
   * validated first: one refused refuses the request (a `422` whose `detail` names it, e.g.
   * `jobs[3]: …`) and nothing is submitted. The callback runs once, when the batch is sealed and
   * every member has ended; follow it as a job: `client.wait(batch.id)`.
   *
   * ```ts
   * const batch = await client.createBatch(
   *   months.map((month) => ({ kind: 'report.monthly', payload: { month } })),
   *   { callback: { kind: 'report.merge', payload: { year: 2026 } }, idempotencyKey: 'reports-2026' },
   * );
   * const merged = await client.wait(batch.id);
   * ```
   */
  async createBatch(jobs: BatchMember[], options: CreateBatchOptions = {}): Promise<BatchSubmission> {
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers['Idempotency-Key'] = options.idempotencyKey;
    const body: Record<string, unknown> = { jobs: jobs.map((j) => submitBody(j.kind, j.payload, j)) };
    if (options.callback !== undefined) {
      body['callback'] = submitBody(options.callback.kind, options.callback.payload, options.callback);
    }
    if (options.seal !== undefined) body['seal'] = options.seal;
    const res = await this.transport.request<AcceptedBatch>('POST', '/v1/batches', {
      body,
      headers,
      signal: options.signal,
    });
    return { ...res.body, repeated: res.status === 200 };
  }

  /**
   * Adds 1 to 1,000 members to an open batch (`POST /v1/batches/{id}/jobs`), sealing it after
   * them with `seal: true`; a {@link ConveyorError} with status `409` once it is sealed or
   * cancelled. Seal only after every page was answered: a page still in flight when the batch is
   * sealed may be missed by the callback. With an `idempotencyKey` (one per page), a repeated
   * page answers `200` (`repeated: true`) with the same member ids, added once, even after the
   * seal; the same key with another page is a `409`.
   */
  async addBatchJobs(id: string, jobs: BatchMember[], options: AddBatchJobsOptions = {}): Promise<BatchSubmission> {
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers['Idempotency-Key'] = options.idempotencyKey;
    const body: Record<string, unknown> = { jobs: jobs.map((j) => submitBody(j.kind, j.payload, j)) };
    if (options.seal !== undefined) body['seal'] = options.seal;
    const res = await this.transport.request<AcceptedBatch>('POST', `${batchPath(id)}/jobs`, {
      body,
      headers,
      signal: options.signal,
    });
    return { ...res.body, repeated: res.status === 200 };
  }

  /** Seals a batch: no member can be added; its callback runs once every member has ended. Sealing again changes nothing. */
  async sealBatch(id: string, options: { signal?: AbortSignal } = {}): Promise<Batch> {
    return (await this.transport.request<Batch>('POST', `${batchPath(id)}/seal`, { signal: options.signal })).body;
  }

  /** The batch and its members' progress; a {@link ConveyorError} with status `404` if `id` is no batch of the tenant. */
  async getBatch(id: string, options: { signal?: AbortSignal } = {}): Promise<Batch> {
    return (await this.transport.request<Batch>('GET', batchPath(id), { signal: options.signal })).body;
  }

  /** One page of a batch's members, in submission order (`status` filters). */
  async listBatchJobs(id: string, options: BatchJobsOptions = {}): Promise<JobPage> {
    const res = await this.transport.request<JobPage>('GET', `${batchPath(id)}/jobs`, {
      query: { status: options.status, limit: options.limit, cursor: options.cursor ?? undefined },
      signal: options.signal,
    });
    return res.body;
  }

  /** Every member of a batch matching the filters, in submission order, across all pages (`limit` is the page size). */
  async *listAllBatchJobs(id: string, options: BatchJobsOptions = {}): AsyncGenerator<Job, void, undefined> {
    let cursor = options.cursor ?? null;
    do {
      const page = await this.listBatchJobs(id, { ...options, cursor });
      yield* page.items;
      cursor = page.next_cursor;
    } while (cursor);
  }

  // Children (docs/workflows.md): jobs a handler submitted ({@link JobContext.submitChildren}).

  /**
   * One page of a job's children (`GET /v1/jobs/{id}/children`): the jobs its handler submitted
   * (each with `parent`), in submission order, a continuation among them; `status` filters. A
   * {@link ConveyorError} with status `404` if there is no such job.
   */
  async listChildren(id: string, options: BatchJobsOptions = {}): Promise<JobPage> {
    const res = await this.transport.request<JobPage>('GET', `${jobPath(id)}/children`, {
      query: { status: options.status, limit: options.limit, cursor: options.cursor ?? undefined },
      signal: options.signal,
    });
    return res.body;
  }

  /** Every child of a job matching the filters, in submission order, across all pages (`limit` is the page size). */
  async *listAllChildren(id: string, options: BatchJobsOptions = {}): AsyncGenerator<Job, void, undefined> {
    let cursor = options.cursor ?? null;
    do {
      const page = await this.listChildren(id, { ...options, cursor });
      yield* page.items;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /**
   * Cancels a batch: its callback first (so it never runs), then every member not ended yet;
   * `cancelled` counts those. One request cancels at most 10,000 members (answering
   * `more: true`): this calls again until none is left, summing `cancelled`, so it answers
   * `more: false`. A {@link ConveyorError} with status `409` if the batch and every member had
   * already ended (a `409` to a later call, once a previous one cancelled the rest, ends the loop).
   */
  async cancelBatch(id: string, options: { signal?: AbortSignal } = {}): Promise<BatchCancelAnswer> {
    let cancelled = 0;
    for (let call = 0; ; call++) {
      let answer: BatchCancelAnswer;
      try {
        answer = (await this.transport.request<BatchCancelAnswer>('POST', `${batchPath(id)}/cancel`, { signal: options.signal }))
          .body;
      } catch (e) {
        // Everything left ended between two calls: the batch is cancelled as asked.
        if (call > 0 && e instanceof ConveyorError && e.status === 409) return { id, cancelled, more: false };
        throw e;
      }
      cancelled += answer.cancelled;
      if (!answer.more) return { ...answer, cancelled, more: false };
    }
  }

  // Schedules and pauses (docs/scheduling.md).

  /**
   * Creates a schedule (`201`, `created: true`), or replaces the one with the same id (`200`,
   * `created: false`; its ticks so far are kept, none runs twice). Each tick submits one job,
   * whose `job.submitted` carries `schedule: {id, tick}`.
   *
   * ```ts
   * await client.createSchedule({ id: 'nightly-report', kind: 'report.job_stats', cron: '0 0 2 * * *', timezone: 'Europe/Paris' });
   * await client.createSchedule({ id: 'heartbeat', kind: 'noop', every: '30s', priority: 10 });
   * ```
   */
  async createSchedule(schedule: ScheduleSpec, options: { signal?: AbortSignal } = {}): Promise<CreatedSchedule> {
    const res = await this.transport.request<Schedule>('POST', '/v1/schedules', {
      body: scheduleBody(schedule),
      signal: options.signal,
    });
    return { ...res.body, created: res.status === 201 };
  }

  /** The tenant's schedules, by id. */
  async schedules(options: { signal?: AbortSignal } = {}): Promise<Schedule[]> {
    return (await this.transport.request<{ items: Schedule[] }>('GET', '/v1/schedules', { signal: options.signal })).body
      .items;
  }

  /** One schedule; a {@link ConveyorError} with status `404` if the tenant has none with this id. */
  async getSchedule(id: string, options: { signal?: AbortSignal } = {}): Promise<Schedule> {
    return (await this.transport.request<Schedule>('GET', schedulePath(id), { signal: options.signal })).body;
  }

  /** Deletes a schedule (`204`): no tick fires after this; its jobs already submitted run on. */
  async deleteSchedule(id: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.transport.request<null>('DELETE', schedulePath(id), { signal: options.signal });
  }

  /** Pauses a schedule: no tick fires until it is resumed (pausing again changes nothing). */
  async pauseSchedule(id: string, options: { signal?: AbortSignal } = {}): Promise<Schedule> {
    return (await this.transport.request<Schedule>('POST', `${schedulePath(id)}/pause`, { signal: options.signal })).body;
  }

  /** Resumes a paused schedule from its next tick; the ticks it missed while paused do not run. */
  async resumeSchedule(id: string, options: { signal?: AbortSignal } = {}): Promise<Schedule> {
    return (await this.transport.request<Schedule>('POST', `${schedulePath(id)}/resume`, { signal: options.signal }))
      .body;
  }

  /**
   * Pauses the tenant's own jobs of a kind (scope `jobs:write`): its waiting jobs stay queued and
   * none is handed to a worker until it is resumed; running jobs finish, and the few already
   * handed to workers still start.
   */
  async pauseKind(kind: string, options: { signal?: AbortSignal } = {}): Promise<KindPause> {
    return (await this.transport.request<KindPause>('POST', `${kindPath(kind)}/pause`, { signal: options.signal })).body;
  }

  /** Resumes the tenant's own jobs of a kind (an operator's pause for every tenant stays). */
  async resumeKind(kind: string, options: { signal?: AbortSignal } = {}): Promise<KindPause> {
    return (await this.transport.request<KindPause>('POST', `${kindPath(kind)}/resume`, { signal: options.signal }))
      .body;
  }

  /** The pauses that hold the tenant's jobs: its own, and operators' pauses for every tenant. */
  async pauses(options: { signal?: AbortSignal } = {}): Promise<KindPause[]> {
    return (await this.transport.request<{ items: KindPause[] }>('GET', '/v1/pauses', { signal: options.signal })).body
      .items;
  }

  /** The tenant's webhook signing secret (`whsec_…`), for {@link verifyWebhook}. */
  async webhookSecret(options: { signal?: AbortSignal } = {}): Promise<string> {
    return (await this.transport.request<{ secret: string }>('GET', '/v1/webhooks/secret', { signal: options.signal }))
      .body.secret;
  }

  /**
   * The job's events, live: its timeline so far, then each new event, ending after the terminal
   * one (`job.succeeded`, `job.dead_lettered` or `job.cancelled`); at once for a job that already
   * ended. A dropped connection is reopened; no event is repeated.
   */
  follow(id: string, options: FollowOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    return this.live(
      { path: `${jobPath(id)}/events`, query: {}, resumable: false, untilTerminal: true },
      undefined,
      options.signal,
    );
  }

  /**
   * The tenant's events, live (scope `events:read`), from now on or exactly after `after`. It
   * never ends by itself: a dropped connection (or the server's `resume` hint) is reopened with
   * `Last-Event-ID`, so no event is lost or repeated. Stop it with `break` or `signal`.
   */
  events(options: EventsOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    const type = Array.isArray(options.type) ? options.type.join(',') : options.type;
    let after: number | undefined;
    if (options.after !== undefined) {
      after = Number(options.after);
      if (!Number.isSafeInteger(after) || after < 0) throw new TypeError(`conveyor: bad 'after': ${options.after}`);
    }
    return this.live(
      { path: '/v1/events', query: { type, kind: options.kind, job: options.job }, resumable: true, untilTerminal: false },
      after,
      options.signal,
    );
  }

  /**
   * Waits until the job ends (following its events), then resolves with the job as the read
   * model shows it in its terminal status.
   */
  async wait(id: string, options: WaitOptions = {}): Promise<Job> {
    const timeout = options.timeoutMs !== undefined ? AbortSignal.timeout(options.timeoutMs) : undefined;
    const { signal, dispose } = anySignal([options.signal, timeout]);
    try {
      for await (const _ of this.follow(id, { signal })) {
        // Only the end matters.
      }
      // The read model may lag the log by a little.
      for (let delay = 20; ; delay = Math.min(delay * 2, 500)) {
        if (signal.aborted) throw signal.reason;
        const job = await this.get(id, { signal });
        if (TERMINAL_STATUSES.includes(job.status)) return job;
        await sleep(delay, signal);
      }
    } finally {
      dispose();
    }
  }

  private backoff(attempt: number, retryAfterSecs?: number): number {
    if (retryAfterSecs !== undefined) return retryAfterSecs * 1000;
    const base = Math.min(this.maxReconnectDelayMs, this.reconnectDelayMs * 2 ** attempt);
    return base / 2 + Math.random() * (base / 2);
  }

  private async *live(
    target: LiveTarget,
    after: number | undefined,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<StreamEvent, void, undefined> {
    let last = after;
    let failures = 0;
    while (!signal?.aborted) {
      const connection = new AbortController();
      const { signal: connSignal, dispose } = anySignal([signal, connection.signal]);
      const headers: Record<string, string> = { Accept: 'text/event-stream', 'Cache-Control': 'no-cache' };
      if (target.resumable && last !== undefined) headers['Last-Event-ID'] = String(last);
      let retryAfter: number | undefined;
      let watchdog: ReturnType<typeof setInterval> | undefined;
      let done: (() => void) | undefined;
      try {
        const connectTimer = setTimeout(() => connection.abort(new Error('connect timeout')), this.connectTimeoutMs);
        let res: Response;
        try {
          ({ response: res, done } = await this.transport.send('GET', target.path, {
            query: target.query,
            headers,
            signal: connSignal,
            timeoutMs: 0,
          }));
        } finally {
          clearTimeout(connectTimer);
        }
        if (!res.body) throw new Error('the live stream has no body');
        let activity = Date.now();
        watchdog = setInterval(() => {
          if (Date.now() - activity > this.idleTimeoutMs) connection.abort(new Error('live stream idle'));
        }, Math.min(5_000, this.idleTimeoutMs));
        for await (const msg of readSse(res.body, () => (activity = Date.now()))) {
          if (msg.event === 'resume') {
            // The server ends the stream (it stops, or this client fell behind): resume from its hint.
            try {
              const hint = JSON.parse(msg.data) as { last_event_id?: string | number };
              const seq = Number(hint.last_event_id);
              if (target.resumable && Number.isSafeInteger(seq) && (last === undefined || seq > last)) last = seq;
            } catch {
              // No usable hint: resume from the last event seen.
            }
            break;
          }
          const seq = Number(msg.id);
          if (msg.id === undefined || !Number.isSafeInteger(seq)) continue;
          if (last !== undefined && seq <= last) continue;
          let data: CloudEvent;
          try {
            data = JSON.parse(msg.data) as CloudEvent;
          } catch {
            continue;
          }
          last = seq;
          failures = 0;
          yield { seq, event: msg.event, data };
          if (target.untilTerminal && TERMINAL_EVENTS.includes(msg.event)) return;
          // Time spent by the consumer does not count as the stream being idle.
          activity = Date.now();
        }
      } catch (e) {
        if (signal?.aborted) return;
        if (e instanceof ConveyorError && !isTransient(e)) throw e;
        if (e instanceof ConveyorError) retryAfter = e.retryAfter;
      } finally {
        if (watchdog) clearInterval(watchdog);
        connection.abort();
        done?.();
        dispose();
      }
      if (signal?.aborted) return;
      const delay = this.backoff(failures++, retryAfter);
      try {
        await sleep(delay, signal);
      } catch {
        return;
      }
    }
  }
}
