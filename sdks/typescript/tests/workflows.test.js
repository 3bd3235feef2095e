// Workflows through the client and the worker, against a real conveyor (docs/workflows.md):
// dependencies between jobs (a diamond run by the SDK's worker, whose handlers compute from
// `job.upstream`; a failed dependency cancels its dependents unrun), and batches with a callback
// (created open, filled, sealed, followed with getBatch and listBatchJobs, the callback told the
// members' outcomes; another batch cancelled, also while a member still runs; idempotent
// repeats); a result too large to pass on is linked (`result_url`); cycles through a batch are
// refused.
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { Client, ConveyorError, FatalError, JobCancelledError, Worker, WorkerApi } from '../dist/index.js';
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
async function startWorker(handlers) {
  const logger = { warn: (m, e) => warnings.push(`${m}${e ? `: ${e.message ?? e}` : ''}`) };
  const worker = new Worker(conveyor.url, workerToken, { waitMs: 1_000, handleSignals: false, logger, shutdownGraceMs: 2_000 });
  for (const [kind, h] of Object.entries(handlers)) worker.handle(kind, h);
  workers.push(worker);
  await worker.start();
  return worker;
}

const wait = (id) => client.wait(id, { timeoutMs: 30_000 });

/** The job once the scheduler said it holds it back for `reason`. */
function waitingFor(id, reason) {
  return waitFor(
    async () => {
      const job = await client.get(id);
      return job.waiting?.reason === reason ? job : undefined;
    },
    { timeoutMs: 15_000, what: `job ${id} to wait for its ${reason}` },
  );
}

/** When the job's event `short` (`job.started`, …) happened, in ms since the epoch. */
async function timeOf(id, short) {
  const ev = (await client.timeline(id)).find((e) => e.type === `dev.conveyor.${short}`);
  assert.ok(ev, `no ${short} for job ${id}`);
  return Date.parse(ev.time);
}

/** The `data` of the job's `job.cancelled` once the read model holds it. */
function cancelledData(id) {
  return waitFor(
    async () => (await client.timeline(id)).find((e) => e.type === 'dev.conveyor.job.cancelled')?.data,
    { what: `the job.cancelled of ${id}` },
  );
}

test('a diamond A → (B, C) → D run by the SDK worker: each handler computes from upstream.dependencies', async () => {
  const release = deferred();
  const seen = {};
  const dependency = (job, i) => {
    const ended = job.upstream?.dependencies?.[i];
    assert.ok(ended, `job ${job.id} has no dependency ${i}: ${JSON.stringify(job.upstream)}`);
    assert.equal(ended.status, 'succeeded');
    return ended;
  };
  await startWorker({
    'wf.source': async (job) => {
      seen.source = job;
      await release.promise;
      return { n: job.payload.n };
    },
    'wf.double': async (job) => {
      seen.double = job;
      return { n: dependency(job, 0).result.n * 2 };
    },
    'wf.add': async (job) => {
      seen.add = job;
      return { n: dependency(job, 0).result.n + job.payload.add };
    },
    'wf.sum': async (job) => {
      seen.sum = job;
      const deps = job.upstream.dependencies;
      return { sum: deps.reduce((s, d) => s + d.result.n, 0), from: deps.map((d) => d.id) };
    },
  });

  const a = await client.submit('wf.source', { n: 5 });
  const b = await client.submit('wf.double', {}, { dependsOn: [a.id] });
  const c = await client.submit('wf.add', { add: 3 }, { dependsOn: [a.id] });
  // Named twice counts once.
  const d = await client.submit('wf.sum', {}, { dependsOn: [b.id, c.id, b.id] });

  // While A runs (held by its handler), the others wait for their dependencies.
  await waitFor(async () => (await client.get(a.id)).status === 'running', { what: 'A running' });
  const held = await waitingFor(d.id, 'dependencies');
  assert.equal(held.status, 'queued', 'waiting never changes the status');
  assert.deepEqual(held.depends_on, [b.id, c.id]);
  assert.equal(held.batch, undefined);
  assert.equal(held.is_batch, undefined);
  assert.deepEqual((await waitingFor(b.id, 'dependencies')).depends_on, [a.id]);
  assert.equal((await client.get(a.id)).depends_on, undefined, 'a job of no dependency shows none');

  release.resolve();
  const done = await wait(d.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  // B = 5 × 2, C = 5 + 3; D = B + C, its dependencies in the order named.
  assert.deepEqual(done.result, { sum: 18, from: [b.id, c.id] });
  assert.deepEqual((await client.get(b.id)).result, { n: 10 });
  assert.deepEqual((await client.get(c.id)).result, { n: 8 });

  // What each handler was told, on its context and as leased.
  assert.equal(seen.source.upstream, undefined, 'a job that waited for nothing has no upstream');
  assert.deepEqual(seen.double.upstream, { dependencies: [{ id: a.id, status: 'succeeded', result: { n: 5 } }] });
  assert.deepEqual(seen.double.leased.upstream, seen.double.upstream);
  assert.deepEqual(seen.sum.upstream, {
    dependencies: [
      { id: b.id, status: 'succeeded', result: { n: 10 } },
      { id: c.id, status: 'succeeded', result: { n: 8 } },
    ],
  });
  assert.equal(done.waiting, undefined, 'waiting is gone once it ran');
  const dStarted = await timeOf(d.id, 'job.started');
  for (const dep of [b, c]) assert.ok(dStarted >= (await timeOf(dep.id, 'job.succeeded')), 'D started only after B and C succeeded');
});

test('a dependency whose result is too large to pass on: its dependent is told result_url instead of result', async () => {
  const seen = [];
  await startWorker({
    'wf.reader': async (job) => {
      seen.push(job.upstream);
      const [large, small] = job.upstream.dependencies;
      // What a handler does with it: read the result where it is.
      const read = await client.result(large.id);
      return { large: read.length, small: small.result };
    },
  });
  const large = await client.submit('noop', { echo: 'x'.repeat(20_000) });
  const small = await client.submit('noop', { echo: 'y' });
  const dependent = await client.submit('wf.reader', {}, { dependsOn: [large.id, small.id] });

  const done = await wait(dependent.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  assert.deepEqual(done.result, { large: 20_000, small: 'y' });
  assert.equal(seen.length, 1);
  const [told] = seen;
  const [toldLarge, toldSmall] = told.dependencies;
  assert.equal(toldLarge.id, large.id);
  assert.equal(toldLarge.status, 'succeeded');
  assert.ok(!('result' in toldLarge), `a result over 16 KiB is not passed on: ${Object.keys(toldLarge)}`);
  assert.equal(toldLarge.result_url, `/v1/jobs/${large.id}/result`);
  assert.deepEqual(toldSmall, { id: small.id, status: 'succeeded', result: 'y' }, 'a small result still comes inline');
  assert.equal(await client.result(large.id), 'x'.repeat(20_000));
});

test('a batch member cannot depend on its own batch, nor on a job that waits for the batch: 422', async () => {
  const open = await client.createBatch([{ kind: 'noop', payload: { echo: 0 } }], { seal: false });
  const refused = (e) => {
    assert.ok(e instanceof ConveyorError, String(e));
    assert.equal(e.status, 422, e.detail);
    assert.match(e.detail, /^jobs\[0\]: /);
    return true;
  };
  await assert.rejects(client.addBatchJobs(open.id, [{ kind: 'noop', dependsOn: [open.id] }]), refused);
  const after = await client.submit('noop', { echo: 'after' }, { dependsOn: [open.id] });
  // The check sees what the read model shows: once it holds the job that waits for the batch.
  await waitingFor(after.id, 'dependencies');
  await assert.rejects(client.addBatchJobs(open.id, [{ kind: 'noop', dependsOn: [after.id] }]), refused);
  // Nothing was added; the batch goes on.
  const sealed = await client.sealBatch(open.id);
  assert.equal(sealed.sealed, true);
  assert.equal((await wait(open.id)).status, 'succeeded');
  assert.deepEqual((await client.get(open.id)).result, { total: 1, succeeded: 1, failed: 0, cancelled: 0 });
  assert.equal((await wait(after.id)).status, 'succeeded');
});

test('a failed dependency cancels its dependents unrun, and theirs in turn; unknown dependencies are refused', async () => {
  let ran = 0;
  await startWorker({
    'wf.never': async () => {
      ran++;
      return 'ran';
    },
  });
  const failing = await client.submit('fail', { fatal: true });
  // depends_on on each job of submitBatch: each answered on its own.
  const batch = await client.submitBatch([
    { kind: 'wf.never', payload: { n: 1 }, dependsOn: [failing.id] },
    { kind: 'wf.never', payload: { n: 2 }, dependsOn: ['0190a5c4-0000-7000-8000-000000000000'] },
  ]);
  assert.deepEqual(
    batch.items.map((i) => i.status),
    [202, 422],
  );
  assert.match(batch.items[1].problem.detail, /depends_on/);
  const dependent = batch.items[0].job;
  const transitive = await client.submit('wf.never', { n: 3 }, { dependsOn: [dependent.id] });

  assert.equal((await wait(failing.id)).status, 'failed');
  assert.equal((await wait(dependent.id)).status, 'cancelled');
  assert.equal((await wait(transitive.id)).status, 'cancelled');
  assert.deepEqual(await cancelledData(dependent.id), { reason: `dependency ${failing.id} failed` });
  assert.deepEqual(await cancelledData(transitive.id), { reason: `dependency ${dependent.id} cancelled` });
  for (const id of [dependent.id, transitive.id]) {
    assert.ok(!types(await client.timeline(id)).includes('job.started'), `job ${id} started`);
  }
  assert.equal(ran, 0, 'no handler ran');

  await assert.rejects(client.submit('noop', {}, { dependsOn: ['0190a5c4-0000-7000-8000-000000000000'] }), (e) => {
    assert.ok(e instanceof ConveyorError, String(e));
    assert.equal(e.status, 422);
    assert.match(e.detail, /depends_on: no job 0190a5c4-0000-7000-8000-000000000000/);
    return true;
  });
  await assert.rejects(
    client.submit('noop', {}, { dependsOn: Array.from({ length: 33 }, () => crypto.randomUUID()) }),
    (e) => e instanceof ConveyorError && e.status === 422,
  );
});

test('a batch: created open, filled, sealed; its callback (an SDK handler) is told the members’ outcomes; get and list follow it', async () => {
  const told = [];
  await startWorker({
    'wf.part': async (job) => {
      if (job.payload.fail) throw new FatalError(`part ${job.payload.n} is broken`);
      return job.payload.n * 10;
    },
    'wf.report': async (job) => {
      const members = job.upstream?.members;
      assert.ok(members, `the callback has no upstream.members: ${JSON.stringify(job.upstream)}`);
      told.push(job);
      const { total, succeeded, failed, cancelled } = members;
      return { title: job.payload.title, total, succeeded, failed, cancelled, jobs: members.jobs };
    },
  });

  const callback = { kind: 'wf.report', payload: { title: 'parts' } };
  const parts = [1, 2, 3].map((n) => ({ kind: 'wf.part', payload: { n } }));
  const batch = await client.createBatch(parts, { callback, seal: false });
  assert.equal(batch.repeated, false);
  assert.equal(batch.sealed, false);
  assert.equal(batch.jobs.length, 3);
  assert.deepEqual(batch.links, {
    self: `/v1/batches/${batch.id}`,
    jobs: `/v1/batches/${batch.id}/jobs`,
    callback: `/v1/jobs/${batch.id}`,
  });

  // Its members run; the callback waits for the seal.
  const progress = await waitFor(
    async () => {
      const b = await client.getBatch(batch.id);
      return b.members.succeeded === 3 ? b : undefined;
    },
    { what: 'the first three members to succeed' },
  );
  assert.equal(progress.id, batch.id);
  assert.equal(progress.kind, 'wf.report');
  assert.equal(progress.status, 'queued');
  assert.equal(progress.sealed, false);
  assert.equal(progress.sealed_at, null);
  assert.equal(progress.result, null);
  assert.deepEqual(progress.members, { total: 3, queued: 0, running: 0, retry_scheduled: 0, succeeded: 3, failed: 0, cancelled: 0 });
  const callbackJob = await waitingFor(batch.id, 'batch');
  assert.equal(callbackJob.is_batch, true);
  assert.equal(callbackJob.kind, 'wf.report');
  assert.equal(told.length, 0, 'the callback does not run before the seal');
  assert.equal((await client.get(batch.jobs[0])).batch, batch.id, 'a member names its batch');

  // The last page seals it.
  const added = await client.addBatchJobs(batch.id, [
    { kind: 'wf.part', payload: { n: 4 } },
    { kind: 'wf.part', payload: { n: 5, fail: true }, maxAttempts: 1 },
  ], { seal: true });
  assert.equal(added.id, batch.id);
  assert.equal(added.sealed, true);
  assert.equal(added.jobs.length, 2);
  const members = [...batch.jobs, ...added.jobs];

  const done = await wait(batch.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done));
  assert.deepEqual(done.result, {
    title: 'parts',
    total: 5,
    succeeded: 4,
    failed: 1,
    cancelled: 0,
    jobs: members.map((id, i) => ({ id, status: i === 4 ? 'failed' : 'succeeded' })),
  });
  assert.equal(told.length, 1, 'the callback ran once');
  assert.equal(told[0].upstream.dependencies, undefined);

  const ended = await client.getBatch(batch.id);
  assert.equal(ended.status, 'succeeded');
  assert.equal(ended.sealed, true);
  assert.ok(Date.parse(ended.sealed_at) >= Date.parse(ended.created_at), ended.sealed_at);
  assert.ok(Date.parse(ended.finished_at) > 0, ended.finished_at);
  assert.deepEqual(ended.members, { total: 5, queued: 0, running: 0, retry_scheduled: 0, succeeded: 4, failed: 1, cancelled: 0 });
  assert.deepEqual(ended.result, done.result);
  assert.ok(types(await client.timeline(batch.id)).includes('job.sealed'));
  assert.equal(typeof (await client.get(batch.id)).sealed_at, 'string');

  // Its members in submission order, two a page.
  const pages = [];
  let cursor = null;
  do {
    const page = await client.listBatchJobs(batch.id, { limit: 2, cursor });
    pages.push(page.items.map((j) => j.id));
    cursor = page.next_cursor;
  } while (cursor);
  assert.deepEqual(pages, [members.slice(0, 2), members.slice(2, 4), members.slice(4)]);
  const all = [];
  for await (const job of client.listAllBatchJobs(batch.id, { limit: 2 })) {
    assert.equal(job.batch, batch.id);
    all.push(job.id);
  }
  assert.deepEqual(all, members);
  const failed = await client.listBatchJobs(batch.id, { status: 'failed' });
  assert.deepEqual(
    failed.items.map((j) => [j.id, j.status]),
    [[added.jobs[1], 'failed']],
  );
  assert.equal(failed.next_cursor, null);

  // Sealed: no member can be added; sealing again changes nothing.
  await assert.rejects(client.addBatchJobs(batch.id, parts), (e) => e instanceof ConveyorError && e.status === 409);
  assert.equal((await client.sealBatch(batch.id)).sealed, true);
  // A job that is no batch is a 404 here.
  await assert.rejects(client.getBatch(members[0]), (e) => e instanceof ConveyorError && e.status === 404);
});

test('cancelling a batch: its callback never runs, waiting members never start, a running member sees its cancellation', async () => {
  const running = deferred();
  let reason;
  let callbackRan = false;
  await startWorker({
    'wf.hold': async (job) => {
      running.resolve();
      await new Promise((resolve) => job.signal.addEventListener('abort', resolve, { once: true }));
      reason = job.signal.reason;
      return 'too late';
    },
    'wf.never.callback': async () => {
      callbackRan = true;
    },
  });
  const later = new Date(Date.now() + 3_600_000);
  const batch = await client.createBatch(
    [
      { kind: 'wf.hold', payload: {} },
      { kind: 'noop', payload: { echo: 1 }, runAt: later },
      { kind: 'noop', payload: { echo: 2 }, runAt: later },
    ],
    { callback: { kind: 'wf.never.callback' } },
  );
  assert.equal(batch.sealed, true, 'sealed by default');
  await running.promise;
  await waitFor(async () => (await client.getBatch(batch.id)).members.total === 3, { what: 'the members in the read model' });

  const answer = await client.cancelBatch(batch.id);
  assert.deepEqual(answer, { id: batch.id, cancelled: 3, more: false });
  assert.equal((await wait(batch.id)).status, 'cancelled');
  for (const id of batch.jobs) assert.equal((await wait(id)).status, 'cancelled', `member ${id}`);
  assert.ok(reason instanceof JobCancelledError, String(reason));
  assert.equal(callbackRan, false);
  const ended = await waitFor(
    async () => {
      const b = await client.getBatch(batch.id);
      return b.members.cancelled === 3 ? b : undefined;
    },
    { what: 'the members counted cancelled' },
  );
  assert.equal(ended.status, 'cancelled');
  assert.equal(ended.result, null);
  await assert.rejects(client.cancelBatch(batch.id), (e) => e instanceof ConveyorError && e.status === 409);
  await assert.rejects(client.addBatchJobs(batch.id, [{ kind: 'noop' }]), (e) => e instanceof ConveyorError && e.status === 409);
});

test('cancelling a batch whose member still runs: a repeat is a 202 again, a 409 only once every member ended', async () => {
  const api = new WorkerApi(conveyor.url, workerToken);
  await api.registerKind('wf.raw.member');
  const later = new Date(Date.now() + 3_600_000);
  const batch = await client.createBatch([
    { kind: 'wf.raw.member', payload: {} },
    { kind: 'noop', payload: { echo: 1 }, runAt: later },
  ]);
  const [member, waiting] = batch.jobs;
  const [leased] = await api.lease({ kinds: ['wf.raw.member'], waitMs: 10_000 });
  assert.equal(leased.id, member);
  // Heartbeats keep the lease (and say when the job was cancelled) until the test reports.
  let lease = leased.lease;
  let cancelSeen = false;
  let beating = true;
  const beats = (async () => {
    while (beating) {
      const answer = await api.heartbeat(member, lease);
      lease = answer.lease;
      cancelSeen ||= answer.cancelled;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  try {
    await waitFor(
      async () => {
        const b = await client.getBatch(batch.id);
        return b.members.total === 2 && b.members.running === 1;
      },
      { what: 'the member running in the read model' },
    );

    assert.deepEqual(await client.cancelBatch(batch.id), { id: batch.id, cancelled: 2, more: false });
    assert.equal((await wait(batch.id)).status, 'cancelled', 'the callback first');
    assert.equal((await wait(waiting)).status, 'cancelled', 'the waiting member never starts');
    // The running member has not ended (its worker has not reported yet): the batch is not done.
    assert.equal((await client.get(member)).status, 'running');
    // A 202 again, asking nothing new: the running member was asked already.
    assert.deepEqual(await client.cancelBatch(batch.id), { id: batch.id, cancelled: 0, more: false }, 'a 202 again');
    await waitFor(async () => cancelSeen, { what: 'a heartbeat to say the member was cancelled' });
  } finally {
    beating = false;
    await beats;
  }
  assert.equal((await api.fail(member, lease, { class: 'cancelled', message: 'the batch was cancelled' })).status, 'cancelled');
  await waitFor(
    async () => (await client.getBatch(batch.id)).members.cancelled === 2,
    { what: 'both members counted cancelled' },
  );
  await assert.rejects(client.cancelBatch(batch.id), (e) => e instanceof ConveyorError && e.status === 409);
});

test('a batch without a callback runs the built-in `batch`, whose result is the counts; an Idempotency-Key makes a repeat the same batch', async () => {
  const members = [
    { kind: 'noop', payload: { echo: 1 } },
    { kind: 'fail', payload: { fatal: true } },
    { kind: 'noop', payload: { echo: 3 } },
  ];
  const key = `wf-batch-${Date.now()}`;
  const batch = await client.createBatch(members, { idempotencyKey: key });
  assert.equal(batch.repeated, false);
  const again = await client.createBatch(members, { idempotencyKey: key });
  assert.equal(again.repeated, true, 'a repeat is 200');
  assert.equal(again.id, batch.id);
  assert.deepEqual(again.jobs, batch.jobs);

  const done = await wait(batch.id);
  assert.equal(done.status, 'succeeded');
  assert.equal(done.kind, 'batch');
  assert.deepEqual(done.result, { total: 3, succeeded: 2, failed: 1, cancelled: 0 });
  const view = await client.getBatch(batch.id);
  assert.equal(view.kind, 'batch');
  assert.deepEqual(view.result, done.result);
  const listed = [];
  for await (const job of client.listAllBatchJobs(batch.id)) listed.push(job.id);
  assert.deepEqual(listed, batch.jobs, 'each member listed once, in submission order');

  // The same key with another body is a conflict.
  await assert.rejects(client.createBatch(members.slice(1), { idempotencyKey: key }), (e) => e instanceof ConveyorError && e.status === 409);
  // One member refused refuses the request, naming it; nothing is submitted.
  await assert.rejects(client.createBatch([{ kind: 'noop' }, { kind: 'no.such.kind' }]), (e) => {
    assert.ok(e instanceof ConveyorError, String(e));
    assert.equal(e.status, 422);
    assert.match(e.detail, /^jobs\[1\]: /);
    return true;
  });
});

test('members submitted with an Idempotency-Key list in submission order; a repeated page is a 200 with the same ids, another page under its key a 409', async () => {
  const members = Array.from({ length: 8 }, (_, i) => ({ kind: 'noop', payload: { echo: i } }));
  const batch = await client.createBatch(members, { idempotencyKey: `wf-order-${Date.now()}`, seal: false });
  const page = Array.from({ length: 5 }, (_, i) => ({ kind: 'noop', payload: { echo: 10 + i } }));
  const pageKey = `wf-page-${Date.now()}`;
  const added = await client.addBatchJobs(batch.id, page, { idempotencyKey: pageKey });
  assert.equal(added.repeated, false, 'a new page is a 202');
  const again = await client.addBatchJobs(batch.id, page, { idempotencyKey: pageKey });
  assert.equal(again.repeated, true, 'a repeated page is a 200');
  assert.deepEqual(again.jobs, added.jobs, 'the same member ids');
  for (const other of [page.slice(1), page]) {
    // Another page under the key, or the same page with another `seal`, is another request.
    const seal = other === page;
    await assert.rejects(
      client.addBatchJobs(batch.id, other, { idempotencyKey: pageKey, seal }),
      (e) => e instanceof ConveyorError && e.status === 409,
    );
  }
  assert.equal((await client.sealBatch(batch.id)).sealed, true);
  // Even after the seal, the repeated page answers the same.
  const late = await client.addBatchJobs(batch.id, page, { idempotencyKey: pageKey });
  assert.equal(late.repeated, true);
  assert.deepEqual(late.jobs, added.jobs);
  assert.equal(late.sealed, true);

  const done = await wait(batch.id);
  assert.deepEqual(done.result, { total: 13, succeeded: 13, failed: 0, cancelled: 0 }, 'the repeated page added its members once');
  const listed = [];
  for await (const job of client.listAllBatchJobs(batch.id, { limit: 3 })) listed.push(job.id);
  assert.deepEqual(listed, [...batch.jobs, ...added.jobs]);
});
