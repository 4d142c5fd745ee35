"""Relaying an engine's response to the client: streams chunk by chunk, bodies whole.

Streaming: each complete SSE event is written to the client as soon as it arrives; nothing is
buffered beyond an unfinished event. The engine was asked for the final usage chunk; the relay
records the usage from it and drops the chunk when the client did not ask for it, so the client
sees exactly what the engine would have sent it. If the engine dies mid-stream, or sends
nothing for its backend's ``read_timeout_s`` (:mod:`gateway.silent_engines` watches each wait
for it), the client gets an SSE error event and ``[DONE]``, and the response ends cleanly; so
does one whose stream is garbage (its first event is not JSON, or it ends in bytes that are no
event). A plain answer of 200 that is not a JSON object is the engine's failure (502), never
relayed as a success.

A client that goes away makes the write raise; the caller closes the engine connection, which
makes the engine abort the request and free its KV cache.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from backends.errors import EngineFailed
from backends.transport import READ_ERRORS, EngineResponse
from fairgate.errors import error_body
from gateway import header_names
from gateway.silent_engines import EngineStream
from gateway.sse import DONE, data_of, error_event, event_around, json_data, last_event_end
from gateway.stalled_clients import GuardedStream, StallWatch

_HOP_HEADERS = {
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-encoding",
    "date",
    "server",
}


class Meter(Protocol):
    """Hears the running count of content chunks relayed, once it has reached :attr:`due`
    (``gateway.metering.StreamMeter``, which charges them to the tenant)."""

    due: int

    def __call__(self, chunks: int) -> None: ...


@dataclass(slots=True)
class Relayed:
    """What the gateway learned from relaying one response."""

    status: int
    usage: dict[str, Any] | None = None
    chunks: int = 0  # content chunks relayed (a stream)
    completed: bool = False  # the engine finished the response (a stream: sent [DONE])
    error: str | None = None
    first_at: float | None = None  # when the first content chunk was relayed (monotonic)
    last_at: float | None = None  # and the last


_REAL_USAGE = re.compile(rb'"usage"\s*:\s*\{')
#: The key every chunk of a completion has (a string value is never followed by a colon).
_CHOICES_KEY = b'"choices":'


@dataclass(slots=True)
class _StreamFilter:
    """Decides what of the engine's stream reaches the client, a read at a time.

    A read usually holds many events; only the one with a real usage (OpenAI-style APIs put
    ``"usage": null`` on every other chunk) is decoded, and dropped if the client did not ask
    for it. Content chunks are counted by their ``"choices"`` key, without decoding them.
    """

    client_wants_usage: bool
    outcome: Relayed
    tail: bytes = b""  # an event whose end has not arrived (sent as is if the stream ends)

    def feed(self, data: bytes, now: float) -> bytes:
        """What of ``data`` (and the tail before it, read at ``now``, a ``time.monotonic()``)
        to write now. On every read of every stream, so kept to a few byte searches in C and
        no copy in the usual case (a read that ends with an event)."""
        buffer = self.tail + data if self.tail else data
        end = last_event_end(buffer)
        if end < 0:
            self.tail = buffer
            return b""
        if end == len(buffer):
            events, self.tail = buffer, b""
        else:
            events, self.tail = buffer[:end], buffer[end:]
        if b'"usage"' in events:
            events = self._take_usage(events)
        if chunks := events.count(_CHOICES_KEY):
            outcome = self.outcome
            outcome.chunks += chunks
            outcome.last_at = now
            if outcome.first_at is None:
                outcome.first_at = outcome.last_at
        if (at := events.rfind(DONE)) >= 0:
            start, end = event_around(events, at)
            self.outcome.completed = self.outcome.completed or data_of(events[start:end]) == DONE
        return events

    def _take_usage(self, events: bytes) -> bytes:
        """Record the usage the events carry; drop the usage-only chunk unless it was asked for."""
        dropped: list[tuple[int, int]] = []
        seen = 0  # the end of the last event looked at: one look per event
        for found in _REAL_USAGE.finditer(events):
            if found.start() < seen:
                continue
            start, end = event_around(events, found.start())
            seen = end
            chunk = json_data(events[start:end])
            if chunk is not None and chunk.get("usage"):
                self.outcome.usage = chunk["usage"]
                if chunk.get("choices") == [] and not self.client_wants_usage:
                    dropped.append((start, end))
        for start, end in reversed(dropped):
            events = events[:start] + events[end:]
        return events


def response_headers(upstream: EngineResponse, extra: Mapping[str, str]) -> dict[str, str]:
    """The engine's response headers minus hop-by-hop ones, plus the gateway's own (which
    replace the engine's of the same name, whatever their case: one ``X-Request-Id``)."""
    own = {name.lower() for name in extra}
    headers = {
        k: v
        for k, v in upstream.headers.items()
        if k.lower() not in _HOP_HEADERS and k.lower() not in own
    }
    headers.update(extra)
    return headers


def is_event_stream(upstream: EngineResponse) -> bool:
    return upstream.content_type == "text/event-stream"


async def relay_stream(
    request: web.Request,
    upstream: EngineResponse,
    client_wants_usage: bool,
    headers: Mapping[str, str],
    silence: EngineStream,
    meter: Meter | None = None,
    tap: Callable[[bytes, int], None] | None = None,
    stalls: StallWatch | None = None,
) -> tuple[web.StreamResponse, Relayed]:
    """Relay an SSE response event by event; ``silence`` ends it if the engine stops sending
    (each wait for a read is stamped on it), ``meter`` hears the running
    count of chunks, ``tap`` (the request's trace) also what was written; ``stalls`` closes the
    connection of a client that stops reading."""
    outcome = Relayed(upstream.status)
    stream = _StreamFilter(client_wants_usage, outcome)
    response: web.StreamResponse | None = None
    # one function, not two: every frame on the way to the read is resumed at every chunk
    try:
        response = _stream_response(upstream, headers, stalls)
        await response.prepare(request)
        # readany, not iter_any: one coroutine less per read, alive until the next chunk
        readany = upstream.content.readany
        checked = False  # whether the first event was seen to be an event of JSON
        broke_off = False  # the engine stopped mid-stream (the client was told)
        # looked up once: this loop runs per read
        feed, write, clock = stream.feed, response.write, time.monotonic
        now = clock()
        while True:
            try:
                silence.waiting_since = now  # the engine has sent nothing since now
                try:
                    data = await readany()
                finally:
                    silence.waiting_since = None
            except READ_ERRORS as exc:
                outcome.error = _broke_off(exc, silence.limit_s)
                message = f"The engine stopped in the middle of the response ({outcome.error})."
                await write(error_event(message) + b"data: [DONE]\n\n")
                broke_off = True
                break
            if not data:  # the end of the body
                break
            now = clock()
            if out := feed(data, now):
                if not checked:
                    checked = True
                    if not _first_event_ok(out):
                        outcome.error = "its stream is not server-sent events of JSON"
                        break
                await write(out)
                if meter is not None and outcome.chunks >= meter.due:
                    meter(outcome.chunks)
                if tap is not None:
                    tap(out, outcome.chunks)
        if stream.tail and outcome.error is None and not outcome.completed:
            outcome.error = "its stream ended in bytes that are no event"
        if outcome.error is not None and not broke_off:
            message = f"The engine answered garbage ({outcome.error})."
            await response.write(error_event(message) + b"data: [DONE]\n\n")
        elif stream.tail and outcome.error is None:
            await response.write(stream.tail)
        await response.write_eof()
    finally:  # ended, failed or abandoned: the watchdogs forget it
        silence.close()
        if isinstance(response, GuardedStream):
            response.unwatch()
    return response, outcome


def _broke_off(exc: BaseException, limit_s: float) -> str:
    """Why the engine's stream broke off: a timeout is the engine's silence for ``limit_s``
    (its backend's ``read_timeout_s``), whichever timer saw it (aiohttp's, armed for the
    headers, or :mod:`gateway.silent_engines`'s)."""
    if isinstance(exc, TimeoutError):
        return f"it sent nothing for {limit_s:g} s"
    return f"{exc.__class__.__name__}: {exc}"


def _stream_response(
    upstream: EngineResponse, headers: Mapping[str, str], stalls: StallWatch | None
) -> web.StreamResponse:
    """The client's response to a stream, with the engine's headers and the gateway's
    (``headers``), made here so that the dict of them is gone once the response has its own
    copy: the relay holds its locals for as long as the stream lasts."""
    status, relayed = upstream.status, response_headers(upstream, headers)
    response = (
        stalls.stream(status=status, headers=relayed)
        if stalls is not None
        else web.StreamResponse(status=status, headers=relayed)
    )
    response.headers[header_names.CACHE_CONTROL] = "no-cache"
    response.headers[header_names.ACCEL_BUFFERING] = "no"
    return response


def _first_event_ok(events: bytes) -> bool:
    """Whether the first event of a stream is one an OpenAI client can read: JSON, ``[DONE]``
    or no data at all (a comment). Checked once per stream, so that an engine (or a proxy in
    front of it) that streams garbage ends in a clean error rather than in the client's parser."""
    start, end = event_around(events, 0)
    payload = data_of(events[start:end])
    return payload is None or payload == DONE or json_data(events[start:end]) is not None


async def relay_body(
    upstream: EngineResponse, headers: Mapping[str, str]
) -> tuple[web.Response, Relayed]:
    """Relay a complete (non-streamed) response with its status; a success that is not a JSON
    object raises :class:`~backends.errors.EngineFailed` (502, and a failure of the engine)."""
    body = await upstream.read()
    outcome = Relayed(upstream.status, completed=True)
    if upstream.status == 200:
        if upstream.content_type != "application/json":
            raise EngineFailed(f"The engine answered {upstream.content_type!r}, not JSON.")
        outcome.usage = _usage_of(body)
        if outcome.usage is None and not _is_json_object(body):
            raise EngineFailed("The engine answered a body that is not a JSON object.")
    relayed = response_headers(upstream, headers)
    if upstream.status >= 400:
        body = engine_error_body(upstream.status, body)
        relayed["Content-Type"] = "application/json"
        relayed.pop("Content-Length", None)
    return web.Response(status=upstream.status, body=body, headers=relayed), outcome


def engine_error_body(status: int, body: bytes) -> bytes:
    """An engine's error answer in the OpenAI envelope, so that clients see one format.

    vLLM answers ``{"object": "error", "message", "type", "code"}`` (or the envelope), TGI and
    Ollama ``{"error": "<message>"}``, llama.cpp the envelope, a proxy in between plain text;
    the message and code are kept, the shape is the gateway's own (``fairgate.errors``).
    """
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return body  # already the envelope
    inner = value if isinstance(value, dict) else {}
    message = inner.get("message") or inner.get("error") or inner.get("detail")
    if not isinstance(message, str) or not message:
        message = body.decode(errors="replace").strip()[:2000] or f"The engine answered {status}."
    code, param = inner.get("code"), inner.get("param")
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = error_body(
        message,
        kind,
        code if isinstance(code, str | int) else None,
        param if isinstance(param, str) else None,
    )
    return json.dumps(error).encode()


def _usage_of(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a completion body.

    Engines put ``usage`` last, so it is decoded from where its key starts rather than by
    decoding the whole answer (which can be long); anything unusual gets the full decode.
    """
    at = body.rfind(b'"usage"')
    if at > 0:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            text = body[at:].decode()
            start = text.index("{")
            if not text[len('"usage"') : start].strip(" \t\r\n:"):
                usage, _ = _DECODER.raw_decode(text, start)
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    return usage
    try:
        value = json.loads(body)
    except ValueError:
        return None
    usage = value.get("usage") if isinstance(value, dict) else None
    return usage if isinstance(usage, dict) else None


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


_DECODER = json.JSONDecoder()
