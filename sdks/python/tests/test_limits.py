"""A 429 from a real server carries Retry-After (a server of its own, with a tiny rate)."""

from __future__ import annotations

import pytest

from conveyor import ApiError, Client
from harness import Conveyor

SERVER_ENV = {"CONVEYOR_RATE_LIMIT": "1", "CONVEYOR_RATE_BURST": "2"}


async def test_rate_limit_answers_retry_after(server: Conveyor) -> None:
    async with Client(server.url, server.token()) as client:
        with pytest.raises(ApiError) as info:
            for _ in range(20):
                await client.submit("noop")
        err = info.value
        assert err.status == 429 and err.retryable and err.slug == "too-many-requests"
        assert err.retry_after is not None and err.retry_after >= 0
        assert err.title == "Too Many Requests" and err.detail
        assert err.problem["status"] == 429
        # A batch larger than the burst is refused whole.
        with pytest.raises(ApiError) as info:
            await client.submit_batch([{"kind": "noop"} for _ in range(5)])
        assert info.value.status == 429 and info.value.retry_after is not None
