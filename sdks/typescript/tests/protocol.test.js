// The worker protocol call by call (WorkerApi), against a real conveyor: what docs/workers.md
// promises.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, ConveyorError, isLeaseLost, WorkerApi } from '../dist/index.js';
import { Conveyor, settledTimeline, terminalEvents, types, waitFor } from './helpers/conveyor.js';

let conveyor;
let client;
let api;
let kindNo = 0;

before(async () => {
  conveyor = await Conveyor.start();
  client = new Client(conveyor.url, conveyor.token());
  api = new WorkerApi(conveyor.url, conveyor.workerToken());
});

after(async () => {
  await conveyor?.stop();
});

/** A fresh kind (registered), one job of it submitted and leased. */
async function leasedJob(submit = {}) {
  const kind = `sdk.proto${++kindNo}`;
  await api.registerKind(kind, null);
  const job = await client.submit(kind, { n: kindNo }, submit);
  const [leased] = await waitFor(async () => {
    const jobs = await api.lease({ kinds: [kind], maxJobs: 1, waitMs: 2_000, worker: 'protocol-test' });
    return jobs.length ? jobs : undefined;
  });
  assert.equal(leased.id, job.id);
  return { kind, job, leased };
}

const is409 = (e) => e instanceof ConveyorError && e.status === 409 && isLeaseLost(e);

test('lease: the job, its attempt, deadline, lease and heartbeat interval; the worker name in job.started', async () => {
  const { job, leased } = await leasedJob({ maxAttempts: 4, timeoutMs: 60_000 });
  assert.equal(leased.tenant, 'acme');
  assert.deepEqual(leased.payload, { n: kindNo });
  assert.equal(leased.attempt, 1);
  assert.equal(leased.max_attempts, 4);
  assert.ok(Date.parse(leased.deadline) > Date.now());
  assert.ok(Date.parse(leased.lease_expires_at) > Date.now());
  assert.ok(leased.heartbeat_ms > 0 && typeof leased.lease === 'string');
  await api.complete(leased.id, leased.lease, null);
  const started = (await settledTimeline(client, job.id)).find((e) => e.type.endsWith('job.started'));
  assert.equal(started.data.worker, 'protocol-test');
});

test('lease with wait_ms 0 answers at once with no job', async () => {
  await api.registerKind('sdk.empty', null);
  assert.deepEqual(await api.lease({ kinds: ['sdk.empty'], waitMs: 0 }), []);
});

test('heartbeat extends the lease with a new token; the older token still reports', async () => {
  const { job, leased } = await leasedJob();
  const beat = await api.heartbeat(leased.id, leased.lease);
  assert.equal(beat.cancelled, false);
  assert.notEqual(beat.lease, leased.lease);
  assert.ok(Date.parse(beat.lease_expires_at) >= Date.parse(leased.lease_expires_at));
  const outcome = await api.complete(job.id, leased.lease, { old: 'token' });
  assert.deepEqual(outcome, { id: job.id, status: 'succeeded' });
});

test('progress: the same seq twice is stored once', async () => {
  const { job, leased } = await leasedJob();
  await api.progress(job.id, leased.lease, { seq: 1, current: 1, total: 2, message: 'one' });
  await api.progress(job.id, leased.lease, { seq: 1, current: 1, total: 2, message: 'one' });
  await api.progress(job.id, leased.lease, { seq: 2, current: 2, total: 2 });
  await api.complete(job.id, leased.lease, 'done');
  const timeline = await settledTimeline(client, job.id);
  assert.deepEqual(types(timeline), ['job.submitted', 'job.started', 'job.progressed', 'job.progressed', 'job.succeeded']);
});

test('release hands the job back at once: the next lease gets the same attempt', async () => {
  const { kind, job, leased } = await leasedJob();
  assert.deepEqual(await api.release(job.id, leased.lease), { id: job.id, status: 'released' });
  const [again] = await api.lease({ kinds: [kind], maxJobs: 1, waitMs: 5_000 });
  assert.equal(again.id, job.id);
  assert.equal(again.attempt, 1);
  await api.complete(again.id, again.lease, 'second lease');
  assert.equal((await client.wait(job.id, { timeoutMs: 30_000 })).result, 'second lease');
});

test('a cancelled job: the next heartbeat says so; fail with class cancelled ends it cancelled', async () => {
  const { job, leased } = await leasedJob();
  await client.cancel(job.id);
  let lease = leased.lease;
  await waitFor(async () => {
    const beat = await api.heartbeat(job.id, lease);
    lease = beat.lease;
    return beat.cancelled;
  }, { what: 'a heartbeat saying cancelled' });
  assert.deepEqual(await api.fail(job.id, lease, { message: 'stopped', class: 'cancelled' }), { id: job.id, status: 'cancelled' });
  assert.equal((await client.wait(job.id, { timeoutMs: 30_000 })).status, 'cancelled');
});

test('batch reports: one outcome per item, in order; a stale item is lease_lost', async () => {
  const a = await leasedJob();
  const b = await leasedJob();
  const outcomes = await api.completeMany([
    { id: a.job.id, lease: a.leased.lease, result: 'a' },
    { id: b.job.id, lease: b.leased.lease, result: 'b' },
  ]);
  assert.deepEqual(outcomes, [
    { id: a.job.id, status: 'succeeded' },
    { id: b.job.id, status: 'succeeded' },
  ]);
  const again = await api.completeMany([{ id: a.job.id, lease: a.leased.lease, result: 'again' }]);
  assert.equal(again[0].status, 'lease_lost');
  const c = await leasedJob({ maxAttempts: 1 });
  const failed = await api.failMany([{ id: c.job.id, lease: c.leased.lease, error: { message: 'no', class: 'fatal' } }]);
  assert.deepEqual(failed, [{ id: c.job.id, status: 'dead_lettered' }]);
});

test('refusals: a malformed lease is 400, another job’s lease is 400, a built-in kind is 409', async () => {
  const { job, leased } = await leasedJob();
  await assert.rejects(api.heartbeat(job.id, 'not-a-lease'), (e) => e instanceof ConveyorError && e.status === 400);
  const other = await leasedJob();
  await assert.rejects(api.heartbeat(other.job.id, leased.lease), (e) => e instanceof ConveyorError && [400, 422].includes(e.status));
  await assert.rejects(api.registerKind('noop', null), (e) => e instanceof ConveyorError && e.status === 409);
  await assert.rejects(
    new WorkerApi(conveyor.url, conveyor.token('jobs:read')).lease({ kinds: [other.kind], waitMs: 0 }),
    (e) => e instanceof ConveyorError && e.status === 403,
  );
  await api.complete(job.id, leased.lease, null);
  await api.complete(other.job.id, other.leased.lease, null);
});

test('after an expired lease every call is 409 lease-lost', async () => {
  const { kind, job, leased } = await leasedJob();
  // No heartbeat: the lease runs out (CONVEYOR_ACK_WAIT_MS=2000) and the job goes back to the queue.
  const [again] = await waitFor(async () => {
    const jobs = await api.lease({ kinds: [kind], maxJobs: 1, waitMs: 2_000 });
    return jobs.length ? jobs : undefined;
  }, { what: 'the job leased again' });
  assert.equal(again.id, job.id);
  await assert.rejects(api.heartbeat(job.id, leased.lease), is409);
  await assert.rejects(api.progress(job.id, leased.lease, { seq: 1, current: 1 }), is409);
  await assert.rejects(api.release(job.id, leased.lease), is409);
  await assert.rejects(api.fail(job.id, leased.lease, { message: 'stale', class: 'retryable' }), is409);
  await assert.rejects(api.complete(job.id, leased.lease, 'stale'), is409);
  await api.complete(again.id, again.lease, 'fresh');
  const timeline = await settledTimeline(client, job.id);
  assert.equal(terminalEvents(timeline).length, 1);
  assert.equal((await client.get(job.id)).result, 'fresh');
});

test('a repeated complete with the same lease is 409 and adds nothing', async () => {
  const { job, leased } = await leasedJob();
  await api.complete(job.id, leased.lease, 'first');
  await assert.rejects(api.complete(job.id, leased.lease, 'second'), is409);
  const timeline = await settledTimeline(client, job.id);
  assert.deepEqual(types(timeline), ['job.submitted', 'job.started', 'job.succeeded']);
});

test('after the job ended (same lease), heartbeat, progress, release and fail are 409 and add nothing', async () => {
  const { job, leased } = await leasedJob();
  await api.complete(job.id, leased.lease, 'done');
  const outcomes = {};
  for (const [name, call] of Object.entries({
    heartbeat: () => api.heartbeat(job.id, leased.lease),
    progress: () => api.progress(job.id, leased.lease, { seq: 9, current: 9 }),
    release: () => api.release(job.id, leased.lease),
    fail: () => api.fail(job.id, leased.lease, { message: 'late', class: 'retryable' }),
    failMany: () => api.failMany([{ id: job.id, lease: leased.lease, error: { message: 'late', class: 'retryable' } }]),
  })) {
    outcomes[name] = await call().then(
      (v) => `200 ${JSON.stringify(v)}`,
      (e) => (e instanceof ConveyorError ? `${e.status} ${e.slug}` : String(e)),
    );
  }
  const timeline = await settledTimeline(client, job.id);
  assert.deepEqual(
    { ...outcomes, timeline: types(timeline).join(' ') },
    {
      heartbeat: '409 lease-lost',
      progress: '409 lease-lost',
      release: '409 lease-lost',
      fail: '409 lease-lost',
      failMany: `200 ${JSON.stringify([{ id: job.id, status: 'lease_lost', detail: JSON.parse(outcomes.failMany.slice(4))[0]?.detail }])}`,
      timeline: 'job.submitted job.started job.succeeded',
    },
  );
});

test('after the attempt failed, the same lease cannot complete it or fail it again', async () => {
  const { job, leased } = await leasedJob({ maxAttempts: 3 });
  assert.equal((await api.fail(job.id, leased.lease, { message: 'first', class: 'retryable' })).status, 'retry_scheduled');
  const again = await api.fail(job.id, leased.lease, { message: 'again', class: 'retryable' }).then(
    (v) => `200 ${v.status}`,
    (e) => `${e.status} ${e.slug}`,
  );
  const late = await api.complete(job.id, leased.lease, 'stale attempt').then(
    (v) => `200 ${v.status}`,
    (e) => `${e.status} ${e.slug}`,
  );
  const timeline = await settledTimeline(client, job.id);
  assert.deepEqual(
    { again, late, succeeded: terminalEvents(timeline).length },
    { again: '409 lease-lost', late: '409 lease-lost', succeeded: 0 },
  );
});

test('after the deadline ended the attempt, heartbeat and complete are 409', async () => {
  const { job, leased } = await leasedJob({ timeoutMs: 300, maxAttempts: 1 });
  await waitFor(() => Date.now() > Date.parse(leased.deadline) + 50, { what: 'the deadline to pass' });
  await assert.rejects(api.heartbeat(job.id, leased.lease), is409);
  const late = await api.complete(job.id, leased.lease, 'late').then(
    (v) => `200 ${v.status}`,
    (e) => `${e.status} ${e.slug}`,
  );
  assert.equal(late, '409 lease-lost');
  const done = await client.wait(job.id, { timeoutMs: 30_000 });
  assert.equal(done.status, 'failed');
  assert.equal(done.error.class, 'timeout');
});
