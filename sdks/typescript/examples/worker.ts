// A worker serving `report.monthly`: runs until SIGTERM / SIGINT, then drains.
import { FatalError, Worker, type JobContext } from '@conveyor/sdk';

interface MonthlyReport {
  month: string;
}

const worker = new Worker(process.env.CONVEYOR_URL ?? 'http://127.0.0.1:8080', process.env.CONVEYOR_TOKEN ?? '', {
  concurrency: 4,
  name: 'reports-1',
  shutdownGraceMs: 15_000,
});

worker.handle(
  'report.monthly',
  async (job: JobContext<MonthlyReport>) => {
    if (!/^\d{4}-\d{2}$/.test(job.payload.month)) throw new FatalError(`bad month ${job.payload.month}`);
    const accounts = 100;
    for (let i = 1; i <= accounts; i += 10) {
      job.signal.throwIfAborted(); // cancelled, timed out, lease lost or shutting down
      await job.progress(i, accounts, `${i} of ${accounts} accounts`);
      const res = await fetch('https://example.com/accounts', { signal: job.signal });
      if (res.status === 503) throw new Error('upstream answered 503'); // retried with backoff
    }
    return { url: `/reports/acme-${job.payload.month}.csv` };
  },
  { schema: { type: 'object', required: ['month'], properties: { month: { type: 'string' } } } },
);

// A job submitted with `dependsOn` gets how its dependencies ended; a batch's callback, its members'.
worker.handle('report.merge', async (job: JobContext<{ name: string }>) => {
  const members = job.upstream?.members;
  if (members) return { name: job.payload.name, reports: members.succeeded, missing: members.failed + members.cancelled };
  const urls = (job.upstream?.dependencies ?? []).map((d) => (d.result as { url: string } | undefined)?.url);
  return { name: job.payload.name, urls };
});

// A handler that fans out: submits one child per month, then waits for them without holding a
// slot; its next attempt is told how they ended. `report.year` continues with a callback instead.
worker.handle('report.months', async (job: JobContext<{ months: string[] }>) => {
  const told = job.upstream?.children;
  if (told) return { reports: told.succeeded, missing: told.failed + told.cancelled };
  await job.submitChildren(job.payload.months.map((month) => ({ kind: 'report.monthly', payload: { month }, maxAttempts: 5 })));
  return job.waitForChildren();
});
worker.handle('report.year', async (job: JobContext<{ year: number }>) => {
  const months = Array.from({ length: 12 }, (_, i) => `${job.payload.year}-${String(i + 1).padStart(2, '0')}`);
  const { jobs, then } = await job.submitChildren(
    months.map((month) => ({ kind: 'report.monthly', payload: { month } })),
    { then: { kind: 'report.merge', payload: { name: `${job.payload.year}` } } }, // told upstream.members
  );
  return { months: jobs.length, merge: then };
});

await worker.run();
