/**
 * The worker protocol over HTTP, call by call (docs/workers.md): register a kind, lease jobs,
 * heartbeat, report progress, submit children, complete, fail, wait for children, release.
 * {@link Worker} runs it for you; use this raw form to drive the protocol yourself.
 */

import { submitBody, type ChildJob } from './client.js';
import { ConveyorError } from './errors.js';
import { Transport, type TokenSource, type TransportOptions } from './http.js';
import type {
  ChildrenAccepted,
  FailureReport,
  HeartbeatAnswer,
  JsonSchema,
  KindInfo,
  LeasedJob,
  ReportOutcome,
} from './types.js';

/** A lease request. */
export interface LeaseOptions {
  /** 1 to 32 kinds to take jobs of. */
  kinds: string[];
  /** The most jobs answered, 1 to 256 (default 1). */
  maxJobs?: number;
  /** How long to wait when none is waiting, 0 to 30,000 ms (default 20,000). */
  waitMs?: number;
  /** The worker's name, shown in `job.started`. */
  worker?: string;
  signal?: AbortSignal;
}

/** A progress report. */
export interface ProgressReport {
  /** Numbers the reports of one lease from 1; a repeat with the same `seq` is stored once. */
  seq: number;
  current: number;
  total?: number;
  message?: string;
}

/** One item of {@link WorkerApi.completeMany}. */
export interface CompleteItem {
  id: string;
  lease: string;
  result: unknown;
}

/** One item of {@link WorkerApi.failMany}. */
export interface FailItem {
  id: string;
  lease: string;
  error: FailureReport;
}

/** Options of {@link WorkerApi.children}. */
export interface ChildrenOptions {
  /**
   * A continuation: a job that runs once every one of these children has ended, its handler told
   * how each ended (`upstream.members`). The children are then the members of a sealed batch
   * whose callback it is; the parent's handler may end meanwhile.
   */
  then?: ChildJob;
  /**
   * Makes a retry of the request safe: a repeat with the same key during the same attempt submits
   * the same children (the same ids), stored once; the same key with other children is a `409`
   * (problem `conflict`).
   */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

/**
 * Whether an error is the API's `409` for a lost lease: drop the job, do not retry the call. (Of
 * a worker call: every `409` means that, but for `children` whose `409` may also be an
 * idempotency key reused with other children, problem `conflict`.)
 */
export function isLeaseLost(error: unknown): boolean {
  return error instanceof ConveyorError && error.status === 409 && error.slug !== 'conflict';
}

function jobPath(id: string, action: string): string {
  return `/v1/workers/jobs/${encodeURIComponent(id)}/${action}`;
}

/** The worker protocol's calls. Every call needs a token with the scope `worker`. */
export class WorkerApi {
  readonly transport: Transport;

  constructor(url: string, token: TokenSource, options: TransportOptions = {}) {
    this.transport = new Transport(url, token, options);
  }

  /** Registers `kind` (with its payload's JSON Schema, or `null`): the API accepts it from then on. Idempotent. */
  async registerKind(kind: string, schema: JsonSchema | null = null, options: { signal?: AbortSignal } = {}): Promise<KindInfo> {
    const res = await this.transport.request<KindInfo>('PUT', `/v1/workers/kinds/${encodeURIComponent(kind)}`, {
      body: { schema },
      signal: options.signal,
    });
    return res.body;
  }

  /** Leases up to `maxJobs` jobs, waiting up to `waitMs` for one (long poll); `[]` when none came. */
  async lease(options: LeaseOptions): Promise<LeasedJob[]> {
    const body: Record<string, unknown> = { kinds: options.kinds };
    if (options.maxJobs !== undefined) body['max_jobs'] = options.maxJobs;
    if (options.waitMs !== undefined) body['wait_ms'] = options.waitMs;
    if (options.worker !== undefined) body['worker'] = options.worker;
    const res = await this.transport.request<{ jobs: LeasedJob[] }>('POST', '/v1/workers/lease', {
      body,
      signal: options.signal,
      // The long poll may take `waitMs`; allow for it.
      timeoutMs: (options.waitMs ?? 20_000) + 30_000,
    });
    return res.body?.jobs ?? [];
  }

  /** Extends the lease: use the answer's `lease` from then on; `cancelled: true` means stop. */
  async heartbeat(id: string, lease: string, options: { signal?: AbortSignal } = {}): Promise<HeartbeatAnswer> {
    return (await this.transport.request<HeartbeatAnswer>('POST', jobPath(id, 'heartbeat'), { body: { lease }, signal: options.signal }))
      .body;
  }

  /** Appends `job.progressed`. */
  async progress(id: string, lease: string, report: ProgressReport, options: { signal?: AbortSignal } = {}): Promise<void> {
    const body: Record<string, unknown> = { lease, seq: report.seq, current: report.current };
    if (report.total !== undefined) body['total'] = report.total;
    if (report.message !== undefined) body['message'] = report.message;
    await this.transport.request<unknown>('POST', jobPath(id, 'progress'), { body, signal: options.signal });
  }

  /** Appends `job.succeeded` with `result`. */
  async complete(id: string, lease: string, result: unknown, options: { signal?: AbortSignal } = {}): Promise<ReportOutcome> {
    return (
      await this.transport.request<ReportOutcome>('POST', jobPath(id, 'complete'), {
        body: { lease, result: result === undefined ? null : result },
        signal: options.signal,
      })
    ).body;
  }

  /** Appends `job.failed`, then `job.retry_scheduled` or `job.dead_lettered` (or `job.cancelled` for class `cancelled`). */
  async fail(id: string, lease: string, error: FailureReport, options: { signal?: AbortSignal } = {}): Promise<ReportOutcome> {
    return (await this.transport.request<ReportOutcome>('POST', jobPath(id, 'fail'), { body: { lease, error }, signal: options.signal }))
      .body;
  }

  /**
   * Submits 1 to 1,000 children of the leased job (`parent` is the job), counting against the
   * tenant's rate and quota; with `then`, a continuation that runs once they all ended. Then end
   * the attempt: complete it (a continuation carries on), or {@link WorkerApi.wait} for them.
   */
  async children(id: string, lease: string, jobs: ChildJob[], options: ChildrenOptions = {}): Promise<ChildrenAccepted> {
    const body: Record<string, unknown> = { lease, jobs: jobs.map((j) => submitBody(j.kind, j.payload, j)) };
    if (options.then !== undefined) body['then'] = submitBody(options.then.kind, options.then.payload, options.then);
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers['Idempotency-Key'] = options.idempotencyKey;
    return (
      await this.transport.request<ChildrenAccepted>('POST', jobPath(id, 'children'), { body, headers, signal: options.signal })
    ).body;
  }

  /**
   * Ends the attempt waiting for the job's children (status `waiting_for_children`): appends
   * `job.suspended`; the job is queued again and its next attempt (one more allowed) is leased
   * once every child has ended, told how in `upstream.children`. Stop heartbeating this lease.
   * A repeat with the same lease (say, after an answer lost on its way back) answers the same,
   * `waiting_for_children`; an older server answered it `409` (lease lost): the wait was made.
   */
  async wait(id: string, lease: string, options: { signal?: AbortSignal } = {}): Promise<ReportOutcome> {
    return (await this.transport.request<ReportOutcome>('POST', jobPath(id, 'wait'), { body: { lease }, signal: options.signal }))
      .body;
  }

  /** Hands the job back to the queue at once, unfinished: another worker runs the same attempt. */
  async release(id: string, lease: string, options: { signal?: AbortSignal } = {}): Promise<ReportOutcome> {
    return (await this.transport.request<ReportOutcome>('POST', jobPath(id, 'release'), { body: { lease }, signal: options.signal }))
      .body;
  }

  /** Completes up to 256 jobs in one request: one outcome per item, in order (`lease_lost` for a lost lease). */
  async completeMany(items: CompleteItem[], options: { signal?: AbortSignal } = {}): Promise<ReportOutcome[]> {
    const jobs = items.map((i) => ({ id: i.id, lease: i.lease, result: i.result === undefined ? null : i.result }));
    return (await this.transport.request<{ jobs: ReportOutcome[] }>('POST', '/v1/workers/complete', { body: { jobs }, signal: options.signal }))
      .body.jobs;
  }

  /** Fails up to 256 jobs in one request: one outcome per item, in order. */
  async failMany(items: FailItem[], options: { signal?: AbortSignal } = {}): Promise<ReportOutcome[]> {
    const jobs = items.map((i) => ({ id: i.id, lease: i.lease, error: i.error }));
    return (await this.transport.request<{ jobs: ReportOutcome[] }>('POST', '/v1/workers/fail', { body: { jobs }, signal: options.signal }))
      .body.jobs;
  }
}
