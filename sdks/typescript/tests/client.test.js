// The client against a real conveyor: submit, get, list with cursors, cancel, idempotency,
// batches, results, following a job over SSE, and the event stream's resume after a dropped
// connection.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, ConveyorError, WorkerApi } from '../dist/index.js';
import { Conveyor, settledTimeline, terminalEvents, waitFor } from './helpers/conveyor.js';
import { startProxy } from './helpers/proxy.js';

let conveyor;
let client;

before(async () => {
  conveyor = await Conveyor.start();
  client = new Client(conveyor.url, conveyor.token());
});

after(async () => {
  await conveyor?.stop();
});

test('submit, then get at once (read-your-writes), then the result', async () => {
  const job = await client.submit('noop', { echo: { n: 1 } });
  assert.equal(job.kind, 'noop');
  assert.equal(job.repeated, false);
  assert.equal(typeof job.seq, 'number');
  const got = await client.get(job.id);
  assert.equal(got.id, job.id);
  assert.deepEqual(got.payload, { echo: { n: 1 } });
  const done = await client.wait(job.id, { timeoutMs: 30_000 });
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(await client.result(job.id), { n: 1 });
});

test('errors carry the problem: 401, 404, 422, 400', async () => {
  const bad = new Client(conveyor.url, 'not-a-token');
  await assert.rejects(bad.get('0192f1c4-0000-7000-8000-000000000000'), (e) => {
    assert.ok(e instanceof ConveyorError);
    assert.equal(e.status, 401);
    assert.match(e.type, /^https:\/\/conveyor\.dev\/problems\//);
    assert.ok(e.title);
    return true;
  });
  await assert.rejects(client.get('0192f1c4-0000-7000-8000-000000000000'), (e) => e instanceof ConveyorError && e.status === 404);
  await assert.rejects(client.submit('no.such.kind'), (e) => {
    assert.ok(e instanceof ConveyorError);
    assert.equal(e.status, 422);
    assert.equal(e.slug, 'unprocessable');
    assert.ok(e.detail.length > 0);
    return true;
  });
  await assert.rejects(client.list({ limit: 100_000 }), (e) => e instanceof ConveyorError && e.status === 400);
  const sleeping = await client.submit('sleep', { ms: 60_000 });
  await assert.rejects(client.result(sleeping.id), (e) => e instanceof ConveyorError && e.status === 404);
  await client.cancel(sleeping.id);
});

test('idempotency: the same key and body give the original job; another body is 409', async () => {
  const key = `order-${Date.now()}`;
  const first = await client.submit('noop', { echo: 'a' }, { idempotencyKey: key });
  const again = await client.submit('noop', { echo: 'a' }, { idempotencyKey: key });
  assert.equal(first.repeated, false);
  assert.equal(again.repeated, true);
  assert.equal(again.id, first.id);
  await assert.rejects(client.submit('noop', { echo: 'b' }, { idempotencyKey: key }), (e) => {
    assert.ok(e instanceof ConveyorError);
    assert.equal(e.status, 409);
    assert.equal(e.problem.status, 409);
    return true;
  });
});

test('submitBatch answers each job on its own, in order', async () => {
  const key = `batch-${Date.now()}`;
  const res = await client.submitBatch([
    { kind: 'noop', payload: { echo: 1 }, idempotencyKey: key },
    { kind: 'no.such.kind' },
    { kind: 'noop', payload: { echo: 2 }, maxAttempts: 2 },
    { kind: 'sleep', payload: { ms: 1 }, timeoutMs: 10_000, maxAttempts: 1, runAt: new Date() },
  ]);
  assert.deepEqual(
    res.items.map((i) => i.status),
    [202, 422, 202, 202],
  );
  assert.equal(res.items[1].problem.status, 422);
  assert.ok(res.items[1].problem.detail);
  assert.ok(res.items[0].job.id);
  assert.deepEqual([res.accepted, res.repeated, res.failed], [3, 0, 1]);
  for (const item of res.items.filter((i) => i.job)) {
    assert.equal((await client.wait(item.job.id, { timeoutMs: 30_000 })).status, 'succeeded');
  }
  // The same key with the same body again: the original.
  const repeat = await client.submitBatch([{ kind: 'noop', payload: { echo: 1 }, idempotencyKey: key }]);
  assert.equal(repeat.items[0].status, 200);
  assert.equal(repeat.items[0].job.id, res.items[0].job.id);
});

test('list pages with cursors, newest first; listAll walks every page', async () => {
  // A kind no worker serves: its jobs stay queued.
  const kind = 'sdk.listed';
  await new WorkerApi(conveyor.url, conveyor.workerToken()).registerKind(kind, null);
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push((await client.submit(kind, { i })).id);
  const all = await waitFor(
    async () => {
      const jobs = [];
      for await (const job of client.listAll({ kind, limit: 2 })) jobs.push(job);
      return jobs.length === 5 ? jobs : undefined;
    },
    { what: 'five listed jobs' },
  );
  assert.deepEqual(
    all.map((j) => j.id),
    [...ids].reverse(),
  );
  const sizes = [];
  let cursors = 0;
  for await (const page of client.pages({ kind, limit: 2 })) {
    sizes.push(page.items.length);
    if (page.next_cursor) cursors++;
  }
  assert.deepEqual(sizes, [2, 2, 1]);
  assert.equal(cursors, 2);
  const first = await client.list({ kind, limit: 2 });
  const second = await client.list({ kind, limit: 2, cursor: first.next_cursor });
  assert.deepEqual(second.items.map((j) => j.id), [ids[2], ids[1]]);
  const queued = await client.list({ kind, status: 'queued', limit: 500 });
  assert.equal(queued.items.length, 5);
  assert.equal((await client.list({ kind, status: 'succeeded' })).items.length, 0);
});

test('cancel a running job: 202, it ends cancelled; cancelling again is 409', async () => {
  const job = await client.submit('sleep', { ms: 60_000, steps: 60 });
  await waitFor(async () => (await client.get(job.id)).status === 'running', { what: 'the sleep job to run' });
  const answer = await client.cancel(job.id);
  assert.equal(answer.id, job.id);
  const done = await client.wait(job.id, { timeoutMs: 30_000 });
  assert.equal(done.status, 'cancelled');
  await assert.rejects(client.cancel(job.id), (e) => e instanceof ConveyorError && e.status === 409);
});

test('follow a job over SSE to its terminal event; following an ended job replays it', async () => {
  const job = await client.submit('sleep', { ms: 300, steps: 3 });
  const seen = [];
  for await (const ev of client.follow(job.id)) seen.push(ev);
  assert.equal(seen.at(-1).event, 'job.succeeded');
  assert.equal(seen[0].event, 'job.submitted');
  assert.ok(seen.some((e) => e.event === 'job.started'));
  assert.ok(seen.filter((e) => e.event === 'job.progressed').length >= 1);
  for (const ev of seen) assert.equal(ev.data.subject, job.id);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i].seq > seen[i - 1].seq);

  const replay = [];
  for await (const ev of client.follow(job.id)) replay.push(ev);
  assert.deepEqual(replay.map((e) => e.seq), seen.map((e) => e.seq));
  const timeline = await settledTimeline(client, job.id);
  assert.equal(terminalEvents(timeline).length, 1);
  assert.deepEqual(timeline.map((e) => e.id), seen.map((e) => e.data.id));
});

test('the event stream resumes after dropped connections: no event lost or repeated', async () => {
  const proxy = await startProxy(conveyor.url);
  const viaProxy = new Client(proxy.url, conveyor.token(), { reconnectDelayMs: 20, maxReconnectDelayMs: 200 });
  try {
    // Start exactly at a marker job's submission, so nothing depends on when the stream connects.
    const marker = await client.submit('noop', { echo: 'marker' });
    const stop = new AbortController();
    const received = [];
    const consuming = (async () => {
      for await (const ev of viaProxy.events({ kind: 'noop', after: marker.seq - 1, signal: stop.signal })) received.push(ev);
    })();
    const ended = new Set();
    const submitRound = async (n) => {
      const ids = [];
      for (let i = 0; i < n; i++) ids.push((await client.submit('noop', { echo: i })).id);
      return ids;
    };
    const allEnded = (ids) =>
      waitFor(
        () => {
          for (const ev of received) if (ev.event === 'job.succeeded') ended.add(ev.data.subject);
          return ids.every((id) => ended.has(id));
        },
        { what: 'the jobs’ terminal events on the stream' },
      );
    const round1 = [marker.id, ...(await submitRound(5))];
    await allEnded(round1);
    proxy.dropAll(); // between events
    const round2 = await submitRound(5); // submitted while the client reconnects
    await allEnded(round2);
    const round3Submitting = submitRound(10);
    await waitFor(() => received.length > 0 && proxy.connections >= 2, { what: 'a reconnection' });
    proxy.dropAll(); // in the middle of a flow of events
    const round3 = await round3Submitting;
    await allEnded(round3);
    stop.abort();
    await consuming;
    assert.ok(proxy.connections >= 3, `the stream reconnected (${proxy.connections} connections)`);

    // The same range read straight from the server, in one connection.
    const last = received.at(-1).seq;
    const reference = [];
    const refStop = new AbortController();
    for await (const ev of client.events({ kind: 'noop', after: marker.seq - 1, signal: refStop.signal })) {
      reference.push(ev);
      if (ev.seq >= last) refStop.abort();
    }
    const seqs = received.map((e) => e.seq);
    assert.equal(new Set(seqs).size, seqs.length, 'no event repeated');
    assert.deepEqual(seqs, reference.map((e) => e.seq), 'no event lost');
    assert.deepEqual(received.map((e) => e.data.id), reference.map((e) => e.data.id));
    assert.equal(received[0].data.subject, marker.id);
  } finally {
    proxy.close();
  }
});

test('events filters by type and job', async () => {
  const job = await client.submit('noop', { echo: 'filtered' });
  const seen = [];
  const stop = new AbortController();
  for await (const ev of client.events({ type: ['job.succeeded'], job: job.id, after: job.seq - 1, signal: stop.signal })) {
    seen.push(ev);
    stop.abort();
  }
  assert.equal(seen.length, 1);
  assert.equal(seen[0].event, 'job.succeeded');
  assert.equal(seen[0].data.subject, job.id);
});
