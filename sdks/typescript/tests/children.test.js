// Child jobs through the worker and the client, against a real conveyor (docs/workflows.md): a
// handler run by the SDK's worker submits children with a continuation (`then`, a kind the same
// worker serves, told how they ended in `upstream.members`); a handler that waits for its
// children (`return job.waitForChildren()`) frees its slot, and its next attempt is told how
// they ended in `upstream.children`; idempotent repeats (a key given, and the SDK's own key when
// an answer is lost, of children or of a wait); cycles through a parent refused; the raw protocol
// calls; the built-in `fan_out` as a reference, and its limits.
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { Client, ConveyorError, isLeaseLost, LeaseLostError, WaitForChildren, Worker, WorkerApi } from '../dist/index.js';
import { Conveyor, deferred, types, waitFor } from './helpers/conveyor.js';

let conveyor;
let client;
let workerToken;
const workers = [];
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

/** A started worker (closed after the test) serving `handlers` ({kind: handler}). */
async function startWorker(handlers, options = {}) {
  const logger = { warn: (m, e) => warnings.push(`${m}${e ? `: ${e.message ?? e}` : ''}`) };
  const worker = new Worker(conveyor.url, workerToken, { waitMs: 1_000, handleSignals: false, logger, shutdownGraceMs: 2_000, ...options });
  for (const [kind, h] of Object.entries(handlers)) worker.handle(kind, h);
  workers.push(worker);
  await worker.start();
  return worker;
}

/** A `fetch` that records each request (`{at, method, path, body}`) in `calls`. */
function recordingFetch(calls, inner = fetch) {
  return async (url, init = {}) => {
    calls.push({ at: Date.now(), method: init.method, path: new URL(url).pathname, body: init.body });
    return inner(url, init);
  };
}

const wait = (id) => client.wait(id, { timeoutMs: 30_000 });

/** Every child of `id`, across pages of `limit`. */
async function childrenOf(id, options = {}) {
  const all = [];
  for await (const job of client.listAllChildren(id, options)) all.push(job);
  return all;
}

/** When the job's event `short` (`job.succeeded`, …) happened, in ms since the epoch. */
async function timeOf(id, short) {
  const ev = (await client.timeline(id)).find((e) => e.type === `dev.conveyor.${short}`);
  assert.ok(ev, `no ${short} for job ${id}`);
  return Date.parse(ev.time);
}

test('a handler submits 10 children with a continuation the same worker runs: it is told how they ended; the parent lists them', async () => {
  const seen = {};
  await startWorker({
    'ch.parent': async (job) => {
      const children = Array.from({ length: 10 }, (_, i) => ({ kind: 'noop', payload: { echo: i } }));
      const accepted = await job.submitChildren(children, { then: { kind: 'ch.merge', payload: { title: 'ten' } } });
      seen.accepted = accepted;
      // The handler just ends: the continuation carries on.
      return { submitted: accepted.jobs.length };
    },
    'ch.merge': async (job) => {
      seen.merge = job;
      const m = job.upstream?.members;
      assert.ok(m, `the continuation has no upstream.members: ${JSON.stringify(job.upstream)}`);
      return { title: job.payload.title, total: m.total, succeeded: m.succeeded, ids: m.jobs.map((j) => j.id) };
    },
  });

  const parent = await client.submit('ch.parent', {});
  const done = await wait(parent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  assert.deepEqual(done.result, { submitted: 10 });
  assert.equal(done.attempt, 1);
  const { jobs: children, then } = seen.accepted;
  assert.equal(children.length, 10);
  assert.equal(new Set(children).size, 10);
  assert.equal(typeof then, 'string');

  const merged = await wait(then);
  assert.equal(merged.status, 'succeeded', JSON.stringify(merged));
  assert.deepEqual(merged.result, { title: 'ten', total: 10, succeeded: 10, ids: children });
  assert.deepEqual(seen.merge.upstream, {
    members: { total: 10, succeeded: 10, failed: 0, cancelled: 0, jobs: children.map((id) => ({ id, status: 'succeeded' })) },
  });
  // Each child ran with its own payload.
  for (const [i, id] of children.entries()) assert.equal((await client.get(id)).result, i, `child ${i}`);

  // The parent's children: the continuation first (it is submitted first), then the 10 in the
  // order sent, each naming it.
  const listed = await childrenOf(parent.id, { limit: 4 });
  assert.equal(listed.length, 11, JSON.stringify(listed.map((j) => j.id)));
  for (const job of listed) assert.equal(job.parent, parent.id, `job ${job.id} names its parent`);
  assert.deepEqual(
    listed.map((j) => j.id),
    [then, ...children],
    'the continuation, then the children in submission order',
  );
  const continuation = listed[0];
  assert.equal(continuation.kind, 'ch.merge');
  assert.equal(continuation.is_batch, true, 'the continuation is the batch of the children');
  const child = await client.get(children[0]);
  assert.equal(child.parent, parent.id);
  assert.equal(child.batch, then);
  assert.equal(done.parent, undefined, 'a job submitted by a client has no parent');
  assert.deepEqual((await client.getBatch(then)).members.succeeded, 10);
  // Filters and pages.
  const noops = await client.listChildren(parent.id, { status: 'succeeded', limit: 1000 });
  assert.equal(noops.items.length, 11);
  assert.equal(noops.next_cursor, null);
  assert.deepEqual((await client.listChildren(parent.id, { status: 'failed' })).items, []);
  assert.deepEqual((await client.listChildren(children[0])).items, [], 'a child without children of its own');
  await assert.rejects(client.listChildren('0190a5c4-0000-7000-8000-000000000000'), (e) => e instanceof ConveyorError && e.status === 404);
});

test('a handler that waits for its children frees its slot; its next attempt is told how they ended', async () => {
  const runs = [];
  const parentRunning = deferred();
  const otherSubmitted = deferred();
  const calls = [];
  let childIds;
  const worker = await startWorker(
    {
      'ch.waiter': async (job) => {
        runs.push({ attempt: job.attempt, maxAttempts: job.maxAttempts, upstream: job.upstream, at: Date.now() });
        const told = job.upstream?.children;
        if (!told) {
          parentRunning.resolve();
          await otherSubmitted.promise;
          const accepted = await job.submitChildren([
            { kind: 'sleep', payload: { ms: 1500 } },
            { kind: 'sleep', payload: { ms: 1500 } },
            { kind: 'fail', payload: { fatal: true } },
          ]);
          assert.equal(accepted.then, undefined);
          childIds = accepted.jobs;
          return job.waitForChildren();
        }
        return { total: told.total, succeeded: told.succeeded, failed: told.failed, cancelled: told.cancelled, jobs: told.jobs };
      },
      'ch.other': async (job) => ({ other: job.payload.n }),
    },
    { concurrency: 1, fetch: recordingFetch(calls) },
  );

  // One attempt allowed: the wait adds one.
  const parent = await client.submit('ch.waiter', {}, { maxAttempts: 1 });
  await parentRunning.promise;
  // Submitted while the parent holds the only slot; it runs once the parent waits.
  const other = await client.submit('ch.other', { n: 7 });
  otherSubmitted.resolve();

  const waiting = await waitFor(
    async () => {
      const job = await client.get(parent.id);
      return job.waiting?.reason === 'children' ? job : undefined;
    },
    { timeoutMs: 15_000, what: 'the parent to wait for its children' },
  );
  assert.equal(waiting.status, 'queued');
  assert.equal(waiting.attempt, 1);
  assert.equal(waiting.max_attempts, 2, 'a wait is no failure: one more attempt');
  assert.equal(waiting.waiting.attempt, 2);

  // The other kind ran to completion in the freed slot before the children ended.
  const otherDone = await wait(other.id);
  assert.equal(otherDone.status, 'succeeded');
  assert.deepEqual(otherDone.result, { other: 7 });

  const done = await wait(parent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  assert.equal(done.attempt, 2);
  assert.equal(done.max_attempts, 2);
  assert.deepEqual(done.result, {
    total: 3,
    succeeded: 2,
    failed: 1,
    cancelled: 0,
    jobs: childIds.map((id, i) => ({ id, status: i === 2 ? 'failed' : 'succeeded' })),
  });
  const otherEnded = await timeOf(other.id, 'job.succeeded');
  for (const id of childIds.slice(0, 2)) {
    assert.ok(otherEnded < (await timeOf(id, 'job.succeeded')), `the other job ended before child ${id}`);
  }

  // What each attempt was told.
  assert.deepEqual(
    runs.map((r) => [r.attempt, r.maxAttempts]),
    [
      [1, 1],
      [2, 2],
    ],
  );
  assert.equal(runs[0].upstream, undefined);
  assert.deepEqual(Object.keys(runs[1].upstream), ['children']);

  // The timeline: suspended, held for its children, started again; no failure reported.
  const timeline = await client.timeline(parent.id);
  const kinds = types(timeline);
  assert.ok(kinds.includes('job.suspended'), kinds.join(' '));
  assert.ok(!kinds.includes('job.failed'), kinds.join(' '));
  assert.equal(kinds.filter((t) => t === 'job.started').length, 2);
  assert.equal(kinds.filter((t) => t === 'job.succeeded').length, 1);
  const suspended = timeline.find((e) => e.type === 'dev.conveyor.job.suspended');
  assert.deepEqual(suspended.data, { attempt: 1, next_attempt: 2, max_attempts: 2 });
  assert.ok(kinds.indexOf('job.suspended') < kinds.lastIndexOf('job.started'));

  // The worker reported the wait, and nothing else, for attempt 1; no heartbeat of the parent
  // between the wait and its next attempt.
  const forParent = calls.filter((c) => c.path.startsWith(`/v1/workers/jobs/${parent.id}/`));
  const waitCall = forParent.find((c) => c.path.endsWith('/wait'));
  assert.ok(waitCall, forParent.map((c) => c.path).join(' '));
  const between = forParent.filter((c) => c.at > waitCall.at && c.at < runs[1].at).map((c) => c.path.split('/').pop());
  assert.deepEqual(between, [], 'nothing sent for the parent while it waited');
  assert.deepEqual(
    forParent.filter((c) => !c.path.endsWith('/heartbeat')).map((c) => c.path.split('/').pop()),
    ['children', 'wait', 'complete'],
  );
  assert.equal(worker.active, 0);
  assert.deepEqual(warnings, []);

  // Its children, each naming it; the failed one by status.
  const listed = await childrenOf(parent.id);
  assert.deepEqual(listed.map((j) => j.id), childIds);
  assert.ok(listed.every((j) => j.parent === parent.id));
  assert.deepEqual(
    (await client.listChildren(parent.id, { status: 'failed' })).items.map((j) => [j.id, j.kind]),
    [[childIds[2], 'fail']],
  );
});

test('children submitted again with the same key are the same; another page under it is a conflict, not a lost lease', async () => {
  const seen = {};
  await startWorker({
    'ch.twice': async (job) => {
      const kids = [1, 2, 3].map((n) => ({ kind: 'noop', payload: { echo: n } }));
      seen.first = await job.submitChildren(kids, { idempotencyKey: 'page-1' });
      seen.again = await job.submitChildren(kids, { idempotencyKey: 'page-1' });
      try {
        await job.submitChildren(kids.slice(1), { idempotencyKey: 'page-1' });
      } catch (e) {
        seen.conflict = e;
      }
      seen.aborted = job.signal.aborted;
      // No key: new children.
      seen.more = await job.submitChildren([{ kind: 'noop', payload: { echo: 4 } }]);
      return 'done';
    },
  });
  const parent = await client.submit('ch.twice', {});
  const done = await wait(parent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify({ done, warnings }));
  assert.deepEqual(seen.again, seen.first, 'the same ids');
  assert.equal(seen.first.jobs.length, 3);
  assert.ok(seen.conflict instanceof ConveyorError, String(seen.conflict));
  assert.equal(seen.conflict.status, 409);
  assert.equal(seen.conflict.slug, 'conflict');
  assert.ok(!(seen.conflict instanceof LeaseLostError));
  assert.equal(seen.aborted, false, 'a key conflict leaves the job running');
  assert.equal(seen.more.jobs.length, 1);
  assert.ok(!seen.first.jobs.includes(seen.more.jobs[0]));

  // Stored once.
  const listed = await childrenOf(parent.id);
  assert.deepEqual(
    listed.map((j) => j.id),
    [...seen.first.jobs, ...seen.more.jobs],
  );
});

test('an answer lost on the way back: the worker submits the children again under its own key, and they are stored once', async () => {
  let dropped = 0;
  const calls = [];
  const lossy = async (url, init = {}) => {
    const res = await fetch(url, init);
    if (new URL(url).pathname.endsWith('/children') && dropped++ === 0) {
      await res.text();
      throw new TypeError('fetch failed: the answer was lost');
    }
    return res;
  };
  let accepted;
  await startWorker(
    {
      'ch.lossy': async (job) => {
        accepted = await job.submitChildren(
          [
            { kind: 'noop', payload: { echo: 'a' } },
            { kind: 'noop', payload: { echo: 'b' } },
          ],
          { then: { kind: 'noop', payload: { echo: 'then' } } },
        );
        return accepted;
      },
    },
    { fetch: recordingFetch(calls, lossy) },
  );
  const parent = await client.submit('ch.lossy', {});
  const done = await wait(parent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify({ done, warnings }));
  assert.equal(dropped, 2, 'the first answer was lost, the second came');
  const sent = calls.filter((c) => c.path.endsWith('/children'));
  assert.equal(sent.length, 2);
  assert.equal(sent[0].body, sent[1].body);
  const listed = await childrenOf(parent.id);
  // Each child once; under the worker's key, the continuation first, then the children as sent.
  assert.deepEqual(
    listed.map((j) => j.id),
    [accepted.then, ...accepted.jobs],
  );
  assert.equal((await wait(accepted.then)).status, 'succeeded');
});

test('an answer to the wait lost on the way back: the worker waits again, answered the same, and the job resumes', async () => {
  const answers = [];
  const lossy = async (url, init = {}) => {
    const res = await fetch(url, init);
    if (new URL(url).pathname.endsWith('/wait')) {
      answers.push({ status: res.status, body: init.body });
      if (answers.length === 1) {
        await res.text();
        throw new TypeError('fetch failed: the answer was lost');
      }
    }
    return res;
  };
  const attempts = [];
  const worker = await startWorker(
    {
      'ch.lostwait': async (job) => {
        attempts.push(job.attempt);
        if (job.upstream?.children) return { told: job.upstream.children.succeeded };
        await job.submitChildren([{ kind: 'noop', payload: { echo: 1 } }]);
        return job.waitForChildren();
      },
    },
    { fetch: lossy },
  );
  const parent = await client.submit('ch.lostwait', {});
  const done = await wait(parent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify({ done, warnings }));
  assert.deepEqual(done.result, { told: 1 });
  assert.deepEqual(attempts, [1, 2]);
  // The wait was made by the first request: the job may resume (and end) before the worker's
  // backoff sends it again, with the same lease, answered as the first was.
  await waitFor(async () => answers.length === 2 && worker.active === 0, { what: 'the wait sent again' });
  assert.deepEqual(
    answers.map((a) => a.status),
    [200, 200],
  );
  assert.equal(answers[0].body, answers[1].body, 'with the same lease');
  assert.deepEqual(warnings, [], 'the repeat was answered as the first: nothing to warn of');
  const kinds = types(await client.timeline(parent.id));
  assert.equal(kinds.filter((t) => t === 'job.suspended').length, 1, 'one wait');
  assert.ok(!kinds.includes('job.failed'), kinds.join(' '));
});

test('a child cannot depend on its parent, nor on a job that waits for the parent: 422', async () => {
  const seen = {};
  await startWorker({
    'ch.cycle': async (job) => {
      const refusal = async (dependsOn) => {
        try {
          return { accepted: await job.submitChildren([{ kind: 'noop', payload: {}, dependsOn }]) };
        } catch (e) {
          return e;
        }
      };
      seen.onParent = await refusal([job.id]);
      // A job that waits for the parent, submitted while it runs.
      seen.dependent = await client.submit('noop', { echo: 'after' }, { dependsOn: [job.id] });
      // The check sees what the read model shows: once it holds the job that waits.
      await waitFor(
        async () => (await client.get(seen.dependent.id)).waiting?.reason === 'dependencies',
        { what: 'the dependent held for its dependencies' },
      );
      seen.onDependent = await refusal([seen.dependent.id]);
      seen.aborted = job.signal.aborted;
      return 'ok';
    },
  });
  const parent = await client.submit('ch.cycle', {});
  const done = await wait(parent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify({ done, warnings }));
  for (const name of ['onParent', 'onDependent']) {
    const e = seen[name];
    assert.ok(e instanceof ConveyorError, `${name}: ${JSON.stringify(e)}`);
    assert.equal(e.status, 422, `${name}: ${e.detail}`);
    assert.match(e.detail, /^jobs\[0\]: /, name);
    assert.equal(isLeaseLost(e), false);
  }
  assert.equal(seen.aborted, false, 'a refused child leaves the job running');
  assert.deepEqual(await childrenOf(parent.id), [], 'no child was submitted');
  assert.equal((await wait(seen.dependent.id)).status, 'succeeded');
});

test('the raw protocol: children and wait, then the lease is gone', async () => {
  const api = new WorkerApi(conveyor.url, workerToken);
  await api.registerKind('ch.raw');
  const job = await client.submit('ch.raw', { n: 1 });
  const [leased] = await api.lease({ kinds: ['ch.raw'], waitMs: 5_000 });
  assert.equal(leased.id, job.id);
  const kids = [{ kind: 'noop', payload: { echo: 1 } }];
  const first = await api.children(leased.id, leased.lease, kids, { idempotencyKey: 'raw' });
  assert.deepEqual(await api.children(leased.id, leased.lease, kids, { idempotencyKey: 'raw' }), first);
  await assert.rejects(api.children(leased.id, leased.lease, [{ kind: 'no.such.kind' }]), (e) => {
    assert.ok(e instanceof ConveyorError);
    assert.equal(e.status, 422);
    assert.match(e.detail, /^jobs\[0\]: /);
    return true;
  });
  await assert.rejects(api.children(leased.id, leased.lease, []), (e) => e instanceof ConveyorError && e.status === 400);
  await assert.rejects(api.children(leased.id, leased.lease, [{ kind: 'noop' }], { idempotencyKey: 'raw' }), (e) => {
    assert.equal(e.status, 409);
    assert.equal(isLeaseLost(e), false, 'a key reused with other children is no lost lease');
    return true;
  });

  assert.deepEqual(await api.wait(leased.id, leased.lease), { id: job.id, status: 'waiting_for_children' });
  // A repeat with the same lease (an answer lost on its way back) is answered as the first.
  assert.deepEqual(await api.wait(leased.id, leased.lease), { id: job.id, status: 'waiting_for_children' });
  await assert.rejects(api.heartbeat(leased.id, leased.lease), (e) => isLeaseLost(e));
  await assert.rejects(api.children(leased.id, leased.lease, kids), (e) => {
    assert.ok(isLeaseLost(e));
    assert.equal(e.slug, 'lease-lost');
    return true;
  });

  const [resumed] = await api.lease({ kinds: ['ch.raw'], waitMs: 10_000 });
  assert.equal(resumed.id, job.id);
  assert.equal(resumed.attempt, 2);
  assert.deepEqual(resumed.upstream, {
    children: { total: 1, succeeded: 1, failed: 0, cancelled: 0, jobs: [{ id: first.jobs[0], status: 'succeeded' }] },
  });
  assert.equal((await api.complete(resumed.id, resumed.lease, 'ok')).status, 'succeeded');
  assert.ok(new WaitForChildren() instanceof WaitForChildren);
});

test('the built-in fan_out submits children and waits for them: its result is their counts', async () => {
  const job = await client.submit('fan_out', { count: 5, kind: 'noop', payload: { echo: 'x' } });
  const done = await wait(job.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  assert.deepEqual(done.result, { total: 5, succeeded: 5, failed: 0, cancelled: 0 });
  assert.equal(done.attempt, 2);
  const listed = await childrenOf(job.id, { limit: 2 });
  assert.equal(listed.length, 5);
  for (const child of listed) {
    assert.equal(child.parent, job.id);
    assert.equal(child.result, 'x');
  }
  assert.ok(types(await client.timeline(job.id)).includes('job.suspended'));
});

test('the built-in fan_out takes 1 to 100 children of any kind but fan_out and batch', async () => {
  for (const payload of [
    { count: 0 },
    { count: 101 },
    { count: 2, kind: 'fan_out', payload: { count: 2 } },
    { count: 2, kind: 'batch' },
  ]) {
    await assert.rejects(client.submit('fan_out', payload), (e) => {
      assert.ok(e instanceof ConveyorError, String(e));
      assert.equal(e.status, 422, `${JSON.stringify(payload)}: ${e.detail}`);
      return true;
    });
  }
  const most = await client.submit('fan_out', { count: 100, payload: { echo: 1 } });
  const done = await wait(most.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  assert.deepEqual(done.result, { total: 100, succeeded: 100, failed: 0, cancelled: 0 });
});
