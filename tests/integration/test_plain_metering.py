"""A plain (non-streamed) response is charged to its tenant while it runs, not only at its end.

Fair order between tenants is decided on what each was charged. A plain response shows nothing
until it ends, often many seconds after it was granted; charged only then, its tenant's counter
would stand still and then jump. The gateway charges output at the rate its backend has been
seen to deliver, for as long as the request runs (up to its ``max_tokens``), and the release
settles the total with ``usage``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from redis.asyncio import Redis

from fairgate.serving import serve
from tests.conftest import StartGateway, gateway_config

MESSAGES = [{"role": "user", "content": "Write a long report."}]


class SlowEngine:
    """An OpenAI-compatible engine whose answers wait until the test lets them go."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.calls = 0

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        if self.calls > 1:  # the first answers at once: the backend's delivery rate is learned
            self.started.set()
            await self.release.wait()
        output = int(body["max_tokens"])
        usage = {"prompt_tokens": 20, "completion_tokens": output, "total_tokens": 20 + output}
        return web.json_response(
            {
                "id": f"cmpl-{self.calls}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
                "usage": usage,
            }
        )


@pytest.fixture
async def slow_engine() -> AsyncIterator[tuple[SlowEngine, str]]:
    engine = SlowEngine()

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", engine.complete)
    app.router.add_get("/health", health)
    runner = await serve(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    yield engine, f"http://{host}:{port}"
    engine.release.set()
    await runner.cleanup()


async def counter(redis: Redis, tenant: str) -> float:
    return float(await redis.hget("fairgate:{adm}:vtc", tenant) or 0)


async def settled(redis: Redis, tenant: str, expected: float) -> float:
    """The tenant's counter once the release (in the background, after any lease reuse hold)
    has reached ``expected``, or what it is after five seconds."""
    for _ in range(100):
        if (value := await counter(redis, tenant)) >= expected:
            return value
        await asyncio.sleep(0.05)
    return await counter(redis, tenant)


async def test_a_plain_response_is_charged_while_it_runs_and_settled_once(
    slow_engine: tuple[SlowEngine, str], start_gateway: StartGateway, redis_url: str
) -> None:
    engine, url = slow_engine
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [url]}))
    client = gateway.client()
    redis = Redis.from_url(redis_url)
    try:
        first = await client.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=100
        )
        assert float(first.headers["X-Fairgate-Queue-Time"]) >= 0  # it waited for nobody
        after_first = await settled(redis, "a", 20 + 2 * 100)
        assert after_first == 20 + 2 * 100  # usage: prompt + output weight x completion

        second = asyncio.ensure_future(
            client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=1000)
        )
        await engine.started.wait()
        # more than any input estimate of the prompt: output, while the answer still runs
        charged = await settled(redis, "a", after_first + 2 * 20 + 1)
        assert charged > after_first + 2 * 20 and not second.done()
        engine.release.set()
        answer = await second
        assert answer.usage is not None and answer.usage.completion_tokens == 1000
        # settled once with usage: what the meter charged is not charged again
        total = after_first + 20 + 2 * 1000
        assert await settled(redis, "a", total) == total
    finally:
        await redis.aclose()


async def test_without_a_delivery_rate_a_plain_response_is_charged_at_its_end(
    slow_engine: tuple[SlowEngine, str], start_gateway: StartGateway, redis_url: str
) -> None:
    """Nothing was seen of the backend yet: the meter has no rate and charges nothing."""
    engine, url = slow_engine
    engine.calls = 1  # the first request already waits
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [url]}))
    client = gateway.client()
    redis = Redis.from_url(redis_url)
    try:
        answer = asyncio.ensure_future(
            client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=300)
        )
        await engine.started.wait()
        await asyncio.sleep(0.6)  # two of the meter's ticks
        input_only = await counter(redis, "a")
        assert 0 < input_only < 2 * 300  # the input, no output
        engine.release.set()
        await answer
        assert await settled(redis, "a", 20 + 2 * 300) == 20 + 2 * 300
    finally:
        await redis.aclose()


async def test_the_meter_charges_past_the_output_estimate_while_the_answer_runs(
    slow_engine: tuple[SlowEngine, str], start_gateway: StartGateway, redis_url: str
) -> None:
    """The estimate (the tenant's history when the request arrived, here mostly the prior) is
    no limit: the meter follows the backend's rate for as long as the answer runs. Capped at
    the estimate, a tenant whose requests arrived before its history warmed up ran them charged
    for 256 tokens while they produced 1,024, and fair order favoured it (issue 12)."""
    engine, url = slow_engine
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [url]}))
    client = gateway.client()
    redis = Redis.from_url(redis_url)
    try:
        await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=50)
        after_first = await settled(redis, "a", 20 + 2 * 50)
        second = asyncio.ensure_future(
            client.chat.completions.with_raw_response.create(
                model="llama-3-8b", messages=MESSAGES, max_tokens=1000
            )
        )
        await engine.started.wait()
        # the backend delivered the first answer at once: by now it could have produced all
        charged = await settled(redis, "a", after_first + 2 * 1000)
        assert charged >= after_first + 2 * 1000 and not second.done()
        engine.release.set()
        answer = await second
        assert int(answer.headers["X-Fairgate-Estimate-Output-Tokens"]) < 500
        total = after_first + 20 + 2 * 1000
        assert await settled(redis, "a", total) == total
    finally:
        await redis.aclose()
