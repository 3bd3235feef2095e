"""Child jobs through the worker and the client, against a real server (docs/workflows.md): a
handler run by the SDK's worker submits children with a continuation (``then``, a kind the same
worker serves, told how they ended in ``upstream["members"]``); a handler that waits for its
children (``job.wait_for_children()``) frees its slot, and its next attempt is told how they
ended in ``upstream["children"]``; idempotent repeats (a key given, and the SDK's own key when an
answer is lost, of children or of a wait); cycles through a parent refused; the built-in
``fan_out`` as a reference, and its limits."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from conveyor import ApiError, Client, Job, LeaseLostError, WaitForChildren, Worker
from harness import WORKER_SCOPES, Conveyor, ended, eventually, running, waiting_for, wait_status
from harness import new_worker as harness_worker

UNKNOWN = "0190a5c4-0000-7000-8000-000000000000"


def new_worker(server: Conveyor, **options: Any) -> Worker:
    return harness_worker(server, shutdown_grace_ms=2000, **options)


def kind(name: str) -> str:
    return f"ch.{name}_{uuid.uuid4().hex[:8]}"


async def children_of(client: Client, job_id: str, **options: Any) -> list[dict[str, Any]]:
    return [dict(j) async for j in client.list_all_children(job_id, **options)]


async def types_of(client: Client, job_id: str) -> list[str]:
    return [e["type"].removeprefix("dev.conveyor.") for e in await client.timeline(job_id)]


async def time_of(client: Client, job_id: str, short: str) -> datetime:
    events = [e for e in await client.timeline(job_id) if e["type"] == f"dev.conveyor.{short}"]
    assert events, f"no {short} for job {job_id}"
    return datetime.fromisoformat(events[0]["time"].replace("Z", "+00:00"))


def recording_client(server: Conveyor, calls: list[tuple[float, str, str]]) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for a worker that records ``(time, method, path)`` of each request."""

    async def record(request: httpx.Request) -> None:
        calls.append((time.monotonic(), request.method, request.url.path))

    return httpx.AsyncClient(base_url=server.url, event_hooks={"request": [record]})


async def test_children_with_a_continuation_the_same_worker_runs(
    server: Conveyor, client: Client
) -> None:
    parent_kind, merge_kind = kind("parent"), kind("merge")
    seen: dict[str, Any] = {}
    worker = new_worker(server)

    @worker.handle(parent_kind)
    async def run_parent(job: Job) -> Any:
        children = [{"kind": "noop", "payload": {"echo": i}} for i in range(10)]
        accepted = await job.submit_children(
            children, then={"kind": merge_kind, "payload": {"title": "ten"}}
        )
        seen["accepted"] = accepted
        # The handler just ends: the continuation carries on.
        return {"submitted": len(accepted["jobs"])}

    @worker.handle(merge_kind)
    async def run_merge(job: Job) -> Any:
        seen["merge"] = job
        assert job.upstream is not None and "members" in job.upstream, job.upstream
        m = job.upstream["members"]
        return {
            "title": job.payload["title"],
            "total": m["total"],
            "succeeded": m["succeeded"],
            "ids": [j["id"] for j in m.get("jobs", [])],
        }

    async with running(worker):
        parent = await client.submit(parent_kind, {})
        done = await ended(client, parent["id"])
        assert done["status"] == "succeeded", done
        children, then = seen["accepted"]["jobs"], seen["accepted"]["then"]
        merged = await ended(client, then)

    assert done["result"] == {"submitted": 10} and done["attempt"] == 1
    assert len(children) == 10 and len(set(children)) == 10
    assert merged["status"] == "succeeded", merged
    assert merged["result"] == {"title": "ten", "total": 10, "succeeded": 10, "ids": children}
    assert seen["merge"].upstream == {
        "members": {
            "total": 10, "succeeded": 10, "failed": 0, "cancelled": 0,
            "jobs": [{"id": c, "status": "succeeded"} for c in children],
        }
    }
    # Each child ran with its own payload.
    for i, child_id in enumerate(children):
        assert (await client.get(child_id))["result"] == i, f"child {i}"

    # The parent's children: the continuation first (it is submitted first), then the 10 in the
    # order sent, each naming it.
    listed = await children_of(client, parent["id"], limit=4)
    assert len(listed) == 11, [j["id"] for j in listed]
    assert all(j["parent"] == parent["id"] for j in listed)
    assert [j["id"] for j in listed] == [then, *children], "continuation, then submission order"
    continuation = listed[0]
    assert continuation["kind"] == merge_kind
    assert continuation["is_batch"] is True, "the continuation is the batch of the children"
    child = await client.get(children[0])
    assert child["parent"] == parent["id"] and child["batch"] == then
    assert "parent" not in done, "a job submitted by a client has no parent"
    assert (await client.get_batch(then))["members"]["succeeded"] == 10
    # Filters and pages.
    page = await client.list_children(parent["id"], status="succeeded", limit=1000)
    assert len(page["items"]) == 11 and page["next_cursor"] is None
    assert (await client.list_children(parent["id"], status="failed"))["items"] == []
    assert (await client.list_children(children[0]))["items"] == [], "a child has none"
    with pytest.raises(ApiError) as info:
        await client.list_children(UNKNOWN)
    assert info.value.status == 404


async def test_a_handler_that_waits_for_its_children_frees_its_slot(
    server: Conveyor, client: Client
) -> None:
    waiter, other_kind = kind("waiter"), kind("other")
    runs: list[dict[str, Any]] = []
    parent_running = asyncio.Event()
    other_submitted = asyncio.Event()
    child_ids: list[str] = []
    calls: list[tuple[float, str, str]] = []
    http = recording_client(server, calls)
    worker = new_worker(server, concurrency=1, http_client=http)

    @worker.handle(waiter)
    async def run_waiter(job: Job) -> Any:
        runs.append(
            {"attempt": job.attempt, "max_attempts": job.max_attempts,
             "upstream": job.upstream, "at": time.monotonic()}
        )
        told = (job.upstream or {}).get("children")
        if told is None:
            parent_running.set()
            await other_submitted.wait()
            accepted = await job.submit_children(
                [
                    {"kind": "sleep", "payload": {"ms": 1500}},
                    {"kind": "sleep", "payload": {"ms": 1500}},
                    {"kind": "fail", "payload": {"fatal": True}},
                ]
            )
            assert "then" not in accepted
            child_ids.extend(accepted["jobs"])
            job.wait_for_children()
        counts = {k: told[k] for k in ("total", "succeeded", "failed", "cancelled")}
        return {**counts, "jobs": told.get("jobs")}

    @worker.handle(other_kind)
    async def run_other(job: Job) -> Any:
        return {"other": job.payload["n"]}

    try:
        async with running(worker):
            # One attempt allowed: the wait adds one.
            parent = await client.submit(waiter, {}, max_attempts=1)
            await asyncio.wait_for(parent_running.wait(), 30)
            # Submitted while the parent holds the only slot; it runs once the parent waits.
            other = await client.submit(other_kind, {"n": 7})
            other_submitted.set()

            async def held() -> dict[str, Any] | None:
                job = await client.get(parent["id"])
                return dict(job) if job.get("waiting", {}).get("reason") == "children" else None

            waiting = await eventually(held, timeout=15, what="the parent to wait for its children")
            assert waiting["status"] == "queued" and waiting["attempt"] == 1
            assert waiting["max_attempts"] == 2, "a wait is no failure: one more attempt"
            assert waiting["waiting"]["attempt"] == 2

            # The other kind ran to completion in the freed slot before the children ended.
            other_done = await wait_status(client, other["id"], "succeeded")
            assert other_done["result"] == {"other": 7}

            done = await ended(client, parent["id"])
    finally:
        await http.aclose()

    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and done["max_attempts"] == 2
    assert done["result"] == {
        "total": 3, "succeeded": 2, "failed": 1, "cancelled": 0,
        "jobs": [
            {"id": c, "status": "failed" if i == 2 else "succeeded"} for i, c in enumerate(child_ids)
        ],
    }
    other_ended = await time_of(client, other["id"], "job.succeeded")
    for child_id in child_ids[:2]:
        assert other_ended < await time_of(client, child_id, "job.succeeded"), child_id

    # What each attempt was told.
    assert [(r["attempt"], r["max_attempts"]) for r in runs] == [(1, 1), (2, 2)]
    assert runs[0]["upstream"] is None
    assert list(runs[1]["upstream"]) == ["children"]

    # The timeline: suspended, held for its children, started again; no failure reported.
    timeline = await client.timeline(parent["id"])
    kinds = [e["type"].removeprefix("dev.conveyor.") for e in timeline]
    assert "job.suspended" in kinds and "job.failed" not in kinds, kinds
    assert kinds.count("job.started") == 2 and kinds.count("job.succeeded") == 1, kinds
    suspended = next(e for e in timeline if e["type"] == "dev.conveyor.job.suspended")
    assert suspended["data"] == {"attempt": 1, "next_attempt": 2, "max_attempts": 2}

    # The worker reported the wait and nothing else for attempt 1, and sent nothing for the
    # parent while it waited.
    prefix = f"/v1/workers/jobs/{parent['id']}/"
    for_parent = [(at, path.removeprefix(prefix)) for at, _, path in calls if path.startswith(prefix)]
    wait_at = next(at for at, action in for_parent if action == "wait")
    assert [a for at, a in for_parent if wait_at < at < runs[1]["at"]] == []
    assert [a for _, a in for_parent if a != "heartbeat"] == ["children", "wait", "complete"]

    # Its children, each naming it; the failed one by status.
    listed = await children_of(client, parent["id"])
    assert [j["id"] for j in listed] == child_ids
    assert all(j["parent"] == parent["id"] for j in listed)
    failed = await client.list_children(parent["id"], status="failed")
    assert [(j["id"], j["kind"]) for j in failed["items"]] == [(child_ids[2], "fail")]


async def test_children_submitted_again_with_the_same_key_are_the_same(
    server: Conveyor, client: Client
) -> None:
    twice = kind("twice")
    seen: dict[str, Any] = {}
    worker = new_worker(server)

    @worker.handle(twice)
    async def run_twice(job: Job) -> Any:
        kids = [{"kind": "noop", "payload": {"echo": n}} for n in (1, 2, 3)]
        seen["first"] = await job.submit_children(kids, idempotency_key="page-1")
        seen["again"] = await job.submit_children(kids, idempotency_key="page-1")
        try:
            await job.submit_children(kids[1:], idempotency_key="page-1")
        except ApiError as e:
            seen["conflict"] = e
        seen["cancelled"] = job.cancelled.is_set()
        # No key: new children.
        seen["more"] = await job.submit_children([{"kind": "noop", "payload": {"echo": 4}}])
        return "done"

    async with running(worker):
        parent = await client.submit(twice, {})
        done = await ended(client, parent["id"])

    assert done["status"] == "succeeded", done
    assert seen["again"] == seen["first"], "the same ids"
    assert len(seen["first"]["jobs"]) == 3
    conflict = seen["conflict"]
    assert conflict.status == 409 and conflict.slug == "conflict"
    assert not isinstance(conflict, LeaseLostError)
    assert seen["cancelled"] is False, "a key conflict leaves the job running"
    assert len(seen["more"]["jobs"]) == 1 and seen["more"]["jobs"][0] not in seen["first"]["jobs"]
    # Stored once.
    listed = await children_of(client, parent["id"])
    assert [j["id"] for j in listed] == seen["first"]["jobs"] + seen["more"]["jobs"]


class _LosesFirstChildrenAnswer(httpx.AsyncBaseTransport):
    """Sends every request; the answer to the first ``children`` request is lost on its way."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.children_sent: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/children"):
            self.children_sent.append(request.content)
            if len(self.children_sent) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_answer_lost_on_the_way_back_submits_the_children_once(
    server: Conveyor, client: Client
) -> None:
    lossy = kind("lossy")
    transport = _LosesFirstChildrenAnswer()
    http = httpx.AsyncClient(base_url=server.url, transport=transport)
    worker = new_worker(server, http_client=http)
    accepted: dict[str, Any] = {}

    @worker.handle(lossy)
    async def run_lossy(job: Job) -> Any:
        answer = await job.submit_children(
            [{"kind": "noop", "payload": {"echo": "a"}}, {"kind": "noop", "payload": {"echo": "b"}}],
            then={"kind": "noop", "payload": {"echo": "then"}},
        )
        accepted.update(answer)
        return dict(answer)

    try:
        async with running(worker):
            parent = await client.submit(lossy, {})
            done = await ended(client, parent["id"])
    finally:
        await http.aclose()
    assert done["status"] == "succeeded", done
    assert len(transport.children_sent) == 2, "the first answer was lost, the second came"
    assert transport.children_sent[0] == transport.children_sent[1]
    listed = await children_of(client, parent["id"])
    # Each child once; under the worker's key, the continuation first, then the children as sent.
    assert [j["id"] for j in listed] == [accepted["then"], *accepted["jobs"]]
    assert (await ended(client, accepted["then"]))["status"] == "succeeded"


class _LosesFirstWaitAnswer(httpx.AsyncBaseTransport):
    """Sends every request; the answer to the first ``wait`` request is lost on its way."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.waits: list[tuple[int, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/wait"):
            self.waits.append((response.status_code, request.content))
            if len(self.waits) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_answer_to_the_wait_lost_on_the_way_back_is_answered_the_same_again(
    server: Conveyor, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    lost_wait = kind("lostwait")
    transport = _LosesFirstWaitAnswer()
    http = httpx.AsyncClient(base_url=server.url, transport=transport)
    worker = new_worker(server, http_client=http)
    attempts: list[int] = []

    @worker.handle(lost_wait)
    async def run_lost_wait(job: Job) -> Any:
        attempts.append(job.attempt)
        told = (job.upstream or {}).get("children")
        if told is not None:
            return {"told": told["succeeded"]}
        await job.submit_children([{"kind": "noop", "payload": {"echo": 1}}])
        job.wait_for_children()

    caplog.set_level(logging.WARNING, logger="conveyor")
    try:
        async with running(worker):
            parent = await client.submit(lost_wait, {})
            done = await ended(client, parent["id"])

            # The wait was made by the first request: the job may resume (and end) before the
            # worker's backoff sends it again, with the same lease, answered as the first was.
            async def sent_again() -> bool:
                return len(transport.waits) == 2 and worker.active == 0

            await eventually(sent_again, what="the wait sent again")
    finally:
        await http.aclose()
    assert done["status"] == "succeeded", done
    assert done["result"] == {"told": 1}
    assert attempts == [1, 2]
    assert [status for status, _ in transport.waits] == [200, 200]
    assert transport.waits[0][1] == transport.waits[1][1], "with the same lease"
    assert [r.getMessage() for r in caplog.records if "wait for children" in r.getMessage()] == []
    kinds = await types_of(client, parent["id"])
    assert kinds.count("job.suspended") == 1 and "job.failed" not in kinds, kinds


async def test_a_repeated_wait_with_the_same_lease_answers_the_same(
    server: Conveyor, client: Client
) -> None:
    raw_kind = kind("raw")
    token = server.token(WORKER_SCOPES)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as raw:
        r = await raw.put(f"/v1/workers/kinds/{raw_kind}", json={"schema": None})
        assert r.status_code == 200, r.text
        job = await client.submit(raw_kind, {})
        r = await raw.post(
            "/v1/workers/lease",
            json={"kinds": [raw_kind], "max_jobs": 1, "wait_ms": 10000, "worker": "raw"},
        )
        assert r.status_code == 200, r.text
        lease = r.json()["jobs"][0]["lease"]
        r = await raw.post(
            f"/v1/workers/jobs/{job['id']}/children",
            json={"lease": lease, "jobs": [{"kind": "noop", "payload": {"echo": 1}}]},
        )
        assert r.status_code == 202, r.text
        for _ in range(2):
            r = await raw.post(f"/v1/workers/jobs/{job['id']}/wait", json={"lease": lease})
            assert r.status_code == 200, r.text
            assert r.json() == {"id": job["id"], "status": "waiting_for_children"}
        r = await raw.post(f"/v1/workers/jobs/{job['id']}/heartbeat", json={"lease": lease})
        assert r.status_code == 409, "the lease is gone"
        r = await raw.post(
            "/v1/workers/lease",
            json={"kinds": [raw_kind], "max_jobs": 1, "wait_ms": 10000, "worker": "raw"},
        )
        assert r.status_code == 200, r.text
        [resumed] = r.json()["jobs"]
        assert resumed["id"] == job["id"] and resumed["attempt"] == 2
        assert resumed["upstream"]["children"]["succeeded"] == 1
        r = await raw.post(
            f"/v1/workers/jobs/{job['id']}/complete", json={"lease": resumed["lease"], "result": 1}
        )
        assert r.status_code == 200, r.text
    assert (await ended(client, job["id"]))["status"] == "succeeded"


async def test_a_child_cannot_depend_on_its_parent_or_what_waits_for_it(
    server: Conveyor, client: Client
) -> None:
    cycle = kind("cycle")
    seen: dict[str, Any] = {}
    worker = new_worker(server)

    @worker.handle(cycle)
    async def run_cycle(job: Job) -> Any:
        async def refusal(depends_on: list[str]) -> Any:
            try:
                return await job.submit_children(
                    [{"kind": "noop", "payload": {}, "depends_on": depends_on}]
                )
            except ApiError as e:
                return e

        seen["on_parent"] = await refusal([job.id])
        # A job that waits for the parent, submitted while it runs.
        seen["dependent"] = await client.submit("noop", {"echo": "after"}, depends_on=[job.id])
        # The check sees what the read model shows: once it holds the job that waits.
        await waiting_for(client, seen["dependent"]["id"], "dependencies")
        seen["on_dependent"] = await refusal([seen["dependent"]["id"]])
        seen["cancelled"] = job.cancelled.is_set()
        return "ok"

    async with running(worker):
        parent = await client.submit(cycle, {})
        done = await ended(client, parent["id"])
    assert done["status"] == "succeeded", done
    for name in ("on_parent", "on_dependent"):
        e = seen[name]
        assert isinstance(e, ApiError) and not isinstance(e, LeaseLostError), (name, e)
        assert e.status == 422, (name, e.detail)
        assert e.detail.startswith("jobs[0]: "), (name, e.detail)
    assert seen["cancelled"] is False, "a refused child leaves the job running"
    assert await children_of(client, parent["id"]) == [], "no child was submitted"
    assert (await ended(client, seen["dependent"]["id"]))["status"] == "succeeded"


async def test_wait_for_children_raises_the_sentinel() -> None:
    job = Job(
        {"id": UNKNOWN, "kind": "k", "lease": "l"},
        Worker("http://127.0.0.1:1", "t", handle_signals=False),
    )
    with pytest.raises(WaitForChildren):
        job.wait_for_children()


async def test_the_built_in_fan_out_waits_for_its_children(client: Client) -> None:
    job = await client.submit("fan_out", {"count": 5, "kind": "noop", "payload": {"echo": "x"}})
    done = await ended(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"total": 5, "succeeded": 5, "failed": 0, "cancelled": 0}
    assert done["attempt"] == 2
    listed = await children_of(client, job["id"], limit=2)
    assert len(listed) == 5
    assert all(j["parent"] == job["id"] and j["result"] == "x" for j in listed)
    assert "job.suspended" in await types_of(client, job["id"])


@pytest.mark.parametrize(
    "payload",
    [
        {"count": 0},
        {"count": 101},
        {"count": 2, "kind": "fan_out", "payload": {"count": 2}},
        {"count": 2, "kind": "batch"},
    ],
    ids=["no_children", "over_100", "of_fan_outs", "of_batches"],
)
async def test_the_built_in_fan_out_refuses(client: Client, payload: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as info:
        await client.submit("fan_out", payload)
    assert info.value.status == 422, info.value.detail


async def test_the_built_in_fan_out_takes_up_to_100(client: Client) -> None:
    job = await client.submit("fan_out", {"count": 100, "payload": {"echo": 1}})
    done = await ended(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"total": 100, "succeeded": 100, "failed": 0, "cancelled": 0}
