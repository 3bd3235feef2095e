"""The client against a real server, with the built-in kinds its Rust workers run (`noop`,
`sleep`): submit, get, list with cursors, cancel, idempotency, batches, results, following a job
over SSE, and the event stream resuming after dropped connections."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlparse

import pytest

from conveyor import ApiError, Client, Event
from harness import Conveyor, Proxy, wait_status


async def test_submit_get_result_and_timeline(client: Client) -> None:
    accepted = await client.submit("noop", {"echo": {"n": 1}}, max_attempts=2, timeout_ms=5000)
    assert accepted["kind"] == "noop" and accepted["status"] == "queued"
    assert accepted["links"]["self"] == f"/v1/jobs/{accepted['id']}"
    job = await client.get(accepted["id"])  # read-your-writes: never 404 here
    assert job["id"] == accepted["id"] and job["max_attempts"] == 2 and job["timeout_ms"] == 5000
    done = await wait_status(client, accepted["id"], "succeeded")
    assert done["result"] == {"n": 1}
    assert await client.result(accepted["id"]) == {"n": 1}
    types = [e["type"] for e in await client.timeline(accepted["id"])]
    assert types[0] == "dev.conveyor.job.submitted" and types[-1] == "dev.conveyor.job.succeeded"


async def test_errors_carry_the_problem(server: Conveyor, client: Client) -> None:
    with pytest.raises(ApiError) as info:
        await client.get(str(uuid.uuid4()))
    err = info.value
    assert err.status == 404 and err.title == "Not Found" and err.slug == "not-found"
    assert err.detail and err.type.startswith("https://")
    with pytest.raises(ApiError) as info:
        await client.submit("sdk.no_such_kind", {})
    assert info.value.status == 422
    with pytest.raises(ApiError) as info:
        await client.submit("sleep", {"ms": "soon"})
    assert info.value.status == 422
    async with Client(server.url, "not-a-token") as bad:
        with pytest.raises(ApiError) as info:
            await bad.list()
    assert info.value.status == 401
    async with Client(server.url, server.token("jobs:read")) as reader:
        with pytest.raises(ApiError) as info:
            await reader.submit("noop")
    assert info.value.status == 403
    # Not yet succeeded: no result.
    slow = await client.submit("sleep", {"ms": 60_000})
    with pytest.raises(ApiError) as info:
        await client.result(slow["id"])
    assert info.value.status == 404
    await client.cancel(slow["id"])


async def test_idempotency(client: Client) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await client.submit("noop", {"echo": 1}, idempotency_key=key)
    again = await client.submit("noop", {"echo": 1}, idempotency_key=key)
    assert again["id"] == first["id"]
    with pytest.raises(ApiError) as info:
        await client.submit("noop", {"echo": 2}, idempotency_key=key)
    assert info.value.status == 409


async def test_batch(client: Client) -> None:
    key = f"batch-{uuid.uuid4()}"
    result = await client.submit_batch(
        [
            {"kind": "noop", "payload": {"echo": "a"}, "idempotency_key": key},
            {"kind": "noop", "payload": {"echo": "a"}, "idempotency_key": key},
            {"kind": "sdk.unknown_kind"},
            {"kind": "sleep", "payload": {"ms": 10}, "max_attempts": 1},
        ]
    )
    statuses = [item["status"] for item in result["items"]]
    assert statuses == [202, 200, 422, 202]
    assert (result["accepted"], result["repeated"], result["failed"]) == (2, 1, 1)
    items = result["items"]
    assert items[0]["job"]["id"] == items[1]["job"]["id"]
    assert items[2]["problem"]["status"] == 422 and items[2]["problem"]["detail"]
    await wait_status(client, items[3]["job"]["id"], "succeeded")


async def test_list_with_cursors(client: Client) -> None:
    result = await client.submit_batch([{"kind": "sleep", "payload": {"ms": 1}} for _ in range(7)])
    ids = {item["job"]["id"] for item in result["items"]}
    for job_id in ids:
        await wait_status(client, job_id, "succeeded")
    first = await client.list(kind="sleep", limit=3)
    assert len(first["items"]) == 3 and first["next_cursor"]
    second = await client.list(kind="sleep", limit=3, cursor=first["next_cursor"])
    assert not {j["id"] for j in first["items"]} & {j["id"] for j in second["items"]}
    listed = [job async for job in client.list_all(kind="sleep", limit=3)]
    listed_ids = [j["id"] for j in listed]
    assert len(listed_ids) == len(set(listed_ids))
    assert ids <= set(listed_ids)
    created = [j["created_at"] for j in listed]
    assert created == sorted(created, reverse=True)
    assert all(j["kind"] == "sleep" for j in listed)
    succeeded = [j async for j in client.list_all(status="succeeded", kind="sleep", limit=500)]
    assert ids <= {j["id"] for j in succeeded}
    with pytest.raises(ApiError) as info:
        await client.list(limit=501)
    assert info.value.status == 400


async def test_cancel_and_follow(client: Client) -> None:
    job = await client.submit("sleep", {"ms": 60_000, "steps": 1})
    await wait_status(client, job["id"], "running")
    assert (await client.cancel(job["id"]))["status"] == "cancel_requested"
    events = [e async for e in client.follow(job["id"])]
    assert events[-1].event == "job.cancelled" and events[-1].terminal
    assert sum(e.terminal for e in events) == 1
    # The read model follows the log (the projector may not have applied the event yet).
    await wait_status(client, job["id"], "cancelled")
    with pytest.raises(ApiError) as info:
        await client.cancel(job["id"])
    assert info.value.status == 409


async def test_follow_a_job_live_to_its_end(client: Client) -> None:
    job = await client.submit("sleep", {"ms": 600, "steps": 3})
    events: list[Event] = []
    async for event in client.follow(job["id"]):
        events.append(event)
    names = [e.event for e in events]
    assert names[0] == "job.submitted" and names[-1] == "job.succeeded"
    assert "job.started" in names and names.count("job.progressed") == 3
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.job_id == job["id"] for e in events)
    # Following an ended job replays its timeline and ends.
    again = [e.event async for e in client.follow(job["id"])]
    assert again == names


async def test_event_stream_resumes_after_dropped_connections(server: Conveyor) -> None:
    api = urlparse(server.url)
    proxy = await Proxy(api.hostname or "127.0.0.1", api.port or 80).start()
    token = server.token()
    try:
        async with Client(server.url, token) as direct, Client(proxy.url, token) as proxied:
            first = await direct.submit("noop", {"echo": 0})
            start = first["seq"] - 1
            stream = proxied.events(kind="noop", after=start)
            stream._min_delay = 0.05
            batch = await direct.submit_batch([{"kind": "noop", "payload": {"echo": i}} for i in range(1, 6)])
            expected = {first["id"]} | {item["job"]["id"] for item in batch["items"]}
            got: list[Event] = []
            ended: set[str] = set()
            drops = 0
            cut_at = 0  # proxy.connections at the last cut
            async with stream, asyncio.timeout(60):
                async for event in stream:
                    got.append(event)
                    if event.terminal and event.job_id in expected:
                        ended.add(event.job_id)
                    # Cut the connection in the middle of the flow of events, but only one opened
                    # after the last cut (the proxy's only client is this stream): events read off a
                    # cut connection before the cut are still delivered, and a slow reader may get
                    # all that remain that way, with no connection left to cut.
                    if drops < 3 and len(got) >= 3 and proxy.connections > cut_at:
                        cut_at = proxy.connections
                        drops += proxy.drop()
                        # A job submitted after the cut: its events can only come over a new
                        # connection, so the stream has to notice the cut and resume to see it end.
                        after_cut = await direct.submit("noop", {"echo": f"after cut {drops}"})
                        expected.add(after_cut["id"])
                    if ended == expected:
                        break
            assert drops == 3 and stream.reconnects >= 3
            assert stream.duplicates_skipped == 0, "the server repeated events after Last-Event-ID"
            seqs = [e.seq for e in got]
            assert all(s is not None for s in seqs)
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            # The same span read without interruption: exactly the same events.
            reference = direct.events(kind="noop", after=start)
            ref: list[Event] = []
            async with reference:
                async for event in reference:
                    ref.append(event)
                    if len(ref) == len(got):
                        break
            assert [e.seq for e in ref] == seqs
            assert [e.data for e in ref] == [e.data for e in got]
            assert proxy.connections >= 4
    finally:
        await proxy.close()


async def test_event_stream_filters(client: Client) -> None:
    job = await client.submit("noop", {"echo": "filtered"})
    stream = client.events(type="job.succeeded", job=job["id"], after=job["seq"] - 1)
    async with stream:
        event = await asyncio.wait_for(stream.__anext__(), 30)
    assert event.event == "job.succeeded" and event.job_id == job["id"]
    assert event.data["data"]["result"] == "filtered"
    with pytest.raises(ApiError) as info:
        async for _ in client.events(type="job.nope", reconnect=False):
            pass
    assert info.value.status == 400


async def test_kinds(client: Client) -> None:
    kinds = {k["kind"]: k for k in await client.kinds()}
    assert kinds["sleep"]["builtin"] is True
