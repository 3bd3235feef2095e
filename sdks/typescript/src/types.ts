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
  /** `succeeded`, `retry_scheduled`, `dead_lettered`, `cancelled`, `released`, or for an item of a batch `lease_lost`. */
  status: string;
  detail?: string;
  [extra: string]: unknown;
}
