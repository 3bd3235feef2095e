// Scheduling through the client, against a real conveyor: priority, concurrency keys and rate
// limits on submissions and batches (carried by job.submitted, honoured by the scheduler),
// schedules (create, replace, list, get, their ticks' jobs, pause, resume, delete), pausing
// the tenant's own jobs of a kind, and what a held job says about why it waits.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, ConveyorError } from '../dist/index.js';
import { Conveyor, types, waitFor } from './helpers/conveyor.js';

let conveyor;
let client;

before(async () => {
  conveyor = await Conveyor.start();
  client = new Client(conveyor.url, conveyor.token());
});

after(async () => {
  await conveyor?.stop();
});

const SUBMITTED = 'dev.conveyor.job.submitted';

/** The job's timeline once the read model holds its `job.submitted`. */
async function timelineOf(id) {
  return waitFor(
    async () => {
      const timeline = await client.timeline(id);
      return timeline.some((e) => e.type === SUBMITTED) ? timeline : undefined;
    },
    { what: `the job.submitted of ${id}` },
  );
}

/** The `data` of the job's `job.submitted`. */
async function submittedData(id) {
  return (await timelineOf(id)).find((e) => e.type === SUBMITTED).data;
}

/** When the job's event `short` (`job.started`, …) happened, in ms since the epoch. */
function timeOf(timeline, short) {
  const ev = timeline.find((e) => e.type === `dev.conveyor.${short}`);
  assert.ok(ev, `no ${short} in ${JSON.stringify(types(timeline))}`);
  return Date.parse(ev.time);
}

function is422(e) {
  assert.ok(e instanceof ConveyorError, String(e));
  assert.equal(e.status, 422);
  assert.equal(e.slug, 'unprocessable');
  return true;
}

test('priority, concurrency and rate limit are sent as the API names them: job.submitted carries them, the job runs', async () => {
  const job = await client.submit('noop', { echo: 'options' }, {
    priority: 10,
    concurrency: { key: 'account-42', limit: 2 },
    rateLimit: { key: 'partner-api', limit: 50, periodMs: 1000 },
    maxAttempts: 2,
  });
  const data = await submittedData(job.id);
  assert.equal(data.priority, 10);
  assert.deepEqual(data.concurrency, { key: 'account-42', limit: 2 });
  assert.deepEqual(data.rate_limit, { key: 'partner-api', limit: 50, period_ms: 1000 });
  assert.equal(data.max_attempts, 2);
  assert.equal((await client.wait(job.id, { timeoutMs: 30_000 })).status, 'succeeded');
  assert.deepEqual(await client.result(job.id), 'options');

  // The same options on each job of a batch, each its own.
  const batch = await client.submitBatch([
    { kind: 'noop', payload: { echo: 1 }, priority: -5, concurrency: { key: 'account-43', limit: 1 } },
    { kind: 'noop', payload: { echo: 2 }, rateLimit: { key: 'partner-api', limit: 50, periodMs: 2000 } },
    { kind: 'noop', payload: { echo: 3 }, priority: 101 },
  ]);
  assert.deepEqual(
    batch.items.map((i) => i.status),
    [202, 202, 422],
  );
  assert.match(batch.items[2].problem.detail, /priority/);
  const [first, second] = batch.items.map((i) => i.job);
  const firstData = await submittedData(first.id);
  assert.equal(firstData.priority, -5);
  assert.deepEqual(firstData.concurrency, { key: 'account-43', limit: 1 });
  assert.equal(firstData.rate_limit, undefined);
  const secondData = await submittedData(second.id);
  assert.equal(secondData.priority, undefined, 'priority 0 (the default) is left out');
  assert.deepEqual(secondData.rate_limit, { key: 'partner-api', limit: 50, period_ms: 2000 });
  for (const j of [first, second]) assert.equal((await client.wait(j.id, { timeoutMs: 30_000 })).status, 'succeeded');
});

test('bad scheduling options are 422 problems', async () => {
  await assert.rejects(client.submit('noop', {}, { priority: 1000 }), (e) => {
    is422(e);
    assert.match(e.detail, /priority/);
    return true;
  });
  await assert.rejects(client.submit('noop', {}, { concurrency: { key: 'k', limit: 0 } }), (e) => {
    is422(e);
    assert.match(e.detail, /concurrency\.limit/);
    return true;
  });
  await assert.rejects(client.submit('noop', {}, { rateLimit: { key: 'k', limit: 1, periodMs: 0 } }), (e) => {
    is422(e);
    assert.match(e.detail, /rate_limit\.period_ms/);
    return true;
  });
});

test('a concurrency key of limit 1 runs its jobs one at a time', async () => {
  const concurrency = { key: `one-at-a-time-${Date.now()}`, limit: 1 };
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push((await client.submit('sleep', { ms: 150 }, { concurrency })).id);
  const spans = [];
  for (const id of ids) {
    assert.equal((await client.wait(id, { timeoutMs: 30_000 })).status, 'succeeded');
    const timeline = await client.timeline(id);
    spans.push([timeOf(timeline, 'job.started'), timeOf(timeline, 'job.succeeded')]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    assert.ok(spans[i][0] >= spans[i - 1][1], `a job started before the previous one ended: ${JSON.stringify(spans)}`);
  }
});

test('a rate limit of 1 per 400 ms spaces its jobs’ starts by at least 400 ms', async () => {
  const rateLimit = { key: `paced-${Date.now()}`, limit: 1, periodMs: 400 };
  const batch = await client.submitBatch([0, 1, 2].map((i) => ({ kind: 'noop', payload: { echo: i }, rateLimit })));
  assert.deepEqual(
    batch.items.map((i) => i.status),
    [202, 202, 202],
  );
  const starts = [];
  for (const item of batch.items) {
    assert.equal((await client.wait(item.job.id, { timeoutMs: 30_000 })).status, 'succeeded');
    starts.push(timeOf(await client.timeline(item.job.id), 'job.started'));
  }
  starts.sort((a, b) => a - b);
  for (let i = 1; i < starts.length; i++) {
    assert.ok(starts[i] - starts[i - 1] >= 400, `two starts within 400 ms: ${starts.map((s) => new Date(s).toISOString())}`);
  }
});

test('a schedule: created, listed, read; its ticks submit jobs; replaced, paused, resumed, deleted', async () => {
  const id = 'sdk-every-second';
  const rateLimit = { key: 'ticks-rate', limit: 100, periodMs: 1000 };
  const created = await client.createSchedule({
    id,
    kind: 'noop',
    every: '1s',
    payload: { echo: 'tick' },
    catchUp: 'once',
    priority: 7,
    concurrency: { key: 'ticks', limit: 1 },
    rateLimit,
    maxAttempts: 2,
    timeoutMs: 10_000,
  });
  assert.equal(created.created, true, 'a new schedule is 201');
  assert.equal(created.id, id);
  assert.equal(created.kind, 'noop');
  assert.equal(created.every_ms, 1000);
  assert.equal(created.cron, undefined);
  assert.equal(created.catch_up, 'once');
  assert.equal(created.paused, false);
  assert.equal(typeof created.next_run_at, 'string');
  assert.ok(Date.parse(created.created_at) > 0);
  assert.deepEqual(created.job.payload, { echo: 'tick' });
  assert.equal(created.job.priority, 7);
  assert.deepEqual(created.job.concurrency, { key: 'ticks', limit: 1 });
  assert.deepEqual(created.job.rate_limit, { key: 'ticks-rate', limit: 100, period_ms: 1000 });
  assert.equal(created.job.max_attempts, 2);
  assert.equal(created.job.timeout_ms, 10_000);

  assert.ok((await client.schedules()).some((s) => s.id === id && s.every_ms === 1000));
  const got = await client.getSchedule(id);
  assert.equal(got.id, id);
  assert.equal(typeof got.next_run_at, 'string');

  // Its ticks submit jobs, each with the schedule's id and its tick in job.submitted, and the
  // schedule's job options.
  const notFromIt = new Set();
  const fromIt = await waitFor(
    async () => {
      const found = [];
      for (const job of (await client.list({ kind: 'noop', limit: 100 })).items) {
        if (notFromIt.has(job.id)) continue;
        const data = await submittedData(job.id);
        if (data.schedule?.id === id) found.push({ job, data });
        else notFromIt.add(job.id);
      }
      return found.length >= 2 ? found : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 200, what: 'two jobs submitted by the schedule' },
  );
  const ticks = new Set(fromIt.map((f) => f.data.schedule.tick));
  assert.equal(ticks.size, fromIt.length, 'one job per tick');
  for (const { job, data } of fromIt) {
    assert.deepEqual(data.payload, { echo: 'tick' });
    assert.equal(data.priority, 7);
    assert.deepEqual(data.concurrency, { key: 'ticks', limit: 1 });
    assert.deepEqual(data.rate_limit, { key: 'ticks-rate', limit: 100, period_ms: 1000 });
    assert.equal(data.max_attempts, 2);
    assert.equal((await client.wait(job.id, { timeoutMs: 30_000 })).status, 'succeeded');
  }
  const ticked = await client.getSchedule(id);
  assert.equal(typeof ticked.last_run_at, 'string', 'the schedule records its last tick');

  // The same id again replaces it (200), keeping its ticks so far; `every` in ms.
  const replaced = await client.createSchedule({ id, kind: 'noop', every: 1000, payload: { echo: 'tock' } });
  assert.equal(replaced.created, false, 'a replaced schedule is 200');
  assert.equal(replaced.every_ms, 1000);
  assert.equal(replaced.catch_up, 'skip');
  assert.deepEqual(replaced.job.payload, { echo: 'tock' });
  assert.equal(replaced.job.priority, undefined);
  assert.equal(typeof replaced.last_run_at, 'string');

  const paused = await client.pauseSchedule(id);
  assert.equal(paused.paused, true);
  assert.equal(paused.next_run_at, undefined, 'a paused schedule has no next tick');
  assert.equal((await client.getSchedule(id)).paused, true);
  const resumed = await client.resumeSchedule(id);
  assert.equal(resumed.paused, false);
  assert.equal(typeof resumed.next_run_at, 'string');

  await client.deleteSchedule(id);
  await assert.rejects(client.getSchedule(id), (e) => e instanceof ConveyorError && e.status === 404);
  await assert.rejects(client.deleteSchedule(id), (e) => e instanceof ConveyorError && e.status === 404);
  await assert.rejects(client.pauseSchedule(id), (e) => e instanceof ConveyorError && e.status === 404);
  assert.ok(!(await client.schedules()).some((s) => s.id === id));
});

test('a cron schedule in a time zone; bad schedules are 422 problems', async () => {
  const cron = await client.createSchedule({
    id: 'sdk-nightly',
    kind: 'sleep',
    payload: { ms: 1 },
    cron: '0 0 2 * * *',
    timezone: 'Europe/Paris',
  });
  assert.equal(cron.created, true);
  assert.equal(cron.cron, '0 0 2 * * *');
  assert.equal(cron.timezone, 'Europe/Paris');
  assert.equal(cron.every_ms, undefined);
  assert.ok(Date.parse(cron.next_run_at) > Date.now());
  await client.deleteSchedule('sdk-nightly');

  const bad = [
    [{ id: 'sdk-bad', kind: 'noop', every: '10ms' }, /every/],
    [{ id: 'sdk-bad', kind: 'noop', cron: '* * * * *', timezone: 'Mars/Base' }, /time zone/],
    [{ id: 'no spaces', kind: 'noop', every: '1s' }, /`id`/],
    [{ id: 'sdk-bad', kind: 'noop', every: '1s', priority: 1000 }, /priority/],
  ];
  for (const [spec, why] of bad) {
    await assert.rejects(client.createSchedule(spec), (e) => {
      is422(e);
      assert.match(e.detail, why);
      return true;
    });
  }
  assert.ok(!(await client.schedules()).some((s) => s.id === 'sdk-bad'));
});

test('pausing the own jobs of a kind holds them queued while another kind runs; resuming runs them', async () => {
  const paused = await client.pauseKind('noop');
  assert.equal(paused.kind, 'noop');
  assert.equal(paused.tenant, 'acme');
  assert.equal(paused.paused, true);
  assert.equal(paused.by, 'sdk-test');
  assert.ok(Date.parse(paused.since) > 0);
  const pauses = await client.pauses();
  assert.ok(pauses.some((p) => p.kind === 'noop' && p.tenant === 'acme' && p.paused), JSON.stringify(pauses));

  const held = await client.submit('noop', { echo: 'held' });
  const other = await client.submit('sleep', { ms: 1 });
  assert.equal((await client.wait(other.id, { timeoutMs: 30_000 })).status, 'succeeded');
  // The sleep job, submitted after it, has run: the noop job was passed over.
  assert.equal((await client.get(held.id)).status, 'queued');
  // Never started: besides job.submitted, at most the scheduler's word on why it waits.
  assert.deepEqual(types(await timelineOf(held.id)).filter((t) => t !== 'job.waiting'), ['job.submitted']);

  const resumed = await client.resumeKind('noop');
  assert.equal(resumed.paused, false);
  assert.equal(resumed.since, undefined);
  assert.ok(!(await client.pauses()).some((p) => p.kind === 'noop' && p.tenant === 'acme'));
  assert.equal((await client.wait(held.id, { timeoutMs: 30_000 })).status, 'succeeded');
  assert.deepEqual(await client.result(held.id), 'held');

  await assert.rejects(client.pauseKind('Not A Kind'), is422);
});

test('a held job shows its priority and why it waits; queued jobs list in start order; once it runs, waiting is gone', async () => {
  await client.pauseKind('noop');
  let paused = true;
  try {
    // Submitted oldest first: start order is high, high2 (priority 3, oldest first), then low.
    const high = await client.submit('noop', { echo: 'high' }, { priority: 3 });
    const low = await client.submit('noop', { echo: 'low' });
    const high2 = await client.submit('noop', { echo: 'high2' }, { priority: 3 });

    // The scheduler tells a job held by a gate why at once (it tells every second).
    const held = await waitFor(
      async () => {
        const job = await client.get(high.id);
        return job.waiting?.reason === 'paused' ? job : undefined;
      },
      { timeoutMs: 10_000, what: `job ${high.id} to be told it waits for its paused kind` },
    );
    assert.equal(held.status, 'queued', 'waiting never changes the status');
    assert.equal(held.priority, 3);
    assert.equal(held.waiting.attempt, 1);
    assert.equal(held.waiting.key, undefined, 'a key only for concurrency_key and rate_limit');
    assert.ok(Date.parse(held.waiting.since) >= Date.parse(held.created_at), held.waiting.since);
    assert.equal((await client.get(low.id)).priority, 0, 'the default');

    // In the order they will start, one a page to follow the `<priority>:<id>` cursors.
    const mine = new Set([high.id, low.id, high2.id]);
    const order = await waitFor(
      async () => {
        const ids = [];
        for await (const job of client.listAll({ status: 'queued', kind: 'noop', limit: 1 })) if (mine.has(job.id)) ids.push(job.id);
        return ids.length === mine.size ? ids : undefined;
      },
      { what: 'the three queued jobs listed' },
    );
    assert.deepEqual(order, [high.id, high2.id, low.id]);
    const first = await client.list({ status: 'queued', kind: 'noop', limit: 1 });
    assert.match(first.next_cursor, /^-?\d+:[0-9a-f-]{36}$/);

    await client.resumeKind('noop');
    paused = false;
    for (const j of [high, low, high2]) {
      const done = await client.wait(j.id, { timeoutMs: 30_000 });
      assert.equal(done.status, 'succeeded');
      assert.equal('waiting' in done, false, `job ${j.id} still says it waits: ${JSON.stringify(done.waiting)}`);
    }
    assert.equal((await client.get(high.id)).priority, 3, 'kept after it ran');
    assert.ok(types(await client.timeline(high.id)).includes('job.waiting'), 'the timeline keeps the job.waiting');
  } finally {
    if (paused) await client.resumeKind('noop');
  }
});
