// Folds a job's CloudEvents into the job as `GET /v1/jobs/{id}` shows it, by the projector's
// rules (consumers/src/projector/read_models.rs), so live views update rows in place instead of
// refetching them. Events are ordered by their EVENTS stream sequence (the SSE `id`), as the
// projector orders them; clocks of different processes never decide.

import { TERMINAL, eventName } from './dom.js';

/** A job known only from its `job.submitted` event, at stream sequence `seq`. */
export function fromSubmitted(ce, seq) {
  const d = ce.data ?? {};
  return {
    id: ce.subject,
    kind: ce.jobkind,
    status: 'queued',
    attempt: 0,
    max_attempts: d.max_attempts,
    priority: d.priority ?? 0, // left out of job.submitted when 0
    depends_on: d.depends_on ?? null,
    batch: d.batch ?? null,
    is_batch: d.is_batch ?? false,
    parent: d.parent ?? null,
    payload: d.payload ?? {},
    progress: null,
    result: null,
    error: null,
    trace_id: traceId(ce.traceparent),
    created_at: ce.time,
    started_at: null,
    finished_at: null,
    updated_at: ce.time,
    last_seq: seq,
  };
}

export const traceId = (traceparent) => (traceparent ? traceparent.split('-')[1] : null);

/**
 * Applies the CloudEvent at stream sequence `seq` to `job` (changed in place); returns whether
 * it was folded in (false: it already was, or the job is settled). `job.last_seq` is the
 * sequence of the last event folded in. A job read from the API does not say its sequence: until
 * an event is folded in, one older than the read counts as in it already.
 */
export function apply(job, ce, seq) {
  const name = eventName(ce.type).replace(/^job\./, '');
  const d = ce.data ?? {};
  // Terminal states are sticky, except that a re-drive brings a failed job back.
  if (TERMINAL.has(job.status) && !(name === 'redriven' && job.status === 'failed')) return false;
  if (job.last_seq != null) {
    if (seq <= job.last_seq) return false;
  } else if (job.updated_at && Date.parse(ce.time) < Date.parse(job.updated_at)) {
    // A job read from the API does not say its sequence: an event older than the read is in it.
    return false;
  }
  // A stale attempt's event still counts as folded in (it moves `last_seq`), as in the projector.
  switch (name) {
    case 'started':
      if (d.attempt >= job.attempt) {
        Object.assign(job, { attempt: d.attempt, status: 'running', progress: null });
        job.started_at ??= ce.time;
        delete job.waiting;
      }
      break;
    case 'waiting':
      // Only news of the attempt still to start (`attempt` is the latest started), as the projector.
      if (job.status !== 'running' && d.attempt > job.attempt) {
        job.waiting = { ...d, since: ce.time };
      }
      break;
    case 'progressed':
      if (d.attempt >= job.attempt) job.progress = { current: d.current, total: d.total ?? null, message: d.message ?? null };
      break;
    case 'failed':
      if (d.attempt >= job.attempt) job.error = { ...d.error, attempt: d.attempt };
      break;
    case 'retry_scheduled':
      if (d.next_attempt > job.attempt) Object.assign(job, { status: 'retry_scheduled', run_at: d.run_at });
      break;
    case 'succeeded':
      Object.assign(job, { status: 'succeeded', attempt: d.attempt, result: d.result ?? null, error: null, finished_at: ce.time });
      break;
    case 'dead_lettered':
      Object.assign(job, { status: 'failed', attempt: d.attempt, error: { ...d.error, attempt: d.attempt, reason: d.reason }, finished_at: ce.time });
      break;
    case 'cancelled':
      Object.assign(job, { status: 'cancelled', finished_at: ce.time });
      break;
    case 'redriven':
      Object.assign(job, { status: 'queued', max_attempts: d.max_attempts, error: null, progress: null, finished_at: null, run_at: null });
      delete job.waiting;
      break;
    case 'sealed':
      job.sealed_at ??= ce.time;
      break;
    case 'suspended':
      // The attempt under way waits for the job's children; the next one is queued.
      if (d.attempt >= job.attempt && job.status === 'running') {
        Object.assign(job, { status: 'queued', max_attempts: d.max_attempts, progress: null });
      }
      break;
    case 'submitted':
    case 'cancel_requested':
      break; // no change to the job's state
    default:
      return false; // a type this dashboard does not know
  }
  if (TERMINAL.has(job.status)) delete job.waiting; // an ended job waits for nothing
  job.updated_at = ce.time;
  job.last_seq = seq;
  return true;
}

/**
 * Why a job waits, in plain words, from its `waiting` (or a `job.waiting` event's data): the
 * wording of the CLI (src/output.rs).
 */
export function waitingReason(w) {
  switch (w?.reason) {
    case 'concurrency_key':
      return `concurrency key ${w.key ?? ''} is full`;
    case 'rate_limit':
      return `rate limit of ${w.key ?? ''} reached`;
    case 'paused':
      return 'kind paused';
    case 'tenant_cap':
      return 'tenant at its cap of running jobs';
    case 'priority':
      return 'higher-priority jobs go first';
    case 'tenant_share':
      return "other tenants' turns (fair share)";
    case 'dependencies':
      return 'jobs it depends on have not all ended';
    case 'batch':
      return "its batch's members have not all ended";
    case 'children':
      return 'its children have not all ended';
    default:
      return w?.reason ?? ''; // a reason newer than this dashboard
  }
}

/** A one-line summary of an event's data, for timelines and the event tail. */
export function summary(ce) {
  const d = ce.data ?? {};
  switch (eventName(ce.type)) {
    case 'job.submitted':
      return `max ${d.max_attempts} attempts, timeout ${d.timeout_ms} ms${d.run_at ? `, at ${d.run_at}` : ''}`;
    case 'job.started':
      return `attempt ${d.attempt}${d.worker ? ` on ${d.worker}` : ''}`;
    case 'job.progressed':
      return `${d.current}${d.total ? ` / ${d.total}` : ''}${d.message ? `: ${d.message}` : ''}`;
    case 'job.succeeded':
      return `attempt ${d.attempt} in ${d.duration_ms} ms`;
    case 'job.failed':
      return `attempt ${d.attempt}: ${d.error?.message ?? ''}${d.will_retry ? ' (will retry)' : ''}`;
    case 'job.retry_scheduled':
      return `attempt ${d.next_attempt} in ${d.delay_ms} ms`;
    case 'job.dead_lettered':
      return `${d.reason ?? ''}: ${d.error?.message ?? ''}`;
    case 'job.cancel_requested':
      return d.reason ?? '';
    case 'job.cancelled':
      return d.reason ?? (d.attempt ? `during attempt ${d.attempt}` : 'before it started');
    case 'job.sealed':
      return 'batch sealed: no more members';
    case 'job.suspended':
      return `attempt ${d.attempt}: waits for its children, then attempt ${d.next_attempt}`;
    case 'job.redriven':
      return `attempt ${d.next_attempt} of ${d.max_attempts}`;
    case 'job.waiting':
      return `attempt ${d.attempt}: ${waitingReason(d)}`;
    default:
      return '';
  }
}
