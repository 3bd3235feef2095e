"""Workflows through the client and the worker, against a real server (docs/workflows.md):
dependencies between jobs (a diamond run by the SDK's worker, whose handlers compute from
``job.upstream``; a failed dependency cancels its dependents unrun), and batches with a callback
(created open, filled, sealed, followed with ``get_batch`` and ``list_batch_jobs``, the callback
told the members' outcomes; another batch cancelled, also while a member still runs;
idempotent repeats); a result too large to pass on is linked (``result_url``); cycles through a
batch are refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from conveyor import ApiError, Client, FatalError, Job, Worker
from harness import WORKER_SCOPES, Conveyor, ended, eventually, running, waiting_for, wait_status
from harness import new_worker as harness_worker

UNKNOWN = "0190a5c4-0000-7000-8000-000000000000"


def new_worker(server: Conveyor, **options: Any) -> Worker:
    return harness_worker(server, shutdown_grace_ms=2000, **options)


def kind(name: str) -> str:
    return f"wf.{name}_{uuid.uuid4().hex[:8]}"


async def event_data(client: Client, job_id: str, short: str) -> dict[str, Any]:
    """The ``data`` of the job's event ``short`` (``job.cancelled``) once the read model has it."""

    async def check() -> dict[str, Any] | None:
        for e in await client.timeline(job_id):
            if e["type"] == f"dev.conveyor.{short}":
                return dict(e["data"])
        return None

    return await eventually(check, what=f"the {short} of {job_id}")


async def time_of(client: Client, job_id: str, short: str) -> datetime:
    events = [e for e in await client.timeline(job_id) if e["type"] == f"dev.conveyor.{short}"]
    assert events, f"no {short} for job {job_id}"
    return datetime.fromisoformat(events[0]["time"].replace("Z", "+00:00"))


async def types_of(client: Client, job_id: str) -> list[str]:
    return [e["type"].removeprefix("dev.conveyor.") for e in await client.timeline(job_id)]


async def test_a_diamond_run_by_the_sdk_worker_computes_from_upstream(
    server: Conveyor, client: Client
) -> None:
    source, double, add, total = kind("source"), kind("double"), kind("add"), kind("sum")
    release = asyncio.Event()
    seen: dict[str, Job] = {}
    worker = new_worker(server)

    def dependency(job: Job, i: int) -> dict[str, Any]:
        assert job.upstream is not None, f"job {job.id} has no upstream"
        dep = dict(job.upstream["dependencies"][i])
        assert dep["status"] == "succeeded", dep
        return dep

    @worker.handle(source)
    async def run_source(job: Job) -> Any:
        seen["source"] = job
        await release.wait()
        return {"n": job.payload["n"]}

    @worker.handle(double)
    async def run_double(job: Job) -> Any:
        seen["double"] = job
        return {"n": dependency(job, 0)["result"]["n"] * 2}

    @worker.handle(add)
    async def run_add(job: Job) -> Any:
        seen["add"] = job
        return {"n": dependency(job, 0)["result"]["n"] + job.payload["add"]}

    @worker.handle(total)
    async def run_sum(job: Job) -> Any:
        seen["sum"] = job
        assert job.upstream is not None
        deps = job.upstream["dependencies"]
        return {"sum": sum(d["result"]["n"] for d in deps), "from": [d["id"] for d in deps]}

    async with running(worker):
        a = await client.submit(source, {"n": 5})
        b = await client.submit(double, {}, depends_on=[a["id"]])
        c = await client.submit(add, {"add": 3}, depends_on=[a["id"]])
        # Named twice counts once.
        d = await client.submit(total, {}, depends_on=[b["id"], c["id"], b["id"]])

        # While A runs (held by its handler), the others wait for their dependencies.
        await wait_status(client, a["id"], "running")
        held = await waiting_for(client, d["id"], "dependencies")
        assert held["status"] == "queued", "waiting never changes the status"
        assert held["depends_on"] == [b["id"], c["id"]]
        assert "batch" not in held and "is_batch" not in held
        assert (await waiting_for(client, b["id"], "dependencies"))["depends_on"] == [a["id"]]
        assert "depends_on" not in await client.get(a["id"]), "a job of no dependency shows none"

        release.set()
        done = await wait_status(client, d["id"], "succeeded")

    # B = 5 × 2, C = 5 + 3; D = B + C, its dependencies in the order named.
    assert done["result"] == {"sum": 18, "from": [b["id"], c["id"]]}
    assert (await client.get(b["id"]))["result"] == {"n": 10}
    assert (await client.get(c["id"]))["result"] == {"n": 8}
    assert "waiting" not in done, "waiting is gone once it ran"

    # What each handler was told, as an attribute and as leased.
    assert seen["source"].upstream is None, "a job that waited for nothing has no upstream"
    assert seen["double"].upstream == {
        "dependencies": [{"id": a["id"], "status": "succeeded", "result": {"n": 5}}]
    }
    assert seen["double"].raw["upstream"] == seen["double"].upstream
    assert seen["sum"].upstream == {
        "dependencies": [
            {"id": b["id"], "status": "succeeded", "result": {"n": 10}},
            {"id": c["id"], "status": "succeeded", "result": {"n": 8}},
        ]
    }
    started = await time_of(client, d["id"], "job.started")
    for dep in (b, c):
        assert started >= await time_of(client, dep["id"], "job.succeeded"), "D started too early"


async def test_a_result_too_large_to_pass_on_is_linked_by_result_url(
    server: Conveyor, client: Client
) -> None:
    reader = kind("reader")
    seen: list[Any] = []
    worker = new_worker(server)

    @worker.handle(reader)
    async def run_reader(job: Job) -> Any:
        assert job.upstream is not None
        seen.append(job.upstream)
        large, small = job.upstream["dependencies"]
        # What a handler does with it: read the result where it is.
        read = await client.result(large["id"])
        return {"large": len(read), "small": small.get("result")}

    async with running(worker):
        large = await client.submit("noop", {"echo": "x" * 20000})
        small = await client.submit("noop", {"echo": "y"})
        dependent = await client.submit(reader, {}, depends_on=[large["id"], small["id"]])
        done = await ended(client, dependent["id"])

    assert done["status"] == "succeeded", done
    assert done["result"] == {"large": 20000, "small": "y"}
    assert len(seen) == 1
    told_large, told_small = seen[0]["dependencies"]
    assert told_large["id"] == large["id"] and told_large["status"] == "succeeded"
    assert "result" not in told_large, f"a result over 16 KiB is not passed on: {told_large}"
    assert told_large["result_url"] == f"/v1/jobs/{large['id']}/result"
    assert told_small == {"id": small["id"], "status": "succeeded", "result": "y"}, (
        "a small result still comes inline"
    )
    assert await client.result(large["id"]) == "x" * 20000


async def test_a_member_cannot_depend_on_its_own_batch_or_what_waits_for_it(client: Client) -> None:
    batch = await client.create_batch([{"kind": "noop", "payload": {"echo": 0}}], seal=False)
    batch_id = batch["id"]
    with pytest.raises(ApiError) as info:
        await client.add_batch_jobs(batch_id, [{"kind": "noop", "depends_on": [batch_id]}])
    assert info.value.status == 422, info.value.detail
    assert info.value.detail.startswith("jobs[0]: "), info.value.detail
    after = await client.submit("noop", {"echo": "after"}, depends_on=[batch_id])
    # The check sees what the read model shows: once it holds the job that waits for the batch.
    await waiting_for(client, after["id"], "dependencies")
    with pytest.raises(ApiError) as info:
        await client.add_batch_jobs(batch_id, [{"kind": "noop", "depends_on": [after["id"]]}])
    assert info.value.status == 422, info.value.detail
    # Nothing was added; the batch goes on.
    assert (await client.seal_batch(batch_id))["sealed"] is True
    done = await ended(client, batch_id)
    assert done["status"] == "succeeded"
    assert done["result"] == {"total": 1, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert (await ended(client, after["id"]))["status"] == "succeeded"


async def test_a_failed_dependency_cancels_its_dependents_unrun(
    server: Conveyor, client: Client
) -> None:
    never = kind("never")
    ran: list[str] = []
    worker = new_worker(server)

    @worker.handle(never)
    async def run_never(job: Job) -> Any:
        ran.append(job.id)
        return "ran"

    async with running(worker):
        failing = await client.submit("fail", {"fatal": True})
        # depends_on on each job of submit_batch: each answered on its own.
        batch = await client.submit_batch(
            [
                {"kind": never, "payload": {"n": 1}, "depends_on": [failing["id"]]},
                {"kind": never, "payload": {"n": 2}, "depends_on": [UNKNOWN]},
            ]
        )
        assert [i["status"] for i in batch["items"]] == [202, 422]
        assert "depends_on" in batch["items"][1]["problem"]["detail"]
        dependent = batch["items"][0]["job"]
        transitive = await client.submit(never, {"n": 3}, depends_on=(dependent["id"],))

        assert (await ended(client, failing["id"]))["status"] == "failed"
        assert (await ended(client, dependent["id"]))["status"] == "cancelled"
        assert (await ended(client, transitive["id"]))["status"] == "cancelled"
    assert await event_data(client, dependent["id"], "job.cancelled") == {
        "reason": f"dependency {failing['id']} failed"
    }
    assert await event_data(client, transitive["id"], "job.cancelled") == {
        "reason": f"dependency {dependent['id']} cancelled"
    }
    for job_id in (dependent["id"], transitive["id"]):
        assert "job.started" not in await types_of(client, job_id), job_id
    assert ran == [], "no handler ran"

    with pytest.raises(ApiError) as info:
        await client.submit("noop", {}, depends_on=[UNKNOWN])
    assert info.value.status == 422
    assert f"depends_on: no job {UNKNOWN}" in info.value.detail, info.value.detail
    with pytest.raises(ApiError) as info:
        await client.submit("noop", {}, depends_on=[str(uuid.uuid4()) for _ in range(33)])
    assert info.value.status == 422


async def test_a_batch_created_open_filled_sealed_with_a_callback_handled_by_the_sdk(
    server: Conveyor, client: Client
) -> None:
    part, report = kind("part"), kind("report")
    told: list[Job] = []
    worker = new_worker(server)

    @worker.handle(part)
    async def run_part(job: Job) -> Any:
        if job.payload.get("fail"):
            raise FatalError(f"part {job.payload['n']} is broken")
        return job.payload["n"] * 10

    @worker.handle(report)
    async def run_report(job: Job) -> Any:
        assert job.upstream is not None and "members" in job.upstream, job.upstream
        told.append(job)
        m = job.upstream["members"]
        counts = {k: m[k] for k in ("total", "succeeded", "failed", "cancelled")}
        return {"title": job.payload["title"], **counts, "jobs": m.get("jobs")}

    parts = [{"kind": part, "payload": {"n": n}} for n in (1, 2, 3)]
    async with running(worker):
        batch = await client.create_batch(
            parts, callback={"kind": report, "payload": {"title": "parts"}}, seal=False
        )
        batch_id = batch["id"]
        assert batch["repeated"] is False
        assert batch["sealed"] is False
        assert len(batch["jobs"]) == 3
        assert batch["links"] == {
            "self": f"/v1/batches/{batch_id}",
            "jobs": f"/v1/batches/{batch_id}/jobs",
            "callback": f"/v1/jobs/{batch_id}",
        }

        # Its members run; the callback waits for the seal.
        async def three_done() -> dict[str, Any] | None:
            b = await client.get_batch(batch_id)
            return dict(b) if b["members"]["succeeded"] == 3 else None

        progress = await eventually(three_done, what="the first three members to succeed")
        assert progress["id"] == batch_id
        assert progress["kind"] == report
        assert progress["status"] == "queued"
        assert progress["sealed"] is False and progress["sealed_at"] is None
        assert progress["result"] is None
        assert progress["members"] == {
            "total": 3, "queued": 0, "running": 0, "retry_scheduled": 0,
            "succeeded": 3, "failed": 0, "cancelled": 0,
        }
        callback_job = await waiting_for(client, batch_id, "batch")
        assert callback_job["is_batch"] is True and callback_job["kind"] == report
        assert told == [], "the callback does not run before the seal"
        assert (await client.get(batch["jobs"][0]))["batch"] == batch_id, "a member names its batch"

        # The last page seals it.
        added = await client.add_batch_jobs(
            batch_id,
            [
                {"kind": part, "payload": {"n": 4}},
                {"kind": part, "payload": {"n": 5, "fail": True}, "max_attempts": 1},
            ],
            seal=True,
        )
        assert added["id"] == batch_id and added["sealed"] is True and len(added["jobs"]) == 2
        members = batch["jobs"] + added["jobs"]
        done = await ended(client, batch_id)

    assert done["status"] == "succeeded", done
    assert done["result"] == {
        "title": "parts",
        "total": 5,
        "succeeded": 4,
        "failed": 1,
        "cancelled": 0,
        "jobs": [{"id": m, "status": "failed" if i == 4 else "succeeded"} for i, m in enumerate(members)],
    }
    assert len(told) == 1, "the callback ran once"
    assert "dependencies" not in told[0].upstream  # type: ignore[operator]

    view = await client.get_batch(batch_id)
    assert view["status"] == "succeeded" and view["sealed"] is True
    assert view["sealed_at"] is not None and view["sealed_at"] >= view["created_at"]
    assert view["finished_at"] is not None
    assert view["members"] == {
        "total": 5, "queued": 0, "running": 0, "retry_scheduled": 0,
        "succeeded": 4, "failed": 1, "cancelled": 0,
    }
    assert view["result"] == done["result"]
    assert "job.sealed" in await types_of(client, batch_id)
    assert "sealed_at" in await client.get(batch_id)

    # Its members in submission order, two a page.
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await client.list_batch_jobs(batch_id, limit=2, cursor=cursor)
        pages.append([j["id"] for j in page["items"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == [members[:2], members[2:4], members[4:]]
    listed = [j async for j in client.list_all_batch_jobs(batch_id, limit=2)]
    assert [j["id"] for j in listed] == members
    assert all(j["batch"] == batch_id for j in listed)
    failed = await client.list_batch_jobs(batch_id, status="failed")
    assert [(j["id"], j["status"]) for j in failed["items"]] == [(added["jobs"][1], "failed")]
    assert failed["next_cursor"] is None

    # Sealed: no member can be added; sealing again changes nothing.
    with pytest.raises(ApiError) as info:
        await client.add_batch_jobs(batch_id, parts)
    assert info.value.status == 409
    assert (await client.seal_batch(batch_id))["sealed"] is True
    # A job that is no batch is a 404 here.
    with pytest.raises(ApiError) as info:
        await client.get_batch(members[0])
    assert info.value.status == 404


async def test_cancelling_a_batch(server: Conveyor, client: Client) -> None:
    hold, never = kind("hold"), kind("never_callback")
    started = asyncio.Event()
    reasons: list[str | None] = []
    callback_ran: list[str] = []
    worker = new_worker(server)

    @worker.handle(hold)
    async def run_hold(job: Job) -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            reasons.append(job.cancel_reason)
        return "too late"

    @worker.handle(never)
    async def run_never(job: Job) -> Any:
        callback_ran.append(job.id)

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    async with running(worker):
        batch = await client.create_batch(
            [
                {"kind": hold, "payload": {}},
                {"kind": "noop", "payload": {"echo": 1}, "run_at": later},
                {"kind": "noop", "payload": {"echo": 2}, "run_at": later},
            ],
            callback={"kind": never},
        )
        batch_id = batch["id"]
        assert batch["sealed"] is True, "sealed by default"
        await asyncio.wait_for(started.wait(), 30)

        async def all_three() -> bool:
            return (await client.get_batch(batch_id))["members"]["total"] == 3

        await eventually(all_three, what="the members in the read model")
        assert await client.cancel_batch(batch_id) == {
            "id": batch_id, "cancelled": 3, "more": False,
        }
        assert (await ended(client, batch_id))["status"] == "cancelled"
        for member in batch["jobs"]:
            assert (await ended(client, member))["status"] == "cancelled", member
    assert reasons == ["cancelled"], "the running member saw its cancellation"
    assert callback_ran == []

    async def counted() -> dict[str, Any] | None:
        b = await client.get_batch(batch_id)
        return dict(b) if b["members"]["cancelled"] == 3 else None

    view = await eventually(counted, what="the members counted cancelled")
    assert view["status"] == "cancelled" and view["result"] is None
    with pytest.raises(ApiError) as info:
        await client.cancel_batch(batch_id)
    assert info.value.status == 409, "the batch already ended"
    with pytest.raises(ApiError) as info:
        await client.add_batch_jobs(batch_id, [{"kind": "noop"}])
    assert info.value.status == 409, "no member can be added to a cancelled batch"


async def test_cancelling_a_batch_whose_member_still_runs(server: Conveyor, client: Client) -> None:
    """A repeat while a member is open answers 202 again; 409 only once every member ended."""
    member_kind = kind("raw_member")
    token = server.token(WORKER_SCOPES)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as raw:
        r = await raw.put(f"/v1/workers/kinds/{member_kind}", json={"schema": None})
        assert r.status_code == 200, r.text
        batch = await client.create_batch(
            [
                {"kind": member_kind, "payload": {}},
                {"kind": "noop", "payload": {"echo": 1}, "run_at": later},
            ]
        )
        batch_id = batch["id"]
        member, waiting = batch["jobs"]
        r = await raw.post(
            "/v1/workers/lease",
            json={"kinds": [member_kind], "max_jobs": 1, "wait_ms": 10000, "worker": "raw"},
        )
        assert r.status_code == 200, r.text
        assert [j["id"] for j in r.json()["jobs"]] == [member]
        lease = r.json()["jobs"][0]["lease"]
        cancel_seen = asyncio.Event()

        async def beat() -> None:
            # Keeps the lease (and learns of the cancellation) until the test reports.
            nonlocal lease
            while True:
                r = await raw.post(f"/v1/workers/jobs/{member}/heartbeat", json={"lease": lease})
                assert r.status_code == 200, r.text
                lease = r.json()["lease"]
                if r.json()["cancelled"]:
                    cancel_seen.set()
                await asyncio.sleep(0.2)

        beats = asyncio.create_task(beat())
        try:

            async def member_running() -> bool:
                m = (await client.get_batch(batch_id))["members"]
                return m["total"] == 2 and m["running"] == 1

            await eventually(member_running, what="the member running in the read model")
            assert await client.cancel_batch(batch_id) == {
                "id": batch_id, "cancelled": 2, "more": False,
            }
            assert (await ended(client, batch_id))["status"] == "cancelled", "the callback first"
            assert (await ended(client, waiting))["status"] == "cancelled"
            # The running member has not ended (no report yet): the batch is not done.
            assert (await client.get(member))["status"] == "running"
            # A 202 again, asking nothing new: the running member was asked already.
            assert await client.cancel_batch(batch_id) == {
                "id": batch_id, "cancelled": 0, "more": False,
            }, "a 202 again"
            await asyncio.wait_for(cancel_seen.wait(), 30)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
        r = await raw.post(
            f"/v1/workers/jobs/{member}/fail",
            json={"lease": lease, "error": {"class": "cancelled", "message": "batch cancelled"}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled"

    async def both_cancelled() -> bool:
        return (await client.get_batch(batch_id))["members"]["cancelled"] == 2

    await eventually(both_cancelled, what="both members counted cancelled")
    with pytest.raises(ApiError) as info:
        await client.cancel_batch(batch_id)
    assert info.value.status == 409, "the batch and every member ended"


async def test_a_batch_without_callback_and_idempotent_repeats(client: Client) -> None:
    members = [
        {"kind": "noop", "payload": {"echo": 1}},
        {"kind": "fail", "payload": {"fatal": True}},
        {"kind": "noop", "payload": {"echo": 3}},
    ]
    key = f"wf-batch-{time.time_ns()}"
    batch = await client.create_batch(members, idempotency_key=key)
    assert batch["repeated"] is False
    again = await client.create_batch(members, idempotency_key=key)
    assert again["repeated"] is True, "a repeat is 200"
    assert again["id"] == batch["id"] and again["jobs"] == batch["jobs"]

    done = await ended(client, batch["id"])
    assert done["status"] == "succeeded" and done["kind"] == "batch"
    assert done["result"] == {"total": 3, "succeeded": 2, "failed": 1, "cancelled": 0}
    view = await client.get_batch(batch["id"])
    assert view["kind"] == "batch" and view["result"] == done["result"]
    listed = [j["id"] async for j in client.list_all_batch_jobs(batch["id"])]
    assert listed == batch["jobs"], "each member listed once, in submission order"

    # The same key with another body is a conflict.
    with pytest.raises(ApiError) as info:
        await client.create_batch(members[1:], idempotency_key=key)
    assert info.value.status == 409
    # One member refused refuses the request, naming it; nothing is submitted.
    with pytest.raises(ApiError) as info:
        await client.create_batch([{"kind": "noop"}, {"kind": "no.such.kind"}])
    assert info.value.status == 422
    assert info.value.detail.startswith("jobs[1]: "), info.value.detail


async def test_members_with_an_idempotency_key_list_in_order_and_a_repeated_page_is_a_200(
    client: Client,
) -> None:
    members = [{"kind": "noop", "payload": {"echo": i}} for i in range(8)]
    batch = await client.create_batch(
        members, idempotency_key=f"wf-order-{time.time_ns()}", seal=False
    )
    page = [{"kind": "noop", "payload": {"echo": 10 + i}} for i in range(5)]
    page_key = f"wf-page-{time.time_ns()}"
    added = await client.add_batch_jobs(batch["id"], page, idempotency_key=page_key)
    assert added["repeated"] is False, "a new page is a 202"
    again = await client.add_batch_jobs(batch["id"], page, idempotency_key=page_key)
    assert again["repeated"] is True, "a repeated page is a 200"
    assert again["jobs"] == added["jobs"], "the same member ids"
    # Another page under the key, or the same page with another `seal`, is another request.
    for other, seal in ((page[1:], None), (page, True)):
        with pytest.raises(ApiError) as info:
            await client.add_batch_jobs(batch["id"], other, idempotency_key=page_key, seal=seal)
        assert info.value.status == 409
    assert (await client.seal_batch(batch["id"]))["sealed"] is True
    # Even after the seal, the repeated page answers the same.
    late = await client.add_batch_jobs(batch["id"], page, idempotency_key=page_key)
    assert late["repeated"] is True and late["jobs"] == added["jobs"] and late["sealed"] is True

    done = await ended(client, batch["id"])
    assert done["result"] == {"total": 13, "succeeded": 13, "failed": 0, "cancelled": 0}, (
        "the repeated page added its members once"
    )
    listed = [j["id"] async for j in client.list_all_batch_jobs(batch["id"], limit=3)]
    assert listed == batch["jobs"] + added["jobs"]
