/**
 * A worker: runs job handlers written in TypeScript over conveyor's worker protocol.
 *
 * At start it registers each kind (with its payload schema), then leases jobs (a long poll
 * asking for as many as it has free slots), runs them concurrently up to `concurrency`,
 * heartbeats each one as the API asks (taking the new lease token each time), and reports the
 * outcome: the handler's value completes the job; a thrown error fails it (retryable, or fatal
 * for a {@link FatalError}); `return job.waitForChildren()` (after `job.submitChildren(…)`) ends
 * the attempt waiting for its children, freeing its slot, and the job's next attempt runs once
 * they all ended; a cancellation seen by a heartbeat aborts `job.signal` and ends the
 * job `cancelled`; a passed deadline aborts it and fails the attempt as `timeout`; a lost lease
 * (`409`) aborts it and drops it. Outcomes that are ready together go in one batch request.
 *
 * On SIGTERM or SIGINT (or {@link Worker.close}) it stops leasing, lets running jobs finish
 * within `shutdownGraceMs`, then aborts the others and hands them back (`release`), so another
 * worker runs them at once; {@link Worker.run} resolves after that.
 */

import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';

import type { ChildJob } from './client.js';
import {
  FatalError,
  JobCancelledError,
  JobTimeoutError,
  LeaseLostError,
  WorkerShutdownError,
  ConveyorError,
  isTransient,
  type JobAbortedError,
} from './errors.js';
import { sleep, type TokenSource, type TransportOptions } from './http.js';
import { isLeaseLost, WorkerApi, type ChildrenOptions, type ProgressReport } from './protocol.js';
import type { ChildrenAccepted, FailureReport, JsonSchema, LeasedJob, ReportOutcome, Upstream } from './types.js';

/** Where the worker says what went wrong (a report it could not make, a lease it lost). */
export interface WorkerLogger {
  warn(message: string, error?: unknown): void;
}

/** Options of a {@link Worker}. */
export interface WorkerOptions extends TransportOptions {
  /** Jobs run at once (default 64, as the Rust worker). */
  concurrency?: number;
  /** The worker's name, shown in `job.started` (default `<hostname>-<pid>`). */
  name?: string;
  /** How long one lease request waits for a job, in ms (0 to 30,000; default 20,000). */
  waitMs?: number;
  /** On shutdown, how long running jobs may take to finish before they are handed back, in ms (default 20,000). */
  shutdownGraceMs?: number;
  /** Shut down gracefully on SIGTERM and SIGINT (a second signal skips the grace period). Default `true`. */
  handleSignals?: boolean;
  /** Where problems are logged (default: `console.warn`); `null` for silence. */
  logger?: WorkerLogger | null;
}

/** A job as its handler sees it. */
export interface JobContext<P = unknown> {
  readonly id: string;
  readonly tenant: string;
  readonly kind: string;
  readonly payload: P;
  /** This attempt's number, from 1. */
  readonly attempt: number;
  readonly maxAttempts: number;
  /** When this attempt's `timeout_ms` runs out: `signal` aborts then. */
  readonly deadline: Date;
  /**
   * How the jobs it waited for ended (docs/workflows.md): `dependencies`, in the order of its
   * `depends_on`, each with its `status` and its `result` (when it succeeded with one of up to
   * 16 KiB); for a batch's callback or a continuation, `members` (their counts, and each
   * member's status for up to 1,000); for an attempt resuming after
   * {@link JobContext.waitForChildren}, `children` (the same shape). `undefined` for a job that
   * waited for none. Retries see the same.
   */
  readonly upstream: Upstream | undefined;
  /**
   * Aborted when the handler should stop: the job was cancelled ({@link JobCancelledError}), its
   * deadline passed ({@link JobTimeoutError}), its lease was lost ({@link LeaseLostError}), or the
   * worker's shutdown grace ran out ({@link WorkerShutdownError}). Its `reason` says which. Once
   * aborted, whatever the handler returns or throws is ignored.
   */
  readonly signal: AbortSignal;
  /** The current lease token (it changes with each heartbeat). */
  readonly lease: string;
  /** The job as the lease answered it. */
  readonly leased: LeasedJob;
  /**
   * Reports progress (`job.progressed` in the timeline). Never rejects: a report that cannot be
   * made is logged (and a lost lease aborts `signal`). The job's outcome is reported only after
   * its progress reports.
   */
  progress(current: number, total?: number, message?: string): Promise<void>;
  /**
   * Submits 1 to 1,000 children of this job (docs/workflows.md): jobs whose `parent` it is,
   * counting against the tenant's rate and quota. Then end the handler one of two ways:
   *
   * - with `then`, a continuation: the children are the members of a sealed batch whose callback
   *   it is; it runs once every child has ended, told how in `upstream.members`. The handler may
   *   just return (the job completes; the continuation carries on).
   * - or `return job.waitForChildren()`: the attempt ends without an outcome, the slot is freed,
   *   and the job's next attempt runs once every child has ended, told how in
   *   `upstream.children`.
   *
   * Resolves with the children's ids (in order) and the continuation's. Retries that may help
   * (no answer, `429`, `503`) are made under an idempotency key (`idempotencyKey`, or one of its
   * own), so they submit the same children once. Rejects with a {@link LeaseLostError} (and
   * aborts `signal`) when the lease is lost, with a {@link ConveyorError} when the API refuses
   * the children (`422` for an invalid one, `409` for a key reused with other children).
   */
  submitChildren(jobs: ChildJob[], options?: ChildrenOptions): Promise<ChildrenAccepted>;
  /**
   * Ends the attempt waiting for the job's children: `return job.waitForChildren();` from the
   * handler (throwing the value works too, from deeper code). The worker then reports the wait
   * (`job.suspended`) instead of an outcome, stops heartbeating and frees the slot; the job is
   * `queued` (`waiting.reason` `children`) until every child it submitted has ended, then its
   * next attempt (`attempt + 1`; one more attempt is allowed) runs the handler again with
   * `upstream.children` set. Only the return value counts: calling it alone does nothing.
   */
  waitForChildren(): WaitForChildren;
}

/** Marks a {@link WaitForChildren}, also across copies of the SDK. */
const WAIT_BRAND = Symbol.for('conveyor.waitForChildren');

/**
 * What a handler returns to wait for its children ({@link JobContext.waitForChildren}): the
 * worker ends the attempt with `wait` instead of completing the job.
 */
export class WaitForChildren {
  private readonly waitsForChildren = true;

  constructor() {
    Object.defineProperty(this, WAIT_BRAND, { value: true });
  }
}

const WAIT = new WaitForChildren();

function isWaitForChildren(value: unknown): value is WaitForChildren {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[WAIT_BRAND] === true;
}

/**
 * A job handler: its value is the job's result (JSON); what it throws fails the attempt;
 * returning {@link JobContext.waitForChildren}'s value waits for the job's children.
 */
export type Handler<P = any, R = unknown> = (job: JobContext<P>) => R | Promise<R>;

/** Options of {@link Worker.handle}. */
export interface HandleOptions {
  /** The JSON Schema of the kind's payload: the API refuses (422) submissions that violate it. */
  schema?: JsonSchema | null;
}

type Outcome =
  | { type: 'complete'; result: unknown }
  | { type: 'fail'; error: FailureReport }
  | { type: 'release' }
  | { type: 'wait' }
  | { type: 'drop'; reason: string };

/** One leased job, from its lease to its report. */
class Run {
  readonly job: LeasedJob;
  lease: string;
  leaseExpiresAt: number;
  readonly heartbeatMs: number;
  readonly controller = new AbortController();
  outcome: Outcome | undefined;
  seq = 0;
  readonly progress = new Set<Promise<void>>();
  heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  heartbeatInFlight: Promise<void> | undefined;
  heartbeatsStopped = false;
  deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  readonly finished: Promise<void>;
  finish!: () => void;

  constructor(job: LeasedJob) {
    this.job = job;
    this.lease = job.lease;
    const expires = Date.parse(job.lease_expires_at);
    this.leaseExpiresAt = Number.isNaN(expires) ? Date.now() + 30_000 : expires;
    this.heartbeatMs = job.heartbeat_ms > 0 ? job.heartbeat_ms : 10_000;
    this.finished = new Promise((resolve) => (this.finish = resolve));
  }

  get id(): string {
    return this.job.id;
  }
}

interface Registration {
  handler: Handler;
  schema: JsonSchema | null;
}

/** Outcomes of a report that took. */
const DONE = ['succeeded', 'retry_scheduled', 'dead_lettered', 'cancelled'];
/** The most reports in one batch request. */
const MAX_BATCH = 256;
/** The longest error message reported. */
const MAX_MESSAGE = 4_000;

function messageOf(error: unknown): string {
  const text = error instanceof Error ? error.message || error.name : typeof error === 'string' ? error : String(error);
  return text.length > MAX_MESSAGE ? `${text.slice(0, MAX_MESSAGE)}…` : text;
}

function isFatal(error: unknown): boolean {
  return (
    error instanceof FatalError ||
    (typeof error === 'object' && error !== null && (error as { fatal?: unknown }).fatal === true)
  );
}

function backoff(attempt: number, retryAfterSecs?: number): number {
  if (retryAfterSecs !== undefined) return retryAfterSecs * 1000;
  const base = Math.min(10_000, 200 * 2 ** Math.min(attempt, 10));
  return base / 2 + Math.random() * (base / 2);
}

/**
 * Until when a report (or release) is retried: while the lease known when it was first tried
 * holds, and at least a few seconds. Fixed at the first try, so that heartbeats (which go on
 * meanwhile) cannot keep a report that the API keeps refusing retried for ever.
 */
function giveUpTime(run: Run): number {
  return Math.max(run.leaseExpiresAt, Date.now() + 5_000);
}

function retryAfterOf(error: unknown): number | undefined {
  return error instanceof ConveyorError ? error.retryAfter : undefined;
}

/**
 * A worker serving job kinds with TypeScript handlers.
 *
 * ```ts
 * const worker = new Worker('http://127.0.0.1:8080', process.env.CONVEYOR_TOKEN!, { concurrency: 4 });
 * worker.handle('report.monthly', async (job) => {
 *   await job.progress(1, 2, 'fetched');
 *   return { url: `/reports/${job.payload.month}.csv` };
 * }, { schema: { type: 'object', required: ['month'] } });
 * await worker.run(); // until SIGTERM / SIGINT / worker.close()
 * ```
 */
export class Worker {
  /** The protocol's calls, as this worker makes them. */
  readonly api: WorkerApi;
  readonly name: string;
  private readonly concurrency: number;
  private readonly waitMs: number;
  private readonly shutdownGraceMs: number;
  private readonly handleSignals: boolean;
  private readonly logger: WorkerLogger | null;
  private readonly handlers = new Map<string, Registration>();
  private readonly runs = new Set<Run>();
  private readonly stopController = new AbortController();
  private slotWaiters: Array<() => void> = [];
  private started: Promise<void> | undefined;
  private loopDone: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;
  private failure: unknown;
  private graceCut: (() => void) | undefined;
  private graceSkipped = false;
  private signalsSeen = 0;
  private readonly onSignal = (signal: NodeJS.Signals): void => {
    if (this.signalsSeen++ === 0) {
      this.logger?.warn(`${signal}: shutting down (grace ${this.shutdownGraceMs} ms; again to hand running jobs back now)`);
      void this.close();
    } else {
      this.graceSkipped = true;
      this.graceCut?.();
    }
  };
  // Reports waiting to be sent, and whether a flush is under way.
  private pending: Array<{ run: Run; outcome: Outcome; done: () => void }> = [];
  private flushing = false;

  constructor(url: string, token: TokenSource, options: WorkerOptions = {}) {
    this.api = new WorkerApi(url, token, options);
    this.concurrency = Math.max(1, Math.floor(options.concurrency ?? 64));
    this.name = (options.name ?? `${hostname()}-${process.pid}`).slice(0, 128);
    this.waitMs = Math.min(30_000, Math.max(0, options.waitMs ?? 20_000));
    this.shutdownGraceMs = Math.max(0, options.shutdownGraceMs ?? 20_000);
    this.handleSignals = options.handleSignals ?? true;
    this.stopController.signal.addEventListener('abort', () => this.wakeSlotWaiters(), { once: true });
    this.logger =
      options.logger === null
        ? null
        : (options.logger ?? { warn: (m, e) => console.warn(`conveyor worker: ${m}`, ...(e === undefined ? [] : [e])) });
  }

  /** Serves `kind` with `handler`; call before {@link Worker.start} / {@link Worker.run}. */
  handle<P = any, R = unknown>(kind: string, handler: Handler<P, R>, options: HandleOptions = {}): this {
    if (this.started) throw new Error('conveyor worker: handle() must be called before start()');
    if (this.handlers.has(kind)) throw new Error(`conveyor worker: kind ${kind} already has a handler`);
    if (this.handlers.size >= 32) throw new Error('conveyor worker: at most 32 kinds per worker');
    this.handlers.set(kind, { handler: handler as Handler, schema: options.schema ?? null });
    return this;
  }

  /** Jobs running (leased and not yet reported). */
  get active(): number {
    return this.runs.size;
  }

  /**
   * Registers the kinds, then starts leasing in the background; resolves once the kinds are
   * registered (the API accepts them from then on). Rejects if a kind cannot be registered.
   */
  start(): Promise<void> {
    this.started ??= this.begin();
    return this.started;
  }

  /** Starts (if not yet) and resolves after the worker shut down; rejects if it stopped on an error. */
  async run(): Promise<void> {
    await this.start();
    await this.whenStopped();
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * Shuts down: stops leasing, lets running jobs finish within the grace period, then aborts
   * and hands back the others. Resolves when done (pending reports sent).
   */
  async close(): Promise<void> {
    this.stopController.abort();
    await this.whenStopped();
  }

  private async whenStopped(): Promise<void> {
    if (!this.started) return;
    await this.started.catch(() => {});
    this.stopped ??= this.shutdown();
    await this.stopped;
  }

  private async begin(): Promise<void> {
    if (this.handlers.size === 0) throw new Error('conveyor worker: no handler registered (call handle() first)');
    const stop = this.stopController.signal;
    for (const [kind, reg] of this.handlers) {
      for (let attempt = 0; ; attempt++) {
        try {
          await this.api.registerKind(kind, reg.schema, { signal: stop });
          break;
        } catch (e) {
          if (stop.aborted) return; // closed before it started: nothing to run
          if (!isTransient(e)) throw e;
          this.logger?.warn(`registering kind ${kind} failed; retrying`, e);
          await sleep(backoff(attempt, retryAfterOf(e)), stop).catch(() => {});
        }
      }
    }
    if (stop.aborted) return;
    if (this.handleSignals) {
      process.on('SIGTERM', this.onSignal);
      process.on('SIGINT', this.onSignal);
    }
    this.loopDone = this.loop().catch((e: unknown) => {
      this.failure = e;
      this.logger?.warn('leasing stopped on an error; shutting down', e);
      this.stopController.abort();
    });
    // Drains once stopped, whoever stops it (close(), a signal, a leasing error).
    this.stopped = this.shutdown();
  }

  private async shutdown(): Promise<void> {
    const stop = this.stopController.signal;
    if (!stop.aborted) await new Promise<void>((resolve) => stop.addEventListener('abort', () => resolve(), { once: true }));
    await this.loopDone;
    if (this.runs.size > 0) {
      const allDone = Promise.all([...this.runs].map((r) => r.finished)).then(() => true);
      const cut = new Promise<false>((resolve) => {
        const timer = setTimeout(() => resolve(false), this.graceSkipped ? 0 : this.shutdownGraceMs);
        this.graceCut = () => {
          clearTimeout(timer);
          resolve(false);
        };
        void allDone.then(() => clearTimeout(timer));
      });
      if (!(await Promise.race([allDone, cut]))) {
        for (const run of this.runs) this.decide(run, { type: 'release' }, new WorkerShutdownError());
        await Promise.all([...this.runs].map((r) => r.finished));
      }
    }
    if (this.handleSignals) {
      process.off('SIGTERM', this.onSignal);
      process.off('SIGINT', this.onSignal);
    }
  }

  private slotFreed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopController.signal.aborted) return resolve();
      this.slotWaiters.push(resolve);
    });
  }

  private wakeSlotWaiters(): void {
    const waiters = this.slotWaiters;
    this.slotWaiters = [];
    for (const w of waiters) w();
  }

  private async loop(): Promise<void> {
    const kinds = [...this.handlers.keys()];
    const stop = this.stopController.signal;
    let failures = 0;
    while (!stop.aborted) {
      const free = this.concurrency - this.runs.size;
      if (free <= 0) {
        await this.slotFreed();
        continue;
      }
      let jobs: LeasedJob[];
      try {
        jobs = await this.api.lease({ kinds, maxJobs: Math.min(free, MAX_BATCH), waitMs: this.waitMs, worker: this.name, signal: stop });
        failures = 0;
      } catch (e) {
        if (stop.aborted) break;
        if (!isTransient(e)) throw e;
        this.logger?.warn('lease request failed; retrying', e);
        await sleep(backoff(failures++, retryAfterOf(e)), stop).catch(() => {});
        continue;
      }
      for (const job of jobs) {
        if (stop.aborted) {
          // Leased while stopping: hand it straight back.
          const run = new Run(job);
          this.runs.add(run);
          this.decide(run, { type: 'release' });
        } else {
          this.runJob(job);
        }
      }
    }
  }

  private runJob(job: LeasedJob): void {
    const run = new Run(job);
    this.runs.add(run);
    const registration = this.handlers.get(job.kind);
    if (!registration) {
      this.decide(run, { type: 'fail', error: { class: 'fatal', message: `this worker has no handler for kind ${job.kind}` } });
      return;
    }
    const deadline = Date.parse(job.deadline);
    if (!Number.isNaN(deadline)) {
      run.deadlineTimer = setTimeout(
        () =>
          this.decide(
            run,
            { type: 'fail', error: { class: 'timeout', message: `the attempt's deadline (${job.deadline}) passed` } },
            new JobTimeoutError(),
          ),
        Math.min(2 ** 31 - 1, Math.max(0, deadline - Date.now())),
      );
    }
    this.scheduleHeartbeat(run, run.heartbeatMs);
    const context = this.context(run, Number.isNaN(deadline) ? new Date(8.64e15) : new Date(deadline));
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(registration.handler(context));
    } catch (e) {
      result = Promise.reject(e);
    }
    result.then(
      (value) => {
        if (isWaitForChildren(value)) {
          this.decide(run, { type: 'wait' });
          return;
        }
        const v = value === undefined ? null : value;
        try {
          JSON.stringify(v);
        } catch (e) {
          this.decide(run, { type: 'fail', error: { class: 'fatal', message: `the handler's result is not JSON: ${messageOf(e)}` } });
          return;
        }
        this.decide(run, { type: 'complete', result: v });
      },
      (error: unknown) =>
        this.decide(
          run,
          isWaitForChildren(error)
            ? { type: 'wait' }
            : { type: 'fail', error: { class: isFatal(error) ? 'fatal' : 'retryable', message: messageOf(error) } },
        ),
    );
  }

  private context(run: Run, deadline: Date): JobContext {
    const worker = this;
    const job = run.job;
    return {
      id: job.id,
      tenant: job.tenant,
      kind: job.kind,
      payload: job.payload,
      attempt: job.attempt,
      maxAttempts: job.max_attempts,
      deadline,
      upstream: job.upstream,
      signal: run.controller.signal,
      get lease() {
        return run.lease;
      },
      leased: job,
      progress(current: number, total?: number, message?: string): Promise<void> {
        if (run.outcome) return Promise.resolve();
        const report: ProgressReport = { seq: ++run.seq, current };
        if (total !== undefined) report.total = total;
        if (message !== undefined) report.message = message;
        const sent = worker.sendProgress(run, report);
        run.progress.add(sent);
        const forget = (): void => {
          run.progress.delete(sent);
        };
        sent.then(forget, forget);
        return sent;
      },
      submitChildren(jobs: ChildJob[], options: ChildrenOptions = {}): Promise<ChildrenAccepted> {
        return worker.submitChildren(run, jobs, options);
      },
      waitForChildren(): WaitForChildren {
        return WAIT;
      },
    };
  }

  private async submitChildren(run: Run, jobs: ChildJob[], options: ChildrenOptions): Promise<ChildrenAccepted> {
    // A key of its own unless given: a retry of the request then submits the same children.
    const request = { ...options, idempotencyKey: options.idempotencyKey ?? randomUUID() };
    for (let attempt = 0; ; attempt++) {
      if (run.outcome) {
        throw run.controller.signal.aborted
          ? run.controller.signal.reason
          : new Error(`conveyor worker: job ${run.id} already has its outcome; no child can be submitted`);
      }
      try {
        return await this.api.children(run.id, run.lease, jobs, request);
      } catch (e) {
        if (isLeaseLost(e)) {
          const lost = new LeaseLostError(messageOf(e));
          this.decide(run, { type: 'drop', reason: 'lease lost (children)' }, lost);
          throw lost;
        }
        if (!isTransient(e) || attempt >= 4 || options.signal?.aborted) throw e;
        this.logger?.warn(`submitting children of job ${run.id} failed; retrying`, e);
        await sleep(backoff(attempt, retryAfterOf(e)), options.signal);
      }
    }
  }

  private async sendProgress(run: Run, report: ProgressReport): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.api.progress(run.id, run.lease, report);
        return;
      } catch (e) {
        if (isLeaseLost(e)) {
          this.decide(run, { type: 'drop', reason: 'lease lost (progress)' }, new LeaseLostError(messageOf(e)));
          return;
        }
        if (!isTransient(e) || attempt >= 4 || run.outcome?.type === 'drop' || run.outcome?.type === 'release') {
          this.logger?.warn(`progress report of job ${run.id} failed`, e);
          return;
        }
        await sleep(backoff(attempt, retryAfterOf(e)));
      }
    }
  }

  private scheduleHeartbeat(run: Run, delay: number): void {
    if (run.heartbeatsStopped) return;
    run.heartbeatTimer = setTimeout(() => void this.heartbeat(run), delay);
  }

  private async heartbeat(run: Run): Promise<void> {
    if (run.heartbeatsStopped) return;
    let next = run.heartbeatMs;
    const beat = (async () => {
      try {
        const answer = await this.api.heartbeat(run.id, run.lease);
        run.lease = answer.lease;
        const expires = Date.parse(answer.lease_expires_at);
        if (!Number.isNaN(expires)) run.leaseExpiresAt = expires;
        if (answer.cancelled) {
          this.decide(run, { type: 'fail', error: { class: 'cancelled', message: 'cancelled' } }, new JobCancelledError());
        }
      } catch (e) {
        if (isLeaseLost(e)) {
          this.decide(run, { type: 'drop', reason: 'lease lost (heartbeat)' }, new LeaseLostError(messageOf(e)));
          return;
        }
        if (Date.now() >= run.leaseExpiresAt) {
          // No heartbeat went through before the lease ran out: another worker may have the job.
          this.decide(run, { type: 'drop', reason: 'lease expired (no heartbeat went through)' }, new LeaseLostError(messageOf(e)));
          return;
        }
        this.logger?.warn(`heartbeat of job ${run.id} failed; retrying`, e);
        next = Math.max(50, Math.min(run.heartbeatMs, 1_000, run.leaseExpiresAt - Date.now()));
      }
    })();
    run.heartbeatInFlight = beat;
    await beat;
    run.heartbeatInFlight = undefined;
    this.scheduleHeartbeat(run, next);
  }

  private stopHeartbeats(run: Run): void {
    run.heartbeatsStopped = true;
    clearTimeout(run.heartbeatTimer);
  }

  /** Settles the job's outcome (the first decision wins) and reports it. */
  private decide(run: Run, outcome: Outcome, abort?: JobAbortedError): void {
    if (run.outcome) return;
    run.outcome = outcome;
    clearTimeout(run.deadlineTimer);
    if (abort) run.controller.abort(abort);
    if (outcome.type === 'drop') {
      this.stopHeartbeats(run);
      this.logger?.warn(`job ${run.id} dropped: ${outcome.reason}`);
    } else if (outcome.type === 'wait') {
      // The attempt ends waiting: no heartbeat after the wait (one in flight is awaited first).
      this.stopHeartbeats(run);
    }
    void this.settle(run, outcome);
  }

  private async settle(run: Run, outcome: Outcome): Promise<void> {
    try {
      if (outcome.type === 'drop') return;
      if (run.progress.size > 0 && outcome.type !== 'release') await Promise.allSettled([...run.progress]);
      if (outcome.type === 'release') await this.release(run);
      else if (outcome.type === 'wait') await this.suspend(run);
      else await new Promise<void>((done) => this.enqueue(run, outcome, done));
    } catch (e) {
      this.logger?.warn(`reporting job ${run.id} failed`, e);
    } finally {
      this.stopHeartbeats(run);
      this.runs.delete(run);
      run.finish();
      this.wakeSlotWaiters();
    }
  }

  private async release(run: Run): Promise<void> {
    const giveUpAt = giveUpTime(run);
    for (let attempt = 0; ; attempt++) {
      await run.heartbeatInFlight;
      try {
        await this.api.release(run.id, run.lease);
        return;
      } catch (e) {
        if (isLeaseLost(e)) return;
        if (!isTransient(e) || Date.now() > giveUpAt) {
          this.logger?.warn(`releasing job ${run.id} failed (it goes back to the queue when its lease expires)`, e);
          return;
        }
        await sleep(backoff(attempt, retryAfterOf(e)));
      }
    }
  }

  /** Ends the attempt waiting for the job's children (`wait`), retrying while it may help. */
  private async suspend(run: Run): Promise<void> {
    const giveUpAt = giveUpTime(run);
    for (let attempt = 0; ; attempt++) {
      await run.heartbeatInFlight;
      try {
        await this.api.wait(run.id, run.lease);
        return;
      } catch (e) {
        if (isLeaseLost(e)) {
          // A repeated wait (after a try whose answer was lost) answers 200 `waiting_for_children`
          // like the first; older servers answered it 409: the wait was made, nothing to do.
          if (attempt === 0) this.logger?.warn(`job ${run.id}: the lease was lost before its wait for children; dropped`, e);
          return;
        }
        if (isTransient(e) && Date.now() <= giveUpAt) {
          await sleep(backoff(attempt, retryAfterOf(e)));
          continue;
        }
        if (isTransient(e)) {
          this.logger?.warn(`waiting for the children of job ${run.id} failed (it goes back to the queue when its lease expires)`, e);
          return;
        }
        // Refused: the attempt cannot end waiting; fail it (retryable), so the failure shows.
        this.logger?.warn(`waiting for the children of job ${run.id} was refused; failing the attempt`, e);
        const fail: Outcome = { type: 'fail', error: { class: 'retryable', message: `the wait for children was refused: ${messageOf(e)}` } };
        await new Promise<void>((done) => this.enqueue(run, fail, done));
        return;
      }
    }
  }

  private enqueue(run: Run, outcome: Outcome, done: () => void): void {
    this.pending.push({ run, outcome, done });
    if (!this.flushing) {
      this.flushing = true;
      // Let the jobs that finish in this turn join the same batch.
      setImmediate(() => void this.flush());
    }
  }

  private async flush(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        const items = this.pending.splice(0);
        const completes = items.filter((i) => i.outcome.type === 'complete');
        const fails = items.filter((i) => i.outcome.type === 'fail');
        const sends: Array<Promise<void>> = [];
        for (let i = 0; i < completes.length; i += MAX_BATCH) sends.push(this.deliver(completes.slice(i, i + MAX_BATCH)));
        for (let i = 0; i < fails.length; i += MAX_BATCH) sends.push(this.deliver(fails.slice(i, i + MAX_BATCH)));
        try {
          await Promise.all(sends);
        } catch (e) {
          this.logger?.warn('reporting outcomes failed', e);
        } finally {
          for (const item of items) item.done();
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Sends reports of one type (all complete, or all fail), retrying while it may help. */
  private async deliver(items: Array<{ run: Run; outcome: Outcome }>): Promise<void> {
    const giveUpAt = new Map(items.map((i) => [i.run, giveUpTime(i.run)]));
    for (let attempt = 0; items.length > 0; attempt++) {
      await Promise.all(items.map((i) => i.run.heartbeatInFlight));
      try {
        if (items.length === 1) await this.deliverOne(items[0]!.run, items[0]!.outcome);
        else await this.deliverMany(items);
        return;
      } catch (e) {
        if (!isTransient(e)) {
          if (items.length > 1) {
            // The batch as a whole was refused (too large, say): each on its own.
            this.logger?.warn('a batch report was refused; sending its reports one by one', e);
            await Promise.all(items.map((i) => this.deliver([i])));
            return;
          }
          const [{ run, outcome }] = items as [{ run: Run; outcome: Outcome }];
          if (outcome.type === 'complete') {
            // The result itself was refused (too large, not acceptable): the attempt cannot succeed.
            this.logger?.warn(`completing job ${run.id} was refused; failing it`, e);
            items = [{ run, outcome: { type: 'fail', error: { class: 'fatal', message: `the result was refused: ${messageOf(e)}` } } }];
            continue;
          }
          this.logger?.warn(`reporting job ${run.id} was refused`, e);
          return;
        }
        // No answer or overload: try again while the leases may still hold.
        items = items.filter((i) => Date.now() < (giveUpAt.get(i.run) ?? 0));
        if (items.length === 0) {
          this.logger?.warn('reports could not be made before their leases expired', e);
          return;
        }
        await sleep(backoff(attempt, retryAfterOf(e)));
      }
    }
  }

  private async deliverOne(run: Run, outcome: Outcome): Promise<void> {
    try {
      if (outcome.type === 'complete') await this.api.complete(run.id, run.lease, outcome.result);
      else if (outcome.type === 'fail') await this.api.fail(run.id, run.lease, outcome.error);
    } catch (e) {
      if (isLeaseLost(e)) {
        this.logger?.warn(`job ${run.id}: the lease was lost before its report; dropped`, e);
        return;
      }
      throw e;
    }
  }

  private async deliverMany(items: Array<{ run: Run; outcome: Outcome }>): Promise<void> {
    let outcomes: ReportOutcome[];
    if (items[0]!.outcome.type === 'complete') {
      outcomes = await this.api.completeMany(
        items.map(({ run, outcome }) => ({ id: run.id, lease: run.lease, result: outcome.type === 'complete' ? outcome.result : null })),
      );
    } else {
      outcomes = await this.api.failMany(
        items.map(({ run, outcome }) => ({
          id: run.id,
          lease: run.lease,
          error: outcome.type === 'fail' ? outcome.error : { class: 'retryable', message: '' },
        })),
      );
    }
    const again: Array<{ run: Run; outcome: Outcome }> = [];
    for (const [i, o] of outcomes.entries()) {
      const item = items[i];
      if (o.status === 'lease_lost') {
        this.logger?.warn(`job ${item?.run.id ?? o.id}: the lease was lost before its report; dropped (${o.detail ?? ''})`);
      } else if (!DONE.includes(o.status) && item) {
        // Refused for a reason of its own (the bus, say): that one again, on its own.
        this.logger?.warn(`job ${o.id}: report not taken in the batch (${o.status}: ${o.detail ?? ''}); retrying it alone`);
        again.push(item);
      }
    }
    await Promise.all(again.map((i) => this.deliver([i])));
  }
}
