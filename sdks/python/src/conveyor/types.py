"""Typed shapes of the API's JSON (plain dicts at run time, so new fields never break a client)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "JobStatus",
    "ErrorClass",
    "JobLinks",
    "Accepted",
    "Progress",
    "JobError",
    "Job",
    "JobPage",
    "JobSpec",
    "Problem",
    "BatchItem",
    "BatchResult",
    "CancelAccepted",
    "CloudEvent",
    "Kind",
]

JobStatus = Literal["queued", "running", "retry_scheduled", "succeeded", "failed", "cancelled"]
"""A job's status in the read model."""

ErrorClass = Literal["retryable", "fatal", "timeout", "cancelled"]
"""How a worker classifies a failed attempt."""


class JobLinks(TypedDict):
    self: str
    events: str


class Accepted(TypedDict):
    """The answer to a submission (``202`` new, ``200`` a repeat with the same idempotency key)."""

    id: str
    kind: str
    status: JobStatus
    created_at: str
    seq: int
    """EVENTS stream sequence of ``job.submitted``."""
    links: JobLinks


class Progress(TypedDict, total=False):
    current: int
    total: int | None
    message: str | None


JobError = TypedDict("JobError", {"class": str, "message": str}, total=False)
"""A failed attempt's error: its ``class`` and ``message``."""


class Job(TypedDict):
    """A job as ``GET /v1/jobs/{id}`` shows it."""

    id: str
    kind: str
    status: JobStatus
    attempt: int
    max_attempts: int
    timeout_ms: int
    payload: Any
    progress: Progress | None
    result: Any
    result_url: NotRequired[str]
    """Set when the result is too large to inline: read it with ``Client.result``."""
    error: JobError | None
    run_at: str | None
    trace_id: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str


class JobPage(TypedDict):
    items: list[Job]
    next_cursor: str | None


class JobSpec(TypedDict, total=False):
    """One job of ``Client.submit_batch``; only ``kind`` is required."""

    kind: str
    payload: Any
    max_attempts: int
    timeout_ms: int
    run_at: str
    webhook: dict[str, str]
    idempotency_key: str


class Problem(TypedDict):
    """An RFC 9457 problem."""

    type: str
    title: str
    status: int
    detail: str


class BatchItem(TypedDict):
    status: int
    """202 accepted, 200 a repeat of an earlier submission, else an error status."""
    job: NotRequired[Accepted]
    problem: NotRequired[Problem]


class BatchResult(TypedDict):
    accepted: int
    repeated: int
    failed: int
    items: list[BatchItem]


class CancelAccepted(TypedDict):
    id: str
    status: str


class CloudEvent(TypedDict):
    """A CloudEvent 1.0 of the job log (``type`` is e.g. ``dev.conveyor.job.succeeded``)."""

    specversion: str
    id: str
    type: str
    source: str
    subject: str
    time: str
    data: Any


class Kind(TypedDict):
    """A job kind the API accepts (``GET /v1/kinds``)."""

    kind: str
    builtin: bool
    schema: Any
