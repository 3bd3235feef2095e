// The benchmark's TypeScript SDK worker: one process serving `bench.noop` at the SDK's default
// concurrency, until SIGTERM. Reads CONVEYOR_URL and CONVEYOR_WORKER_TOKEN.
import { Worker } from '../../sdks/typescript/dist/index.js';

const worker = new Worker(process.env.CONVEYOR_URL, process.env.CONVEYOR_WORKER_TOKEN, {
  name: 'bench-typescript',
});
worker.handle('bench.noop', async () => null);
await worker.run();
