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

// The tenant's events, live, resuming across dropped connections; stop with the signal.
const stop = AbortSignal.timeout(60_000);
for await (const ev of client.events({ type: ['job.succeeded', 'job.dead_lettered'], signal: stop })) {
  console.log(ev.seq, ev.event, ev.data.subject);
}
