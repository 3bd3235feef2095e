"""Workers over the HTTP worker protocol, against a real server. Every test serves kinds of its
own, so jobs of one test never reach another's worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import ApiError, Client, FatalError, Job, Worker
from harness import WORKER_SCOPES, Conveyor, eventually, new_worker, running, wait_status

TERMINAL = {"dev.conveyor.job.succeeded", "dev.conveyor.job.dead_lettered", "dev.conveyor.job.cancelled"}
CHILD = Path(__file__).with_name("child_worker.py")


async def timeline_types(client: Client, job_id: str) -> list[str]:
    return [e["type"].removeprefix("dev.conveyor.") for e in await client.timeline(job_id)]


async def settled_timeline(client: Client, job_id: str) -> list[dict]:
    """The job's timeline once its terminal event is in it."""

    async def check():
        events = await client.timeline(job_id)
        return events if any(e["type"] in TERMINAL for e in events) else None

    return await eventually(check, what=f"the terminal event of {job_id}")


def kind(name: str) -> str:
    return f"sdk.{name}_{uuid.uuid4().hex[:8]}"


async def test_success(server: Conveyor, client: Client) -> None:
    k = kind("echo")
    worker = new_worker(server, name="py-echo")

    @worker.handle(k, schema={"type": "object"})
    async def echo(job: Job) -> Any:
        return {"echo": job.payload, "attempt": job.attempt, "kind": job.kind}

    async with running(worker):
        job = await client.submit(k, {"hello": "world"})
        done = await wait_status(client, job["id"], "succeeded")
    assert done["result"] == {"echo": {"hello": "world"}, "attempt": 1, "kind": k}
    events = await client.timeline(job["id"])
    types = [e["type"].removeprefix("dev.conveyor.") for e in events]
    assert types == ["job.submitted", "job.started", "job.succeeded"]
    assert events[1]["data"].get("worker") == "py-echo"


async def test_retry_then_success(server: Conveyor, client: Client) -> None:
    k = kind("flaky")
    worker = new_worker(server)
    attempts: list[int] = []

    @worker.handle(k)
    async def flaky(job: Job) -> str:
        attempts.append(job.attempt)
        if job.attempt == 1:
            raise RuntimeError("upstream answered 503")
        return "ok"

    async with running(worker):
        job = await client.submit(k, {}, max_attempts=3)
        done = await wait_status(client, job["id"], "succeeded")
    assert done["attempt"] == 2 and done["result"] == "ok"
    assert attempts == [1, 2]
    events = await client.timeline(job["id"])
    types = [e["type"].removeprefix("dev.conveyor.") for e in events]
    assert types.count("job.failed") == 1 and "job.retry_scheduled" in types
    failed = next(e for e in events if e["type"].endswith("job.failed"))
    assert failed["data"]["error"]["class"] == "retryable"
    assert "upstream answered 503" in failed["data"]["error"]["message"]
    assert types[-1] == "job.succeeded"


async def test_dead_letters(server: Conveyor, client: Client) -> None:
    fatal_kind, failing_kind = kind("fatal"), kind("failing")
    worker = new_worker(server)

    class NotFatal(Exception):
        fatal = False

    class AlsoFatal(Exception):
        fatal = True

    @worker.handle(fatal_kind)
    async def fatal(job: Job) -> None:
        if job.payload.get("attr"):
            raise AlsoFatal("bad input, by attribute")
        raise FatalError("bad input")

    @worker.handle(failing_kind)
    async def failing(job: Job) -> None:
        raise NotFatal(f"attempt {job.attempt} failed")

    async with running(worker):
        a = await client.submit(fatal_kind, {}, max_attempts=5)
        b = await client.submit(fatal_kind, {"attr": True}, max_attempts=5)
        c = await client.submit(failing_kind, {}, max_attempts=3)
        for job_id in (a["id"], b["id"], c["id"]):
            await wait_status(client, job_id, "failed")
    for job_id in (a["id"], b["id"]):
        job = await client.get(job_id)
        assert job["attempt"] == 1 and job["error"]["class"] == "fatal"
        types = await timeline_types(client, job_id)
        assert types.count("job.failed") == 1 and types[-1] == "job.dead_lettered"
    job = await client.get(c["id"])
    assert job["attempt"] == 3 and job["error"]["class"] == "retryable"
    types = await timeline_types(client, c["id"])
    assert types.count("job.failed") == 3 and types.count("job.retry_scheduled") == 2
    assert types[-1] == "job.dead_lettered"


async def test_cancel_while_running(server: Conveyor, client: Client) -> None:
    k = kind("slow")
    worker = new_worker(server)
    started = asyncio.Event()
    seen: dict[str, Any] = {}

    @worker.handle(k)
    async def slow(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["cancelled_error"] = True
            seen["event"] = job.cancelled.is_set()
            seen["reason"] = job.cancel_reason
            raise

    async with running(worker):
        job = await client.submit(k, {})
        await asyncio.wait_for(started.wait(), 30)
        await client.cancel(job["id"])
        await wait_status(client, job["id"], "cancelled")
        events = await settled_timeline(client, job["id"])
    assert seen == {"cancelled_error": True, "event": True, "reason": "cancelled"}
    types = [e["type"].removeprefix("dev.conveyor.") for e in events]
    assert "job.cancel_requested" in types and types[-1] == "job.cancelled"
    assert sum(e["type"] in TERMINAL for e in events) == 1


async def test_deadline_fails_the_attempt_as_timeout(server: Conveyor, client: Client) -> None:
    k = kind("deadline")
    worker = new_worker(server)
    reasons: list[str | None] = []

    @worker.handle(k)
    async def stuck(job: Job) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            reasons.append(job.cancel_reason)

    async with running(worker):
        job = await client.submit(k, {}, timeout_ms=1000, max_attempts=1)
        done = await wait_status(client, job["id"], "failed")
    assert reasons == ["timeout"]
    assert done["error"]["class"] == "timeout"


def spawn_child(server: Conveyor, k: str, grace_ms: int) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHILD.parent), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(CHILD), server.url, server.token(WORKER_SCOPES), k, str(grace_ms)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def read_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 30) -> str:
    assert proc.stdout is not None

    def read() -> str:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"the child exited ({proc.wait()}) before printing {prefix!r}: {proc.stderr.read() if proc.stderr else ''}")

    return await asyncio.wait_for(asyncio.to_thread(read), timeout)


async def test_lease_expiry_after_a_killed_worker(server: Conveyor, client: Client) -> None:
    k = kind("crash")
    child = spawn_child(server, k, 2000)
    try:
        # The child registers the kind; submit once the API accepts it.
        async def submit() -> dict | None:
            try:
                return dict(await client.submit(k, {"n": 1}))
            except ApiError as e:
                if e.status == 422:
                    return None
                raise

        job = await eventually(submit, what="the child's kind to be registered")
        line = await read_line(child, "STARTED")
        assert line == f"STARTED {job['id']}"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    worker = new_worker(server)
    runs: list[int] = []

    @worker.handle(k)
    async def second(job: Job) -> dict[str, str]:
        runs.append(job.attempt)
        return {"by": "second"}

    async with running(worker):
        done = await wait_status(client, job["id"], "succeeded")
    assert done["result"] == {"by": "second"}
    assert runs == [1]  # the same attempt, handed to another worker once the lease expired
    events = await settled_timeline(client, job["id"])
    assert sum(e["type"] in TERMINAL for e in events) == 1
    assert [e["type"] for e in events].count("dev.conveyor.job.failed") == 0


async def test_stale_completion_adds_nothing(server: Conveyor, client: Client) -> None:
    k = kind("stale")
    token = server.token(WORKER_SCOPES)
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as raw:
        r = await raw.put(f"/v1/workers/kinds/{k}", json={"schema": None})
        assert r.status_code == 200, r.text
        job = await client.submit(k, {"n": 1})
        r = await raw.post("/v1/workers/lease", json={"kinds": [k], "max_jobs": 1, "wait_ms": 10000, "worker": "raw"})
        assert r.status_code == 200, r.text
        leased = r.json()["jobs"]
        assert [j["id"] for j in leased] == [job["id"]]
        first_lease = leased[0]["lease"]
        # No heartbeat: the lease expires (~2 s) and another worker completes the job.
        worker = new_worker(server)

        @worker.handle(k)
        async def second(j: Job) -> str:
            return "second"

        async with running(worker):
            await wait_status(client, job["id"], "succeeded")
        before = await settled_timeline(client, job["id"])
        r = await raw.post(f"/v1/workers/jobs/{job['id']}/complete", json={"lease": first_lease, "result": "first"})
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await raw.post(f"/v1/workers/jobs/{job['id']}/fail", json={"lease": first_lease, "error": {"message": "late", "class": "fatal"}})
        assert r.status_code == 409, r.text
        r = await raw.post("/v1/workers/complete", json={"jobs": [{"id": job["id"], "lease": first_lease, "result": "first"}]})
        assert r.status_code == 200, r.text
        assert r.json()["jobs"][0]["status"] == "lease_lost"
    after = await client.timeline(job["id"])
    assert [e["id"] for e in after] == [e["id"] for e in before]
    assert sum(e["type"] in TERMINAL for e in after) == 1
    assert (await client.get(job["id"]))["result"] == "second"


async def test_lost_lease_aborts_the_handler_and_drops_the_job(server: Conveyor, client: Client) -> None:
    k = kind("frozen")
    worker = new_worker(server, concurrency=2)
    reasons: list[str | None] = []

    @worker.handle(k)
    async def frozen(job: Job) -> str:
        if not reasons:
            reasons.append(None)
            time.sleep(2.6)  # the whole process freezes past the lease (2 s): no heartbeat
            try:
                await asyncio.sleep(30)
            finally:
                reasons[0] = job.cancel_reason
        return "second delivery"

    async with running(worker):
        job = await client.submit(k, {})
        done = await wait_status(client, job["id"], "succeeded")
    assert reasons == ["lease_lost"]
    assert done["result"] == "second delivery" and done["attempt"] == 1
    events = await settled_timeline(client, job["id"])
    types = [e["type"] for e in events]
    assert "dev.conveyor.job.failed" not in types
    assert sum(t in TERMINAL for t in types) == 1


async def test_large_result(server: Conveyor, client: Client) -> None:
    k = kind("big")
    worker = new_worker(server)
    blob = {"rows": [{"i": i, "text": "x" * 90} for i in range(400)]}  # about 40 KiB

    @worker.handle(k)
    async def big(job: Job) -> Any:
        return blob

    async with running(worker):
        job = await client.submit(k, {})
        done = await wait_status(client, job["id"], "succeeded")
    assert done.get("result") is None and done.get("result_url") == f"/v1/jobs/{job['id']}/result"
    assert await client.result(job["id"]) == blob


async def test_progress_in_the_timeline(server: Conveyor, client: Client) -> None:
    k = kind("progress")
    worker = new_worker(server)

    @worker.handle(k)
    async def steps(job: Job) -> str:
        for i in range(1, 4):
            await job.progress(i, 3, f"step {i}")
        return "done"

    async with running(worker):
        job = await client.submit(k, {})
        done = await wait_status(client, job["id"], "succeeded")
    progressed = [e["data"] for e in await client.timeline(job["id"]) if e["type"].endswith("job.progressed")]
    assert [(p["current"], p.get("total"), p.get("message")) for p in progressed] == [
        (1, 3, "step 1"),
        (2, 3, "step 2"),
        (3, 3, "step 3"),
    ]
    assert done["progress"]["current"] == 3


async def test_sigterm_hands_the_job_back(server: Conveyor, client: Client) -> None:
    k = kind("term")
    child = spawn_child(server, k, 300)
    try:
        async def submit() -> dict | None:
            try:
                return dict(await client.submit(k, {"n": 1}))
            except ApiError as e:
                if e.status == 422:
                    return None
                raise

        job = await eventually(submit, what="the child's kind to be registered")
        assert await read_line(child, "STARTED") == f"STARTED {job['id']}"
        child.send_signal(signal.SIGTERM)
        assert await read_line(child, "STOPPED") == "STOPPED"
        code = await asyncio.to_thread(child.wait, 20)
        assert code == 0
        logs = child.stderr.read() if child.stderr else ""
        assert f"job {job['id']}: handed back" in logs, logs
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    worker = new_worker(server)

    @worker.handle(k)
    async def finish(j: Job) -> dict[str, str]:
        return {"by": "second"}

    async with running(worker):
        done = await wait_status(client, job["id"], "succeeded")
    assert done["result"] == {"by": "second"} and done["attempt"] == 1
    events = await settled_timeline(client, job["id"])
    assert sum(e["type"] in TERMINAL for e in events) == 1


async def test_payload_schema_is_enforced(server: Conveyor, client: Client) -> None:
    k = kind("schema")
    worker = new_worker(server)
    schema = {"type": "object", "required": ["month"], "properties": {"month": {"type": "string"}}}

    @worker.handle(k, schema=schema)
    async def report(job: Job) -> str:
        return job.payload["month"]

    async with running(worker):
        listed = {x["kind"]: x for x in await client.kinds()}
        assert listed[k]["schema"] == schema and listed[k]["builtin"] is False
        with pytest.raises(ApiError) as info:
            await client.submit(k, {"month": 10})
        assert info.value.status == 422 and info.value.detail
        with pytest.raises(ApiError) as info:
            await client.submit(k, {})
        assert info.value.status == 422
        job = await client.submit(k, {"month": "2026-10"})
        done = await wait_status(client, job["id"], "succeeded")
    assert done["result"] == "2026-10"


async def test_reports_of_jobs_ending_together_are_batched(server: Conveyor, client: Client) -> None:
    k = kind("together")
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    http = httpx.AsyncClient(event_hooks={"request": [record]})
    worker = new_worker(server, concurrency=10, http_client=http)
    gate = asyncio.Event()
    arrived = 0

    @worker.handle(k)
    async def together(job: Job) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == 10:
            gate.set()
        await gate.wait()
        if job.payload["n"] % 2:
            raise FatalError("odd")
        return int(job.payload["n"])

    try:
        async with running(worker):
            batch = await client.submit_batch([{"kind": k, "payload": {"n": n}} for n in range(10)])
            ids = [item["job"]["id"] for item in batch["items"]]
            for n, job_id in enumerate(ids):
                done = await wait_status(client, job_id, "failed" if n % 2 else "succeeded")
                if n % 2 == 0:
                    assert done["result"] == n
    finally:
        await http.aclose()
    assert "/v1/workers/complete" in paths, paths
    assert "/v1/workers/fail" in paths, paths


async def test_worker_refused_without_the_scope(server: Conveyor) -> None:
    worker = Worker(server.url, server.token("jobs:read"), handle_signals=False)

    @worker.handle(kind("refused"))
    async def never(job: Job) -> None:
        raise AssertionError("never runs")

    with pytest.raises(ApiError) as info:
        await asyncio.wait_for(worker.run(), 30)
    assert info.value.status == 403
