from __future__ import annotations

import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conveyor import Client  # noqa: E402
from harness import Conveyor  # noqa: E402


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[Conveyor]:
    """A `conveyor dev` of the test module's own (extra env from the module's SERVER_ENV)."""
    extra = getattr(request.module, "SERVER_ENV", None)
    srv = Conveyor.start(extra)
    failed_before = request.session.testsfailed
    yield srv
    srv.stop()
    if request.session.testsfailed == failed_before:
        srv.drop_database()
        srv.delete_namespace()
    else:
        print(
            f"\nkept {srv.database} and namespace {srv.env['CONVEYOR_NAMESPACE']}; "
            f"last server logs:\n{''.join(srv.stderr)}",
            file=sys.stderr,
        )


@pytest.fixture
async def client(server: Conveyor) -> AsyncIterator[Client]:
    """A client of the module's server, with a token of every tenant scope."""
    async with Client(server.url, server.token()) as c:
        yield c
