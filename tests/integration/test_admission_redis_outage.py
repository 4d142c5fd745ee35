"""Redis goes away and comes back (empty, as after a restart without persistence)."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import RedisProcess, RunningSim, StartGateway, StartSim, gateway_config

MESSAGES = [{"role": "user", "content": "hi"}]


async def ask(client: openai.AsyncOpenAI) -> int:
    reply = await client.chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, max_tokens=2, extra_body={"ignore_eos": True}
    )
    return reply.usage.completion_tokens


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_the_gateway_recovers_by_itself_when_redis_returns(
    start_sim: StartSim,
    start_gateway: StartGateway,
    redis_process: RedisProcess,
    fail_mode: str,
) -> None:
    sim: RunningSim = await start_sim(time_scale=100.0)
    # No lease held for reuse: one held when Redis stops (20 ms by default) would serve the
    # next request on its grant, with no Redis call to fail, and the refusal would race it.
    admission = {"fail_mode": fail_mode, "lease_reuse_s": 0}
    config = gateway_config(redis_process.url, {"interactive": [sim.url]}, admission=admission)
    gateway = await start_gateway(config)
    client = gateway.client()
    assert await ask(client) == 2

    redis_process.stop()
    if fail_mode == "closed":
        with pytest.raises(openai.InternalServerError) as refused:
            await ask(client)
        assert refused.value.code == "admission_unavailable"
    else:
        assert await ask(client) == 2  # admitted under per-replica limits

    redis_process.start()  # back, and empty: keys and admission config are gone from it
    assert [await ask(client) for _ in range(3)] == [2, 2, 2]
    async with gateway.http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_quotas_follow_the_fail_mode(
    start_sim: StartSim,
    start_gateway: StartGateway,
    redis_process: RedisProcess,
    fail_mode: str,
) -> None:
    """Quotas are checked by admission's own scripts: without Redis, closed refuses (503) and
    open lets the request on unchecked (no quota headers); both recover with Redis."""
    sim: RunningSim = await start_sim(time_scale=100.0)
    # No lease held for reuse: one held when Redis stops (20 ms by default) would serve the
    # next request on its grant, with no Redis call to fail, and the refusal would race it.
    admission = {"fail_mode": fail_mode, "lease_reuse_s": 0}
    config = gateway_config(redis_process.url, {"interactive": [sim.url]}, admission=admission)
    config["tenants"]["a"]["quotas"] = {"requests_per_minute": 100, "tokens_per_minute": 100_000}
    gateway = await start_gateway(config)
    chat = gateway.client().chat.completions.with_raw_response

    async def remaining_requests() -> str | None:
        raw = await chat.create(model="llama-3-8b", messages=MESSAGES, max_tokens=2)
        return raw.headers.get("x-ratelimit-remaining-requests")

    assert await remaining_requests() == "99"
    redis_process.stop()
    if fail_mode == "closed":
        with pytest.raises(openai.InternalServerError) as refused:
            await remaining_requests()
        assert refused.value.code == "admission_unavailable"
    else:
        assert await remaining_requests() is None  # admitted, its quotas unchecked
    redis_process.start()  # back, and empty: the quotas are whole again
    assert [await remaining_requests() for _ in range(2)] == ["99", "98"]
