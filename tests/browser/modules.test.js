// The dashboard's pure modules, in Node: the SSE parser, Prometheus arithmetic, payload
// validation, the job fold (and why a job waits), and how schedules' timings read.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { interval, relative, timing } from '../../dashboard/dom.js';
import { apply, fromSubmitted, summary, waitingReason } from '../../dashboard/jobfold.js';
import { Window, parse } from '../../dashboard/metrics.js';
import { describe, template, validate } from '../../dashboard/schema.js';
import { read } from '../../dashboard/sse.js';

/** A body that delivers `chunks` one by one, as a network would. */
const body = (chunks) =>
  new ReadableStream({
    start(c) {
      for (const chunk of chunks) c.enqueue(new TextEncoder().encode(chunk));
      c.close();
    },
  });

test('SSE: ids, event names, multi-line data, comments, and lines split across chunks', async () => {
  const events = [];
  await read(
    body([': keep-alive\n\n', 'id: 7\nevent: job.sta', 'rted\ndata: {"a":', '1}\n\r', '\nid: 8\ndata: x\ndata: y\n\n', 'event: resume\ndata: {"last_event_id":"8"}\n\n', 'data: never finished']),
    (e) => events.push(e),
  );
  assert.deepEqual(events, [
    { id: '7', event: 'job.started', data: '{"a":1}' },
    { id: '8', event: undefined, data: 'x\ny' },
    { id: undefined, event: 'resume', data: '{"last_event_id":"8"}' },
  ]);
});

const scrape = (text) => parse(text.trim().replace(/^\s+/gm, ''));

test('metrics: counter rates, resets, and histogram quantiles between two scrapes', () => {
  const before = scrape(`
    # TYPE conveyor_job_attempts_total counter
    conveyor_job_attempts_total{kind="sleep",outcome="succeeded"} 10
    conveyor_job_attempts_total{kind="noop",outcome="succeeded"} 5
    conveyor_job_attempts_total{kind="fail",outcome="failed"} 100
    conveyor_job_latency_seconds_bucket{kind="sleep",le="0.1"} 0
    conveyor_job_latency_seconds_bucket{kind="sleep",le="1"} 0
    conveyor_job_latency_seconds_bucket{kind="sleep",le="+Inf"} 0`);
  const after = scrape(`
    conveyor_job_attempts_total{kind="sleep",outcome="succeeded"} 16
    conveyor_job_attempts_total{kind="noop",outcome="succeeded"} 9
    conveyor_job_attempts_total{kind="fail",outcome="failed"} 3
    conveyor_job_attempts_total{kind="new",outcome="succeeded"} 50
    conveyor_job_latency_seconds_bucket{kind="sleep",le="0.1"} 50
    conveyor_job_latency_seconds_bucket{kind="sleep",le="1"} 100
    conveyor_job_latency_seconds_bucket{kind="sleep",le="+Inf"} 100
    conveyor_jobs_running{kind="sleep"} 2
    conveyor_jobs_running{kind="noop"} 1`);
  const w = new Window(before, after, 2);
  // (6 + 4 + 50) / 2 s: a series new in this scrape counts from zero.
  assert.equal(w.rate('conveyor_job_attempts_total', (l) => l.outcome === 'succeeded'), 30);
  assert.equal(w.rate('conveyor_job_attempts_total', (l) => l.outcome === 'failed'), 1.5, 'a reset counter counts from zero');
  assert.equal(w.quantile('conveyor_job_latency_seconds', 0.5), 0.1);
  assert.ok(Math.abs(w.quantile('conveyor_job_latency_seconds', 0.75) - 0.55) < 1e-9);
  assert.equal(w.quantile('conveyor_job_duration_seconds', 0.5), null, 'no observations');
  assert.equal(w.gauge('conveyor_jobs_running'), 3);
  assert.deepEqual(parse('x{a="q\\"uote"} +Inf')[0], { name: 'x', labels: { a: 'q"uote' }, value: Infinity });
});

const sleep = {
  type: ['object', 'null'],
  properties: {
    ms: { type: 'integer', minimum: 0, maximum: 3600000, description: 'Total time.' },
    steps: { type: 'integer', minimum: 1, default: 1 },
  },
  required: ['ms'],
  additionalProperties: false,
};

test('schema: the checks the submit form shows inline', () => {
  assert.deepEqual(validate(sleep, { ms: 10 }), []);
  assert.deepEqual(validate(sleep, null), []);
  const messages = (v) => validate(sleep, v).map((e) => e.message);
  assert.deepEqual(messages({}), ['payload.ms is required']);
  assert.deepEqual(messages({ ms: 1.5 }), ['payload.ms must be integer, not number']);
  assert.deepEqual(messages({ ms: -1, steps: 0 }), ['payload.ms must be at least 0', 'payload.steps must be at least 1']);
  assert.deepEqual(messages({ ms: 1, bogus: true }), ['payload.bogus is not a known field (known: ms, steps)']);
  assert.deepEqual(messages('x'), ['payload must be object or null, not string']);
  assert.deepEqual(template(sleep), { ms: 0, steps: 1 });
  assert.deepEqual(describe(sleep), ['ms (integer, required): Total time.', 'steps (integer, default 1)']);
});

test('job fold: events change a job as the projector does, in stream order', () => {
  const ce = (type, data, time) => ({ type: `dev.conveyor.job.${type}`, subject: 'j1', jobkind: 'sleep', time, data });
  const job = fromSubmitted(ce('submitted', { max_attempts: 2, payload: { ms: 1 } }, '2026-01-01T00:00:00Z'), 1);
  assert.equal(job.status, 'queued');
  apply(job, ce('started', { attempt: 1 }, '2026-01-01T00:00:01Z'), 2);
  apply(job, ce('progressed', { attempt: 1, current: 1, total: 2 }, '2026-01-01T00:00:02Z'), 3);
  assert.deepEqual([job.status, job.progress.current], ['running', 1]);
  assert.equal(apply(job, ce('started', { attempt: 1 }, '2026-01-01T00:00:01Z'), 2), false, 'an event already folded in');
  // A clock behind the others does not matter: the sequence orders.
  assert.equal(apply(job, ce('progressed', { attempt: 1, current: 2, total: 2 }, '2025-12-31T23:59:59Z'), 4), true);
  assert.equal(job.progress.current, 2);
  apply(job, ce('dead_lettered', { attempt: 1, reason: 'attempts', error: { message: 'x' } }, '2026-01-01T00:00:03Z'), 5);
  assert.equal(job.status, 'failed');
  assert.equal(apply(job, ce('started', { attempt: 2 }, '2026-01-01T00:00:04Z'), 6), false, 'terminal states are sticky');
  apply(job, ce('redriven', { next_attempt: 2, max_attempts: 3 }, '2026-01-01T00:00:05Z'), 7);
  assert.deepEqual([job.status, job.max_attempts, job.error], ['queued', 3, null]);
  // An event of an earlier attempt is folded in (the sequence moves) but changes nothing.
  apply(job, ce('started', { attempt: 2 }, '2026-01-01T00:00:06Z'), 8);
  assert.equal(apply(job, ce('failed', { attempt: 1, error: { message: 'old' } }, '2026-01-01T00:00:07Z'), 9), true);
  assert.deepEqual([job.status, job.attempt, job.error, job.last_seq], ['running', 2, null, 9]);
  // A job read from the API has no sequence: an event older than the read is already in it.
  const read = { ...job, status: 'running', updated_at: '2026-01-01T00:00:10Z', last_seq: undefined };
  assert.equal(apply(read, ce('redriven', { next_attempt: 3, max_attempts: 4 }, '2026-01-01T00:00:09Z'), 10), false, 'an event older than the snapshot');
  assert.equal(apply(read, ce('progressed', { attempt: 2, current: 1 }, '2026-01-01T00:00:11Z'), 11), true);
  assert.equal(read.last_seq, 11);
});

test('job fold: job.waiting says why the attempt to start waits, until it starts or the job ends', () => {
  const ce = (type, data, time) => ({ type: `dev.conveyor.job.${type}`, subject: 'j2', jobkind: 'noop', time, data });
  const job = fromSubmitted(ce('submitted', { max_attempts: 2, priority: 5 }, '2026-01-01T00:00:00Z'), 1);
  assert.equal(job.priority, 5);
  assert.equal(fromSubmitted(ce('submitted', { max_attempts: 1 }, '2026-01-01T00:00:00Z'), 1).priority, 0, 'left out when 0');
  assert.equal(apply(job, ce('waiting', { attempt: 1, reason: 'concurrency_key', key: 'acct-42' }, '2026-01-01T00:00:01Z'), 2), true);
  assert.deepEqual(job.waiting, { attempt: 1, reason: 'concurrency_key', key: 'acct-42', since: '2026-01-01T00:00:01Z' });
  assert.equal(job.status, 'queued', 'waiting never changes the status');
  assert.equal(summary(ce('waiting', job.waiting)), 'attempt 1: concurrency key acct-42 is full');
  apply(job, ce('waiting', { attempt: 1, reason: 'paused' }, '2026-01-01T00:00:02Z'), 3);
  assert.deepEqual(job.waiting, { attempt: 1, reason: 'paused', since: '2026-01-01T00:00:02Z' }, 'the latest reason replaces the one before');
  apply(job, ce('started', { attempt: 1 }, '2026-01-01T00:00:03Z'), 4);
  assert.equal(job.status, 'running');
  assert.equal('waiting' in job, false, 'cleared once the attempt starts');
  // A late word about the running attempt is folded in but changes nothing.
  assert.equal(apply(job, ce('waiting', { attempt: 1, reason: 'tenant_cap' }, '2026-01-01T00:00:04Z'), 5), true);
  assert.equal('waiting' in job, false);
  // The retry waits again, and no longer once the job ends.
  apply(job, ce('retry_scheduled', { next_attempt: 2, delay_ms: 50 }, '2026-01-01T00:00:05Z'), 6);
  apply(job, ce('waiting', { attempt: 2, reason: 'rate_limit', key: 'partner-api' }, '2026-01-01T00:00:06Z'), 7);
  assert.equal(waitingReason(job.waiting), 'rate limit of partner-api reached');
  apply(job, ce('cancelled', { attempt: 1 }, '2026-01-01T00:00:07Z'), 8);
  assert.deepEqual([job.status, 'waiting' in job], ['cancelled', false]);
  assert.deepEqual(
    ['tenant_cap', 'priority', 'tenant_share'].map((reason) => waitingReason({ reason })),
    ['tenant at its cap of running jobs', 'higher-priority jobs go first', "other tenants' turns (fair share)"],
  );
});

test('job fold: workflows: what a job waits for, a batch sealed, a dependent cancelled for its dependency', () => {
  const ce = (type, data, time, subject = 'b1') => ({ type: `dev.conveyor.job.${type}`, subject, jobkind: 'batch', time, data });
  const batch = fromSubmitted(ce('submitted', { max_attempts: 3, is_batch: true }, '2026-01-01T00:00:00Z'), 1);
  assert.deepEqual([batch.is_batch, batch.batch, batch.depends_on], [true, null, null]);
  apply(batch, ce('waiting', { attempt: 1, reason: 'batch' }, '2026-01-01T00:00:01Z'), 2);
  assert.equal(waitingReason(batch.waiting), "its batch's members have not all ended");
  assert.equal(apply(batch, ce('sealed', {}, '2026-01-01T00:00:02Z'), 3), true);
  assert.equal(batch.sealed_at, '2026-01-01T00:00:02Z');
  assert.equal(batch.status, 'queued', 'sealing changes no status');
  assert.equal(summary(ce('sealed', {})), 'batch sealed: no more members');
  const member = fromSubmitted(ce('submitted', { max_attempts: 1, batch: 'b1' }, '2026-01-01T00:00:00Z', 'm1'), 4);
  assert.equal(member.batch, 'b1');
  const dependent = fromSubmitted(ce('submitted', { max_attempts: 1, depends_on: ['a', 'b'] }, '2026-01-01T00:00:00Z', 'd1'), 5);
  assert.deepEqual(dependent.depends_on, ['a', 'b']);
  apply(dependent, ce('waiting', { attempt: 1, reason: 'dependencies' }, '2026-01-01T00:00:01Z', 'd1'), 6);
  assert.equal(waitingReason(dependent.waiting), 'jobs it depends on have not all ended');
  const why = { reason: 'dependency a failed' };
  apply(dependent, ce('cancelled', why, '2026-01-01T00:00:02Z', 'd1'), 7);
  assert.deepEqual([dependent.status, 'waiting' in dependent], ['cancelled', false]);
  assert.equal(summary(ce('cancelled', why)), 'dependency a failed');
});

test('schedules: a timing reads as its cron and time zone, or its interval exactly', () => {
  assert.equal(timing({ cron: '0 30 2 * * *', timezone: 'Europe/Paris' }), '0 30 2 * * * (Europe/Paris)');
  assert.equal(timing({ cron: '*/5 * * * *' }), '*/5 * * * * (UTC)');
  assert.equal(timing({ every_ms: 30_000 }), 'every 30 s');
  assert.equal(timing({ every_ms: 5_400_000 }), 'every 1 h 30 m', 'no rounding: 90 minutes is not "2 h"');
  assert.equal(timing({ every_ms: 86_400_000 + 1500 }), 'every 1 d 1 s 500 ms');
  assert.equal(timing({ every_ms: 366 * 86_400_000 }), 'every 366 d');
  assert.equal(timing({}), '');
  assert.equal(interval(0), '0 ms');
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(relative('2026-01-01T02:05:00Z', now), 'in 2 h 05 m');
  assert.equal(relative('2025-12-31T23:59:57Z', now), '3.0 s ago');
  assert.equal(relative('2026-01-01T00:00:00.400Z', now), 'now');
  assert.equal(relative(undefined, now), '');
});
