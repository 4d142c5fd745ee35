"""Per-tenant quotas: refused before admission with Retry-After, reported in OpenAI's headers,
corrected with usage, per model, free for tenants without them, shared by replicas.

Real parts: simulated engines and gateways on loopback, a real redis-server, and the official
``openai`` client.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import openai
import pytest

from admission.quota import SOURCE as QUOTA_SCRIPT
from fairgate.redis_client import GatewayRedis
from tests.conftest import RunningGateway, RunningSim, StartGateway, StartSim, gateway_config

MODEL, OTHER = "llama-3-8b", "other-model"
MESSAGES = [{"role": "user", "content": "Write a haiku about queues."}]
RESET = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0, models=[MODEL, OTHER])


def config(redis_url: str, sim: RunningSim, quotas: dict[str, Any], **sections: Any) -> dict:
    """Tenant ``a`` (key ``key-a``) with ``quotas``; tenant ``b`` (key ``key-b``) without."""
    cfg = gateway_config(redis_url, {"interactive": [sim.url]}, **sections)
    cfg["pools"]["interactive"]["backends"]["interactive-0"]["models"] = [MODEL, OTHER]
    cfg["tenants"]["a"]["quotas"] = quotas
    return cfg


async def chat(gateway: RunningGateway, key: str = "key-a", **body: Any) -> Any:
    """A chat completion's raw response (headers and parsed body) through the gateway."""
    arguments: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10, **body}
    return await gateway.client(key).chat.completions.with_raw_response.create(**arguments)


async def refusal(gateway: RunningGateway, key: str = "key-a", **body: Any) -> openai.APIError:
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(gateway, key, **body)
    return refused.value


def ratelimit_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}


async def test_requests_per_minute_refused_with_retry_after_and_headers(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim, {"requests_per_minute": 2}))
    for remaining in ("1", "0"):
        raw = await chat(gateway)
        headers = raw.headers
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == remaining
        assert RESET.match(headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in headers  # no token quota configured
    refused = await refusal(gateway)
    assert refused.status_code == 429
    assert refused.code == "rate_limit_exceeded"
    assert "requests_per_minute quota of 2" in refused.message
    # Two requests of a 2 per minute quota: the next fits 30 s (60 / 2) after the first.
    assert int(refused.response.headers["Retry-After"]) in (29, 30)
    headers = ratelimit_headers(refused.response.headers)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "2"


async def test_a_huge_request_is_refused_before_the_engine_sees_it(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    gateway = await start_gateway(config(redis_url, sim, {"tokens_per_minute": 500}))
    huge = [{"role": "user", "content": "queue " * 2000}]
    refused = await refusal(gateway, messages=huge)
    assert "lower max_tokens or the prompt" in refused.message
    headers = ratelimit_headers(refused.response.headers)
    assert headers["x-ratelimit-limit-tokens"] == "500"
    assert headers["x-ratelimit-remaining-tokens"] == "500"  # nothing was charged
    assert "a" not in (await sim.state())["peak_requests_by_tenant"]
    raw = await chat(gateway)  # a small one still fits
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 500
    assert "a" in (await sim.state())["peak_requests_by_tenant"]


async def test_usage_corrects_the_estimate_charged(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    """Charged prompt + likely output (4,000 here), settled at the tokens the engine used."""
    limit = 5000  # per day: it refills ~0.06 tokens a second, nothing within this test
    gateway = await start_gateway(
        config(
            redis_url,
            sim,
            {"tokens_per_day": limit},
            estimation={"chat_prior": {"p50": 4000, "p90": 4000}},
        )
    )
    raw = await chat(gateway, max_tokens=None)
    estimated = limit - int(raw.headers["x-ratelimit-remaining-tokens"])
    usage = raw.parse().usage
    assert usage.total_tokens < estimated  # the premise: it used fewer than charged
    # A request larger than what is left is refused and charged nothing: its headers say
    # what is left, which becomes the limit minus the tokens used once the first settles.
    large = [{"role": "user", "content": "queue " * 1500}]
    left = []
    for _ in range(100):
        refused = await refusal(gateway, messages=large, max_tokens=None)
        left.append(int(refused.response.headers["x-ratelimit-remaining-tokens"]))
        if left[-1] != limit - estimated:
            break
    assert left[-1] == limit - usage.total_tokens, left


async def test_per_model_quota_applies_to_its_model_only(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    quotas = {"requests_per_minute": 10, "models": {MODEL: {"requests_per_minute": 1}}}
    gateway = await start_gateway(config(redis_url, sim, quotas))
    raw = await chat(gateway)
    assert raw.headers["x-ratelimit-limit-requests"] == "1"  # the binding limit: the model's
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await refusal(gateway)
    assert f"requests_per_minute of model '{MODEL}' quota of 1" in refused.message
    other = await chat(gateway, model=OTHER)
    assert other.headers["x-ratelimit-limit-requests"] == "10"
    assert other.headers["x-ratelimit-remaining-requests"] == "8"  # two of ten taken


async def test_a_tenant_without_quotas_gets_no_headers_and_costs_no_redis_call(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str, redis: GatewayRedis
) -> None:
    await redis.script_flush()  # the script cache outlives the flush between tests
    gateway = await start_gateway(config(redis_url, sim, {"requests_per_minute": 1}))
    for _ in range(3):
        raw = await chat(gateway, key="key-b")
        assert ratelimit_headers(raw.headers) == {}
    assert [key async for key in redis.scan_iter(match="*quota*")] == []
    sha = hashlib.sha1(QUOTA_SCRIPT.encode()).hexdigest()
    assert await redis.script_exists(sha) == [False]  # never called, so never loaded


async def test_two_replicas_share_one_quota(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    first = await start_gateway(config(redis_url, sim, {"requests_per_minute": 3}))
    second = await start_gateway(config(redis_url, sim, {"requests_per_minute": 3}))
    assert (await chat(first)).headers["x-ratelimit-remaining-requests"] == "2"
    assert (await chat(second)).headers["x-ratelimit-remaining-requests"] == "1"
    assert (await chat(first)).headers["x-ratelimit-remaining-requests"] == "0"
    for replica in (first, second):
        refused = await refusal(replica)
        assert ratelimit_headers(refused.response.headers)["x-ratelimit-remaining-requests"] == "0"


async def test_an_admission_refusal_after_the_charge_reports_the_quotas_too(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    cfg = config(redis_url, sim, {"requests_per_minute": 10, "tokens_per_minute": 100_000})
    cfg["tenants"]["a"].update(max_concurrency=1, max_queued=0)
    gateway = await start_gateway(cfg)
    running = await gateway.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=2000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    await anext(aiter(running))  # admitted and running: the tenant's one slot is taken
    refused = await refusal(gateway)
    assert "already waiting" in refused.message  # the queue's refusal, not a quota's
    headers = ratelimit_headers(refused.response.headers)
    assert headers["x-ratelimit-remaining-requests"] == "8"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 100_000
    await running.close()


async def test_the_usage_correction_keeps_the_request_quota(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    """Correcting the tokens (a short token window here) leaves the request count alone."""
    quotas = {"requests_per_minute": 1, "tokens_per_minute": 100_000}
    prior = {"chat_prior": {"p50": 1000, "p90": 1000}}  # charged 1,000 output, uses fewer
    gateway = await start_gateway(config(redis_url, sim, quotas, estimation=prior))
    raw = await chat(gateway, max_tokens=None)
    assert raw.parse().usage.completion_tokens < 1000  # the premise: a correction follows
    await asyncio.sleep(2.5)  # settled; the token limit is whole again after ~1 s
    refused = await refusal(gateway)
    assert "requests_per_minute quota of 1" in refused.message


async def test_a_request_taking_over_a_held_lease_is_charged_before_it_runs(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str, redis: GatewayRedis
) -> None:
    """Lease reuse (the lease held for a whole second here) runs a request without queueing:
    its charge is taken in the reuse's own script call first, which also corrects the last
    request's tokens; a refused request leaves the lease to be released, corrected too."""
    limit = 5000  # tokens per day: nothing refills within this test
    gateway = await start_gateway(
        config(
            redis_url,
            sim,
            {"requests_per_minute": 2, "tokens_per_day": limit},
            estimation={"chat_prior": {"p50": 1000, "p90": 1000}},
            admission={"lease_reuse_s": 1.0},
        )
    )
    first = await chat(gateway, max_tokens=None)
    second = await chat(gateway, max_tokens=None)
    assert await redis.hget("fairgate:{adm}:stats", "reused") == b"1"  # the first's lease
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await refusal(gateway)
    assert "requests_per_minute quota of 2" in refused.message
    assert int(refused.response.headers["Retry-After"]) in (29, 30)
    used = sum(raw.parse().usage.total_tokens for raw in (first, second))
    left = []
    for _ in range(100):  # both corrected to their usage once the second's lease is released
        refused = await refusal(gateway)
        left.append(int(refused.response.headers["x-ratelimit-remaining-tokens"]))
        if left[-1] == limit - used:
            break
        await asyncio.sleep(0.05)
    assert left[-1] == limit - used, left
    assert await redis.hget("fairgate:{adm}:stats", "reused") == b"1"  # no refusal ran
