/**
 * The SDK's error classes.
 *
 * - {@link ConveyorError}: the API answered with an error status; carries the RFC 9457
 *   problem+json body (`status`, `title`, `detail`, `type`) and `Retry-After`.
 * - {@link ConveyorConnectionError}: no answer at all (connection refused or reset, timeout).
 * - {@link FatalError}: thrown by a job handler to dead-letter the job at once (no retry).
 * - {@link JobAbortedError} and its subclasses: the reason of a handler's `job.signal` when it is
 *   aborted (cancelled, deadline passed, lease lost, worker shutting down).
 * - {@link WebhookVerificationError}: a webhook delivery that does not verify.
 */

/** An RFC 9457 problem, as every error answer of the API carries it. */
export interface Problem {
  /** A URI naming the problem type, e.g. `https://conveyor.dev/problems/conflict`. */
  type: string;
  /** Short summary of the type (the HTTP reason phrase). */
  title: string;
  /** The HTTP status. */
  status: number;
  /** What went wrong this time, and how to fix it. */
  detail: string;
  /** Any extension member the server adds (e.g. schema violations). */
  [extension: string]: unknown;
}

/** Parses a `Retry-After` header (delta-seconds or an HTTP date) into seconds. */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  if (trimmed === '') return undefined;
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

/** The API answered with an error status. */
export class ConveyorError extends Error {
  /** The HTTP status. */
  readonly status: number;
  /** The problem type URI (`https://conveyor.dev/problems/<slug>`), or `about:blank`. */
  readonly type: string;
  /** The problem's title. */
  readonly title: string;
  /** The problem's detail: what went wrong this time. */
  readonly detail: string;
  /** The whole problem body. */
  readonly problem: Problem;
  /** Seconds to wait before trying again (`Retry-After`), on 429 and 503 answers. */
  readonly retryAfter: number | undefined;
  /** The request that failed, as `METHOD /path`. */
  readonly request: string;

  constructor(problem: Problem, options: { retryAfter?: number | undefined; request?: string } = {}) {
    super(`${problem.status} ${problem.title}: ${problem.detail}${options.request ? ` (${options.request})` : ''}`);
    this.name = 'ConveyorError';
    this.status = problem.status;
    this.type = problem.type;
    this.title = problem.title;
    this.detail = problem.detail;
    this.problem = problem;
    this.retryAfter = options.retryAfter;
    this.request = options.request ?? '';
  }

  /** The problem's slug, the last segment of its type URI (`conflict`, `lease-lost`, …). */
  get slug(): string {
    const i = this.type.lastIndexOf('/');
    return i >= 0 ? this.type.slice(i + 1) : this.type;
  }

  /** Whether trying again later may succeed: 429, 503 (and 502, 504) answers. */
  get transient(): boolean {
    return this.status === 429 || this.status === 502 || this.status === 503 || this.status === 504;
  }
}

/** The API could not be reached, or did not answer in time. */
export class ConveyorConnectionError extends Error {
  /** The request that failed, as `METHOD /path`. */
  readonly request: string;

  constructor(message: string, options: { cause?: unknown; request?: string } = {}) {
    super(message, { cause: options.cause });
    this.name = 'ConveyorConnectionError';
    this.request = options.request ?? '';
  }
}

/** Whether an error is worth retrying: no answer, or a 429/5xx-overload answer. */
export function isTransient(error: unknown): boolean {
  if (error instanceof ConveyorConnectionError) return true;
  if (error instanceof ConveyorError) return error.transient || error.status >= 500;
  return false;
}

/**
 * Thrown by a job handler for a failure that no other attempt can fix: the job is dead-lettered
 * at once (`fail` with class `fatal`). Any other error is retryable (another attempt after the
 * retry delay, until `max_attempts`).
 */
export class FatalError extends Error {
  /** Marks the error as fatal, also for errors of other classes that set it. */
  readonly fatal = true;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FatalError';
  }
}

/** Why a running job's `signal` was aborted. */
export type AbortCause = 'cancelled' | 'timeout' | 'lease_lost' | 'shutdown';

/** The reason of an aborted `job.signal`: see its subclasses. */
export class JobAbortedError extends Error {
  /** What happened to the job: `cancelled`, `timeout`, `lease_lost` or `shutdown`. */
  readonly reason: AbortCause;

  constructor(reason: AbortCause, message: string) {
    super(message);
    this.name = 'JobAbortedError';
    this.reason = reason;
  }
}

/** The job was cancelled (`POST /v1/jobs/{id}/cancel`): it ends `cancelled`. */
export class JobCancelledError extends JobAbortedError {
  constructor() {
    super('cancelled', 'the job was cancelled');
    this.name = 'JobCancelledError';
  }
}

/** The attempt's deadline (`timeout_ms`) passed: it fails with class `timeout`. */
export class JobTimeoutError extends JobAbortedError {
  constructor() {
    super('timeout', "the attempt's deadline passed");
    this.name = 'JobTimeoutError';
  }
}

/** The lease was lost (it expired, or the job ended elsewhere): the job is dropped, not reported. */
export class LeaseLostError extends JobAbortedError {
  constructor(detail?: string) {
    super('lease_lost', `the lease on the job was lost${detail ? `: ${detail}` : ''}`);
    this.name = 'LeaseLostError';
  }
}

/** The worker is shutting down and its grace period ran out: the job is handed back. */
export class WorkerShutdownError extends JobAbortedError {
  constructor() {
    super('shutdown', 'the worker is shutting down; the job is handed back to the queue');
    this.name = 'WorkerShutdownError';
  }
}

/** A webhook delivery that does not verify (bad or missing signature, stale timestamp). */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookVerificationError';
  }
}
