"""A conveyor worker, in Python, for the kind ``report.jobs_csv``: a CSV of the tenant's jobs.

It lists the tenant's jobs through the API (``GET /v1/jobs``, newest first, page by page) with
the SDK's client, reports progress after each page, and returns the CSV inline in the job's
result: ``{"filename": ..., "rows": N, "csv": "id,kind,..."}``. A CSV larger than the server's
inline limit (``CONVEYOR_RESULT_INLINE_BYTES``, 16 KiB by default) is kept in the object store by
the server; clients read it back at ``GET /v1/jobs/{id}/result`` either way.

Environment:

``CONVEYOR_URL``           the API, e.g. http://127.0.0.1:8080
``CONVEYOR_WORKER_TOKEN``  scope ``worker`` (limited to this kind: ``--kinds report.jobs_csv``)
``CONVEYOR_READ_TOKEN``    scope ``jobs:read`` of the same tenant, to list the jobs; optional
                           when the worker token has ``jobs:read`` too (an ``admin`` token)
``REPORT_PAGE_SIZE``       jobs per page, 1 to 500 (default 200)
``REPORT_PAGE_DELAY_MS``   a pause after each page (default 0), to watch the progress in a demo
``REPORT_MAX_CSV_BYTES``   refuse larger reports (default 200000: a completion must fit the
                           server's request body limit, ``CONVEYOR_MAX_BODY_BYTES``, 256 KiB)

Run: ``python report_worker.py`` (stops gracefully on SIGTERM or Ctrl-C).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
from datetime import datetime, timezone
from typing import Any

from conveyor import Client, FatalError, Job, Worker

KIND = "report.jobs_csv"
COLUMNS = ["id", "kind", "status", "attempt", "created_at", "finished_at"]
STATUSES = ["queued", "running", "retry_scheduled", "succeeded", "failed", "cancelled"]

# The payload's JSON Schema, registered with the kind at start: the API refuses (422) any other
# payload before a job is even created.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"type": "string", "enum": STATUSES},
        "kind": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}

URL = os.environ["CONVEYOR_URL"]
WORKER_TOKEN = os.environ["CONVEYOR_WORKER_TOKEN"]
READ_TOKEN = os.environ.get("CONVEYOR_READ_TOKEN") or WORKER_TOKEN
PAGE_SIZE = int(os.environ.get("REPORT_PAGE_SIZE", "200"))
PAGE_DELAY = int(os.environ.get("REPORT_PAGE_DELAY_MS", "0")) / 1000
MAX_CSV_BYTES = int(os.environ.get("REPORT_MAX_CSV_BYTES", "200000"))

log = logging.getLogger("report-worker")
worker = Worker(URL, WORKER_TOKEN, concurrency=4, name=f"report-worker-{os.getpid()}")


@worker.handle(KIND, schema=SCHEMA)
async def jobs_csv(job: Job) -> dict[str, Any]:
    payload = job.payload or {}
    status, kind = payload.get("status"), payload.get("kind")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(COLUMNS)
    rows = 0
    page_no = 0
    cursor: str | None = None
    async with Client(URL, READ_TOKEN) as client:
        while True:
            page = await client.list(status=status, kind=kind, limit=PAGE_SIZE, cursor=cursor)
            page_no += 1
            for item in page["items"]:
                writer.writerow([item.get(c) if item.get(c) is not None else "" for c in COLUMNS])
                rows += 1
            if out.tell() > MAX_CSV_BYTES:
                raise FatalError(
                    f"the report passed {MAX_CSV_BYTES} bytes after {rows} jobs: "
                    "narrow it with a status or kind"
                )
            cursor = page.get("next_cursor")
            last = not cursor or not page["items"]
            # The total is known only on the last page (the API has no count).
            await job.progress(
                rows,
                rows if last else None,
                f"page {page_no}: {rows} jobs listed" + (", done" if last else ""),
            )
            if last:
                break
            if PAGE_DELAY:
                await asyncio.sleep(PAGE_DELAY)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    filename = f"jobs-{job.tenant}-{status or 'all'}{'-' + kind if kind else ''}-{stamp}.csv"
    return {"filename": filename, "rows": rows, "csv": out.getvalue()}


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("serving %s at %s (page size %d)", KIND, URL, PAGE_SIZE)
    asyncio.run(worker.run())
    log.info("stopped")
