"""The SDK's errors: API answers carrying an RFC 9457 problem, lost leases, fatal job errors, and
the handler's way to wait for its children."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import httpx

__all__ = [
    "ConveyorError",
    "ApiError",
    "LeaseLostError",
    "FatalError",
    "WaitForChildren",
    "WebhookVerificationError",
]


class ConveyorError(Exception):
    """Base class of every error this SDK raises on its own."""


class ApiError(ConveyorError):
    """The API answered with an error status.

    Carries the `application/problem+json` body (RFC 9457): ``status``, ``title``, ``detail`` and
    ``type``, the whole body as ``problem``, and ``retry_after`` (seconds, from the
    ``Retry-After`` header of a 429 or 503) when the server said when to come back.
    """

    status: int
    title: str
    detail: str
    type: str
    problem: dict[str, Any]
    retry_after: float | None
    method: str
    url: str

    def __init__(
        self,
        status: int,
        *,
        title: str = "",
        detail: str = "",
        type: str = "about:blank",
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.problem = problem if problem is not None else {}
        self.retry_after = retry_after
        self.method = method
        self.url = url
        where = f"{method} {url}: " if method else ""
        text = detail or title or "error"
        super().__init__(f"{where}{status} {text}")

    @property
    def slug(self) -> str:
        """The last segment of the problem type (``lease-lost``, ``unprocessable``, …)."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later: 429, 502, 503 and 504."""
        return self.status in (429, 502, 503, 504)

    @classmethod
    def from_response(cls, response: httpx.Response, body: bytes | None = None) -> ApiError:
        """Builds the error of a response whose status is 4xx or 5xx."""
        raw = response.content if body is None else body
        problem: dict[str, Any] = {}
        try:
            parsed = json.loads(raw) if raw else None
            if isinstance(parsed, dict):
                problem = parsed
        except ValueError:
            pass
        detail = problem.get("detail")
        if not isinstance(detail, str):
            detail = raw.decode("utf-8", "replace")[:500] if raw and not problem else ""
        title = problem.get("title")
        if not isinstance(title, str):
            title = response.reason_phrase or ""
        kind = problem.get("type")
        if not isinstance(kind, str):
            kind = "about:blank"
        request = response.request
        err_cls: type[ApiError] = cls
        if response.status_code == 409 and kind.endswith("/lease-lost"):
            err_cls = LeaseLostError
        return err_cls(
            response.status_code,
            title=title,
            detail=detail,
            type=kind,
            problem=problem,
            retry_after=parse_retry_after(response.headers),
            method=request.method if request is not None else "",
            url=str(request.url) if request is not None else "",
        )


class LeaseLostError(ApiError):
    """A worker call answered ``409 lease-lost``: the lease expired, the attempt timed out or the
    job already ended. Drop the job; never retry the call."""


class FatalError(Exception):
    """Raise from a job handler to fail the job without retrying it (it is dead-lettered at
    once). Any exception with a true ``fatal`` attribute counts as fatal too."""

    fatal = True


class WaitForChildren(Exception):
    """Raised by ``Job.wait_for_children()`` (or raise it yourself) to end the attempt waiting
    for the job's children: no failure, and no outcome. The worker reports the wait (the job's
    timeline gets ``job.suspended``) instead of completing or failing the job, and frees the
    handler's slot; the job's next attempt runs the handler again once every child it submitted
    has ended, with ``job.upstream["children"]`` saying how. Let it propagate: a handler that
    catches it (``except Exception``) completes or fails instead."""

    def __init__(self, message: str = "waiting for the job's children") -> None:
        super().__init__(message)


class WebhookVerificationError(ConveyorError):
    """A webhook delivery did not verify: a header missing or malformed, its timestamp outside
    the tolerance, or no signature matching the body."""


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None when absent or invalid."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
