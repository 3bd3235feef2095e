"""Push kinds: conveyor's workers POST each job of a push kind to an endpoint, signed per Standard
Webhooks with the kind's secret. The endpoint here is a loopback server of the test's (http.server
in a thread) that verifies every request with the official ``standardwebhooks`` library and with
``verify_webhook``, and answers by path: /ok echoes, /flaky fails attempt 1 with a 500, /bad
answers 400, /slow answers later than the kind's timeout; a request that does not verify gets a
401. A job that waited for others (a dependent, a batch's callback) carries ``upstream`` in its
body. A second server, without CONVEYOR_ALLOW_PRIVATE_WEBHOOKS, refuses a loopback endpoint."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest
import standardwebhooks

from conveyor import Client, verify_webhook
from harness import Conveyor, eventually

TERMINAL = {"succeeded", "failed", "cancelled"}


class Endpoint:
    """The push endpoint. Requests go to ``/<kind>/<mode>``; the kind picks the secret the
    endpoint checks with (``secrets``). Every request is recorded with what each verifier said."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                _, kind, mode = (self.path.split("/") + ["", ""])[:3]
                secret = endpoint.secrets.get(kind, "")
                record: dict[str, Any] = {
                    "kind": kind,
                    "mode": mode,
                    "headers": headers,
                    "raw": raw,
                    "official": None,
                    "sdk": None,
                }
                with endpoint.lock:
                    endpoint.requests.append(record)
                try:
                    record["official"] = standardwebhooks.Webhook(secret).verify(raw, headers)
                except Exception as e:  # noqa: BLE001 - recorded, answered 401
                    record["official_error"] = repr(e)
                try:
                    record["sdk"] = verify_webhook(secret, headers, raw)
                except Exception as e:  # noqa: BLE001 - recorded, answered 401
                    record["sdk_error"] = repr(e)
                if not record["official"] or not record["sdk"]:
                    return self.answer(401, "signature does not verify")
                job = record["sdk"]
                if mode == "ok":
                    return self.answer(200, {"echo": job["payload"]})
                if mode == "flaky":
                    if job["attempt"] == 1:
                        return self.answer(500, {"error": "not yet"})
                    return self.answer(200, {"attempt": job["attempt"]})
                if mode == "bad":
                    return self.answer(400, {"error": "no such account"})
                if mode == "slow":
                    # Far longer than the kind's timeout (conveyor hangs up before).
                    endpoint.closing.wait(10)
                    return self.answer(200, {"late": True})
                return self.answer(404, {"error": "no such path"})

            def answer(self, status: int, body: Any) -> None:
                text = isinstance(body, str)
                data = body.encode() if text else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "text/plain" if text else "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # conveyor gave up on this request (the slow path)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def requests_of(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if json.loads(r["raw"]).get("id") == job_id]

    def close(self) -> None:
        self.closing.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.close()


async def register(server: Conveyor, kind: str, body: dict[str, Any]) -> httpx.Response:
    """``PUT /v1/admin/kinds/{kind}`` with an operator's token."""
    token = server.token("operator", tenant="ops")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        return await http.put(
            f"/v1/admin/kinds/{kind}", json=body, headers={"authorization": f"Bearer {token}"}
        )


async def register_push(
    server: Conveyor,
    endpoint: Endpoint,
    kind: str,
    mode: str,
    *,
    timeout_ms: int = 5000,
    endpoint_secret: str | None = None,
) -> str:
    """Registers ``kind`` to ``/<kind>/<mode>``; the endpoint checks with the kind's secret (or
    ``endpoint_secret``). Answers the kind's secret."""
    res = await register(
        server,
        kind,
        {"url": f"{endpoint.base}/{kind}/{mode}", "timeout_ms": timeout_ms, "schema": {"type": "object"}},
    )
    assert res.status_code == 200, res.text
    answer = res.json()
    assert answer["secret"].startswith("whsec_"), answer
    assert answer["push"]["timeout_ms"] == timeout_ms, answer
    endpoint.secrets[kind] = endpoint_secret or answer["secret"]
    return str(answer["secret"])


async def terminal(client: Client, job_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await client.get(job_id)
        return dict(job) if job["status"] in TERMINAL else None

    return await eventually(check, timeout=60, what=f"job {job_id} to end")


async def timeline(client: Client, job_id: str, last: str) -> list[str]:
    """The job's timeline (short types) once its ``last`` event is in it."""

    async def check() -> list[str] | None:
        types = [e["type"].removeprefix("dev.conveyor.") for e in await client.timeline(job_id)]
        return types if f"job.{last}" in types else None

    return await eventually(check, what=f"job.{last} of {job_id}")


async def test_a_200_with_json_is_the_result(server: Conveyor, endpoint: Endpoint, client: Client) -> None:
    await register_push(server, endpoint, "push.ok", "ok")
    payload = {"n": 1, "text": "ünïcode"}
    job = await client.submit("push.ok", payload, max_attempts=3)
    done = await terminal(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"echo": payload}
    assert await client.result(job["id"]) == {"echo": payload}
    assert await timeline(client, job["id"], "succeeded") == ["job.submitted", "job.started", "job.succeeded"]

    requests = endpoint.requests_of(job["id"])
    assert len(requests) == 1, "delivered once"
    request = requests[0]
    assert request["headers"]["webhook-id"] == f"{job['id']}.1"
    assert request["headers"]["content-type"].startswith("application/json")
    assert request["sdk"] == request["official"] == {
        "id": job["id"],
        "tenant": "acme",
        "kind": "push.ok",
        "payload": payload,
        "attempt": 1,
        "max_attempts": 3,
    }


async def test_a_500_is_retried_then_succeeds(server: Conveyor, endpoint: Endpoint, client: Client) -> None:
    await register_push(server, endpoint, "push.flaky", "flaky")
    job = await client.submit("push.flaky", {"n": 2}, max_attempts=3)
    done = await terminal(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2, done
    assert done["result"] == {"attempt": 2}
    assert await timeline(client, job["id"], "succeeded") == [
        "job.submitted",
        "job.started",
        "job.failed",
        "job.retry_scheduled",
        "job.started",
        "job.succeeded",
    ]
    ids = [r["headers"]["webhook-id"] for r in endpoint.requests_of(job["id"])]
    assert ids == [f"{job['id']}.1", f"{job['id']}.2"]


async def test_a_400_is_dead_lettered(server: Conveyor, endpoint: Endpoint, client: Client) -> None:
    await register_push(server, endpoint, "push.bad", "bad")
    job = await client.submit("push.bad", {"n": 3}, max_attempts=3)
    done = await terminal(client, job["id"])
    assert done["status"] == "failed", done
    assert done["attempt"] == 1, done
    assert done["error"]["class"] == "fatal", done
    assert "400" in done["error"]["message"], done
    assert await timeline(client, job["id"], "dead_lettered") == [
        "job.submitted",
        "job.started",
        "job.failed",
        "job.dead_lettered",
    ]
    assert len(endpoint.requests_of(job["id"])) == 1


async def test_a_slow_endpoint_times_out_each_attempt(
    server: Conveyor, endpoint: Endpoint, client: Client
) -> None:
    await register_push(server, endpoint, "push.slow", "slow", timeout_ms=300)
    job = await client.submit("push.slow", {"n": 4}, max_attempts=2)
    done = await terminal(client, job["id"])
    assert done["status"] == "failed", done
    assert done["attempt"] == 2, f"timed out twice: {done}"
    assert done["error"]["class"] != "fatal", done
    types = await timeline(client, job["id"], "dead_lettered")
    assert types.count("job.started") == 2, types
    assert types[-1] == "job.dead_lettered", types
    ids = [r["headers"]["webhook-id"] for r in endpoint.requests_of(job["id"])]
    assert ids == [f"{job['id']}.1", f"{job['id']}.2"]


async def test_an_endpoint_with_another_secret_refuses_and_the_job_is_dead_lettered(
    server: Conveyor, endpoint: Endpoint, client: Client
) -> None:
    wrong = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    real = await register_push(server, endpoint, "push.wrong", "ok", endpoint_secret=wrong)
    job = await client.submit("push.wrong", {"n": 5}, max_attempts=3)
    done = await terminal(client, job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["class"] == "fatal", done
    assert "401" in done["error"]["message"], done
    assert await timeline(client, job["id"], "dead_lettered") == [
        "job.submitted",
        "job.started",
        "job.failed",
        "job.dead_lettered",
    ]
    requests = endpoint.requests_of(job["id"])
    assert len(requests) == 1
    request = requests[0]
    # Both verifiers refused it with the wrong secret...
    assert request["official"] is None and request["sdk"] is None
    assert request.get("official_error") and request.get("sdk_error")
    # ...and both accept the very same request with the kind's real secret.
    assert standardwebhooks.Webhook(real).verify(request["raw"], request["headers"])["id"] == job["id"]
    assert verify_webhook(real, request["headers"], request["raw"])["id"] == job["id"]


async def test_a_job_that_waited_for_others_gets_upstream_in_its_body(
    server: Conveyor, endpoint: Endpoint, client: Client
) -> None:
    await register_push(server, endpoint, "push.after", "ok")
    first = await client.submit("noop", {"echo": {"rows": 3}})
    job = await client.submit("push.after", {"n": 6}, depends_on=[first["id"]])
    assert (await terminal(client, job["id"]))["status"] == "succeeded"
    [request] = endpoint.requests_of(job["id"])
    assert request["sdk"]["upstream"] == {
        "dependencies": [{"id": first["id"], "status": "succeeded", "result": {"rows": 3}}]
    }

    batch = await client.create_batch(
        [{"kind": "noop", "payload": {"echo": 1}}, {"kind": "fail", "payload": {"fatal": True}}],
        callback={"kind": "push.after", "payload": {"n": 7}},
    )
    assert (await terminal(client, batch["id"]))["status"] == "succeeded"
    [callback] = endpoint.requests_of(batch["id"])
    assert callback["sdk"]["payload"] == {"n": 7}
    assert callback["sdk"]["upstream"] == {
        "members": {
            "total": 2,
            "succeeded": 1,
            "failed": 1,
            "cancelled": 0,
            "jobs": [
                {"id": batch["jobs"][0], "status": "succeeded"},
                {"id": batch["jobs"][1], "status": "failed"},
            ],
        }
    }


async def test_both_verifiers_agreed_on_every_request(
    server: Conveyor, endpoint: Endpoint, client: Client
) -> None:
    # A request of its own, so the check never runs on nothing; then every request so far
    # (this module's other tests' too).
    await register_push(server, endpoint, "push.ok", "ok")
    job = await client.submit("push.ok", {"n": 2})
    assert (await terminal(client, job["id"]))["status"] == "succeeded"
    with endpoint.lock:
        requests = list(endpoint.requests)
    assert requests, "the endpoint recorded no request"
    for r in requests:
        where = f"{r['kind']}/{r['mode']}: {r.get('official_error')} | {r.get('sdk_error')}"
        assert (r["official"] is None) == (r["sdk"] is None), where
        if r["kind"] != "push.wrong":
            assert r["sdk"] is not None, where
            assert r["sdk"] == r["official"]
            assert r["headers"]["webhook-id"] == f"{r['sdk']['id']}.{r['sdk']['attempt']}"
            assert r["sdk"]["kind"] == r["kind"]


@pytest.fixture(scope="module")
def vetting_server(request: pytest.FixtureRequest) -> Iterator[Conveyor]:
    """A second `conveyor dev`, as in production: private webhook targets refused."""
    srv = Conveyor.start({"CONVEYOR_ALLOW_PRIVATE_WEBHOOKS": "false"})
    failed_before = request.session.testsfailed
    yield srv
    srv.stop()
    if request.session.testsfailed == failed_before:
        srv.drop_database()
        srv.delete_namespace()


async def test_a_loopback_endpoint_is_refused_without_allow_private(vetting_server: Conveyor) -> None:
    res = await register(vetting_server, "push.ssrf", {"url": "http://127.0.0.1:9/x", "timeout_ms": 1000})
    assert res.status_code == 422, res.text
    async with Client(vetting_server.url, vetting_server.token()) as client:
        assert all(k["kind"] != "push.ssrf" for k in await client.kinds())
