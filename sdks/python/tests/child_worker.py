"""A worker in a child process, for the tests that kill it (SIGKILL) or stop it (SIGTERM).

    python child_worker.py URL TOKEN KIND GRACE_MS

Its handler prints `STARTED <job id>` on stdout, then sleeps for an hour (cancellable). Logs
go to stderr at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from conveyor import Job, Worker


async def main(url: str, token: str, kind: str, grace_ms: int) -> None:
    worker = Worker(url, token, concurrency=2, shutdown_grace_ms=grace_ms, wait_ms=1000)

    @worker.handle(kind)
    async def long_job(job: Job) -> dict[str, str]:
        print(f"STARTED {job.id}", flush=True)
        await asyncio.sleep(3600)
        return {"by": "child"}

    await worker.run()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
