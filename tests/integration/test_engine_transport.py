"""The engine client (backends/transport.py): every way talking to an engine fails, as the
backends' own exceptions; and what goes through it, with a fake transport in place of an
engine: a health probe's outcome, ``/tokenize``'s count, a response the relay reads.

Where the failure is aiohttp's, it is caused for real on loopback: a port nothing listens on,
a server that never answers, one that hangs up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backends.backend import Backend
from backends.errors import BackendUnreachable, EngineFailed, EngineTimeout
from backends.health import probe
from backends.pools import Pool
from backends.tokenize import engine_token_count
from backends.transport import (
    AiohttpTransport,
    EngineRequest,
    FakeResponse,
    FakeTransport,
    fetch,
)
from fairgate.settings import BackendConfig
from gateway.relay import relay_body
from tests.conftest import ServeApp

MESSAGES = [{"role": "user", "content": "hello"}]


def config(url: str = "http://127.0.0.1:9", **fields: Any) -> BackendConfig:
    return BackendConfig(url=url, models=["m"], **fields)


def faked(handler: Callable[[EngineRequest], Any], **fields: Any) -> tuple[Backend, FakeTransport]:
    transport = FakeTransport(handler)
    return Backend("b0", config(**fields), transport), transport


# ------------------------------------------------------------- aiohttp's failures, mapped


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answering(handler: Handler) -> web.Application:
    """An engine stand-in answering every path with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    return app


async def test_nothing_listening_is_unreachable() -> None:
    transport = AiohttpTransport("b0", config("http://127.0.0.1:9"))
    try:
        with pytest.raises(BackendUnreachable, match="^b0: "):
            await transport.send(EngineRequest("POST", "/v1/chat/completions", b"{}"))
    finally:
        await transport.close()


async def test_an_engine_that_does_not_answer_in_time_times_out(serve_app: ServeApp) -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    transport = AiohttpTransport("b0", config(await serve_app(answering(silent))))
    try:
        with pytest.raises(EngineTimeout, match="b0 did not answer in time"):
            await transport.send(EngineRequest("GET", "/health", timeout_s=0.2))
    finally:
        await transport.close()


async def test_an_engine_that_hangs_up_failed(serve_app: ServeApp) -> None:
    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    transport = AiohttpTransport("b0", config(await serve_app(answering(hang_up))))
    try:
        with pytest.raises(EngineFailed, match="The engine b0 failed: ServerDisconnectedError"):
            await transport.send(EngineRequest("POST", "/v1/completions", b"{}"))
    finally:
        await transport.close()


async def test_requests_carry_path_body_headers_and_the_engine_key(serve_app: ServeApp) -> None:
    seen: list[tuple[str, str, bytes, str | None, str | None]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            (
                request.method,
                request.path,
                body,
                request.headers.get("Authorization"),
                request.headers.get("X-Request-Id"),
            )
        )
        return web.json_response({"ok": True})

    url = await serve_app(answering(echo))
    transport = AiohttpTransport("b0", config(url + "/", api_key="sk-engine"))
    try:
        answer = await fetch(
            transport, EngineRequest("POST", "/v1/completions", b'{"a":1}', {"X-Request-Id": "r"})
        )
        assert (answer.status, answer.json()) == (200, {"ok": True})
        answer = await fetch(transport, EngineRequest("GET", "/health", timeout_s=2.0))
        assert answer.status == 200
    finally:
        await transport.close()
    assert seen == [
        ("POST", "/v1/completions", b'{"a":1}', "Bearer sk-engine", "r"),
        ("GET", "/health", b"", "Bearer sk-engine", None),
    ]


async def test_a_body_that_breaks_while_read_whole_is_an_engine_failure() -> None:
    broken = aiohttp.ClientPayloadError("Response payload is not completed")
    transport = FakeTransport(lambda _: FakeResponse(chunks=[b'{"cou', broken]))
    with pytest.raises(EngineFailed, match="failed answering /tokenize"):
        await fetch(transport, EngineRequest("POST", "/tokenize"))
    late = FakeTransport(lambda _: FakeResponse(chunks=[TimeoutError()]))
    with pytest.raises(EngineTimeout):
        await fetch(late, EngineRequest("GET", "/metrics"))


# ------------------------------------------------------------ through a fake transport


async def test_health_probe_outcomes() -> None:
    up, _ = faked(lambda _: FakeResponse(200, "ok"))
    assert await probe(up) is None
    failing, transport = faked(lambda _: FakeResponse(503, "loading"))
    assert await probe(failing) == "health probe answered 503"
    assert [(r.method, r.path, r.timeout_s) for r in transport.requests] == [
        ("GET", "/health", 2.0)
    ]

    def refused(request: EngineRequest) -> FakeResponse:
        raise BackendUnreachable("b0: connection refused")

    gone, _ = faked(refused)
    assert await probe(gone) == "health probe failed: b0: connection refused"
    ollama, transport = faked(lambda _: FakeResponse(200), engine="ollama")
    assert await probe(ollama) is None
    assert transport.requests[0].path == "/api/version"  # each engine's own liveness path


async def test_tokenize_count_comes_from_the_engine() -> None:
    backend, transport = faked(lambda _: FakeResponse(200, {"count": 42, "max_model_len": 8192}))
    pool = Pool("p", [backend], tokenize="engine")
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    assert await engine_token_count(pool, body) == 42
    (sent,) = transport.requests
    assert (sent.method, sent.path, sent.timeout_s) == ("POST", "/tokenize", 2.0)
    assert json.loads(sent.body) == {"model": "m", "messages": MESSAGES}  # only what counts
    assert sent.headers["Content-Type"] == "application/json"


async def test_tokenize_failures_fall_back_to_counting_locally() -> None:
    def timeout(request: EngineRequest) -> FakeResponse:
        raise EngineTimeout("The engine b0 did not answer in time.")

    for handler in (
        lambda _: FakeResponse(404, {"detail": "Not Found"}),
        lambda _: FakeResponse(200, "not json"),
        lambda _: FakeResponse(200, ["a list"]),
        lambda _: FakeResponse(200, {"count": "many"}),
        timeout,
    ):
        backend, _ = faked(handler)
        assert await engine_token_count(Pool("p", [backend]), {"messages": MESSAGES}) is None
    backend, transport = faked(lambda _: FakeResponse(200, {"count": 1}))
    assert await engine_token_count(Pool("p", [backend]), {"messages": 7}) is None
    ollama, untouched = faked(lambda _: FakeResponse(200, {"count": 1}), engine="ollama")
    assert await engine_token_count(Pool("p", [ollama]), {"messages": MESSAGES}) is None
    assert transport.requests == untouched.requests == []  # nothing asked that cannot count


async def test_the_relay_reads_a_fake_response_as_it_reads_an_engine_one() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    answer = FakeResponse(200, {"id": "x", "choices": [], "usage": usage}, {"X-Engine": "e"})
    response, outcome = await relay_body(answer, {"X-Fairgate-Backend": "b0"})
    assert (outcome.status, outcome.usage, outcome.completed) == (200, usage, True)
    assert response.headers["X-Engine"] == "e" and response.headers["X-Fairgate-Backend"] == "b0"
    failed = FakeResponse(500, {"object": "error", "message": "CUDA out of memory"})
    response, outcome = await relay_body(failed, {})
    assert outcome.status == 500 and response.body is not None
    assert json.loads(bytes(response.body))["error"]["message"] == "CUDA out of memory"
