"""Unit tests without a server: the SSE parser and error recognition (everything else runs
against the real server)."""

from __future__ import annotations

from typing import AsyncIterator

import httpx
import pytest

from conveyor import ApiError, Client, LeaseLostError
from conveyor.sse import parse_sse


async def lines(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_sse_parser() -> None:
    events = [
        e
        async for e in parse_sse(
            lines(
                ": keep-alive",
                "id: 7",
                "event: job.started",
                'data: {"type": "dev.conveyor.job.started",',
                'data:  "subject": "j1"}',
                "",
                "",
                "id: 8",
                "data:plain",
                "",
                "event: no-data",
                "",
            )
        )
    ]
    assert len(events) == 2
    first, second = events
    assert first.event == "job.started" and first.seq == 7 and first.job_id == "j1"
    assert first.type == "dev.conveyor.job.started" and not first.terminal
    assert second.event == "message" and second.data == "plain" and second.id == "8"


def test_lease_lost_is_recognised() -> None:
    request = httpx.Request("POST", "http://x/v1/workers/jobs/1/complete")
    response = httpx.Response(
        409,
        json={"type": "https://conveyor.dev/problems/lease-lost", "title": "Conflict", "status": 409, "detail": "expired"},
        request=request,
    )
    err = ApiError.from_response(response)
    assert isinstance(err, LeaseLostError) and err.status == 409 and err.method == "POST"
