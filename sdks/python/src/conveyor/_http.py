"""The HTTP plumbing shared by the client and the worker."""

from __future__ import annotations

import json
from typing import Any, Mapping

import httpx

from . import __about__
from .errors import ApiError

DEFAULT_TIMEOUT = 30.0


def user_agent() -> str:
    return f"conveyor-sdk-python/{__about__.__version__}"


def make_client(
    url: str,
    token: str,
    *,
    timeout: float,
    http_client: httpx.AsyncClient | None,
    headers: Mapping[str, str] | None = None,
) -> tuple[httpx.AsyncClient, bool]:
    """An ``httpx.AsyncClient`` for ``url`` with the bearer token, and whether we own it."""
    base = {"Authorization": f"Bearer {token}", "User-Agent": user_agent()}
    base.update(headers or {})
    if http_client is not None:
        http_client.headers.update(base)
        if not str(http_client.base_url):
            http_client.base_url = httpx.URL(url.rstrip("/"))
        return http_client, False
    client = httpx.AsyncClient(
        base_url=url.rstrip("/"),
        headers=base,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
    )
    return client, True


def check(response: httpx.Response) -> None:
    """Raises :class:`ApiError` for a 4xx or 5xx response (its body must have been read)."""
    if response.status_code >= 400:
        raise ApiError.from_response(response)


def decode(response: httpx.Response) -> Any:
    """The JSON body of a successful response (None when empty)."""
    check(response)
    if not response.content:
        return None
    return json.loads(response.content)


async def request(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[httpx.Response, Any]:
    """Sends a request and answers the response with its decoded JSON; raises ApiError."""
    kwargs: dict[str, Any] = {}
    if json_body is not None:
        kwargs["content"] = json.dumps(json_body, separators=(",", ":")).encode()
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        headers = hdrs
    if params:
        kwargs["params"] = {k: v for k, v in params.items() if v is not None}
    if timeout is not None:
        kwargs["timeout"] = httpx.Timeout(timeout)
    response = await http.request(method, path, headers=headers, **kwargs)
    return response, decode(response)
