"""The client of conveyor's HTTP API: submit, read, list, cancel, follow jobs, tail events,
schedules and pauses of kinds, workflows (dependencies between jobs, batches with a callback, a
job's children)."""

from __future__ import annotations

import asyncio
import builtins
import random
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from urllib.parse import quote

import httpx

from . import _http
from .errors import ApiError
from .sse import Event, parse_sse
from .types import (
    Accepted,
    Batch,
    BatchCancelled,
    BatchMemberSpec,
    BatchResult,
    BatchSubmission,
    CancelAccepted,
    CatchUp,
    CloudEvent,
    Concurrency,
    CreatedSchedule,
    Job,
    JobPage,
    JobSpec,
    JobStatus,
    Kind,
    KindPause,
    RateLimit,
    Schedule,
)

__all__ = ["Client", "EventStream"]


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _webhook(value: str | Mapping[str, str]) -> dict[str, str]:
    return {"url": value} if isinstance(value, str) else dict(value)


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(str(job_id), safe='')}"


def _schedule_path(schedule_id: str) -> str:
    return f"/v1/schedules/{quote(str(schedule_id), safe='')}"


def _kind_path(kind: str) -> str:
    return f"/v1/kinds/{quote(str(kind), safe='')}"


def _batch_path(batch_id: str) -> str:
    return f"/v1/batches/{quote(str(batch_id), safe='')}"


def _every(value: str | timedelta | int) -> str:
    """An interval as the API reads it: a duration (``30s``, ``1h 30m``), a timedelta or ms."""
    if isinstance(value, str):
        return value
    if isinstance(value, timedelta):
        value = round(value / timedelta(milliseconds=1))
    return f"{int(value)}ms"


def _job_options(
    body: dict[str, Any],
    *,
    max_attempts: int | None,
    timeout_ms: int | None,
    webhook: str | Mapping[str, str] | None,
    priority: int | None,
    concurrency: Concurrency | None,
    rate_limit: RateLimit | None,
) -> dict[str, Any]:
    """Adds a job's options (but ``run_at`` and the idempotency key) to a request body."""
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    if webhook is not None:
        body["webhook"] = _webhook(webhook)
    if priority is not None:
        body["priority"] = priority
    if concurrency is not None:
        body["concurrency"] = dict(concurrency)
    if rate_limit is not None:
        body["rate_limit"] = dict(rate_limit)
    return body


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A batch item as the API wants it (``run_at`` datetimes and webhook URLs converted)."""
    out = {k: v for k, v in spec.items() if v is not None}
    if "run_at" in out:
        out["run_at"] = _iso(out["run_at"])
    if "webhook" in out:
        out["webhook"] = _webhook(out["webhook"])
    if "depends_on" in out:
        out["depends_on"] = [str(d) for d in out["depends_on"]]
    return out



async def _all_pages(page: Callable[[str | None], Awaitable[JobPage]]) -> AsyncIterator[Job]:
    """Every job of a list, page after page: ``page(cursor)`` fetches one."""
    cursor: str | None = None
    while True:
        result = await page(cursor)
        for job in result["items"]:
            yield job
        cursor = result.get("next_cursor")
        if not cursor or not result["items"]:
            return

class Client:
    """An async client of the conveyor API.

    ``url`` is the API's base URL (``http://127.0.0.1:8080``), ``token`` a bearer token (JWT)
    with the scopes the calls need (``jobs:write``, ``jobs:read``, ``events:read``, ``admin``).
    Use it as an async context manager, or call :meth:`aclose` when done. Every error answer
    raises :class:`conveyor.ApiError` (with the problem's ``status``, ``title``, ``detail``,
    ``type`` and ``retry_after``); the client itself never retries a request, except that
    event streams reconnect.

    ``http_client`` lets you bring your own ``httpx.AsyncClient`` (proxies, transports, limits);
    its base URL and headers are set for conveyor, and it is not closed by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = _http.DEFAULT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http, self._owned = _http.make_client(
            self.url, token, timeout=timeout, http_client=http_client, headers=headers
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections (only those of an ``httpx.AsyncClient`` the client made)."""
        if self._owned:
            await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        _, body = await _http.request(self._http, method, path, **kwargs)
        return body

    # --- jobs -----------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        run_at: datetime | str | None = None,
        webhook: str | Mapping[str, str] | None = None,
        priority: int | None = None,
        concurrency: Concurrency | None = None,
        rate_limit: RateLimit | None = None,
        depends_on: Iterable[str] | None = None,
    ) -> Accepted:
        """Submits a job (``POST /v1/jobs``) and answers what the API accepted.

        With an ``idempotency_key``, submitting the same job again answers the original one,
        and the same key with a different job raises ``ApiError`` 409. ``webhook`` is the URL
        (or ``{"url": …}``) the job's terminal event is POSTed to, signed.

        When it starts among the waiting jobs of its kind (docs/scheduling.md): ``priority``,
        -100 to 100 (default 0), higher first, across tenants and processes; ``concurrency``,
        ``{"key", "limit"}``: never more than ``limit`` of the tenant's jobs with this key
        running at once, whatever their kind; ``rate_limit``, ``{"key", "limit",
        "period_ms"}``: at most ``limit`` starts of the tenant's jobs with this key per
        ``period_ms``, the others wait. Out of range: ``ApiError`` 422.

        ``depends_on`` (docs/workflows.md): ids of up to 32 jobs of the tenant, already
        submitted, that must all end before this one starts (an unknown one: ``ApiError`` 422).
        If all succeed it runs, its handler told their results (``job.upstream``); if one fails
        or is cancelled, it is cancelled unrun (its ``job.cancelled`` says ``reason``).
        """
        body: dict[str, Any] = {"kind": kind}
        if payload is not None:
            body["payload"] = payload
        _job_options(
            body,
            max_attempts=max_attempts,
            timeout_ms=timeout_ms,
            webhook=webhook,
            priority=priority,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )
        if run_at is not None:
            body["run_at"] = _iso(run_at)
        if depends_on is not None:
            body["depends_on"] = [str(d) for d in depends_on]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        result: Accepted = await self._call("POST", "/v1/jobs", json_body=body, headers=headers)
        return result

    async def submit_batch(self, jobs: Iterable[JobSpec | Mapping[str, Any]]) -> BatchResult:
        """Submits up to 1,000 jobs in one request (``POST /v1/jobs/batch``).

        Each job is a dict of ``submit``'s arguments (``kind``, ``payload``, ``max_attempts``,
        ``timeout_ms``, ``run_at``, ``webhook``, ``priority``, ``concurrency``, ``rate_limit``,
        ``depends_on``, ``idempotency_key``). Each is answered on its own, in order, in
        ``items``: ``status`` 202 (accepted, with ``job``), 200 (a repeat of an earlier
        submission with the same ``idempotency_key``) or an error status with its ``problem``.
        A batch over the tenant's rate or quota raises ``ApiError`` 429 as a whole. (For a
        batch followed as one, with a callback once all ended, see :meth:`create_batch`.)
        """
        body = {"jobs": [_spec(j) for j in jobs]}
        result: BatchResult = await self._call("POST", "/v1/jobs/batch", json_body=body)
        return result

    async def get(self, job_id: str) -> Job:
        """The job (``GET /v1/jobs/{id}``); never 404 right after its submission."""
        result: Job = await self._call("GET", _job_path(job_id))
        return result

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first (``GET /v1/jobs``): ``items`` and ``next_cursor``
        (pass it as ``cursor`` for the next page; None on the last one). ``status="queued"``
        lists them in the order they will start: highest priority first, then oldest."""
        params = {"status": status, "kind": kind, "limit": limit, "cursor": cursor}
        result: JobPage = await self._call("GET", "/v1/jobs", params=params)
        return result

    async def list_all(
        self,
        *,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every job matching the filters, in the order of ``list``, page after page (``limit`` is
        the page size)."""
        async for job in _all_pages(
            lambda cursor: self.list(status=status, kind=kind, limit=limit, cursor=cursor)
        ):
            yield job

    async def cancel(self, job_id: str) -> CancelAccepted:
        """Requests the job's cancellation (``POST /v1/jobs/{id}/cancel``); raises ``ApiError``
        409 if it already ended."""
        result: CancelAccepted = await self._call("POST", _job_path(job_id) + "/cancel")
        return result

    async def result(self, job_id: str) -> Any:
        """The result of a succeeded job (``GET /v1/jobs/{id}/result``), also one too large to
        inline; ``ApiError`` 404 while it has none."""
        return await self._call("GET", _job_path(job_id) + "/result")

    async def timeline(self, job_id: str) -> builtins.list[CloudEvent]:
        """The job's CloudEvents so far, oldest first (``GET /v1/jobs/{id}/events``)."""
        result: builtins.list[CloudEvent] = await self._call("GET", _job_path(job_id) + "/events")
        return result

    async def kinds(self) -> builtins.list[Kind]:
        """The job kinds the API accepts, with their payload schemas (``GET /v1/kinds``)."""
        body = await self._call("GET", "/v1/kinds")
        items: builtins.list[Kind] = body["items"]
        return items

    # --- batches (docs/workflows.md) ---------------------------------------------------------

    async def create_batch(
        self,
        jobs: Iterable[BatchMemberSpec | Mapping[str, Any]] = (),
        *,
        callback: BatchMemberSpec | Mapping[str, Any] | None = None,
        seal: bool | None = None,
        idempotency_key: str | None = None,
    ) -> BatchSubmission:
        """Submits a batch (``POST /v1/batches``): its callback (the batch's own job, whose id is
        the batch's), then up to 1,000 members, then seals it unless ``seal=False``.

        Members and ``callback`` are dicts like the jobs of :meth:`submit_batch`, without an
        ``idempotency_key`` of their own (``idempotency_key`` here covers the whole request: a
        repeat answers the same batch and member ids, with ``repeated`` True). The callback runs
        once, when the batch is sealed and every member has ended, whatever their outcomes, its
        handler told how they ended (``job.upstream["members"]``); without one the batch runs the
        built-in kind ``batch``, whose result is the counts. All jobs are validated first: one
        refused raises ``ApiError`` 422 naming it (``jobs[3]: …``) and nothing is submitted.
        Follow the batch as a job: ``client.get(batch["id"])``, ``client.follow(batch["id"])``.
        """
        body: dict[str, Any] = {"jobs": [_spec(j) for j in jobs]}
        if callback is not None:
            body["callback"] = _spec(callback)
        if seal is not None:
            body["seal"] = seal
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        response, answer = await _http.request(
            self._http, "POST", "/v1/batches", json_body=body, headers=headers
        )
        result: BatchSubmission = answer
        result["repeated"] = response.status_code == 200
        return result

    async def add_batch_jobs(
        self,
        batch_id: str,
        jobs: Iterable[BatchMemberSpec | Mapping[str, Any]],
        *,
        seal: bool | None = None,
        idempotency_key: str | None = None,
    ) -> BatchSubmission:
        """Adds 1 to 1,000 members to an open batch (``POST /v1/batches/{id}/jobs``), sealing it
        after them with ``seal=True``; ``ApiError`` 409 once it is sealed or cancelled. With an
        ``idempotency_key`` (one per page), a repeated page answers 200 (``repeated`` True) with
        the same member ids, added once, even after the seal; the same key with another page is
        ``ApiError`` 409. Seal only after every page was answered: a page still in flight may be
        missed by the callback."""
        body: dict[str, Any] = {"jobs": [_spec(j) for j in jobs]}
        if seal is not None:
            body["seal"] = seal
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        response, answer = await _http.request(
            self._http, "POST", _batch_path(batch_id) + "/jobs", json_body=body, headers=headers
        )
        result: BatchSubmission = answer
        result["repeated"] = response.status_code == 200
        return result

    async def seal_batch(self, batch_id: str) -> Batch:
        """Seals a batch (``POST /v1/batches/{id}/seal``): no member can be added; its callback
        runs once every member has ended. Sealing again changes nothing."""
        result: Batch = await self._call("POST", _batch_path(batch_id) + "/seal")
        return result

    async def get_batch(self, batch_id: str) -> Batch:
        """The batch and its members' progress (``GET /v1/batches/{id}``); ``ApiError`` 404 if it
        is no batch of the tenant."""
        result: Batch = await self._call("GET", _batch_path(batch_id))
        return result

    async def list_batch_jobs(
        self,
        batch_id: str,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of a batch's members, in submission order (``GET /v1/batches/{id}/jobs``):
        ``items`` and ``next_cursor``; ``limit`` 1 to 1,000 (default 100)."""
        params = {"status": status, "limit": limit, "cursor": cursor}
        result: JobPage = await self._call("GET", _batch_path(batch_id) + "/jobs", params=params)
        return result

    async def list_all_batch_jobs(
        self,
        batch_id: str,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every member of the batch matching ``status``, in submission order, page after page
        (``limit`` is the page size)."""
        async for job in _all_pages(
            lambda cursor: self.list_batch_jobs(batch_id, status=status, limit=limit, cursor=cursor)
        ):
            yield job

    # --- children (docs/workflows.md) ---------------------------------------------------------

    async def list_children(
        self,
        job_id: str,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of a job's children (``GET /v1/jobs/{id}/children``): the jobs its handler
        submitted (``Job.submit_children`` of the worker; each has ``parent``), in submission
        order, a continuation among them; ``items`` and ``next_cursor``; ``limit`` 1 to 1,000
        (default 100). ``ApiError`` 404 if there is no such job."""
        params = {"status": status, "limit": limit, "cursor": cursor}
        result: JobPage = await self._call("GET", _job_path(job_id) + "/children", params=params)
        return result

    async def list_all_children(
        self,
        job_id: str,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every child of the job matching ``status``, in submission order, page after page
        (``limit`` is the page size)."""
        async for job in _all_pages(
            lambda cursor: self.list_children(job_id, status=status, limit=limit, cursor=cursor)
        ):
            yield job

    async def cancel_batch(self, batch_id: str) -> BatchCancelled:
        """Cancels a batch (``POST /v1/batches/{id}/cancel``): its callback first (so it never
        runs), then every member not ended yet (``cancelled`` counts them). One request cancels
        at most 10,000 members (answering ``more: True``): this calls again until none is left,
        summing ``cancelled``, so it answers ``more: False``. ``ApiError`` 409 if the batch and
        every member had already ended (a 409 to a later call, once a previous one cancelled the
        rest, ends the loop)."""
        cancelled = 0
        first = True
        while True:
            try:
                answer: BatchCancelled = await self._call(
                    "POST", _batch_path(batch_id) + "/cancel"
                )
            except ApiError as e:
                # Everything left ended between two calls: the batch is cancelled as asked.
                if not first and e.status == 409:
                    return {"id": batch_id, "cancelled": cancelled, "more": False}
                raise
            first = False
            cancelled += answer["cancelled"]
            if not answer.get("more"):
                return {"id": answer["id"], "cancelled": cancelled, "more": False}

    # --- schedules and pauses (docs/scheduling.md) -------------------------------------------

    async def create_schedule(
        self,
        id: str,
        kind: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        every: str | timedelta | int | None = None,
        catch_up: CatchUp | None = None,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        webhook: str | Mapping[str, str] | None = None,
        priority: int | None = None,
        concurrency: Concurrency | None = None,
        rate_limit: RateLimit | None = None,
    ) -> CreatedSchedule:
        """Creates a schedule (``POST /v1/schedules``), or replaces the one with the same ``id``
        (its ticks so far are kept, none runs twice); ``created`` in the answer says which (201
        or 200).

        ``id``: 1 to 128 letters, digits, ``-`` and ``_``. Give ``cron`` (5 fields, or 6 with
        seconds first, read in the IANA ``timezone``, default ``UTC``) or ``every`` (1 s to 366
        days, counted from the creation: ``"30s"``, ``"1h 30m"``, a ``timedelta`` or ms).
        ``catch_up`` is what ticks missed by more than a minute get: ``"skip"`` (the default) or
        ``"once"``. Each tick submits one job of ``kind`` with ``payload`` and the job options of
        :meth:`submit` (no ``run_at`` or ``idempotency_key``: the ticks give both); its
        ``job.submitted`` carries ``schedule: {"id", "tick"}``. A bad definition raises
        ``ApiError`` 422.
        """
        body: dict[str, Any] = {"id": id, "kind": kind}
        if payload is not None:
            body["payload"] = payload
        if cron is not None:
            body["cron"] = cron
        if timezone is not None:
            body["timezone"] = timezone
        if every is not None:
            body["every"] = _every(every)
        if catch_up is not None:
            body["catch_up"] = catch_up
        _job_options(
            body,
            max_attempts=max_attempts,
            timeout_ms=timeout_ms,
            webhook=webhook,
            priority=priority,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )
        response, answer = await _http.request(self._http, "POST", "/v1/schedules", json_body=body)
        result: CreatedSchedule = answer
        result["created"] = response.status_code == 201
        return result

    async def schedules(self) -> builtins.list[Schedule]:
        """The tenant's schedules, by id (``GET /v1/schedules``)."""
        body = await self._call("GET", "/v1/schedules")
        items: builtins.list[Schedule] = body["items"]
        return items

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """One schedule (``GET /v1/schedules/{id}``); ``ApiError`` 404 if there is none."""
        result: Schedule = await self._call("GET", _schedule_path(schedule_id))
        return result

    async def delete_schedule(self, schedule_id: str) -> None:
        """Deletes a schedule (``DELETE /v1/schedules/{id}``, 204): no tick fires after this; its
        jobs already submitted run on. ``ApiError`` 404 if there is none."""
        await self._call("DELETE", _schedule_path(schedule_id))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """Pauses a schedule (``POST /v1/schedules/{id}/pause``): no tick fires until it is
        resumed. Pausing again changes nothing."""
        result: Schedule = await self._call("POST", _schedule_path(schedule_id) + "/pause")
        return result

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Resumes a schedule (``POST /v1/schedules/{id}/resume``) from its next tick; the ticks
        it missed while paused do not run."""
        result: Schedule = await self._call("POST", _schedule_path(schedule_id) + "/resume")
        return result

    async def pause_kind(self, kind: str) -> KindPause:
        """Pauses the tenant's own jobs of ``kind`` (``POST /v1/kinds/{kind}/pause``, scope
        ``jobs:write``): its waiting jobs stay queued and none is handed to a worker until it is
        resumed; running jobs finish, and the few already handed to workers still start."""
        result: KindPause = await self._call("POST", _kind_path(kind) + "/pause")
        return result

    async def resume_kind(self, kind: str) -> KindPause:
        """Resumes the tenant's own jobs of ``kind`` (``POST /v1/kinds/{kind}/resume``); an
        operator's pause for every tenant stays."""
        result: KindPause = await self._call("POST", _kind_path(kind) + "/resume")
        return result

    async def pauses(self) -> builtins.list[KindPause]:
        """The pauses that hold the tenant's jobs (``GET /v1/pauses``): its own, and operators'
        pauses for every tenant."""
        body = await self._call("GET", "/v1/pauses")
        items: builtins.list[KindPause] = body["items"]
        return items

    async def webhook_secret(self) -> str:
        """The tenant's webhook signing secret, ``whsec_…`` (``GET /v1/webhooks/secret``)."""
        body = await self._call("GET", "/v1/webhooks/secret")
        return str(body["secret"])

    # --- live streams ---------------------------------------------------------------------

    def follow(self, job_id: str, *, reconnect: bool = True) -> EventStream:
        """The job's events over SSE (``GET /v1/jobs/{id}/events``): those so far, then live
        ones, ending after its terminal event (``job.succeeded``, ``job.dead_lettered`` or
        ``job.cancelled``). A dropped connection is reopened and what was already seen skipped.

        ``async for event in client.follow(job_id): ...``
        """
        return EventStream(
            self._http,
            _job_path(job_id) + "/events",
            {},
            after=None,
            until_terminal=True,
            reconnect=reconnect,
        )

    def events(
        self,
        *,
        type: str | Iterable[str] | None = None,
        kind: str | None = None,
        job: str | None = None,
        after: int | str | None = None,
        reconnect: bool = True,
    ) -> EventStream:
        """The tenant's events over SSE (``GET /v1/events``), live, never ending by itself.

        ``type`` filters by event type (``job.succeeded`` or a list of them), ``kind`` by job
        kind, ``job`` by job id. ``after`` is a stream sequence to resume after (``0``: from the
        beginning); without it the stream starts with what happens next. When the connection
        drops, or the server asks the client to resume, the stream reconnects with
        ``Last-Event-ID`` and goes on exactly where it was: nothing lost, nothing repeated.
        ``stream.last_event_id`` is the point to resume from later.
        """
        types = type if type is None or isinstance(type, str) else ",".join(type)
        params = {"type": types, "kind": kind, "job": job}
        return EventStream(
            self._http,
            "/v1/events",
            {k: v for k, v in params.items() if v is not None},
            after=after,
            until_terminal=False,
            reconnect=reconnect,
        )


class EventStream:
    """An async iterator of server-sent :class:`~conveyor.Event` s that reconnects.

    Reconnection waits with exponential backoff (from ``min_delay`` up to ``max_delay``
    seconds, with jitter; at once after a server's ``resume``), resumes from
    ``last_event_id``, and honours ``Retry-After`` on 429 and 503. Errors other than 429,
    502, 503 and 504 are raised. Close it with :meth:`aclose` (or ``async with``) when you stop
    iterating early.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        path: str,
        params: Mapping[str, str],
        *,
        after: int | str | None,
        until_terminal: bool,
        reconnect: bool,
        min_delay: float = 0.2,
        max_delay: float = 30.0,
        read_timeout: float = 45.0,
    ) -> None:
        self._http = http
        self._path = path
        self._params = dict(params)
        self._until_terminal = until_terminal
        self._reconnect = reconnect
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._read_timeout = read_timeout
        self.last_event_id: str | None = None if after is None else str(after)
        """The id (stream sequence) of the last event received: where a resume starts."""
        self.reconnects = 0
        """How many times the stream was reopened."""
        self.duplicates_skipped = 0
        """Events the server sent again after a reconnection, not passed on."""
        self._gen: AsyncIterator[Event] | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._gen is None:
            self._gen = self._run()
        return await self._gen.__anext__()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the stream and closes its connection."""
        gen, self._gen = self._gen, None
        if gen is not None:
            await gen.aclose()  # type: ignore[attr-defined]

    def _backoff(self, failures: int) -> float:
        delay = min(self._max_delay, self._min_delay * (2 ** max(0, failures - 1)))
        return float(delay * (0.5 + random.random() / 2))

    async def _run(self) -> AsyncIterator[Event]:
        failures = 0
        start = self.last_event_id
        last_seq: int | None = int(start) if start is not None and start.isdigit() else None
        while True:
            delay: float | None = None
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = self.last_event_id
            timeout = httpx.Timeout(10.0, read=self._read_timeout)
            try:
                async with self._http.stream(
                    "GET", self._path, params=self._params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        error = ApiError.from_response(response)
                        if not (self._reconnect and error.retryable):
                            raise error
                        failures += 1
                        delay = error.retry_after if error.retry_after is not None else None
                    else:
                        failures = 0
                        async for event in parse_sse(response.aiter_lines()):
                            if event.event == "resume":
                                point = event.data.get("last_event_id") if isinstance(event.data, dict) else None
                                if point is not None and str(point).isdigit():
                                    if last_seq is None or int(str(point)) > last_seq:
                                        self.last_event_id = str(point)
                                        last_seq = int(str(point))
                                delay = 0.0
                                break
                            seq = event.seq
                            if seq is not None and last_seq is not None and seq <= last_seq:
                                self.duplicates_skipped += 1
                                continue
                            if seq is not None:
                                last_seq = seq
                            if event.id is not None:
                                self.last_event_id = event.id
                            yield event
                            if self._until_terminal and event.terminal:
                                return
                        else:
                            # The server ended the stream. A job's stream ends after its terminal
                            # event, which was passed on above; anything else is reopened.
                            failures += 1
            except httpx.TransportError:
                if not self._reconnect:
                    raise
                failures += 1
            if not self._reconnect:
                return
            self.reconnects += 1
            await asyncio.sleep(self._backoff(failures) if delay is None else delay)
