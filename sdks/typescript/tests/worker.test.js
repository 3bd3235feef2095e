// HTTP workers against a real conveyor: success, retries, dead letters, cancellation, deadlines,
// large results, progress, payload schemas, stale reports and batched reports.
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import {
  Client,
  ConveyorError,
  FatalError,
  JobCancelledError,
  JobTimeoutError,
  LeaseLostError,
  Worker,
  WorkerApi,
} from '../dist/index.js';
import { Conveyor, deferred, settledTimeline, terminalEvents, types, waitFor } from './helpers/conveyor.js';

let conveyor;
let client;
let workerToken;
const workers = [];
/** What the workers logged, per test. */
let warnings = [];

before(async () => {
  conveyor = await Conveyor.start();
  client = new Client(conveyor.url, conveyor.token());
  workerToken = conveyor.workerToken();
});

afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.close()));
  if (process.env.TEST_LOG) for (const w of warnings) process.stderr.write(`worker: ${w}\n`);
  warnings = [];
});

after(async () => {
  await conveyor?.stop();
});

/** A started worker (closed after the test) serving `handlers` ({kind: handler or [handler, options]}). */
async function startWorker(handlers, options = {}) {
  const logger = { warn: (m, e) => warnings.push(`${m}${e ? `: ${e.message ?? e}` : ''}`) };
  const worker = new Worker(conveyor.url, workerToken, { waitMs: 1_000, handleSignals: false, logger, ...options });
  for (const [kind, h] of Object.entries(handlers)) {
    if (Array.isArray(h)) worker.handle(kind, h[0], h[1]);
    else worker.handle(kind, h);
  }
  workers.push(worker);
  await worker.start();
  return worker;
}

const wait = (id) => client.wait(id, { timeoutMs: 30_000 });

test('success: the handler’s value is the result', async () => {
  await startWorker({ 'sdk.echo': async (job) => ({ echo: job.payload, attempt: job.attempt, kind: job.kind }) });
  const job = await client.submit('sdk.echo', { hello: 'world' });
  const done = await wait(job.id);
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(done.result, { echo: { hello: 'world' }, attempt: 1, kind: 'sdk.echo' });
  const timeline = await client.timeline(job.id);
  assert.deepEqual(types(timeline), ['job.submitted', 'job.started', 'job.succeeded']);
});

test('retry then success: a thrown error fails attempt 1, attempt 2 succeeds', async () => {
  await startWorker({
    'sdk.retry': async (job) => {
      if (job.attempt === 1) throw new Error('first attempt fails');
      return { attempt: job.attempt };
    },
  });
  const job = await client.submit('sdk.retry', {}, { maxAttempts: 3 });
  const done = await wait(job.id);
  assert.equal(done.status, 'succeeded');
  assert.equal(done.attempt, 2);
  assert.deepEqual(done.result, { attempt: 2 });
  const timeline = types(await client.timeline(job.id));
  assert.ok(timeline.includes('job.failed'));
  assert.ok(timeline.includes('job.retry_scheduled'));
  assert.equal(timeline.at(-1), 'job.succeeded');
  const failed = (await client.timeline(job.id)).find((e) => e.type.endsWith('job.failed'));
  assert.match(JSON.stringify(failed.data), /first attempt fails/);
});

test('dead letter: a FatalError dead-letters at once', async () => {
  let calls = 0;
  await startWorker({
    'sdk.fatal': async () => {
      calls++;
      throw new FatalError('cannot ever work');
    },
  });
  const job = await client.submit('sdk.fatal', {}, { maxAttempts: 5 });
  const done = await wait(job.id);
  assert.equal(done.status, 'failed');
  assert.equal(done.attempt, 1);
  assert.equal(calls, 1);
  assert.match(JSON.stringify(done.error), /cannot ever work/);
  const timeline = await settledTimeline(client, job.id);
  assert.equal(types(timeline).at(-1), 'job.dead_lettered');
  assert.equal(terminalEvents(timeline).length, 1);
});

test('dead letter: attempts exhausted', async () => {
  await startWorker({
    'sdk.always': async (job) => {
      throw new Error(`attempt ${job.attempt} failed`);
    },
  });
  const job = await client.submit('sdk.always', {}, { maxAttempts: 2 });
  const done = await wait(job.id);
  assert.equal(done.status, 'failed');
  assert.equal(done.attempt, 2);
  const timeline = types(await client.timeline(job.id));
  assert.equal(timeline.filter((t) => t === 'job.failed').length, 2);
  assert.equal(timeline.at(-1), 'job.dead_lettered');
});

test('cancel while running: the handler’s signal aborts and the job ends cancelled', async () => {
  const started = deferred();
  const aborted = deferred();
  await startWorker({
    'sdk.cancel': (job) =>
      new Promise((resolve) => {
        started.resolve(job.id);
        const fallback = setTimeout(() => resolve({ finished: 'not cancelled' }), 30_000);
        job.signal.addEventListener('abort', () => {
          clearTimeout(fallback);
          aborted.resolve(job.signal.reason);
          resolve({ ignored: true });
        });
      }),
  });
  const job = await client.submit('sdk.cancel', {});
  assert.equal(await started.promise, job.id);
  await client.cancel(job.id);
  const reason = await aborted.promise;
  assert.ok(reason instanceof JobCancelledError);
  assert.equal(reason.reason, 'cancelled');
  const done = await wait(job.id);
  assert.equal(done.status, 'cancelled');
  const timeline = await settledTimeline(client, job.id);
  assert.equal(terminalEvents(timeline).length, 1);
  assert.equal(types(timeline).at(-1), 'job.cancelled');
});

test('deadline: the signal aborts with a timeout, and the attempt fails as timed out', async () => {
  const aborted = deferred();
  await startWorker({
    'sdk.slow': (job) =>
      new Promise((_, reject) => {
        job.signal.addEventListener('abort', () => {
          aborted.resolve(job.signal.reason);
          reject(job.signal.reason);
        });
      }),
  });
  const job = await client.submit('sdk.slow', {}, { timeoutMs: 500, maxAttempts: 1 });
  const reason = await aborted.promise;
  assert.ok(reason instanceof JobTimeoutError);
  const done = await wait(job.id);
  assert.equal(done.status, 'failed');
  assert.match(JSON.stringify(done.error), /timeout|timed out|deadline/i);
});

test('heartbeats keep the lease of a job that runs longer than the ack wait', async () => {
  let runs = 0;
  await startWorker({
    'sdk.long': async (job) => {
      runs++;
      // Longer than CONVEYOR_ACK_WAIT_MS (2 s): without heartbeats the job would go to another worker.
      await new Promise((r) => setTimeout(r, 4_500));
      return { attempt: job.attempt };
    },
  });
  const job = await client.submit('sdk.long', {});
  const done = await wait(job.id);
  assert.equal(done.status, 'succeeded');
  assert.equal(runs, 1);
  const timeline = types(await client.timeline(job.id));
  assert.equal(timeline.filter((t) => t === 'job.started').length, 1);
});

test('a large result (> 16 KiB) is kept whole: GET /v1/jobs/{id}/result', async () => {
  const big = { rows: Array.from({ length: 2_000 }, (_, i) => ({ i, text: `row ${i} of the large result` })) };
  assert.ok(JSON.stringify(big).length > 16 * 1024);
  await startWorker({ 'sdk.large': async () => big });
  const job = await client.submit('sdk.large', {});
  const done = await wait(job.id);
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(await client.result(job.id), big);
});

test('progress reports appear in the timeline as job.progressed, in order', async () => {
  await startWorker({
    'sdk.progress': async (job) => {
      for (let i = 1; i <= 3; i++) await job.progress(i, 3, `step ${i}`);
      void job.progress(4, 4, 'not awaited'); // still reported before the outcome
      return 'ok';
    },
  });
  const job = await client.submit('sdk.progress', {});
  assert.equal((await wait(job.id)).status, 'succeeded');
  const timeline = await client.timeline(job.id);
  const progressed = timeline.filter((e) => e.type.endsWith('job.progressed'));
  assert.equal(progressed.length, 4);
  assert.deepEqual(
    progressed.map((e) => [e.data.current, e.data.total, e.data.message]),
    [
      [1, 3, 'step 1'],
      [2, 3, 'step 2'],
      [3, 3, 'step 3'],
      [4, 4, 'not awaited'],
    ],
  );
  assert.equal(types(timeline).at(-1), 'job.succeeded');
});

test('payload schema: a submission that violates the handler’s schema is refused with 422', async () => {
  const schema = {
    type: 'object',
    required: ['month'],
    properties: { month: { type: 'string', pattern: '^\\d{4}-\\d{2}$' } },
  };
  await startWorker({ 'sdk.schema': [async (job) => ({ month: job.payload.month }), { schema }] });
  await assert.rejects(client.submit('sdk.schema', { month: 10 }), (e) => {
    assert.ok(e instanceof ConveyorError);
    assert.equal(e.status, 422);
    return true;
  });
  await assert.rejects(client.submit('sdk.schema', {}), (e) => e instanceof ConveyorError && e.status === 422);
  const kinds = await client.kinds();
  assert.deepEqual(kinds.find((k) => k.kind === 'sdk.schema')?.schema, schema);
  const job = await client.submit('sdk.schema', { month: '2026-10' });
  assert.deepEqual((await wait(job.id)).result, { month: '2026-10' });
});

test('a stale completion adds nothing: 409 after the lease expired and another worker completed', async () => {
  const api = new WorkerApi(conveyor.url, workerToken);
  await api.registerKind('sdk.stale', null);
  const job = await client.submit('sdk.stale', { n: 1 });
  const [leased] = await waitFor(async () => {
    const jobs = await api.lease({ kinds: ['sdk.stale'], maxJobs: 1, waitMs: 2_000, worker: 'raw' });
    return jobs.length ? jobs : undefined;
  });
  assert.equal(leased.id, job.id);
  assert.ok(leased.lease && leased.heartbeat_ms > 0);
  // No heartbeat: the lease expires (~2 s) and the job goes to the next worker.
  await startWorker({ 'sdk.stale': async () => ({ by: 'second worker' }) });
  const done = await wait(job.id);
  assert.deepEqual(done.result, { by: 'second worker' });
  await assert.rejects(api.complete(job.id, leased.lease, { by: 'stale' }), (e) => {
    assert.ok(e instanceof ConveyorError);
    assert.equal(e.status, 409);
    return true;
  });
  await assert.rejects(api.fail(job.id, leased.lease, { message: 'late', class: 'retryable' }), (e) => e.status === 409);
  const timeline = await settledTimeline(client, job.id);
  assert.equal(terminalEvents(timeline).length, 1);
  assert.deepEqual((await client.get(job.id)).result, { by: 'second worker' });
});

test('outcomes ready together are reported in one batch request', async () => {
  const requests = [];
  const tracingFetch = (url, init) => {
    requests.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
    return fetch(url, init);
  };
  const gate = deferred();
  let running = 0;
  await startWorker(
    {
      'sdk.gate': async (job) => {
        running++;
        await gate.promise;
        if (job.payload.fail) throw new Error('failing together');
        return { i: job.payload.i };
      },
    },
    { concurrency: 8, fetch: tracingFetch },
  );
  const jobs = [];
  for (let i = 0; i < 6; i++) jobs.push(await client.submit('sdk.gate', { i, fail: i >= 4 }, { maxAttempts: 1 }));
  await waitFor(() => running === 6, { what: 'six jobs running at once' });
  gate.resolve();
  for (const job of jobs) {
    const done = await wait(job.id);
    assert.equal(done.status, job === jobs[4] || job === jobs[5] ? 'failed' : 'succeeded');
  }
  assert.ok(requests.includes('POST /v1/workers/complete'), `batch complete used: ${requests.join(', ')}`);
  assert.ok(requests.includes('POST /v1/workers/fail'), `batch fail used: ${requests.join(', ')}`);
});

test('concurrency bounds the jobs running at once', async () => {
  let running = 0;
  let most = 0;
  await startWorker(
    {
      'sdk.bounded': async () => {
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 100));
        running--;
      },
    },
    { concurrency: 2 },
  );
  const jobs = await client.submitBatch(Array.from({ length: 6 }, () => ({ kind: 'sdk.bounded' })));
  for (const item of jobs.items) assert.equal((await wait(item.job.id)).status, 'succeeded');
  assert.ok(most <= 2, `at most 2 at once (saw ${most})`);
});

test('a lost lease aborts the handler with LeaseLostError and drops the job, which runs again', async () => {
  let blockHeartbeats = true;
  const requests = [];
  const flakyFetch = (url, init) => {
    const path = new URL(url).pathname;
    requests.push(path);
    if (blockHeartbeats && path.endsWith('/heartbeat')) return Promise.reject(new TypeError('fetch failed (cut by the test)'));
    return fetch(url, init);
  };
  const reasons = [];
  let runs = 0;
  await startWorker(
    {
      'sdk.lost': (job) => {
        const run = ++runs;
        if (run > 1) return { run, attempt: job.attempt };
        return new Promise((_, reject) => {
          job.signal.addEventListener('abort', () => {
            reasons.push(job.signal.reason);
            blockHeartbeats = false;
            reject(new Error('gave up'));
          });
        });
      },
    },
    { fetch: flakyFetch },
  );
  const job = await client.submit('sdk.lost', {});
  const done = await wait(job.id);
  assert.equal(reasons.length, 1);
  assert.ok(reasons[0] instanceof LeaseLostError, `aborted with ${reasons[0]}`);
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(done.result, { run: 2, attempt: 1 });
  // The first run's outcome was never reported: dropped, not failed.
  assert.equal(requests.filter((p) => p === `/v1/workers/jobs/${job.id}/fail`).length, 0);
  assert.ok(warnings.some((w) => w.includes(`job ${job.id} dropped`)), warnings.join('\n'));
  assert.equal(terminalEvents(await settledTimeline(client, job.id)).length, 1);
});

test('a token the API refuses stops the worker: run() rejects with the problem', async () => {
  const bad = new Worker(conveyor.url, 'not-a-token', { handleSignals: false, logger: null });
  bad.handle('sdk.refused', () => null);
  await assert.rejects(bad.run(), (e) => e instanceof ConveyorError && e.status === 401);
  const narrow = new Worker(conveyor.url, conveyor.workerToken({ kinds: ['sdk.other'] }), { handleSignals: false, logger: null });
  narrow.handle('sdk.refused', () => null);
  await assert.rejects(narrow.run(), (e) => e instanceof ConveyorError && e.status === 403);
});

test('close() before any job: run() resolves', async () => {
  const worker = await startWorker({ 'sdk.idle': () => null });
  const running = worker.run();
  await worker.close();
  await running;
  assert.equal(worker.active, 0);
});
