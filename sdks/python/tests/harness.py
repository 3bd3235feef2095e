"""The system under test: a real `conveyor dev` (API, Rust workers, projector, notifier) on a
fresh namespace and database, against the NATS and Postgres that scripts/test started, and
helpers the tests share (waiting on conditions, a TCP proxy that can drop connections)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import urlparse

from conveyor import Client, Worker

ROOT = Path(__file__).resolve().parents[3]
SDK = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("CONVEYOR_BIN") or ROOT / "target" / "debug" / "conveyor")
START = (
    "run the SDK tests through `scripts/test` (or sdks/python/test with CONVEYOR_NATS_URL and "
    "DATABASE_URL set and conveyor built), which starts NATS 2.10+ and Postgres"
)
CLIENT_SCOPES = "jobs:write jobs:read events:read admin"
WORKER_SCOPES = "worker"

T = TypeVar("T")


class Conveyor:
    """A `conveyor dev` process of its own: namespace `p<id>`, database `conveyor_test_p<id>`."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, env: dict[str, str], db: str):
        self.proc = proc
        self.url = url
        self.env = env
        self.database = db
        self.stderr: deque[str] = deque(maxlen=400)

    @classmethod
    def start(cls, extra_env: dict[str, str] | None = None) -> Conveyor:
        for name in ("CONVEYOR_NATS_URL", "DATABASE_URL"):
            if not os.environ.get(name):
                raise RuntimeError(f"{name} is not set: {START}")
        if not BIN.is_file():
            raise RuntimeError(f"{BIN} does not exist (set CONVEYOR_BIN): {START}")
        ident = "py" + secrets.token_hex(5)
        db_base = re.sub(r"/[^/]*$", "", os.environ["DATABASE_URL"])
        env = dict(os.environ)
        env.update(
            {
                "CONVEYOR_NAMESPACE": ident,
                "DATABASE_URL": f"{db_base}/conveyor_test_{ident}",
                "CONVEYOR_HTTP_ADDR": "127.0.0.1:0",
                "CONVEYOR_JWT_SECRET": "python-sdk-test-secret-0123456789abcdef",
                "CONVEYOR_ACK_WAIT_MS": "2000",
                "CONVEYOR_RETRY_BASE_MS": "50",
                "CONVEYOR_RETRY_MAX_MS": "500",
                "CONVEYOR_SHUTDOWN_GRACE_MS": "2000",
                "CONVEYOR_ALLOW_PRIVATE_WEBHOOKS": "true",
                "CONVEYOR_LOG": os.environ.get("TEST_LOG", "warn"),
            }
        )
        env.update(extra_env or {})
        proc = subprocess.Popen(
            [str(BIN), "dev"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        found: list[str] = []
        listening = threading.Event()
        server = cls(proc, "", env, env["DATABASE_URL"])

        def read_stdout() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                if os.environ.get("TEST_LOG"):
                    sys.stderr.write(line)
                m = re.search(r"conveyor api listening on (http://\S+)", line)
                if m and not found:
                    found.append(m.group(1))
                    listening.set()
            listening.set()

        def read_stderr() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace")
                server.stderr.append(line)
                if os.environ.get("TEST_LOG"):
                    sys.stderr.write(line)

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        if not listening.wait(60) or not found:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"conveyor dev did not start (exit {proc.returncode}):\n"
                + "".join(server.stderr)
                + f"\n({START})"
            )
        server.url = found[0].rstrip("/")
        return server

    def token(
        self,
        scope: str = CLIENT_SCOPES,
        tenant: str = "acme",
        kinds: list[str] | None = None,
    ) -> str:
        """A token from `conveyor token`, as a user would mint one."""
        args = [str(BIN), "token", "--tenant", tenant, "--scope", scope, "--sub", "sdk-test"]
        if kinds:
            args += ["--kinds", ",".join(kinds)]
        out = subprocess.run(args, env=self.env, check=True, capture_output=True)
        return out.stdout.decode().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def drop_database(self) -> None:
        """Drops the test's database (best effort; scripts/test sweeps leftovers too)."""
        psql = shutil.which("psql")
        if psql is None:
            return
        name = self.database.rsplit("/", 1)[1]
        admin = self.database.rsplit("/", 1)[0] + "/postgres"
        subprocess.run(
            [psql, admin, "-qAtc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
            capture_output=True,
            timeout=30,
        )


    def delete_namespace(self) -> None:
        """Deletes the namespace's streams, key-value buckets and object stores from NATS (best
        effort), as the Rust test harness does."""
        try:
            delete_nats_namespace(self.env["CONVEYOR_NATS_URL"], self.env["CONVEYOR_NAMESPACE"])
        except (OSError, ValueError) as e:
            print(f"could not delete namespace {self.env['CONVEYOR_NAMESPACE']}: {e}", file=sys.stderr)


class _Nats:
    """Just enough of the NATS protocol for JetStream API requests (no client library)."""

    def __init__(self, url: str) -> None:
        first = url.split(",")[0]
        parsed = urlparse(first if "://" in first else f"nats://{first}")
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=5)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.sdkpy 1\r\n')

    def request(self, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.sock.sendall(b"PUB %s _INBOX.sdkpy %d\r\n%s\r\n" % (subject.encode(), len(data), data))
        while True:
            line = self.file.readline()
            if not line:
                raise OSError("NATS closed the connection")
            if line.startswith(b"PING"):
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise OSError(line.decode().strip())
            elif line.startswith(b"MSG"):
                size = int(line.split()[-1])
                body = self.file.read(size + 2)[:size]
                answer: dict[str, Any] = json.loads(body)
                return answer

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def delete_nats_namespace(url: str, namespace: str) -> None:
    upper = namespace.upper()
    prefixes = (f"{upper}_", f"KV_{upper}_", f"OBJ_{upper}_")
    nats = _Nats(url)
    try:
        names: list[str] = []
        while True:
            page = nats.request("$JS.API.STREAM.NAMES", {"offset": len(names)})
            streams = page.get("streams") or []
            names += streams
            if not streams or len(names) >= int(page.get("total", 0)):
                break
        for name in names:
            if name.startswith(prefixes):
                nats.request(f"$JS.API.STREAM.DELETE.{name}")
    finally:
        nats.close()


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Polls ``check`` until it answers something truthy, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)

async def wait_status(client: Client, job_id: str, *statuses: str, timeout: float = 30) -> dict:
    """Polls the job until it is in one of ``statuses``."""

    async def check():
        job = await client.get(job_id)
        return job if job["status"] in statuses else None

    return await eventually(check, timeout=timeout, what=f"job {job_id} in {statuses}")


async def ended(client: Client, job_id: str) -> dict[str, Any]:
    """Polls the job until it has ended."""
    return await wait_status(client, job_id, "succeeded", "failed", "cancelled")


async def waiting_for(client: Client, job_id: str, reason: str) -> dict[str, Any]:
    """The job once the scheduler said it holds it back for ``reason``."""

    async def check() -> dict[str, Any] | None:
        job = await client.get(job_id)
        return dict(job) if job.get("waiting", {}).get("reason") == reason else None

    return await eventually(check, timeout=15, what=f"job {job_id} to wait for its {reason}")


def new_worker(server: "Conveyor", **options: Any) -> Worker:
    """A worker of the SDK against ``server``, polling each second, leaving signals alone."""
    options.setdefault("wait_ms", 1000)
    options.setdefault("handle_signals", False)
    return Worker(server.url, server.token(WORKER_SCOPES), **options)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Runs ``worker`` until the block ends, once it has registered its kinds; then closes it."""
    task = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped it
    assert worker.ready.is_set(), "the worker did not register its kinds"
    try:
        yield worker
    finally:
        await asyncio.wait_for(worker.close(), 30)
        await task


class Proxy:
    """A loopback TCP proxy to the API whose connections the test can cut."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.connections = 0
        """Connections accepted so far."""

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self.open.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.open.discard(pair)

    def drop(self) -> int:
        """Cuts every open connection, both ways; returns how many there were.

        Events a client had already read off a connection before the cut are still delivered to
        it: the cut shows only at its next read past them.
        """
        cut = list(self.open)
        self.open.clear()
        for pair in cut:
            for w in pair:
                w.transport.abort()
        return len(cut)

    async def close(self) -> None:
        self.drop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
