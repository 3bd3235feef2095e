// Submit a job, follow it live, read its result; errors as typed problems.
import { Client, ConveyorError } from '@conveyor/sdk';

const client = new Client(process.env.CONVEYOR_URL ?? 'http://127.0.0.1:8080', process.env.CONVEYOR_TOKEN ?? '');

try {
  const job = await client.submit('report.monthly', { month: '2026-10' }, { idempotencyKey: 'report-2026-10', maxAttempts: 5 });
  for await (const ev of client.follow(job.id)) {
    console.log(ev.seq, ev.event, ev.event === 'job.progressed' ? ev.data.data : '');
  }
  const done = await client.get(job.id);
  if (done.status === 'succeeded') console.log(await client.result(job.id));

  for await (const failed of client.listAll({ status: 'failed', kind: 'report.monthly', limit: 100 })) {
    console.log('dead-lettered:', failed.id, failed.error?.message);
  }
} catch (e) {
  if (e instanceof ConveyorError) {
    console.error(e.status, e.title, e.detail, e.retryAfter !== undefined ? `retry after ${e.retryAfter} s` : '');
  } else {
    throw e;
  }
}

// Scheduling: a priority, a concurrency key and a rate limit on a job; a schedule; a paused kind.
await client.submit('report.monthly', { month: '2026-11' }, {
  priority: 10,
  concurrency: { key: 'account-42', limit: 1 },
  rateLimit: { key: 'partner-api', limit: 10, periodMs: 1000 },
});
const nightly = await client.createSchedule({
  id: 'nightly-report',
  kind: 'report.monthly',
  payload: { month: 'current' },
  cron: '0 0 2 * * *',
  timezone: 'Europe/Paris',
  catchUp: 'once',
});
console.log(nightly.created ? 'created' : 'replaced', nightly.next_run_at);
await client.pauseKind('report.monthly');
console.log(await client.pauses());
await client.resumeKind('report.monthly');

// Workflows: a job that waits for two others; a batch of jobs with a callback once all ended.
const jan = await client.submit('report.monthly', { month: '2026-01' });
const feb = await client.submit('report.monthly', { month: '2026-02' });
const merged = await client.submit('report.merge', { name: 'q1' }, { dependsOn: [jan.id, feb.id] });
const waiting = await client.get(merged.id);
if (waiting.waiting?.reason === 'dependencies') console.log('waits for', waiting.depends_on);

const year = await client.createBatch(
  ['03', '04', '05'].map((m) => ({ kind: 'report.monthly', payload: { month: `2026-${m}` }, maxAttempts: 5 })),
  { callback: { kind: 'report.merge', payload: { name: '2026' } }, seal: false, idempotencyKey: 'reports-2026' },
);
await client.addBatchJobs(year.id, [{ kind: 'report.monthly', payload: { month: '2026-06' } }], {
  seal: true,
  idempotencyKey: 'reports-2026-page-2',
});
const progress = await client.getBatch(year.id);
console.log(`${progress.members.succeeded + progress.members.failed + progress.members.cancelled} of ${progress.members.total} ended`);
for await (const member of client.listAllBatchJobs(year.id, { status: 'failed' })) console.log('failed:', member.id, member.batch);
const ended = await client.wait(year.id); // the batch's id is its callback job's
console.log(ended.status, ended.result);

// A job whose handler submits children (see examples/worker.ts): follow them from the parent.
const months = await client.submit('report.months', { months: ['2026-07', '2026-08'] });
await client.wait(months.id);
for await (const child of client.listAllChildren(months.id)) console.log(child.id, child.kind, child.status, child.parent);

// The tenant's events, live, resuming across dropped connections; stop with the signal.
const stop = AbortSignal.timeout(60_000);
for await (const ev of client.events({ type: ['job.succeeded', 'job.dead_lettered'], signal: stop })) {
  console.log(ev.seq, ev.event, ev.data.subject);
}
