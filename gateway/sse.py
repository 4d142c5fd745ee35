"""Server-sent events, as engines stream them: whole events out of arbitrary byte chunks.

An event ends with a blank line (``\\n\\n``, or ``\\r\\n\\r\\n`` from some servers). The relay
needs whole events to recognise the usage chunk, but must not hold back anything else: it
passes on everything up to the end of the last complete event of what has arrived, and keeps
only an unfinished tail. It works on the bytes of many events at once: scanning a read for the
few events that matter costs a fraction of splitting it into events.
"""

from __future__ import annotations

import json
from typing import Any

_TERMINATORS = (b"\n\n", b"\r\n\r\n")
DONE = b"[DONE]"


def last_event_end(buffer: bytes) -> int:
    """Index just past the last event terminator in ``buffer``, or -1 if it holds none.

    On every read of every stream: two searches, no list (the usual read ends with an event).
    """
    if buffer.endswith(b"\n\n"):
        return len(buffer)
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


def event_around(events: bytes, at: int) -> tuple[int, int]:
    """Start and end of the event holding byte ``at`` of ``events`` (whole events, back to back)."""
    start = 0
    for terminator in _TERMINATORS:
        if (i := events.rfind(terminator, 0, at)) >= 0:
            start = max(start, i + len(terminator))
    ends = [i + len(t) for t in _TERMINATORS if (i := events.find(t, at)) >= 0]
    return start, min(ends, default=len(events))


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
