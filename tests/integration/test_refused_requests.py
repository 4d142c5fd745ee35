"""Requests that never run are never charged: one the engine refuses is settled at nothing
(its virtual counter and quota back where they were), and one whose prompt cannot fit the
model's configured context is refused before it queues (issue 16).

Real parts: in-process gateways, a real redis-server, engines as aiohttp apps on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from redis.asyncio import Redis

from tests.conftest import ServeApp, StartGateway, StartSim, gateway_config, inflight_state

MODEL = "llama-3-8b"


@pytest.fixture
async def refusing_engine(serve_app: ServeApp) -> tuple[str, list[dict[str, Any]]]:
    """An engine that refuses every request as vLLM does a context that is too long."""
    received: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        received.append(await request.json())
        error = {"message": "context too long", "type": "BadRequestError", "code": 400}
        return web.json_response({"object": "error", **error}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/health", health)
    return await serve_app(app), received


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def counter_once_released(redis: Redis, tenant: str) -> float:
    """The tenant's virtual counter after its lease is released (in the background)."""
    while await inflight_state(redis):
        await asyncio.sleep(0.02)
    return float(await redis.hget("fairgate:{adm}:vtc", tenant) or 0)


async def test_a_request_the_engine_refuses_is_charged_nothing(
    start_gateway: StartGateway, refusing_engine: tuple[str, list], redis: Redis, redis_url: str
) -> None:
    url, received = refusing_engine
    config = gateway_config(redis_url, {"interactive": [url]})
    config["tenants"]["a"]["quotas"] = {"tokens_per_minute": 100_000}
    gateway = await start_gateway(config)
    images = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 50
    with pytest.raises(openai.BadRequestError):
        await gateway.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": images}], max_tokens=10
        )
    assert len(received) == 1
    assert await counter_once_released(redis, "a") == 0.0
    # its quota was refunded: the next request sees the whole minute's tokens again
    with pytest.raises(openai.BadRequestError) as refused:
        await gateway.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    remaining = int(refused.value.response.headers["x-ratelimit-remaining-tokens"])
    assert remaining > 100_000 - 1_000


async def test_a_prompt_beyond_the_configured_context_is_refused_before_it_queues(
    start_gateway: StartGateway, refusing_engine: tuple[str, list], redis: Redis, redis_url: str
) -> None:
    url, received = refusing_engine
    config = gateway_config(
        redis_url, {"interactive": [url]}, models={MODEL: {"context_length": 2048}}
    )
    config["pools"]["interactive"]["backends"]["interactive-0"]["models"] = [MODEL, "other"]
    gateway = await start_gateway(config)
    with pytest.raises(openai.BadRequestError) as refused:
        await gateway.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 5000}]
        )
    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in refused.value.message
    assert received == []  # never sent, never queued, never charged
    assert await counter_once_released(redis, "a") == 0.0
    # a model whose context nobody configured is left to its engine to judge
    with pytest.raises(openai.BadRequestError) as judged:
        await gateway.client().chat.completions.create(
            model="other", messages=[{"role": "user", "content": "word " * 5000}]
        )
    assert judged.value.code != "context_length_exceeded"


async def test_a_request_of_no_tokens_is_released_at_once(
    start_gateway: StartGateway, start_sim: StartSim, redis: Redis, redis_url: str
) -> None:
    """A lease of zero tokens once failed its release (Lua wrote -0, which HINCRBY refuses)
    and held its backend's request slot until the lease expired."""
    sim = await start_sim(time_scale=1000.0)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))
    embedded = await gateway.client().embeddings.create(model=MODEL, input="")
    assert embedded.data
    for _ in range(50):  # released in the background, in milliseconds (the TTL is 10 s)
        if not await inflight_state(redis):
            break
        await asyncio.sleep(0.02)
    assert await inflight_state(redis) == {}


async def test_an_embedding_is_estimated_from_its_input_whatever_else_the_body_holds(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> None:
    sim = await start_sim(time_scale=1000.0)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))
    text = "a long document " * 200
    raw = await gateway.client().embeddings.with_raw_response.create(
        model=MODEL, input=text, extra_body={"prompt": ""}
    )
    estimated = int(raw.headers["x-fairgate-estimate-prompt-tokens"])
    assert estimated == raw.parse().usage.prompt_tokens > 500
