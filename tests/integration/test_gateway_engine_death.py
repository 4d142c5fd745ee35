"""An engine process killed mid-stream: the client gets a clear error and a clean end."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest
from aiohttp import web
from redis.asyncio import Redis

from fairgate.serving import serve
from tests.conftest import StartGateway, StartSim, gateway_config, wait_answering

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
LONG = {"max_tokens": 5000, "extra_body": {"ignore_eos": True}}


@pytest.fixture
def engine(unused_tcp_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real simulator process (so that it can be SIGKILLed), at real-time speed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", "sim"]
        + ["--port", str(unused_tcp_port), "--time-scale", "1"]
    )
    process.url = f"http://127.0.0.1:{unused_tcp_port}"  # type: ignore[attr-defined]
    yield process
    process.kill()
    process.wait()


async def test_sdk_raises_a_clear_error_when_the_engine_dies_mid_stream(
    engine: subprocess.Popen[bytes], start_gateway: StartGateway, redis_url: str
) -> None:
    await wait_answering(f"{engine.url}/health", engine)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [engine.url]}))
    stream = await gateway.client().chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, stream=True, **LONG
    )
    received = 0
    with pytest.raises(openai.APIError, match="engine stopped in the middle"):
        async for _ in stream:
            received += 1
            if received == 3:
                engine.send_signal(signal.SIGKILL)
    assert 3 <= received < 5000

    # the dead engine is taken out: the gateway is no longer ready, and says why
    for _ in range(100):
        async with gateway.http.get(f"{gateway.url}/readyz") as resp:
            if resp.status == 503:
                break
        await asyncio.sleep(0.05)
    assert resp.status == 503
    with pytest.raises(openai.InternalServerError) as failed:
        await gateway.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES)
    assert failed.value.code == "backend_unavailable"


async def test_raw_stream_ends_with_an_error_event_and_done(
    engine: subprocess.Popen[bytes], start_gateway: StartGateway, redis_url: str
) -> None:
    await wait_answering(f"{engine.url}/health", engine)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [engine.url]}))
    body = {"model": "llama-3-8b", "messages": MESSAGES, "stream": True, "max_tokens": 5000}
    async with gateway.http.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "ignore_eos": True},
        headers={"Authorization": "Bearer key-a"},
    ) as resp:
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        engine.send_signal(signal.SIGKILL)
        rest = await resp.read()  # completes: the gateway ends the response properly
    events = [e for e in rest.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "backend_error" and "stopped in the middle" in error["message"]


async def test_an_engine_whose_requests_keep_failing_is_ejected(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    """Its health endpoint answers, its requests fail: after three failures in a row every
    replica skips it for the back-off, and the pool's other engine takes the work."""

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    app.router.add_get("/health", health)
    runner = await serve(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    sim = await start_sim(time_scale=100.0)
    config = gateway_config(redis_url, {"interactive": [f"http://{host}:{port}", sim.url]})
    config["server"]["unhealthy_backoff_s"] = 60  # longer than the test
    gateway = await start_gateway(config)
    client = gateway.client()
    try:
        for _ in range(3):  # the least loaded engine (both idle: the first) fails
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES)
        # the ejection is written for every replica once the third failure is counted (off
        # the failed request's path): the next requests go elsewhere from then on
        redis = Redis.from_url(redis_url)
        for _ in range(200):
            if await redis.hexists("fairgate:{adm}:down", "interactive-0"):
                break
            await asyncio.sleep(0.02)
        assert await redis.hexists("fairgate:{adm}:down", "interactive-0")  # for every replica
        await redis.aclose()
        served = []
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model="llama-3-8b", messages=MESSAGES, max_tokens=2
            )
            served.append(raw.headers["X-Fairgate-Backend"])
        assert served == ["interactive-1"] * 3
    finally:
        await runner.cleanup()
