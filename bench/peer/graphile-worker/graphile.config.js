// graphile-worker's recommended performance settings, as in its own benchmark (perfTest).
const CONCURRENT_JOBS = 24;

module.exports = {
  worker: {
    connectionString: process.env.DATABASE_URL,
    concurrentJobs: CONCURRENT_JOBS,
    maxPoolSize: CONCURRENT_JOBS + 1,
    localQueue: { size: 500, refetchDelay: { durationMs: 10 } },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};
