"""The benchmark's Python SDK worker: one process serving `bench.noop` at the SDK's default
concurrency, until SIGTERM. Reads CONVEYOR_URL and CONVEYOR_WORKER_TOKEN."""

import asyncio
import os

from conveyor import Job, Worker

worker = Worker(os.environ["CONVEYOR_URL"], os.environ["CONVEYOR_WORKER_TOKEN"], name="bench-python")


@worker.handle("bench.noop")
async def noop(job: Job) -> None:
    return None


asyncio.run(worker.run())
