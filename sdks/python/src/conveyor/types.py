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
    "BatchMemberSpec",
    "Concurrency",
    "RateLimit",
    "FromSchedule",
    "JobSubmittedData",
    "JobCancelledData",
    "JobSuspendedData",
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
    "Ended",
    "Members",
    "Upstream",
    "PushJob",
    "BatchLinks",
    "BatchAccepted",
    "BatchSubmission",
    "BatchMemberCounts",
    "Batch",
    "BatchCancelled",
    "ChildSpec",
    "ChildrenAccepted",
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
    "dependencies",
    "batch",
    "children",
    "concurrency_key",
    "rate_limit",
    "paused",
    "tenant_cap",
    "priority",
    "tenant_share",
]
"""Why the scheduler holds a job back: jobs it depends on have not all ended (``dependencies``),
it is a batch not sealed yet or with members not all ended (``batch``), its handler waits for its
children, which have not all ended (``children``), its concurrency key is full, its rate limit's key reached its limit, its kind is paused (for its tenant or all), its
tenant runs as many jobs of the kind as its share allows, jobs of a higher priority go first, or
other tenants' jobs take their turns."""


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
    depends_on: NotRequired[list[str]]
    """The jobs it waits for before it starts (docs/workflows.md); absent when none."""
    batch: NotRequired[str]
    """The batch it is a member of (the batch's id)."""
    is_batch: NotRequired[bool]
    """True for a batch's own job (its callback: ``Client.get_batch`` shows the batch)."""
    sealed_at: NotRequired[str]
    """When its batch was sealed (a batch's own job, once sealed)."""
    parent: NotRequired[str]
    """The job whose handler submitted it as a child (``Job.submit_children`` of the worker);
    absent for a job of no parent. ``Client.list_children`` lists a parent's children."""


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


class BatchMemberSpec(TypedDict, total=False):
    """One job of a batch of ``Client.create_batch`` and ``Client.add_batch_jobs`` (a member, or
    the callback); only ``kind`` is required. No ``idempotency_key``: the request's covers them
    all."""

    kind: str
    payload: Any
    max_attempts: int
    timeout_ms: int
    run_at: str
    webhook: dict[str, str]
    priority: int
    """-100 to 100 (default 0): higher starts first among the waiting jobs of its kind."""
    concurrency: Concurrency
    rate_limit: RateLimit
    depends_on: list[str]
    """Up to 32 jobs of the tenant, already submitted, that must all end first
    (docs/workflows.md)."""


class JobSpec(BatchMemberSpec, total=False):
    """One job of ``Client.submit_batch``; only ``kind`` is required."""

    idempotency_key: str


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
    depends_on: NotRequired[list[str]]
    """The jobs it waits for (docs/workflows.md)."""
    batch: NotRequired[str]
    """For a member of a batch: the batch's id."""
    is_batch: NotRequired[bool]
    """For a batch's own job (its callback): True."""
    parent: NotRequired[str]
    """For a child (or a continuation): the job whose handler submitted it."""


class JobSuspendedData(TypedDict):
    """The ``data`` of a ``job.suspended`` CloudEvent: the handler submitted children and waits
    for them (``Job.wait_for_children`` of the worker); its attempt ended without an outcome, the
    job is ``queued`` again (``waiting.reason`` ``children``), and its next attempt starts once
    every child has ended."""

    attempt: int
    """The attempt that ended waiting."""
    next_attempt: int
    """The attempt that resumes it (``attempt + 1``)."""
    max_attempts: int
    """The new limit of attempts: one more, since a wait is no failure."""


class JobCancelledData(TypedDict, total=False):
    """The ``data`` of a ``job.cancelled`` CloudEvent. ``reason`` says why when it was not
    cancelled on request: ``dependency <id> failed`` (or ``cancelled``) for a job whose
    dependency did not succeed."""

    attempt: int
    """The attempt that was running, if one was."""
    reason: str


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


# Workflows (docs/workflows.md): dependencies between jobs, batches with a callback, children.


class Ended(TypedDict):
    """How a job a workflow waited for ended: an item of ``Upstream``."""

    id: str
    status: JobStatus
    """``succeeded``, ``failed`` or ``cancelled``."""
    result: NotRequired[Any]
    """A dependency's result, when it succeeded with one small enough to pass on (up to 16 KiB of
    JSON each, and all of the job's dependencies' within a budget of 256 KiB); absent otherwise.
    Never set for a batch's members or for children."""
    result_url: NotRequired[str]
    """Where to read a dependency's result that was not passed on (too large, or kept in the
    object store), e.g. ``/v1/jobs/<id>/result``: read it with ``Client.result`` (a token with
    ``jobs:read``). Absent when ``result`` is set, or when the job had no result to pass on."""


class Members(TypedDict):
    """How a group of jobs ended: the members of a batch, as its callback's handler is told
    (``upstream["members"]``), or a job's children, as its handler is told when it resumes after
    waiting for them (``upstream["children"]``)."""

    total: int
    succeeded: int
    failed: int
    """Dead-lettered."""
    cancelled: int
    jobs: NotRequired[list[Ended]]
    """Each one with its status (no result), in submission order, for up to 1,000 of them;
    absent for more (page through ``Client.list_batch_jobs`` or ``Client.list_children``)."""


class Upstream(TypedDict, total=False):
    """What a job waited for, as it ended (``Job.upstream`` of the worker): its dependencies,
    in the order of ``depends_on``; a batch callback's or a continuation's members; or, for an
    attempt resuming a handler that waited for its children, its children. A retry is told the
    same."""

    dependencies: list[Ended]
    members: Members
    children: Members
    """The children the job's handler submitted (every attempt's), once all have ended: given
    to the attempt after ``Job.wait_for_children``."""


class PushJob(TypedDict):
    """The body of the POST a push kind's endpoint receives (verify it with
    ``verify_webhook`` and the kind's secret)."""

    id: str
    tenant: str
    kind: str
    payload: Any
    attempt: int
    max_attempts: int
    upstream: NotRequired[Upstream]
    """How the jobs it waited for ended; absent when it waited for none."""


BatchLinks = TypedDict("BatchLinks", {"self": str, "jobs": str, "callback": str})
"""Links from a batch: itself, its members, its callback job (``/v1/jobs/{id}``)."""


class BatchAccepted(TypedDict):
    """The answer to ``Client.add_batch_jobs``: the batch, and the members this request
    submitted."""

    id: str
    """The batch's id, which is also its callback job's (follow or wait for it as a job)."""
    sealed: bool
    """No member can be added; its callback runs once all have ended."""
    jobs: list[str]
    """The ids of the members this request submitted, in the order sent."""
    links: BatchLinks


class BatchSubmission(BatchAccepted):
    """The answer to ``Client.create_batch`` and ``Client.add_batch_jobs``."""

    repeated: bool
    """True when the API answered 200 (a repeat with the same idempotency key: the same batch
    and member ids, or the same page's member ids), False on 202."""


class BatchMemberCounts(TypedDict):
    """A batch's members by status, as the read model shows them now."""

    total: int
    queued: int
    running: int
    retry_scheduled: int
    succeeded: int
    failed: int
    cancelled: int


class Batch(TypedDict):
    """A batch as ``GET /v1/batches/{id}`` shows it: its callback job, and its members'
    progress."""

    id: str
    kind: str
    """The callback's kind (``batch`` when none was given)."""
    status: JobStatus
    """The callback's: ``queued`` until the batch is sealed and every member ended."""
    sealed: bool
    sealed_at: str | None
    members: BatchMemberCounts
    created_at: str
    finished_at: str | None
    result: Any
    """The callback's result once it succeeded (for the built-in ``batch``, the counts)."""
    links: BatchLinks


class BatchCancelled(TypedDict):
    """The answer to ``POST /v1/batches/{id}/cancel``, and to ``Client.cancel_batch`` (which
    calls it again while ``more`` is true, summing ``cancelled``)."""

    id: str
    cancelled: int
    """Members whose cancellation was requested (those not ended yet): across the calls of
    ``Client.cancel_batch``, a member still open when a later call came is counted again."""
    more: bool
    """Whether members are left to cancel: one request cancels at most 10,000, call again.
    Always False from ``Client.cancel_batch``, which does so."""


ChildSpec = BatchMemberSpec
"""One child a handler submits with ``Job.submit_children`` (or its continuation, ``then``): a
job as ``Client.submit_batch`` takes it, without its own ``idempotency_key`` (the request's
covers them all)."""


class ChildrenAccepted(TypedDict):
    """The answer to ``Job.submit_children`` (``POST /v1/workers/jobs/{id}/children``)."""

    jobs: list[str]
    """The children's ids, in the order sent."""
    then: NotRequired[str]
    """The continuation's id, when one was asked for."""
