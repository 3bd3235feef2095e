"""conveyor's Python SDK: a client of the HTTP API, webhook verification, and workers over the
HTTP worker protocol.

::

    from conveyor import Client, Worker, verify_webhook
"""

from .__about__ import __version__
from .client import Client, EventStream
from .errors import (
    ApiError,
    ConveyorError,
    FatalError,
    LeaseLostError,
    WaitForChildren,
    WebhookVerificationError,
)
from .sse import TERMINAL_EVENTS, Event
from .webhooks import sign_webhook, verify_webhook
from .worker import CancelReason, Handler, Job, Worker

__all__ = [
    "__version__",
    "Client",
    "EventStream",
    "Event",
    "TERMINAL_EVENTS",
    "ApiError",
    "ConveyorError",
    "FatalError",
    "LeaseLostError",
    "WaitForChildren",
    "WebhookVerificationError",
    "verify_webhook",
    "sign_webhook",
    "Worker",
    "Job",
    "Handler",
    "CancelReason",
]
