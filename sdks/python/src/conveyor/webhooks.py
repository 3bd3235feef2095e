"""Verification of webhook deliveries, per Standard Webhooks (https://www.standardwebhooks.com/)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping

from .errors import WebhookVerificationError

__all__ = ["verify_webhook", "sign_webhook", "DEFAULT_TOLERANCE_SECONDS"]

DEFAULT_TOLERANCE_SECONDS = 5 * 60
"""How far a delivery's ``webhook-timestamp`` may be from the receiver's clock."""


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise WebhookVerificationError("the webhook secret is not whsec_<base64>") from e
    if not key:
        raise WebhookVerificationError("the webhook secret is empty")
    return key


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                value = v
                break
    if not value:
        raise WebhookVerificationError(f"the {name} header is missing")
    return value


def sign_webhook(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of a delivery."""
    data = body.encode() if isinstance(body, str) else body
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + data, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Verifies a webhook delivery and returns its body parsed as JSON (the CloudEvent).

    ``secret`` is the tenant's ``whsec_…`` secret (``GET /v1/webhooks/secret``), ``headers`` the
    request's headers (any mapping; names are matched case-insensitively) and ``body`` the raw
    request body, exactly as received. Raises :class:`WebhookVerificationError` when a header is
    missing, the timestamp is more than ``tolerance`` seconds from ``now`` (default: the clock),
    or no ``v1`` signature matches. Deduplicate on ``webhook-id``: delivery is at least once.
    """
    data = body.encode() if isinstance(body, str) else bytes(body)
    msg_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_ts.strip())
    except ValueError as e:
        raise WebhookVerificationError("the webhook-timestamp header is not a number") from e
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("the webhook-timestamp is outside the tolerance")
    expected = sign_webhook(secret, msg_id, timestamp, data).split(",", 1)[1]
    expected_bytes = base64.b64decode(expected)
    for candidate in signatures.split(" "):
        version, sep, sig = candidate.partition(",")
        if not sep or version != "v1":
            continue
        try:
            given = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected_bytes):
            try:
                return json.loads(data)
            except ValueError as e:
                raise WebhookVerificationError("the body is not JSON") from e
    raise WebhookVerificationError("no webhook signature matches")
