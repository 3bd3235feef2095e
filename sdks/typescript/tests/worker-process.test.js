// Workers that die or are told to stop: a SIGKILLed worker's job goes to another worker when its
// lease expires; a SIGTERMed one hands its job back at once. Each has exactly one outcome.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';

import { Client, Worker } from '../dist/index.js';
import { Conveyor, SDK_ROOT, settledTimeline, terminalEvents, waitFor } from './helpers/conveyor.js';

let conveyor;
let client;
const children = [];
const workers = [];

before(async () => {
  conveyor = await Conveyor.start();
  client = new Client(conveyor.url, conveyor.token());
});

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(workers.splice(0).map((w) => w.close()));
});

after(async () => {
  await conveyor?.stop();
});

/** A worker in a child process; `lines` collects its stdout lines. */
function childWorker(kind, env = {}) {
  const child = spawn(process.execPath, [join(SDK_ROOT, 'tests', 'fixtures', 'child-worker.js')], {
    env: { ...process.env, CONVEYOR_URL: conveyor.url, CONVEYOR_TOKEN: conveyor.workerToken(), KIND: kind, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const lines = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    const parts = buf.split('\n');
    buf = parts.pop();
    lines.push(...parts);
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, lines, exited, stderr: () => stderr };
}

async function parentWorker(kind) {
  const worker = new Worker(conveyor.url, conveyor.workerToken(), { waitMs: 1_000, handleSignals: false });
  worker.handle(kind, async (job) => ({ by: 'parent', attempt: job.attempt }));
  workers.push(worker);
  await worker.start();
  return worker;
}

test('lease expiry: a SIGKILLed worker’s job is run by another worker, with one outcome', async () => {
  const kind = 'sdk.crash';
  const child = childWorker(kind);
  await waitFor(() => child.lines.includes('ready'), { what: `the child worker to start (${child.stderr()})` });
  const job = await client.submit(kind, {});
  await waitFor(() => child.lines.includes(`started ${job.id} 1`), { what: 'the child to run the job' });
  child.child.kill('SIGKILL');
  assert.equal((await child.exited).signal, 'SIGKILL');

  await parentWorker(kind);
  const done = await client.wait(job.id, { timeoutMs: 30_000 });
  assert.equal(done.status, 'succeeded');
  assert.equal(done.result.by, 'parent');
  assert.equal(done.result.attempt, 1, 'the same attempt, not a retry');
  const timeline = await settledTimeline(client, job.id);
  assert.equal(terminalEvents(timeline).length, 1);
});

test('SIGTERM: a worker past its grace period releases its job, and another worker finishes it', async () => {
  const kind = 'sdk.handback';
  const child = childWorker(kind, { GRACE_MS: '300' });
  await waitFor(() => child.lines.includes('ready'), { what: `the child worker to start (${child.stderr()})` });
  const job = await client.submit(kind, {});
  await waitFor(() => child.lines.includes(`started ${job.id} 1`), { what: 'the child to run the job' });
  child.child.kill('SIGTERM');
  const exit = await child.exited;
  assert.equal(exit.code, 0, `the child exits 0 (${child.stderr()})`);
  assert.ok(child.lines.includes('aborted shutdown'), `the handler saw the shutdown: ${child.lines.join(' | ')}`);
  assert.ok(child.lines.includes('stopped'));
  assert.equal((await client.get(job.id)).status === 'succeeded', false);

  await parentWorker(kind);
  const done = await client.wait(job.id, { timeoutMs: 30_000 });
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(done.result, { by: 'parent', attempt: 1 });
  const timeline = await settledTimeline(client, job.id);
  assert.equal(terminalEvents(timeline).length, 1);
});

test('SIGTERM within the grace period: the running job finishes, then the worker exits', async () => {
  const kind = 'sdk.drain';
  const child = childWorker(kind, { GRACE_MS: '20000' });
  await waitFor(() => child.lines.includes('ready'), { what: `the child worker to start (${child.stderr()})` });
  const job = await client.submit(kind, {});
  await waitFor(() => child.lines.includes(`started ${job.id} 1`), { what: 'the child to run the job' });
  child.child.kill('SIGTERM');
  await waitFor(() => /SIGTERM: shutting down/.test(child.stderr()), { what: 'the child to start its shutdown' });
  // The job does not end by itself within the grace: the worker waits for it...
  assert.equal(child.child.exitCode, null, 'still draining');
  assert.ok(!child.lines.some((l) => l.startsWith('aborted')));
  // ...until a second signal hands it back at once.
  child.child.kill('SIGINT');
  const exit = await child.exited;
  assert.equal(exit.code, 0, `the child exits 0 (${child.stderr()})`);
  assert.ok(child.lines.includes('aborted shutdown'));
  await parentWorker(kind);
  assert.equal((await client.wait(job.id, { timeoutMs: 30_000 })).result.by, 'parent');
});
