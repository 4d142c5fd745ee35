"""Fault suite, engines: one that never answers, one that stalls mid-stream, one slower than
the read timeout, one that answers garbage (bad JSON, bad SSE, the wrong content type) (issue
16; an engine killed mid-stream is in test_gateway_engine_death.py). A relayed stream's silence
is watched by the gateway's own watchdog (gateway/silent_engines.py), not by a timer per read.

Each fault is an aiohttp engine on loopback that misbehaves on purpose until the test heals it.
Every request sent to it ends in a clean OpenAI error (a status with the OpenAI body, or an SSE
error event and ``[DONE]``) before the client's own timeout, far above the gateway's read
timeout, would fire; after ``eject_after_failures`` of them the engine is ejected (no request
reaches it: the next one waits in the queue, and here times out there); healed, it serves again
after the back-off.
Then admission holds nothing and the engine holds no request the gateway gave up on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import openai
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from tests.conftest import (
    MODEL,
    RunningGateway,
    ServeApp,
    StartGateway,
    assert_settled,
    completion_body,
    gateway_config,
)

MESSAGES = [{"role": "user", "content": "hi"}]
READ_TIMEOUT_S = 0.5
#: The client's own timeout: a gateway that hung instead of failing cleanly would hit it.
CLIENT_TIMEOUT_S = 20 * READ_TIMEOUT_S
EJECT_AFTER = 2

pytestmark = pytest.mark.timeout(120)

FAULTS = [
    "never_answers",
    "slower_than_the_read_timeout",
    "stalls_mid_stream",
    "bad_json",
    "bad_sse",
    "wrong_content_type",
    "closes_without_answer",
]


@dataclass
class FaultyEngine:
    """An engine that misbehaves (``fault``) until healed (``fault = None``)."""

    fault: str | None
    url: str = ""
    received: int = 0  # inference requests that reached it
    holding_now: int = 0  # inference requests it holds now (a handler still running)
    chunks: int = 3  # content chunks of a stream
    stall_after: int = 2  # content chunks sent before it stalls (stalls_mid_stream)

    async def holding(self) -> int:
        return self.holding_now

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.received += 1
        self.holding_now += 1
        try:
            body = await request.json()
            return await self._answer(request, bool(body.get("stream")))
        finally:
            self.holding_now -= 1

    async def _answer(self, request: web.Request, stream: bool) -> web.StreamResponse:
        fault = self.fault
        if fault in ("never_answers", "slower_than_the_read_timeout"):
            await asyncio.sleep(3600 if fault == "never_answers" else 4 * READ_TIMEOUT_S)
        if fault == "bad_json":
            return web.Response(body=b'{"id": "x", "choices": [', content_type="application/json")
        if fault == "wrong_content_type":
            return web.Response(body=b"<html>Bad gateway</html>", content_type="text/html")
        if fault == "closes_without_answer":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if not stream:
            return web.json_response(completion_body("ok ok", 5, 2))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if fault == "bad_sse":
            await response.write(b"data: {not json at all\n\n")
            await response.write(b"\x00\xff garbage without framing")
            return response
        for i in range(self.chunks):
            await response.write(sse(chunk(i)))
            if fault == "stalls_mid_stream" and i == self.stall_after - 1:
                await asyncio.sleep(3600)
        await response.write(sse(chunk(self.chunks, usage=True)) + b"data: [DONE]\n\n")
        return response

    def app(self) -> web.Application:
        return engine_app(self.chat)


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


def engine_app(chat: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    """An engine of these tests: ``chat`` answers its chat completions, its health is fine."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", _ok)
    return app


def chunk(i: int, usage: bool = False) -> dict:
    body: dict = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": {"content": "ok"}}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    return body


def sse(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def start(fault: str, serve_app: ServeApp, start_gateway: StartGateway, redis_url: str):  # noqa: ANN201
    engine = FaultyEngine(fault)
    engine.url = await serve_app(engine.app())
    config = gateway_config(redis_url, {"interactive": [engine.url]})
    backend = config["pools"]["interactive"]["backends"]["interactive-0"]
    backend.update(read_timeout_s=READ_TIMEOUT_S, connect_timeout_s=READ_TIMEOUT_S)
    config["tenants"]["a"]["queue_timeout_s"] = 0.2  # shorter than the ejection
    config["server"].update(
        eject_after_failures=EJECT_AFTER, unhealthy_backoff_s=1.5, health_check_interval_s=0.1
    )
    return engine, await start_gateway(config)


async def ask(gateway: RunningGateway, stream: bool) -> str:
    """One request through the gateway: ``ok``, or the code of the clean error it ended in."""
    client = openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="key-a", max_retries=0, timeout=CLIENT_TIMEOUT_S
    )
    try:
        if not stream:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
            return "ok"
        chunks = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
        )
        async for _ in chunks:
            pass
        return "ok"
    except openai.APIStatusError as error:
        assert isinstance(error.body, dict), error  # the OpenAI error body, not garbage
        return str(error.code)
    except openai.APIError as error:  # an SSE error event, then the stream ended
        assert error.code, error
        return str(error.code)
    finally:
        await client.close()


async def until_not_ready(gateway: RunningGateway) -> None:
    """Wait until the gateway reports its only engine out (``/readyz`` 503)."""
    for _ in range(200):
        async with gateway.http.get(f"{gateway.url}/readyz") as resp:
            if resp.status == 503:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine was never taken out")


async def raw_stream_ending(gateway: RunningGateway) -> bytes:
    """The last bytes of a streamed answer as sent on the wire (whatever the fault)."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    async with gateway.http.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer key-a"},
    ) as resp:
        data = await resp.read()
    return data


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_faulty_engine_gives_clean_errors_is_ejected_and_recovers(
    fault: str, stream: bool, serve_app: ServeApp, start_gateway: StartGateway, redis_url: str
) -> None:
    if fault in ("stalls_mid_stream", "bad_sse") and not stream:
        pytest.skip("a stream fault")
    engine, gateway = await start(fault, serve_app, start_gateway, redis_url)

    failures = [await ask(gateway, stream) for _ in range(EJECT_AFTER)]
    assert set(failures) <= {"backend_timeout", "backend_error"}, failures
    assert engine.received == EJECT_AFTER
    await until_not_ready(gateway)  # the ejection is recorded just after the last failure

    # ejected: no request reaches it (one waits in the queue, and times out there)
    assert await ask(gateway, stream) == "rate_limit_exceeded"
    assert engine.received == EJECT_AFTER

    engine.fault = None  # healed: served again once the back-off is over
    deadline = time.monotonic() + 30
    while (outcome := await ask(gateway, stream)) != "ok" and time.monotonic() < deadline:
        assert outcome == "rate_limit_exceeded", outcome
        await asyncio.sleep(0.1)
    assert outcome == "ok"
    await assert_settled(redis_url, [engine])


@pytest.mark.parametrize("fault", ["stalls_mid_stream", "bad_sse"])
async def test_a_broken_stream_ends_with_an_error_event_and_done(
    fault: str, serve_app: ServeApp, start_gateway: StartGateway, redis_url: str
) -> None:
    engine, gateway = await start(fault, serve_app, start_gateway, redis_url)
    events = [e for e in (await raw_stream_ending(gateway)).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] in ("backend_timeout", "backend_error"), error
    await assert_settled(redis_url, [engine])


# ------------------------------------------------------- a relayed stream's silence, watched


@pytest.fixture
async def read_timers(monkeypatch: pytest.MonkeyPatch) -> list[ResponseHandler]:
    """The engine connections whose aiohttp read timer (``sock_read``) is armed from now on,
    once per timer: every ``loop.call_later`` of ``ResponseHandler._on_read_timeout`` in this
    process (the gateway runs in it; its probes and scrapes set no ``sock_read``)."""
    loop = asyncio.get_running_loop()
    armed: list[ResponseHandler] = []
    call_later = loop.call_later

    def counting(delay: float, callback, *args, **kwargs):  # noqa: ANN001, ANN202
        if getattr(callback, "__func__", None) is ResponseHandler._on_read_timeout:
            armed.append(callback.__self__)
        return call_later(delay, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", counting)
    return armed


@dataclass
class LockstepEngine:
    """Streams ``chunks`` content chunks, each only once the client has the one before (so
    each reaches the gateway in a read of its own); a plain request it never answers."""

    chunks: int
    permits: asyncio.Queue[None] = field(default_factory=asyncio.Queue)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            await asyncio.sleep(3600)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(self.chunks):
            await response.write(sse(chunk(i)))
            await self.permits.get()
        await response.write(sse(chunk(self.chunks, usage=True)) + b"data: [DONE]\n\n")
        return response

    def app(self) -> web.Application:
        return engine_app(self.chat)


async def test_a_relayed_stream_arms_no_read_timer_per_chunk(
    serve_app: ServeApp,
    start_gateway: StartGateway,
    redis_url: str,
    read_timers: list[ResponseHandler],
) -> None:
    """aiohttp's sock_read would cancel a timer and arm a new one on every read of the
    engine's stream: once the stream is relayed, no read arms one (the gateway's watchdog
    watches it). The connection's next request has its read timeout again: a plain request
    the engine never answers still ends in a 504."""
    engine = LockstepEngine(chunks=30)
    url = await serve_app(engine.app())
    config = gateway_config(redis_url, {"interactive": [url]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["read_timeout_s"] = READ_TIMEOUT_S
    gateway = await start_gateway(config)
    client = gateway.client()
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    )
    contents = []
    async for part in stream:
        if not contents:  # the relay has begun: from here on each chunk is a read of its own
            read_timers.clear()
        contents.append(part.choices[0].delta.content)
        engine.permits.put_nowait(None)
    assert contents == ["ok"] * engine.chunks
    assert read_timers == []  # without the watchdog: one per chunk read, about 30

    assert await ask(gateway, stream=False) == "backend_timeout"
    assert read_timers  # the plain request's wait for its answer was timed by aiohttp
    await assert_settled(redis_url)


async def test_an_engine_silent_after_several_chunks_is_ended_by_the_watchdog(
    serve_app: ServeApp,
    start_gateway: StartGateway,
    redis_url: str,
    read_timers: list[ResponseHandler],
) -> None:
    """Six chunks, then nothing: past read_timeout_s the watchdog closes the engine response;
    the client has the six chunks, then an error event saying how long the engine was silent,
    then [DONE]; the lease is released and the engine's request closed."""
    engine, gateway = await start("stalls_mid_stream", serve_app, start_gateway, redis_url)
    engine.chunks, engine.stall_after = 10, 6
    client = gateway.client()
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    )
    contents = []
    with pytest.raises(openai.APIError) as raised:
        async for part in stream:
            if not contents:
                read_timers.clear()
            contents.append(part.choices[0].delta.content)
    assert contents == ["ok"] * 6
    assert raised.value.code == "backend_error"
    assert raised.value.message == (
        f"The engine stopped in the middle of the response (it sent nothing for "
        f"{READ_TIMEOUT_S:g} s)."
    )
    assert read_timers == []  # ended by the watchdog, not by an aiohttp read timer
    await assert_settled(redis_url, [engine])

    events = [e for e in (await raw_stream_ending(gateway)).split(b"\n\n") if e]
    assert len(events) == 6 + 2
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert "sent nothing for 0.5 s" in error["message"], error
    await assert_settled(redis_url, [engine])


@dataclass
class SteadyEngine:
    """Streams ``chunks`` chunks of 64 KiB, one every 20 ms: never silent, and more than the
    kernel buffers between the gateway and a client that reads nothing (4 MiB of send buffer
    at most here, tcp_wmem) can hold."""

    chunks: int
    padding: str = "x" * 65536

    async def chat(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(self.chunks):
            body = chunk(i)
            body["choices"][0]["delta"]["content"] = self.padding
            await response.write(sse(body))
            await asyncio.sleep(0.02)
        await response.write(sse(chunk(self.chunks, usage=True)) + b"data: [DONE]\n\n")
        return response

    def app(self) -> web.Application:
        return engine_app(self.chat)


async def test_a_client_slower_than_the_read_timeout_does_not_make_the_engine_silent(
    serve_app: ServeApp, start_gateway: StartGateway, redis_url: str
) -> None:
    """A client that reads nothing for six read timeouts (less than its own stall limit): the
    relay's writes wait for it, once the kernel's buffers are full, while the engine keeps
    sending. Only a wait for the engine counts as its silence, so the stream ends whole once
    the client reads again."""
    engine = SteadyEngine(chunks=120)
    url = await serve_app(engine.app())
    config = gateway_config(redis_url, {"interactive": [url]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["read_timeout_s"] = READ_TIMEOUT_S
    gateway = await start_gateway(config)
    host, port = gateway.url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
        b"Connection: close\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(6 * READ_TIMEOUT_S)  # ... reading nothing
    answer = await asyncio.wait_for(reader.read(), timeout=CLIENT_TIMEOUT_S)
    writer.close()
    assert b'"error"' not in answer
    assert answer.count(engine.padding.encode()) == engine.chunks
    assert b"data: [DONE]" in answer
    await assert_settled(redis_url)
