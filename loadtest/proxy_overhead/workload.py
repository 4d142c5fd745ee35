"""The workload of the proxy-overhead benchmark: what is sent, and the servers that answer it.

The upstream answers at once from prebuilt bodies (a ``chat.completion``, or
:data:`STREAM_CHUNKS` SSE content chunks, the usage chunk and ``[DONE]``), so that whatever a
path adds above "direct" is that path's own cost. The forwarder is the least a Python proxy
can do. Both run in a child process of their own (``python -m loadtest.proxy_overhead --serve
KIND``) on the same loop and listener as ``fairgate serve``.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from fairgate.serving import serve, serve_sockets, until_signalled

LOOPBACK = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
#: Where the control forwarder takes the CPU it is to spend (:class:`Burn`).
BURN_PATH = "/burn"
MODEL = "bench-model"
TENANT = "bench"
API_KEY = "fg-bench-key"
#: A second tenant of the same gateway, with quotas far above the load (never refused): the
#: same path plus the quota check and its correction.
QUOTA_TENANT = "bench-quotas"
QUOTA_API_KEY = "fg-bench-quotas-key"
QUOTAS = {
    "requests_per_minute": 10_000_000,
    "tokens_per_minute": 10_000_000_000,
    "tokens_per_day": 10_000_000_000_000,
}

#: The ways of reaching the upstream, in the order they take turns and are shown: directly,
#: through the forwarder, through fairgate as a tenant without quotas and as one with quotas,
#: through fairgate tracing every request, and through fairgate's two worker processes.
MODES = ("direct", "forwarder", "fairgate", "quotas", "fairgate+traces", "fairgate×2")
#: The path of fairgate with tracing on, every request sampled, spans sent to the upstream.
TRACED = "fairgate+traces"
#: The path of ``fairgate serve --workers 2``: the same gateway, two processes on one port.
WORKERS = "fairgate×2"
WORKER_COUNT = 2
#: The path of fairgate as another git revision had it (``--baseline REV``), measured after the
#: others when asked for: the same gateway and tenant without quotas, that revision's code.
BASELINE = "baseline"
#: Where the traced gateway sends its spans (the upstream answers as a collector would).
TRACES_PATH = "/v1/traces"

# ------------------------------------------------------------------ what the upstream says

STREAM_CHUNKS = 16
PROMPT_TOKENS = 12
#: The completion tokens the usage reports, request after request: as from a real engine they
#: vary, so that fairgate's estimate (the likely output) is corrected at completion, which a
#: tenant with quotas pays for. The content is the same whatever the usage says.
COMPLETION_CYCLE = (16, 13, 10, 7)


def _usage(completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


def sse_event(payload: dict[str, Any]) -> bytes:
    """One SSE event carrying ``payload``, as engines write them."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` in OpenAI's shape."""
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": choices,
        **extra,
    }


#: Built once: the upstream must cost as close to nothing per request as aiohttp allows.
COMPLETIONS = tuple(
    json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello " * STREAM_CHUNKS},
                    "finish_reason": "length",
                }
            ],
            "usage": _usage(completion),
        }
    ).encode()
    for completion in COMPLETION_CYCLE
)
CONTENT_EVENTS = tuple(
    sse_event(
        _chunk(
            [
                {
                    "index": 0,
                    "delta": {"content": "hello "},
                    "finish_reason": "length" if i == STREAM_CHUNKS - 1 else None,
                }
            ]
        )
    )
    for i in range(STREAM_CHUNKS)
)
USAGE_EVENTS = tuple(sse_event(_chunk([], usage=_usage(c))) for c in COMPLETION_CYCLE)
DONE_EVENT = b"data: [DONE]\n\n"

#: The client asks for usage, so every path sends it the same events (fairgate always asks
#: the engine for usage, and would otherwise drop the chunk again on the way back).
CHAT_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hello!"}],
    "max_tokens": STREAM_CHUNKS,
}
STREAM_REQUEST = {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}}
#: Events a complete stream carries: the content chunks, the usage chunk and [DONE].
STREAM_EVENTS = STREAM_CHUNKS + 2


def complete_answer(payload: bytes, stream: bool) -> bool:
    """Whether a 200 body is the whole answer: every event of a stream, a usage'd completion."""
    if stream:
        return payload.endswith(DONE_EVENT) and payload.count(b"\n\n") == STREAM_EVENTS
    return payload.endswith(b"}") and b'"usage"' in payload


# ------------------------------------------------------------------------ the two servers


async def health(request: web.Request) -> web.Response:
    """Liveness: fairgate's health checker probes its backend here, the benchmark both servers."""
    return web.Response(text="ok")


def upstream_app() -> web.Application:
    """An OpenAI-style chat endpoint that answers at once: prebuilt bodies, no sleeps."""

    answered = itertools.count()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        turn = next(answered) % len(COMPLETION_CYCLE)
        if not body.get("stream"):
            return web.Response(body=COMPLETIONS[turn], content_type="application/json")
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for event in CONTENT_EVENTS:  # one write per event, as an engine sends its tokens
            await response.write(event)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(USAGE_EVENTS[turn])
        await response.write(DONE_EVENT)
        await response.write_eof()
        return response

    async def traces(request: web.Request) -> web.Response:
        """An OTLP/HTTP collector that keeps nothing: an empty body is an empty
        ``ExportTraceServiceResponse``, a full success."""
        await request.read()
        return web.Response(content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_post(TRACES_PATH, traces)
    app.router.add_get("/health", health)
    return app


_SESSION = web.AppKey("session", aiohttp.ClientSession)


@dataclass
class Burn:
    """CPU a control forwarder spends on top of forwarding, in seconds: when a request arrives,
    per chunk relayed, when its response has ended. Set over HTTP (``POST /burn``, in
    microseconds) by the benchmark that runs it, to what fairgate spent more than the
    forwarder (:mod:`loadtest.stream_bench`): a proxy as costly as fairgate and otherwise bare,
    to tell what its costs do to latency from what anything else of it does."""

    start_s: float = 0.0
    chunk_s: float = 0.0
    end_s: float = 0.0


def spend(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time, holding the event loop as work would."""
    if seconds > 0:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass


def forwarder_app(upstream: str, burn: Burn | None = None) -> web.Application:
    """The least a Python proxy can do: relay body and response through one shared session;
    with ``burn``, a control that spends that CPU too (and takes ``POST /burn``)."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[_SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        if burn is not None:
            spend(burn.start_s)
        body = await request.read()
        async with request.app[_SESSION].post(
            upstream + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as answer:
            if answer.content_type != "text/event-stream":
                return web.Response(
                    status=answer.status, body=await answer.read(), content_type=answer.content_type
                )
            response = web.StreamResponse(status=answer.status)
            response.content_type = answer.content_type
            await response.prepare(request)
            async for data in answer.content.iter_any():
                if burn is not None:
                    spend(burn.chunk_s)
                await response.write(data)
            await response.write_eof()
            if burn is not None:
                spend(burn.end_s)
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post(CHAT_PATH, forward)
    app.router.add_get("/health", health)
    if burn is not None:
        app.router.add_post(BURN_PATH, partial(take_burn, burn))
    return app


async def take_burn(burn: Burn, request: web.Request) -> web.Response:
    """``POST /burn`` ``{"start_us", "chunk_us", "end_us"}``: the control's CPU from now on."""
    asked = await request.json()
    burn.start_s, burn.chunk_s, burn.end_s = (
        float(asked[f"{when}_us"]) / 1e6 for when in ("start", "chunk", "end")
    )
    return web.json_response(asked)


#: The servers this package runs in a child process of its own (``--serve KIND``), from the
#: upstream's URL (which only the forwarders need).
SERVER_APPS: dict[str, Callable[[str], web.Application]] = {
    "upstream": lambda upstream: upstream_app(),
    "forwarder": forwarder_app,
    "control": lambda upstream: forwarder_app(upstream, Burn()),
}


def run_server(kind: str, port: int, upstream: str = "", fd: int | None = None) -> int:
    """Serve one of :data:`SERVER_APPS` until SIGINT/SIGTERM (see :func:`run_app`)."""
    return run_app(SERVER_APPS[kind](upstream), port, fd)


def run_app(app: web.Application, port: int, fd: int | None = None) -> int:
    """Serve ``app`` until SIGINT/SIGTERM, on the same loop and listener as ``fairgate serve``:
    on ``port``, or on the listening socket ``fd`` its parent handed it (one of several
    processes sharing a port, as ``fairgate serve --workers`` does).

    Same event loop, same ``serve`` (no access log, handler cancellation), same signal handling:
    the paths compared then differ only in what their handlers do.
    """

    async def main() -> None:
        if fd is None:
            runner = await serve(app, LOOPBACK, port)
        else:
            runner = await serve_sockets(app, [socket.socket(fileno=fd)])
        try:
            await until_signalled()
        finally:
            await runner.cleanup()

    uvloop.run(main())
    return 0
