"""Webhook signature verification: against the official Standard Webhooks library, and against a
real delivery the server POSTs to a loopback receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import standardwebhooks

from conveyor import Client, WebhookVerificationError, sign_webhook, verify_webhook
from harness import Conveyor

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes long!!").decode()
BODY = b'{"specversion":"1.0","type":"dev.conveyor.job.succeeded","data":{"result":"\xc3\xa9"}}'


def official_headers(msg_id: str = "msg_2b8f", ts: int | None = None, body: bytes = BODY) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = standardwebhooks.Webhook(SECRET).sign(
        msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body.decode()
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_official_signature_verifies() -> None:
    headers = official_headers()
    assert verify_webhook(SECRET, headers, BODY) == json.loads(BODY)
    # Names are matched case-insensitively, the body may be given as text.
    upper = {k.title(): v for k, v in headers.items()}
    assert verify_webhook(SECRET, upper, BODY.decode())["type"] == "dev.conveyor.job.succeeded"


def test_our_signature_verifies_with_the_official_library() -> None:
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_webhook(SECRET, "msg_1", ts, BODY),
    }
    assert standardwebhooks.Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)
    assert headers["webhook-signature"] == official_headers("msg_1", ts)["webhook-signature"]


def test_tampered_body_is_refused_by_both() -> None:
    headers = official_headers()
    tampered = BODY.replace(b"succeeded", b"cancelled")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, tampered)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(tampered, headers)


def test_other_refusals() -> None:
    headers = official_headers()
    other_secret = "whsec_" + base64.b64encode(b"another secret, also 32 bytes!!!").decode()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(other_secret, headers, BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, {**headers, "webhook-id": "msg_other"}, BODY)
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(SECRET, {k: v for k, v in headers.items() if k != missing}, BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, {**headers, "webhook-signature": "v2,abc"}, BODY)


def test_timestamp_tolerance() -> None:
    now = int(time.time())
    old = official_headers(ts=now - 6 * 60)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, old, BODY)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, old)
    future = official_headers(ts=now + 6 * 60)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, future, BODY)
    recent = official_headers(ts=now - 4 * 60)
    assert verify_webhook(SECRET, recent, BODY)
    # An explicit clock, as a receiver replaying a stored delivery would pass.
    assert verify_webhook(SECRET, old, BODY, now=now - 6 * 60 + 1)


def test_rotation_with_several_signatures() -> None:
    headers = official_headers()
    headers["webhook-signature"] = "v1,bm90IGl0 " + headers["webhook-signature"]
    assert verify_webhook(SECRET, headers, BODY)


class Receiver:
    """A loopback HTTP server recording the webhooks POSTed to it."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, dict[str, str], bytes]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                received.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.http.server_address[1])

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def test_real_webhook_delivery_verifies(server: Conveyor, receiver: Receiver) -> None:
    async with Client(server.url, server.token()) as client:
        secret = await client.webhook_secret()
        assert secret.startswith("whsec_")
        job = await client.submit(
            "noop",
            {"echo": {"hello": "wörld"}},
            webhook=f"http://127.0.0.1:{receiver.port}/hooks/conveyor?token=x",
        )
        path, headers, body = await asyncio.to_thread(receiver.received.get, True, 60)
    assert path == "/hooks/conveyor?token=x"
    event = verify_webhook(secret, headers, body)
    assert event["type"] == "dev.conveyor.job.succeeded"
    assert event["subject"] == job["id"]
    assert headers["webhook-id"] == event["id"]
    # The official library agrees with us on the real delivery...
    assert standardwebhooks.Webhook(secret).verify(body, headers) == event
    # ...and both refuse it tampered with.
    tampered = body.replace(b"succeeded", b"cancelled", 1)
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, tampered)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(tampered, headers)
