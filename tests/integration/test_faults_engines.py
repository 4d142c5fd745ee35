"""Fault suite, engines: one that never answers, one that stalls mid-stream, one slower than
the read timeout, one that answers garbage (bad JSON, bad SSE, the wrong content type) (issue
16; an engine killed mid-stream is in test_gateway_engine_death.py).

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
import time
from dataclasses import dataclass

import openai
import pytest
from aiohttp import web

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
        for i in range(3):
            await response.write(sse(chunk(i)))
            if fault == "stalls_mid_stream" and i == 1:
                await asyncio.sleep(3600)
        await response.write(sse(chunk(3, usage=True)) + b"data: [DONE]\n\n")
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/health", _ok)
        return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


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
