"""A worker over conveyor's HTTP worker protocol (docs/workers.md): lease jobs, run them with
asyncio, heartbeat, report progress, submit children and wait for them, report outcomes, and shut
down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping, NoReturn, TypeVar, cast
from urllib.parse import quote

import httpx

from . import _http
from .client import _spec
from .errors import ApiError, LeaseLostError, WaitForChildren
from .types import BatchMemberSpec, ChildrenAccepted, Upstream

__all__ = ["Worker", "Job", "Handler", "CancelReason"]

log = logging.getLogger("conveyor.worker")

CancelReason = Literal["cancelled", "timeout", "shutdown", "lease_lost"]
"""Why a running job's handler was stopped: the job was cancelled, its attempt's deadline
passed, the worker shut down past its grace period, or the lease was lost."""

MAX_BATCH = 256
"""The most reports in one batch request, and the most jobs one lease asks for."""

MAX_ERROR_MESSAGE = 4096


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _job_path(job_id: str, action: str) -> str:
    return f"/v1/workers/jobs/{quote(job_id, safe='')}/{action}"


class Job:
    """A leased job, as its handler sees it.

    ``cancelled`` is set when the handler must stop: the job was cancelled, its deadline
    passed, the worker is shutting down past its grace period, or the lease was lost
    (``cancel_reason`` says which). At the same moment the handler's asyncio task is
    cancelled, so an ``await`` raises ``asyncio.CancelledError``; ``cancelled`` serves code
    that wants to check between steps, or that shields work from the task's cancellation.
    """

    id: str
    tenant: str
    kind: str
    payload: Any
    attempt: int
    max_attempts: int
    deadline: datetime | None
    """When the attempt's ``timeout_ms`` runs out."""
    upstream: Upstream | None
    """How the jobs it waited for ended (docs/workflows.md): ``dependencies``, in the order of
    its ``depends_on``, each ``{"id", "status", "result"?, "result_url"?}`` (``result`` when it
    succeeded with one small enough to pass on, up to 16 KiB each; else ``result_url`` says where
    to read it); for a batch's callback or a continuation, ``members`` (``total``,
    ``succeeded``, ``failed``, ``cancelled``, and ``jobs`` for up to 1,000); for an attempt
    resuming after :meth:`wait_for_children`, ``children`` (the same shape). None for a job that
    waited for none. Retries are told the same."""
    lease: str
    """The current lease token (renewed by each heartbeat); opaque."""
    lease_expires_at: datetime | None
    heartbeat_ms: int
    raw: dict[str, Any]
    """The job as the lease answered it."""
    cancelled: asyncio.Event
    cancel_reason: CancelReason | None

    def __init__(self, raw: Mapping[str, Any], worker: Worker) -> None:
        self.raw = dict(raw)
        self.id = str(raw["id"])
        self.tenant = str(raw.get("tenant", ""))
        self.kind = str(raw["kind"])
        self.payload = raw.get("payload")
        self.attempt = int(raw.get("attempt", 1))
        self.max_attempts = int(raw.get("max_attempts", 1))
        self.deadline = _parse_time(raw.get("deadline"))
        upstream = raw.get("upstream")
        self.upstream = cast(Upstream, upstream) if isinstance(upstream, dict) else None
        self.lease = str(raw["lease"])
        self.lease_expires_at = _parse_time(raw.get("lease_expires_at"))
        self.heartbeat_ms = int(raw.get("heartbeat_ms") or 0)
        self.cancelled = asyncio.Event()
        self.cancel_reason = None
        self._worker = worker
        self._seq = 0
        self._state: _Running | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, attempt={self.attempt})"

    async def progress(
        self, current: int, total: int | None = None, message: str | None = None
    ) -> None:
        """Reports progress (appends ``job.progressed`` to the job's timeline).

        Raises :class:`LeaseLostError` (and stops the handler) when the lease is gone, and
        :class:`ApiError` when the API refuses the report; transient failures are retried.
        """
        self._seq += 1
        await self._worker._progress(self, self._seq, current, total, message)

    async def submit_children(
        self,
        jobs: Iterable[BatchMemberSpec | Mapping[str, Any]],
        *,
        then: BatchMemberSpec | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ChildrenAccepted:
        """Submits 1 to 1,000 children of this job (``POST /v1/workers/jobs/{id}/children``):
        jobs whose ``parent`` it is, counting against the tenant's rate and quota. Each is a dict
        as :meth:`Client.submit_batch <conveyor.Client.submit_batch>` takes it (``kind``,
        ``payload``, ``max_attempts``, …), without ``idempotency_key``. Then end the handler one
        of two ways:

        - with ``then``, a continuation (a job of the same form): the children are the members
          of a sealed batch whose callback it is; it runs once every child has ended, told how
          in ``upstream["members"]``. The handler may just return (the job completes; the
          continuation carries on).
        - or :meth:`wait_for_children`: the attempt ends without an outcome, the slot is freed,
          and the job's next attempt runs once every child has ended, told how in
          ``upstream["children"]``.

        Answers the children's ids (``jobs``, in order) and the continuation's (``then``).
        Transient failures are retried under an idempotency key (``idempotency_key``, or one of
        its own), so a retry submits the same children once; a repeat with the same key during
        the same attempt answers the same ids. Raises :class:`LeaseLostError` (and stops the
        handler) when the lease is gone, :class:`ApiError` when the API refuses the children
        (422 for an invalid one, 409 ``conflict`` for a key reused with other children).
        """
        return await self._worker._children(self, jobs, then, idempotency_key)

    def wait_for_children(self) -> NoReturn:
        """Ends the attempt waiting for the job's children: raises :class:`WaitForChildren`,
        which the worker turns into a wait (``job.suspended``) instead of an outcome. The job is
        ``queued`` (``waiting.reason`` ``children``) and holds no slot until every child it
        submitted has ended; then its next attempt (``attempt + 1``; one more attempt is
        allowed) runs the handler again, with ``upstream["children"]`` set::

            if job.upstream and "children" in job.upstream:
                return summarize(job.upstream["children"])
            await job.submit_children([{"kind": "resize", "payload": p} for p in parts])
            job.wait_for_children()
        """
        raise WaitForChildren()


Handler = Callable[[Job], Awaitable[Any]]
"""A job handler: an async function of the job, returning the job's result (JSON-serializable).
Raising fails the attempt (retried with backoff); raising :class:`conveyor.FatalError`, or any
exception with a true ``fatal`` attribute, dead-letters the job at once; raising
:class:`conveyor.WaitForChildren` (``job.wait_for_children()``) waits for its children."""

H = TypeVar("H", bound=Handler)


@dataclass
class _Kind:
    handler: Handler
    schema: Any


@dataclass(eq=False)
class _Running:
    job: Job
    handler_task: asyncio.Task[Any] | None = None
    supervisor: asyncio.Task[None] | None = None
    abandon: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Report:
    action: Literal["complete", "fail"]
    job: Job
    body: dict[str, Any]
    done: asyncio.Future[None]


class Worker:
    """Runs job handlers for conveyor over HTTP.

    ::

        worker = Worker(url, token, concurrency=64)

        @worker.handle("report.monthly", schema={"type": "object", "required": ["month"]})
        async def monthly(job: Job) -> dict:
            await job.progress(1, 2, "half way")
            return {"url": "/reports/..."}

        await worker.run()   # until SIGTERM / SIGINT or worker.close()

    ``token`` needs the scope ``worker`` (an ``admin`` token includes it). At start, ``run``
    registers each kind with its payload schema, then leases jobs (as many as free slots, up
    to ``concurrency``; a long poll of ``wait_ms``) and runs each handler in its own asyncio
    task, heartbeating as the server asks. A handler's return value completes the job; an
    exception fails the attempt (retryable, or fatal for :class:`conveyor.FatalError`);
    ``job.wait_for_children()`` (after ``job.submit_children(...)``) ends the attempt waiting
    for its children, freeing the slot, and the job's next attempt runs once they all ended; a
    cancelled job or a passed deadline cancels the handler's task and is reported as such; a
    lost lease cancels it and drops the job. Reports of jobs that end together are sent in
    batches.

    On SIGTERM or SIGINT (when ``handle_signals``, in the main thread) or :meth:`close`, the
    worker stops leasing, lets running jobs finish for ``shutdown_grace_ms``, then cancels the
    rest and hands their leases back, so another worker runs them at once; ``run`` then
    returns. A second signal skips what is left of the grace period.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        concurrency: int = 64,
        name: str | None = None,
        wait_ms: int = 20_000,
        shutdown_grace_ms: int = 10_000,
        handle_signals: bool = True,
        timeout: float = _http.DEFAULT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 <= wait_ms <= 30_000:
            raise ValueError("wait_ms must be between 0 and 30000")
        self.url = url.rstrip("/")
        self._token = token
        self.concurrency = concurrency
        self.name = name or f"python-{socket.gethostname()}-{os.getpid()}"
        self.wait_ms = wait_ms
        self.shutdown_grace_ms = shutdown_grace_ms
        self.handle_signals = handle_signals
        self._timeout = timeout
        self._given_http = http_client
        self._kinds: dict[str, _Kind] = {}
        self._running: set[_Running] = set()
        self._http: httpx.AsyncClient | None = None
        self._owned = False
        self._stopping: asyncio.Event | None = None
        self._hard_stop: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._reports: asyncio.Queue[_Report | None] | None = None
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()
        """Set once ``run`` has registered every kind: from then on the API accepts them."""

    # --- configuration --------------------------------------------------------------------

    def handle(self, kind: str, *, schema: Any = None) -> Callable[[H], H]:
        """Decorator: ``handler`` runs the jobs of ``kind``, whose payloads the API validates
        against the JSON Schema ``schema`` (None: any payload)."""

        def register(handler: H) -> H:
            self.register(kind, handler, schema=schema)
            return handler

        return register

    def register(self, kind: str, handler: Handler, *, schema: Any = None) -> None:
        """Registers ``handler`` for ``kind`` (the same as :meth:`handle`, without decorating)."""
        if kind in self._kinds:
            raise ValueError(f"kind {kind!r} already has a handler")
        if len(self._kinds) >= 32:
            raise ValueError("a worker serves at most 32 kinds")
        self._kinds[kind] = _Kind(handler, schema)

    @property
    def kinds(self) -> list[str]:
        """The kinds this worker serves."""
        return list(self._kinds)

    @property
    def active(self) -> int:
        """How many jobs are running now."""
        return len(self._running)

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks the worker to shut down gracefully (returns at once; ``run`` returns when done).
        Calling it again skips what is left of the grace period. Safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop_requested = True
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._request_stop()
        else:
            loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        assert self._stopping is not None and self._hard_stop is not None
        if self._stopping.is_set():
            log.info("stopping now: running jobs are handed back")
            self._hard_stop.set()
        else:
            log.info("stopping: no new jobs; %d running", len(self._running))
            self._stopping.set()

    async def close(self) -> None:
        """Shuts down gracefully and waits until ``run`` has returned."""
        self.stop()
        if self._done is not None:
            await self._done.wait()

    async def run(self) -> None:
        """Registers the kinds, then runs jobs until :meth:`stop`, :meth:`close` or a signal;
        returns once every running job has finished or been handed back. Raises
        :class:`ApiError` when the API refuses the worker (a bad token, a kind it may not
        serve)."""
        if not self._kinds:
            raise ValueError("no handlers: register at least one kind with @worker.handle")
        if self._loop is not None:
            raise RuntimeError("this worker is already running or has run")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._done = asyncio.Event()
        self._reports = asyncio.Queue()
        if self._stop_requested:
            self._stopping.set()
        self._http, self._owned = _http.make_client(
            self.url, self._token, timeout=self._timeout, http_client=self._given_http
        )
        signals = self._install_signals()
        reporter = asyncio.create_task(self._report_loop(), name="conveyor-reports")
        try:
            await self._register_kinds()
            self.ready.set()
            await self._lease_loop()
        finally:
            self._stopping.set()
            try:
                await self._drain()
            finally:
                await self._reports.put(None)
                with contextlib.suppress(Exception):
                    await reporter
                self._remove_signals(signals)
                if self._owned:
                    await self._http.aclose()
                self._done.set()

    def _install_signals(self) -> list[signal.Signals]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        assert self._loop is not None
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        return installed

    def _remove_signals(self, signals: list[signal.Signals]) -> None:
        assert self._loop is not None
        for sig in signals:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(sig)

    # --- HTTP -------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        assert self._http is not None
        try:
            _, result = await _http.request(
                self._http, method, path, json_body=body, timeout=timeout, headers=headers
            )
        except ApiError as e:
            # Every 409 of a job's worker endpoint means the lease is gone (docs/workers.md),
            # but for an idempotency key reused with other children (`conflict`).
            if (
                e.status == 409
                and path.startswith("/v1/workers/jobs/")
                and not isinstance(e, LeaseLostError)
                and e.slug != "conflict"
            ):
                raise LeaseLostError(
                    e.status,
                    title=e.title,
                    detail=e.detail,
                    type=e.type,
                    problem=e.problem,
                    retry_after=e.retry_after,
                    method=e.method,
                    url=e.url,
                ) from e
            raise
        return result

    async def _sleep_or_stop(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    @staticmethod
    def _backoff(failures: int, base: float = 0.2, cap: float = 10.0) -> float:
        return float(min(cap, base * 2 ** max(0, failures - 1)) * (0.5 + random.random() / 2))

    async def _register_kinds(self) -> None:
        for kind, spec in self._kinds.items():
            failures = 0
            while True:
                try:
                    await self._call(
                        "PUT",
                        f"/v1/workers/kinds/{quote(kind, safe='')}",
                        {"schema": spec.schema},
                    )
                    break
                except (ApiError, httpx.TransportError) as e:
                    if isinstance(e, ApiError) and not e.retryable:
                        raise
                    failures += 1
                    if failures > 8:
                        raise
                    retry_after = e.retry_after if isinstance(e, ApiError) else None
                    log.warning("registering kind %s failed (%s); retrying", kind, e)
                    await asyncio.sleep(retry_after or self._backoff(failures))

    # --- leasing ----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        assert self._stopping is not None and self._slot_freed is not None
        failures = 0
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                free = min(MAX_BATCH, self.concurrency - len(self._running))
                if free <= 0:
                    self._slot_freed.clear()
                    slot = asyncio.create_task(self._slot_freed.wait())
                    await asyncio.wait({slot, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    slot.cancel()
                    continue
                body = {
                    "kinds": list(self._kinds),
                    "max_jobs": free,
                    "wait_ms": self.wait_ms,
                    "worker": self.name,
                }
                lease = asyncio.create_task(
                    self._call(
                        "POST", "/v1/workers/lease", body, timeout=self.wait_ms / 1000 + 15
                    )
                )
                await asyncio.wait({lease, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not lease.done():
                    # Stopping during a long poll: give up the request.
                    lease.cancel()
                    with contextlib.suppress(BaseException):
                        await lease
                    break
                try:
                    answer = lease.result()
                except (ApiError, httpx.TransportError) as e:
                    if isinstance(e, ApiError) and not e.retryable and e.status < 500:
                        raise
                    failures += 1
                    delay = e.retry_after if isinstance(e, ApiError) else None
                    log.warning("lease failed (%s); retrying", e)
                    await self._sleep_or_stop(
                        delay if delay is not None else self._backoff(failures)
                    )
                    continue
                failures = 0
                for raw in (answer or {}).get("jobs", []):
                    self._start(raw)
        finally:
            stop_wait.cancel()

    def _start(self, raw: Mapping[str, Any]) -> None:
        assert self._stopping is not None
        job = Job(raw, self)
        running = _Running(job)
        job._state = running
        self._running.add(running)
        running.supervisor = asyncio.create_task(
            self._supervise(running), name=f"conveyor-job-{job.id}"
        )

    # --- one job ----------------------------------------------------------------------------

    def _abort(self, running: _Running, reason: CancelReason) -> None:
        job = running.job
        if job.cancel_reason is not None:
            return
        job.cancel_reason = reason
        job.cancelled.set()
        if running.handler_task is not None and not running.handler_task.done():
            running.handler_task.cancel()

    async def _supervise(self, running: _Running) -> None:
        job = running.job
        assert self._stopping is not None
        try:
            if self._stopping.is_set():
                # Leased while the worker began to stop: hand it back without running it.
                await self._release(job)
                return
            handler = self._kinds[job.kind].handler if job.kind in self._kinds else None
            if handler is None:
                await self._send_fail(job, "fatal", f"no handler for kind {job.kind!r}")
                return
            running.handler_task = asyncio.create_task(
                self._invoke(handler, job), name=f"conveyor-handler-{job.id}"
            )
            stop_heartbeat = asyncio.Event()
            heartbeat = asyncio.create_task(self._heartbeat_loop(running, stop_heartbeat))
            timer: asyncio.TimerHandle | None = None
            if job.deadline is not None:
                left = (job.deadline - _now()).total_seconds()
                assert self._loop is not None
                timer = self._loop.call_later(max(0.0, left), self._abort, running, "timeout")
            try:
                abandon = asyncio.create_task(running.abandon.wait())
                await asyncio.wait(
                    {running.handler_task, abandon}, return_when=asyncio.FIRST_COMPLETED
                )
                abandon.cancel()
            finally:
                if timer is not None:
                    timer.cancel()
                stop_heartbeat.set()
                await heartbeat
            await self._conclude(running)
        except asyncio.CancelledError:
            if running.handler_task is not None:
                running.handler_task.cancel()
            raise
        except Exception:
            log.exception("job %s: unexpected error in the worker", job.id)
        finally:
            self._running.discard(running)
            assert self._slot_freed is not None
            self._slot_freed.set()

    @staticmethod
    async def _invoke(handler: Handler, job: Job) -> Any:
        return await handler(job)

    async def _conclude(self, running: _Running) -> None:
        job = running.job
        task = running.handler_task
        assert task is not None
        reason = job.cancel_reason
        if task.done() and not task.cancelled():
            task.exception()  # retrieved here whatever happens next
        if reason == "lease_lost":
            log.warning("job %s: lease lost; dropped", job.id)
            return
        if not task.done():
            # The handler ignored its cancellation past the shutdown's last wait.
            log.warning("job %s: the handler did not stop; its lease is handed back", job.id)
            await self._release(job)
            return
        if task.cancelled():
            if not await self._report_cut_short(job, reason):
                await self._send_fail(job, "retryable", "the handler was cancelled")
            return
        error = task.exception()
        if isinstance(error, WaitForChildren):
            # Like a result: it does not count after a cancellation or the deadline.
            if not await self._report_cut_short(job, reason, shutdown_releases=False):
                await self._wait_for_children(job)
            return
        if error is not None:
            if isinstance(error, LeaseLostError):
                log.warning("job %s: lease lost; dropped", job.id)
            elif not await self._report_cut_short(job, reason):
                fatal = getattr(error, "fatal", False) is True
                message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                if not fatal:
                    log.info("job %s attempt %d failed: %s", job.id, job.attempt, message)
                await self._send_fail(job, "fatal" if fatal else "retryable", message)
            return
        # A result that came in spite of a cancellation or the deadline does not count; one
        # finished during shutdown does.
        if await self._report_cut_short(job, reason, shutdown_releases=False):
            return
        result = task.result()
        try:
            json.dumps(result)
        except (TypeError, ValueError) as e:
            await self._send_fail(job, "fatal", f"the result is not JSON: {e}")
            return
        await self._send("complete", job, {"result": result})

    async def _heartbeat_loop(self, running: _Running, stop: asyncio.Event) -> None:
        job = running.job
        failures = 0
        while True:
            if job.heartbeat_ms > 0:
                interval = job.heartbeat_ms / 1000
            elif job.lease_expires_at is not None:
                interval = max(0.2, (job.lease_expires_at - _now()).total_seconds() / 3)
            else:
                interval = 5.0
            if failures:
                interval = min(interval, self._backoff(failures, base=0.2, cap=interval))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            try:
                answer = await self._call(
                    "POST", _job_path(job.id, "heartbeat"), {"lease": job.lease}
                )
            except LeaseLostError as e:
                log.warning("job %s: heartbeat says the lease is lost (%s)", job.id, e.detail)
                self._abort(running, "lease_lost")
                return
            except (ApiError, httpx.TransportError) as e:
                failures += 1
                log.warning("job %s: heartbeat failed (%s)", job.id, e)
                continue
            failures = 0
            if isinstance(answer, dict):
                if isinstance(answer.get("lease"), str):
                    job.lease = answer["lease"]
                expires = _parse_time(answer.get("lease_expires_at"))
                if expires is not None:
                    job.lease_expires_at = expires
                if answer.get("cancelled") is True:
                    self._abort(running, "cancelled")

    async def _progress(
        self, job: Job, seq: int, current: int, total: int | None, message: str | None
    ) -> None:
        body: dict[str, Any] = {"lease": job.lease, "seq": seq, "current": current}
        if total is not None:
            body["total"] = total
        if message is not None:
            body["message"] = message
        failures = 0
        while True:
            body["lease"] = job.lease
            try:
                await self._call("POST", _job_path(job.id, "progress"), body)
                return
            except LeaseLostError:
                if job._state is not None:
                    self._abort(job._state, "lease_lost")
                raise
            except (ApiError, httpx.TransportError) as e:
                if isinstance(e, ApiError) and not e.retryable:
                    raise
                failures += 1
                if failures >= 5:
                    raise
                retry_after = e.retry_after if isinstance(e, ApiError) else None
                await asyncio.sleep(retry_after or self._backoff(failures))

    async def _children(
        self,
        job: Job,
        jobs: Iterable[BatchMemberSpec | Mapping[str, Any]],
        then: BatchMemberSpec | Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> ChildrenAccepted:
        body: dict[str, Any] = {"lease": job.lease, "jobs": [_spec(j) for j in jobs]}
        if then is not None:
            body["then"] = _spec(then)
        # A key of its own unless given: a retry of the request then submits the same children.
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        failures = 0
        while True:
            body["lease"] = job.lease
            try:
                result: ChildrenAccepted = await self._call(
                    "POST", _job_path(job.id, "children"), body, headers=headers
                )
                return result
            except LeaseLostError:
                if job._state is not None:
                    self._abort(job._state, "lease_lost")
                raise
            except (ApiError, httpx.TransportError) as e:
                if isinstance(e, ApiError) and not e.retryable:
                    raise
                failures += 1
                if failures >= 5:
                    raise
                retry_after = e.retry_after if isinstance(e, ApiError) else None
                log.warning("job %s: submitting children failed (%s); retrying", job.id, e)
                await asyncio.sleep(retry_after or self._backoff(failures))

    async def _wait_for_children(self, job: Job) -> None:
        """Ends the attempt waiting for the job's children (``wait``)."""
        failures = 0
        while True:
            try:
                await self._call("POST", _job_path(job.id, "wait"), {"lease": job.lease})
                log.info("job %s: waits for its children", job.id)
                return
            except LeaseLostError as e:
                # A repeated wait (after a try whose answer was lost) answers 200
                # `waiting_for_children` like the first; older servers answered it 409: the wait
                # was made, nothing to do.
                if failures == 0:
                    log.warning(
                        "job %s: lease lost before its wait for children (%s)", job.id, e.detail
                    )
                return
            except (ApiError, httpx.TransportError) as e:
                if isinstance(e, ApiError) and not e.retryable and e.status < 500:
                    # Refused: the attempt cannot end waiting; fail it so the failure shows.
                    log.warning("job %s: the wait for children was refused (%s)", job.id, e)
                    await self._send_fail(
                        job, "retryable", f"the wait for children was refused: {e}"
                    )
                    return
                failures += 1
                expires = job.lease_expires_at
                if failures >= 10 or (
                    expires is not None and (expires - _now()).total_seconds() < -5
                ):
                    log.error("job %s: the wait for children failed for good: %s", job.id, e)
                    return
                retry_after = e.retry_after if isinstance(e, ApiError) else None
                await asyncio.sleep(retry_after or self._backoff(failures))

    async def _report_cut_short(
        self, job: Job, reason: CancelReason | None, *, shutdown_releases: bool = True
    ) -> bool:
        """Reports a run cut short: cancelled, past its deadline, or (``shutdown_releases``)
        stopped by shutdown, whose lease is handed back. ``False`` for any other ``reason``."""
        if reason == "cancelled":
            await self._send_fail(job, "cancelled", "the job was cancelled")
        elif reason == "timeout":
            await self._send_fail(job, "timeout", "the attempt's deadline passed")
        elif reason == "shutdown" and shutdown_releases:
            await self._release(job)
        else:
            return False
        return True

    async def _release(self, job: Job) -> None:
        failures = 0
        while True:
            try:
                await self._call("POST", _job_path(job.id, "release"), {"lease": job.lease})
                log.info("job %s: handed back", job.id)
                return
            except LeaseLostError:
                return
            except (ApiError, httpx.TransportError) as e:
                failures += 1
                if (isinstance(e, ApiError) and not e.retryable) or failures >= 4:
                    log.warning("job %s: release failed (%s); it returns after its lease", job.id, e)
                    return
                await asyncio.sleep(self._backoff(failures))

    async def _send_fail(self, job: Job, error_class: str, message: str) -> None:
        await self._send(
            "fail",
            job,
            {"error": {"class": error_class, "message": message[:MAX_ERROR_MESSAGE]}},
        )

    async def _send(self, action: Literal["complete", "fail"], job: Job, body: dict[str, Any]) -> None:
        """Queues a report for the reporter, which batches what is queued together; returns
        once it was sent (or given up)."""
        assert self._reports is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._reports.put(_Report(action, job, body, done))
        await asyncio.shield(done)

    # --- reports ----------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        assert self._reports is not None
        closing = False
        while not closing:
            first = await self._reports.get()
            if first is None:
                break
            reports = [first]
            while True:
                try:
                    more = self._reports.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if more is None:
                    closing = True
                    break
                reports.append(more)
            for action in ("complete", "fail"):
                group = [r for r in reports if r.action == action]
                for i in range(0, len(group), MAX_BATCH):
                    chunk = group[i : i + MAX_BATCH]
                    try:
                        await self._deliver(action, chunk)
                    except Exception:
                        log.exception("reporting %d job(s) failed", len(chunk))
                    finally:
                        for r in chunk:
                            if not r.done.done():
                                r.done.set_result(None)

    async def _deliver(self, action: Literal["complete", "fail"], reports: list[_Report]) -> None:
        failures = 0
        while True:
            try:
                if len(reports) == 1:
                    r = reports[0]
                    answer = await self._call(
                        "POST", _job_path(r.job.id, action), {"lease": r.job.lease, **r.body}
                    )
                    log.debug("job %s: %s -> %s", r.job.id, action, answer)
                    return
                items = [{"id": r.job.id, "lease": r.job.lease, **r.body} for r in reports]
                answer = await self._call("POST", f"/v1/workers/{action}", {"jobs": items})
                outcomes = (answer or {}).get("jobs", [])
                for r, outcome in zip(reports, outcomes):
                    status = outcome.get("status") if isinstance(outcome, dict) else None
                    if status == "lease_lost":
                        log.warning(
                            "job %s: %s refused, lease lost (%s)",
                            r.job.id,
                            action,
                            outcome.get("detail"),
                        )
                    elif status in ("error", "failed", "invalid") or (
                        isinstance(outcome, dict) and "problem" in outcome
                    ):
                        log.warning("job %s: %s refused: %s", r.job.id, action, outcome)
                return
            except LeaseLostError as e:
                log.warning("job %s: %s refused, lease lost (%s)", reports[0].job.id, action, e.detail)
                return
            except (ApiError, httpx.TransportError) as e:
                failures += 1
                expires = min(
                    (r.job.lease_expires_at for r in reports if r.job.lease_expires_at),
                    default=None,
                )
                gave_up = isinstance(e, ApiError) and not e.retryable and e.status < 500
                if gave_up or failures >= 10 or (
                    expires is not None and (expires - _now()).total_seconds() < -5
                ):
                    log.error("%s of %d job(s) failed for good: %s", action, len(reports), e)
                    return
                retry_after = e.retry_after if isinstance(e, ApiError) else None
                log.warning("%s of %d job(s) failed (%s); retrying", action, len(reports), e)
                await asyncio.sleep(retry_after or self._backoff(failures))

    # --- shutdown ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Lets running jobs finish within the grace period, then hands the rest back."""
        assert self._hard_stop is not None
        supervisors = [r.supervisor for r in self._running if r.supervisor]
        if not supervisors:
            return
        hard = asyncio.create_task(self._hard_stop.wait())
        finished = asyncio.create_task(asyncio.wait(supervisors))
        try:
            await asyncio.wait(
                {finished, hard},
                timeout=self.shutdown_grace_ms / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            hard.cancel()
            finished.cancel()
        remaining = list(self._running)
        if not remaining:
            return
        log.info("grace period over: handing back %d job(s)", len(remaining))
        for running in remaining:
            self._abort(running, "shutdown")
        pending = [r.supervisor for r in remaining if r.supervisor and not r.supervisor.done()]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=5.0)
        for running in remaining:
            running.abandon.set()
        if still:
            await asyncio.wait(still, timeout=15.0)
