"""Scheduling through the client, against a real server: priority, concurrency keys and rate
limits on submissions and batches (carried by ``job.submitted``, honoured by the scheduler),
schedules (create, replace, list, get, their ticks' jobs, pause, resume, delete), pausing the
tenant's own jobs of a kind, and what a held job says about why it waits."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from conveyor import ApiError, Client
from harness import Conveyor, eventually, wait_status

SUBMITTED = "dev.conveyor.job.submitted"
WAITING = "dev.conveyor.job.waiting"


async def timeline_of(client: Client, job_id: str) -> list[dict[str, Any]]:
    """The job's timeline once the read model holds its ``job.submitted``."""

    async def check():
        events = await client.timeline(job_id)
        return events if any(e["type"] == SUBMITTED for e in events) else None

    return await eventually(check, what=f"the job.submitted of {job_id}")


async def submitted_data(client: Client, job_id: str) -> dict[str, Any]:
    """The ``data`` of the job's ``job.submitted``."""
    events = await timeline_of(client, job_id)
    data: dict[str, Any] = next(e for e in events if e["type"] == SUBMITTED)["data"]
    return data


def time_of(events: list[dict[str, Any]], short: str) -> datetime:
    """When the job's event ``short`` (``job.started``, …) happened."""
    matching = [e for e in events if e["type"] == f"dev.conveyor.{short}"]
    assert matching, f"no {short} in {[e['type'] for e in events]}"
    return datetime.fromisoformat(matching[0]["time"].replace("Z", "+00:00"))


async def test_options_are_sent_and_carried_by_job_submitted(client: Client) -> None:
    job = await client.submit(
        "noop",
        {"echo": "options"},
        priority=10,
        concurrency={"key": "account-42", "limit": 2},
        rate_limit={"key": "partner-api", "limit": 50, "period_ms": 1000},
        max_attempts=2,
    )
    data = await submitted_data(client, job["id"])
    assert data["priority"] == 10
    assert data["concurrency"] == {"key": "account-42", "limit": 2}
    assert data["rate_limit"] == {"key": "partner-api", "limit": 50, "period_ms": 1000}
    assert data["max_attempts"] == 2
    await wait_status(client, job["id"], "succeeded")
    assert await client.result(job["id"]) == "options"

    # The same options on each job of a batch, each its own.
    batch = await client.submit_batch(
        [
            {"kind": "noop", "payload": {"echo": 1}, "priority": -5, "concurrency": {"key": "account-43", "limit": 1}},
            {"kind": "noop", "payload": {"echo": 2}, "rate_limit": {"key": "partner-api", "limit": 50, "period_ms": 2000}},
            {"kind": "noop", "payload": {"echo": 3}, "priority": 101},
        ]
    )
    assert [i["status"] for i in batch["items"]] == [202, 202, 422]
    assert "priority" in batch["items"][2]["problem"]["detail"]
    first, second = (i["job"]["id"] for i in batch["items"][:2])
    first_data = await submitted_data(client, first)
    assert first_data["priority"] == -5
    assert first_data["concurrency"] == {"key": "account-43", "limit": 1}
    assert "rate_limit" not in first_data
    second_data = await submitted_data(client, second)
    assert "priority" not in second_data, "priority 0 (the default) is left out"
    assert second_data["rate_limit"] == {"key": "partner-api", "limit": 50, "period_ms": 2000}
    for job_id in (first, second):
        await wait_status(client, job_id, "succeeded")


async def test_bad_scheduling_options_are_422(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"priority": 1000}, "priority"),
        ({"concurrency": {"key": "k", "limit": 0}}, "concurrency.limit"),
        ({"rate_limit": {"key": "k", "limit": 1, "period_ms": 0}}, "rate_limit.period_ms"),
    ]
    for options, why in cases:
        with pytest.raises(ApiError) as info:
            await client.submit("noop", {}, **options)
        assert info.value.status == 422 and info.value.slug == "unprocessable"
        assert why in info.value.detail, info.value.detail


async def test_a_concurrency_key_of_limit_1_runs_its_jobs_one_at_a_time(client: Client) -> None:
    key = {"key": f"one-at-a-time-{time.time_ns()}", "limit": 1}
    ids = [(await client.submit("sleep", {"ms": 150}, concurrency=key))["id"] for _ in range(3)]
    spans = []
    for job_id in ids:
        await wait_status(client, job_id, "succeeded")
        events = await client.timeline(job_id)
        spans.append((time_of(events, "job.started"), time_of(events, "job.succeeded")))
    spans.sort()
    for before, after in zip(spans, spans[1:]):
        assert after[0] >= before[1], f"a job started before the previous one ended: {spans}"


async def test_a_rate_limit_of_1_per_400ms_spaces_the_starts(client: Client) -> None:
    rate = {"key": f"paced-{time.time_ns()}", "limit": 1, "period_ms": 400}
    batch = await client.submit_batch([{"kind": "noop", "payload": {"echo": i}, "rate_limit": rate} for i in range(3)])
    assert [i["status"] for i in batch["items"]] == [202, 202, 202]
    starts = []
    for item in batch["items"]:
        await wait_status(client, item["job"]["id"], "succeeded")
        starts.append(time_of(await client.timeline(item["job"]["id"]), "job.started"))
    starts.sort()
    for a, b in zip(starts, starts[1:]):
        assert b - a >= timedelta(milliseconds=400), f"two starts within 400 ms: {starts}"


async def test_a_schedule_from_creation_to_deletion(client: Client) -> None:
    sid = "sdk-every-second"
    created = await client.create_schedule(
        sid,
        "noop",
        {"echo": "tick"},
        every="1s",
        catch_up="once",
        priority=7,
        concurrency={"key": "ticks", "limit": 1},
        rate_limit={"key": "ticks-rate", "limit": 100, "period_ms": 1000},
        max_attempts=2,
        timeout_ms=10_000,
    )
    assert created["created"] is True, "a new schedule is 201"
    assert created["id"] == sid and created["kind"] == "noop"
    assert created["every_ms"] == 1000 and "cron" not in created
    assert created["catch_up"] == "once" and created["paused"] is False
    assert isinstance(created.get("next_run_at"), str)
    assert datetime.fromisoformat(created["created_at"].replace("Z", "+00:00"))
    job = created["job"]
    assert job["payload"] == {"echo": "tick"}
    assert job.get("priority") == 7
    assert job.get("concurrency") == {"key": "ticks", "limit": 1}
    assert job.get("rate_limit") == {"key": "ticks-rate", "limit": 100, "period_ms": 1000}
    assert job["max_attempts"] == 2 and job["timeout_ms"] == 10_000

    assert any(s["id"] == sid and s.get("every_ms") == 1000 for s in await client.schedules())
    got = await client.get_schedule(sid)
    assert got["id"] == sid and isinstance(got.get("next_run_at"), str)

    # Its ticks submit jobs, each with the schedule's id and its tick in job.submitted, and the
    # schedule's job options.
    not_from_it: set[str] = set()

    async def from_schedule() -> list[tuple[str, dict[str, Any]]] | None:
        found = []
        for j in (await client.list(kind="noop", limit=100))["items"]:
            if j["id"] in not_from_it:
                continue
            data = await submitted_data(client, j["id"])
            if (data.get("schedule") or {}).get("id") == sid:
                found.append((j["id"], data))
            else:
                not_from_it.add(j["id"])
        return found if len(found) >= 2 else None

    jobs = await eventually(from_schedule, timeout=30, interval=0.2, what="two jobs submitted by the schedule")
    ticks = {data["schedule"]["tick"] for _, data in jobs}
    assert len(ticks) == len(jobs), "one job per tick"
    for job_id, data in jobs:
        assert data["payload"] == {"echo": "tick"}
        assert data["priority"] == 7
        assert data["concurrency"] == {"key": "ticks", "limit": 1}
        assert data["rate_limit"] == {"key": "ticks-rate", "limit": 100, "period_ms": 1000}
        assert data["max_attempts"] == 2
        await wait_status(client, job_id, "succeeded")
    assert isinstance((await client.get_schedule(sid)).get("last_run_at"), str), "its last tick is recorded"

    # The same id again replaces it (200), keeping its ticks so far; `every` as a timedelta.
    replaced = await client.create_schedule(sid, "noop", {"echo": "tock"}, every=timedelta(seconds=1))
    assert replaced["created"] is False, "a replaced schedule is 200"
    assert replaced["every_ms"] == 1000 and replaced["catch_up"] == "skip"
    assert replaced["job"]["payload"] == {"echo": "tock"} and "priority" not in replaced["job"]
    assert isinstance(replaced.get("last_run_at"), str)

    paused = await client.pause_schedule(sid)
    assert paused["paused"] is True and "next_run_at" not in paused
    assert (await client.get_schedule(sid))["paused"] is True
    resumed = await client.resume_schedule(sid)
    assert resumed["paused"] is False and isinstance(resumed.get("next_run_at"), str)

    assert await client.delete_schedule(sid) is None
    for call in (client.get_schedule, client.delete_schedule, client.pause_schedule):
        with pytest.raises(ApiError) as info:
            await call(sid)
        assert info.value.status == 404
    assert all(s["id"] != sid for s in await client.schedules())


async def test_a_cron_schedule_and_bad_schedules(client: Client) -> None:
    cron = await client.create_schedule(
        "sdk-nightly", "sleep", {"ms": 1}, cron="0 0 2 * * *", timezone="Europe/Paris"
    )
    assert cron["created"] is True
    assert cron.get("cron") == "0 0 2 * * *" and cron.get("timezone") == "Europe/Paris"
    assert "every_ms" not in cron
    next_run = datetime.fromisoformat(cron["next_run_at"].replace("Z", "+00:00"))
    assert next_run.timestamp() > time.time()
    await client.delete_schedule("sdk-nightly")

    bad: list[tuple[str, dict[str, Any], str]] = [
        ("sdk-bad", {"every": "10ms"}, "every"),
        ("sdk-bad", {"every": 10}, "every"),
        ("sdk-bad", {"cron": "* * * * *", "timezone": "Mars/Base"}, "time zone"),
        ("sdk-bad", {}, "`cron` or `every`"),
        ("no spaces", {"every": "1s"}, "`id`"),
        ("sdk-bad", {"every": "1s", "priority": 1000}, "priority"),
    ]
    for sid, options, why in bad:
        with pytest.raises(ApiError) as info:
            await client.create_schedule(sid, "noop", **options)
        assert info.value.status == 422, (options, info.value)
        assert why in info.value.detail, (options, info.value.detail)
    assert all(s["id"] != "sdk-bad" for s in await client.schedules())


async def test_pausing_the_own_jobs_of_a_kind(client: Client) -> None:
    paused = await client.pause_kind("noop")
    assert (paused["kind"], paused["tenant"], paused["paused"]) == ("noop", "acme", True)
    assert paused.get("by") == "sdk-test" and paused.get("since")
    pauses = await client.pauses()
    assert any(p["kind"] == "noop" and p["tenant"] == "acme" and p["paused"] for p in pauses), pauses

    held = await client.submit("noop", {"echo": "held"})
    other = await client.submit("sleep", {"ms": 1})
    await wait_status(client, other["id"], "succeeded")
    # The sleep job, submitted after it, has run: the noop job was passed over.
    assert (await client.get(held["id"]))["status"] == "queued"
    # Never started: besides job.submitted, at most the scheduler's word on why it waits.
    types = [e["type"] for e in await timeline_of(client, held["id"])]
    assert [t for t in types if t != WAITING] == [SUBMITTED], types

    resumed = await client.resume_kind("noop")
    assert resumed["paused"] is False and "since" not in resumed
    assert not any(p["kind"] == "noop" and p["tenant"] == "acme" for p in await client.pauses())
    await wait_status(client, held["id"], "succeeded")
    assert await client.result(held["id"]) == "held"

    with pytest.raises(ApiError) as info:
        await client.pause_kind("Not A Kind")
    assert info.value.status == 422


async def test_a_held_job_says_why_it_waits_and_queued_jobs_list_in_start_order(
    client: Client,
) -> None:
    await client.pause_kind("noop")
    paused = True
    try:
        # Submitted oldest first: start order is high, high2 (priority 3, oldest first), then low.
        high = await client.submit("noop", {"echo": "high"}, priority=3)
        low = await client.submit("noop", {"echo": "low"})
        high2 = await client.submit("noop", {"echo": "high2"}, priority=3)

        # The scheduler tells a job held by a gate why at once (it tells every second).
        async def told():
            job = await client.get(high["id"])
            return job if job.get("waiting", {}).get("reason") == "paused" else None

        held = await eventually(told, timeout=10, what=f"job {high['id']} told it waits")
        assert held["status"] == "queued", "waiting never changes the status"
        assert held["priority"] == 3
        waiting = held["waiting"]
        assert waiting["attempt"] == 1
        assert "key" not in waiting, "a key only for concurrency_key and rate_limit"
        since = datetime.fromisoformat(waiting["since"].replace("Z", "+00:00"))
        created = datetime.fromisoformat(held["created_at"].replace("Z", "+00:00"))
        assert since >= created, (waiting, held["created_at"])
        assert (await client.get(low["id"]))["priority"] == 0, "the default"

        # In the order they will start, one a page to follow the `<priority>:<id>` cursors.
        mine = {high["id"], low["id"], high2["id"]}

        async def listed():
            ids = [j["id"] async for j in client.list_all(status="queued", kind="noop", limit=1)]
            ours = [i for i in ids if i in mine]
            return ours if len(ours) == len(mine) else None

        assert await eventually(listed, what="the three queued jobs listed") == [
            high["id"],
            high2["id"],
            low["id"],
        ]
        first = await client.list(status="queued", kind="noop", limit=1)
        assert re.fullmatch(r"-?\d+:[0-9a-f-]{36}", first["next_cursor"] or ""), first

        await client.resume_kind("noop")
        paused = False
        for job in (high, low, high2):
            done = await wait_status(client, job["id"], "succeeded")
            assert "waiting" not in done, done
        assert (await client.get(high["id"]))["priority"] == 3, "kept after it ran"
        assert WAITING in [e["type"] for e in await client.timeline(high["id"])]
    finally:
        if paused:
            await client.resume_kind("noop")
