"""Server-sent events: a parser of the ``text/event-stream`` format and the event type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

__all__ = ["Event", "TERMINAL_EVENTS", "parse_sse"]

TERMINAL_EVENTS = frozenset({"job.succeeded", "job.dead_lettered", "job.cancelled"})
"""The events that end a job: exactly one of them per job."""


@dataclass(frozen=True)
class Event:
    """One server-sent event.

    For the job events of conveyor, ``event`` is the short type (``job.succeeded``), ``id`` the
    EVENTS stream sequence (see ``seq``) and ``data`` the CloudEvent, parsed.
    """

    event: str
    data: Any
    id: str | None = None
    raw: str = field(default="", repr=False, compare=False)

    @property
    def seq(self) -> int | None:
        """The EVENTS stream sequence (the SSE ``id``), when it is a number."""
        if self.id is not None and self.id.isdigit():
            return int(self.id)
        return None

    @property
    def type(self) -> str:
        """The CloudEvent type (``dev.conveyor.job.succeeded``), else the SSE event name."""
        if isinstance(self.data, dict) and isinstance(self.data.get("type"), str):
            return str(self.data["type"])
        return self.event

    @property
    def job_id(self) -> str | None:
        """The job the event is about (the CloudEvent's ``subject``)."""
        if isinstance(self.data, dict) and isinstance(self.data.get("subject"), str):
            return str(self.data["subject"])
        return None

    @property
    def terminal(self) -> bool:
        """Whether this event ends its job (``job.succeeded``, ``job.dead_lettered``,
        ``job.cancelled``)."""
        return self.event in TERMINAL_EVENTS


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """Parses ``text/event-stream`` lines (without their line ends) into events.

    Follows the WHATWG rules: ``:`` starts a comment, one space after the colon is dropped,
    ``data`` lines are joined with newlines, a blank line dispatches, an event without data is
    not dispatched. The ``id`` of an event is the last one seen so far (it persists).
    """
    event = ""
    data: list[str] = []
    last_id: str | None = None
    async for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    parsed: Any = json.loads(text)
                except ValueError:
                    parsed = text
                yield Event(event=event or "message", data=parsed, id=last_id, raw=text)
            event = ""
            data = []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            if "\0" not in value:
                last_id = value
        # `retry` and unknown fields are ignored: the SDK decides its own reconnection delay.
