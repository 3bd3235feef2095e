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
    "WaitReason",
    "JobWaitingData",
    "JobWaiting",
    "Job",
    "JobPage",
    "JobSpec",
    "Concurrency",
    "RateLimit",
    "FromSchedule",
    "JobSubmittedData",
    "CatchUp",
    "ScheduleJob",
    "Schedule",
    "CreatedSchedule",
    "KindPause",
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


WaitReason = Literal[
    "concurrency_key", "rate_limit", "paused", "tenant_cap", "priority", "tenant_share"
]
"""Why the scheduler holds a job back: its concurrency key is full, its rate limit's key reached
its limit, its kind is paused (for its tenant or all), its tenant runs as many jobs of the kind as
its share allows, jobs of a higher priority go first, or other tenants' jobs take their turns."""


class JobWaitingData(TypedDict):
    """The ``data`` of a ``job.waiting`` CloudEvent: the scheduler holds the attempt back, and
    says why."""

    attempt: int
    """The attempt held back."""
    reason: WaitReason
    key: NotRequired[str]
    """The concurrency key or rate limit key, for ``concurrency_key`` and ``rate_limit``."""


class JobWaiting(JobWaitingData):
    """``Job["waiting"]``: the latest ``job.waiting`` of the attempt to start, and when it came."""

    since: str
    """The time of that event (RFC 3339)."""


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
    priority: int
    """-100 to 100 (0 by default): higher starts first among the waiting jobs of its kind."""
    waiting: NotRequired[JobWaiting]
    """While the scheduler holds it back: why. Absent for a job that only waits for a free
    worker, and once the attempt starts or the job ends."""


class JobPage(TypedDict):
    items: list[Job]
    next_cursor: str | None


# Scheduling (docs/scheduling.md): how a job waits its turn, schedules, pauses.


class Concurrency(TypedDict):
    """A concurrency key (``concurrency`` of a job): never more than ``limit`` of the tenant's jobs
    holding ``key`` run at once, whatever their kind, across all workers. A slot is taken when a
    job is handed to a worker and given back when its attempt ends (a retry waits again)."""

    key: str
    """Any name, 1 to 255 bytes (``account-42``); the tenant's own."""
    limit: int
    """How many may run at once, 1 to 10,000."""


class RateLimit(TypedDict):
    """A rate limit (``rate_limit`` of a job): at most ``limit`` starts of the tenant's jobs
    holding ``key`` (of any kind) in any window of ``period_ms``; the others wait their turn,
    they never fail for it."""

    key: str
    """Any name, 1 to 255 bytes (``partner-api``); the tenant's own."""
    limit: int
    """Starts allowed per period, 1 to 1,000."""
    period_ms: int
    """The period in ms, 1 to 86,400,000 (a day)."""


class JobSpec(TypedDict, total=False):
    """One job of ``Client.submit_batch``; only ``kind`` is required."""

    kind: str
    payload: Any
    max_attempts: int
    timeout_ms: int
    run_at: str
    webhook: dict[str, str]
    idempotency_key: str
    priority: int
    """-100 to 100 (default 0): higher starts first among the waiting jobs of its kind."""
    concurrency: Concurrency
    rate_limit: RateLimit


class FromSchedule(TypedDict):
    """The schedule tick that submitted a job."""

    id: str
    tick: str


class JobSubmittedData(TypedDict):
    """The ``data`` of a job's ``job.submitted`` CloudEvent: everything it runs with
    (``priority`` is absent when 0)."""

    payload: Any
    max_attempts: int
    timeout_ms: int
    run_at: NotRequired[str]
    webhook: NotRequired[dict[str, str]]
    priority: NotRequired[int]
    concurrency: NotRequired[Concurrency]
    rate_limit: NotRequired[RateLimit]
    schedule: NotRequired[FromSchedule]
    """Set when a schedule submitted the job."""


CatchUp = Literal["skip", "once"]
"""What a schedule's ticks missed by more than a minute (everything was down) get: ``skip`` runs
none of them, ``once`` one job for the latest of them. Ticks up to a minute late all run."""


class ScheduleJob(TypedDict):
    """The job each tick of a schedule submits (``priority`` is absent when 0)."""

    payload: Any
    max_attempts: int
    timeout_ms: int
    webhook: NotRequired[dict[str, str]]
    priority: NotRequired[int]
    concurrency: NotRequired[Concurrency]
    rate_limit: NotRequired[RateLimit]


class Schedule(TypedDict):
    """A schedule as ``GET /v1/schedules/{id}`` shows it: ``cron`` and ``timezone``, or
    ``every_ms``."""

    id: str
    kind: str
    cron: NotRequired[str]
    timezone: NotRequired[str]
    every_ms: NotRequired[int]
    """The interval in ms (a schedule made with ``every``)."""
    catch_up: CatchUp
    paused: bool
    """A paused schedule fires nothing; resumed, it goes on from its next tick."""
    next_run_at: NotRequired[str]
    """Its next tick (absent while paused)."""
    last_run_at: NotRequired[str]
    """The last tick it acted on."""
    created_at: str
    job: ScheduleJob


class CreatedSchedule(Schedule):
    """The answer to ``Client.create_schedule``."""

    created: bool
    """True when the API answered 201 (a new schedule), False on 200 (replaced, its ticks so far
    kept)."""


class KindPause(TypedDict):
    """A pause of a kind: its waiting jobs stay queued and none starts; running ones finish."""

    kind: str
    tenant: str | None
    """The tenant it holds; None: every tenant (an operator's pause)."""
    paused: bool
    since: NotRequired[str]
    """When it was paused (absent once resumed)."""
    by: NotRequired[str]
    """Who paused it (the token's subject)."""
    by_operator: bool
    """Paused by an operator: the tenant's own resume does not lift it."""


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
