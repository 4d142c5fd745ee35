"""Server-sent events, as engines stream them: whole events out of arbitrary byte chunks.

An event ends with a blank line (``\\n\\n``, or ``\\r\\n\\r\\n`` from some servers). The relay
needs whole events to recognise the usage chunk, but must not hold back anything else, so
:class:`EventSplitter` returns every complete event as soon as its last byte arrives and keeps
only an unfinished tail.
"""

from __future__ import annotations

import json
from typing import Any

_TERMINATORS = (b"\n\n", b"\r\n\r\n")
DONE = b"[DONE]"


class EventSplitter:
    """Feeds bytes in, takes complete events (with their terminators) out."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._tail + data
        events = []
        start = 0
        while True:
            end = _next_end(buffer, start)
            if end < 0:
                break
            events.append(buffer[start:end])
            start = end
        self._tail = buffer[start:]
        return events

    @property
    def tail(self) -> bytes:
        """Bytes of an event whose end has not arrived (sent as is if the stream ends)."""
        return self._tail


def _next_end(buffer: bytes, start: int) -> int:
    """Index just past the first event terminator at or after ``start``, or -1."""
    ends = [i + len(t) for t in _TERMINATORS if (i := buffer.find(t, start)) >= 0]
    return min(ends) if ends else -1


def data_of(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` line(s), or None for comments and other fields."""
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines)


def json_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object an event carries, or None."""
    payload = data_of(event)
    if not payload or not payload.startswith(b"{"):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def error_event(message: str, type_: str = "server_error", code: str = "backend_error") -> bytes:
    """An SSE event carrying an OpenAI-style error (the SDKs raise ``APIError`` on it)."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
