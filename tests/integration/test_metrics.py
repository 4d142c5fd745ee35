"""``GET /metrics`` after known traffic: requests, tokens, rejections and latencies per tenant
and pool (the same classification as the tenants' usage), the bound on tenant labels, and the
shared state of admission as gauges.

Real parts: simulated engines and a stand-in engine on loopback, in-process gateways on a real
redis-server, the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis

from admission.live import LiveState
from fairgate.settings import Settings
from gateway.request_metrics import TenantLabels
from gateway.shared_metrics import SharedStateMetrics, fairness
from tests.conftest import RunningGateway, RunningSim, StartGateway, StartSim, gateway_config
from tests.integration.scrape import Samples, parse, scrape, series, total, value

MODEL, OTHER = "llama-3-8b", "other-model"
MESSAGES = [{"role": "user", "content": "Write a haiku about queues."}]
ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0, models=[MODEL, OTHER])


def config(redis_url: str, urls: list[str], **sections: Any) -> dict:
    """One pool (``interactive``) of ``urls``, each serving both models; tenants ``a`` and
    ``b``; shared-state gauges read at every scrape."""
    sections.setdefault("telemetry", {"metrics": {"shared_state_max_age_s": 0}})
    cfg = gateway_config(
        redis_url, {"interactive": urls}, admin={"tokens": ["admin-secret"]}, **sections
    )
    for backend in cfg["pools"]["interactive"]["backends"].values():
        backend["models"] = [MODEL, OTHER]
    return cfg


async def chat(gateway: RunningGateway, key: str = "key-a", **body: Any) -> Any:
    arguments: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, **body}
    return await gateway.client(key).chat.completions.create(**arguments)


async def streamed_usage(gateway: RunningGateway, key: str = "key-a", **body: Any) -> Any:
    """A streamed chat completion read to its end; the usage of its final chunk."""
    stream = await chat(gateway, key, stream=True, stream_options={"include_usage": True}, **body)
    found = None
    async for chunk in stream:
        found = chunk.usage or found
    assert found is not None
    return found


async def usage(gateway: RunningGateway, tenant: str) -> dict[str, Any]:
    path = f"{gateway.url}/admin/v1/tenants/{tenant}/usage"
    async with gateway.http.get(path, headers=ADMIN) as response:
        assert response.status == 200
        return (await response.json())["total"]


async def test_requests_tokens_rejections_and_latencies_per_tenant_and_pool(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    cfg = config(redis_url, [sim.url])
    cfg["tenants"]["a"]["quotas"] = {"models": {OTHER: {"requests_per_minute": 1}}}
    gateway = await start_gateway(cfg)
    used = [(await chat(gateway)).usage, (await chat(gateway, max_tokens=3)).usage]
    used.append(await streamed_usage(gateway, max_tokens=5))
    used.append((await chat(gateway, model=OTHER)).usage)
    b_used = await streamed_usage(gateway, "key-b", max_tokens=4)
    with pytest.raises(openai.RateLimitError):  # quota, after routing: pool known
        await chat(gateway, model=OTHER)
    with pytest.raises(openai.NotFoundError):  # no pool serves it: refused before routing
        await chat(gateway, model="gpt-5")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # the engine's own 400
        await chat(gateway, max_tokens=-1)
    with pytest.raises(openai.AuthenticationError):  # no tenant
        await chat(gateway, "key-unknown")

    m = await scrape(gateway)
    a, b, pool = {"tenant": "a"}, {"tenant": "b"}, {"pool": "interactive"}
    requests = "fairgate_requests_total"
    assert value(m, requests, **a, **pool, outcome="served") == 4
    assert value(m, requests, **a, **pool, outcome="rejected") == 2  # quota, the engine's 400
    assert value(m, requests, **a, **pool, outcome="cancelled") == 0
    assert value(m, requests, **a, pool="_none", outcome="rejected") == 1
    assert value(m, requests, **b, **pool, outcome="served") == 1
    assert value(m, requests, tenant="_unknown", pool="_none", outcome="rejected") == 1
    assert total(m, requests) == 4 + 2 + 1 + 1 + 1

    assert value(m, "fairgate_prompt_tokens_total", **a, **pool) == sum(
        u.prompt_tokens for u in used
    )
    assert value(m, "fairgate_completion_tokens_total", **a, **pool) == 8 + 3 + 5 + 8
    assert value(m, "fairgate_completion_tokens_total", **b, **pool) == b_used.completion_tokens

    rejections = "fairgate_rejections_total"
    assert value(m, rejections, **a, **pool, reason="quota") == 1
    assert value(m, rejections, **a, **pool, reason="invalid_request") == 1
    assert value(m, rejections, **a, pool="_none", reason="invalid_request") == 1
    assert value(m, rejections, tenant="_unknown", pool="_none", reason="auth") == 1
    assert total(m, rejections) == 4

    # served requests are timed; streams alone have a first token and a pace after it
    assert value(m, "fairgate_request_duration_seconds_count", **a, **pool) == 4
    assert value(m, "fairgate_time_to_first_token_seconds_count", **a, **pool) == 1
    assert value(m, "fairgate_inter_token_latency_seconds_count", **a, **pool) == 1
    assert value(m, "fairgate_time_to_first_token_seconds_count", **b, **pool) == 1
    # every request that asked admission waited (the quota refused one before it asked)
    assert value(m, "fairgate_queue_wait_seconds_count", **a, **pool) == 5
    assert value(m, "fairgate_queue_wait_seconds_count", **b, **pool) == 1
    for name in ("fairgate_request_duration_seconds", "fairgate_queue_wait_seconds"):
        count = value(m, f"{name}_count", **a, **pool)
        assert value(m, f"{name}_bucket", **a, **pool, le="+Inf") == count
    assert not any(s["pool"] == "_none" for s in series(m, "fairgate_queue_wait_seconds_count"))

    # one classification: the tenant's usage says the same
    a_usage = await usage(gateway, "a")
    assert a_usage["requests"] == total(m, requests, **a, outcome="served")
    assert a_usage["prompt_tokens"] == total(m, "fairgate_prompt_tokens_total", **a)
    assert a_usage["completion_tokens"] == total(m, "fairgate_completion_tokens_total", **a)
    for reason, n in a_usage["rejections"].items():
        assert total(m, rejections, **a, reason=reason) == n, reason


async def test_queue_full_queue_timeout_a_client_that_leaves_and_the_shared_gauges(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    """One slow request holds the engine's only slot: ``a`` (no queue) is refused at once,
    ``b`` waits until its queue timeout; meanwhile the shared gauges show both."""
    sim = await start_sim(time_scale=1.0, models=[MODEL, OTHER])
    cfg = config(redis_url, [sim.url])
    cfg["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 1
    cfg["tenants"]["a"].update(max_concurrency=1, max_queued=0, weight=2)
    gateway = await start_gateway(cfg)
    running = await chat(gateway, stream=True, max_tokens=2000, extra_body={"ignore_eos": True})
    await anext(aiter(running))  # admitted and running
    with pytest.raises(openai.RateLimitError, match="already waiting"):
        await chat(gateway)
    waiting = asyncio.create_task(
        chat(gateway, "key-b", extra_headers={"X-Fairgate-Queue-Timeout": "1"})
    )
    for _ in range(400):
        m = await scrape(gateway)
        if value(m, "fairgate_shared_tenant_queued_requests", tenant="b") == 1:
            break
        await asyncio.sleep(0.005)
    backend = {"pool": "interactive", "backend": "interactive-0"}
    assert value(m, "fairgate_shared_state_up") == 1
    assert value(m, "fairgate_shared_tenant_queued_requests", tenant="a") == 0
    assert value(m, "fairgate_shared_tenant_inflight_requests", tenant="a", pool="interactive") == 1
    assert value(m, "fairgate_shared_tenant_inflight_tokens", tenant="a", pool="interactive") > 0
    assert value(m, "fairgate_shared_tenant_weight", tenant="a") == 2
    assert value(m, "fairgate_shared_tenant_fair_share", tenant="a") == pytest.approx(2 / 3)
    assert value(m, "fairgate_shared_tenant_fair_share", tenant="b") == pytest.approx(1 / 3)
    assert value(m, "fairgate_shared_tenant_virtual_counter", tenant="a") > 0  # its input
    assert value(m, "fairgate_shared_pool_queued_requests", pool="interactive") == 1
    assert value(m, "fairgate_shared_pool_inflight_requests", pool="interactive") == 1
    assert value(m, "fairgate_shared_backend_inflight_requests", **backend) == 1
    assert value(m, "fairgate_shared_backend_max_concurrency", **backend) == 1
    assert value(m, "fairgate_shared_backend_up", **backend) == 1
    assert value(m, "fairgate_shared_backend_drained", **backend) == 0
    assert value(m, "fairgate_shared_fairness_jain_index", priority="0") == 1.0
    assert value(m, "fairgate_admission_events", event="grants") == 1

    with pytest.raises(openai.RateLimitError, match="waited 1 s"):
        await waiting
    await running.close()  # abandoned by its client: neither served nor refused
    for _ in range(400):
        m = await scrape(gateway)
        cancelled = value(
            m, "fairgate_requests_total", tenant="a", pool="interactive", outcome="cancelled"
        )
        if cancelled == 1:
            break
        await asyncio.sleep(0.005)
    assert cancelled == 1
    pool = {"pool": "interactive"}
    assert value(m, "fairgate_rejections_total", tenant="a", **pool, reason="queue_full") == 1
    assert value(m, "fairgate_rejections_total", tenant="b", **pool, reason="queue_timeout") == 1
    assert total(m, "fairgate_rejections_total") == 2
    assert total(m, "fairgate_requests_total", outcome="served") == 0
    # b waited its whole timeout; a's refusal and its running request hardly waited
    assert value(m, "fairgate_queue_wait_seconds_count", tenant="b", **pool) == 1
    assert value(m, "fairgate_queue_wait_seconds_sum", tenant="b", **pool) >= 1.0
    assert value(m, "fairgate_queue_wait_seconds_bucket", tenant="b", **pool, le="0.5") == 0
    assert value(m, "fairgate_queue_wait_seconds_count", tenant="a", **pool) == 2


async def test_tenant_labels_are_bounded_listed_tenants_first(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    """``max_tenants: 1`` with ``c`` listed: ``c`` and the first other tenant seen (``b``) get
    labels of their own; ``a``, seen after, counts as ``_other``."""
    cfg = config(
        redis_url,
        [sim.url],
        telemetry={"metrics": {"max_tenants": 1, "tenants": ["c"], "shared_state_max_age_s": 0}},
    )
    cfg["tenants"]["c"] = {"api_keys": ["key-c"], "weight": 5}
    cfg["tenants"]["d"] = {"api_keys": ["key-d"]}
    gateway = await start_gateway(cfg)
    for key in ("key-b", "key-a", "key-c", "key-a", "key-d"):
        await chat(gateway, key)
    m = await scrape(gateway)
    served = {
        s["tenant"]: value(m, "fairgate_requests_total", **s)
        for s in series(m, "fairgate_requests_total")
        if s["outcome"] == "served"
    }
    assert served == {"b": 1, "_other": 3, "c": 1}
    # the shared gauges use the same labels; the others' own weights and counters are not
    # added up (nor idle tenants given a label)
    weights = {s["tenant"] for s in series(m, "fairgate_shared_tenant_weight")}
    assert weights == {"b", "c"}
    assert value(m, "fairgate_shared_tenant_weight", tenant="c") == 5
    assert value(m, "fairgate_shared_tenant_queued_requests", tenant="_other") == 0


async def test_fairness_among_backlogged_tenants_over_the_window(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    """Two tenants of weights 1 and 3 keep requests queued on one slow engine: over a short
    window both count as backlogged, and the index and gap are those of the service per unit
    of weight the gauges show."""
    sim = await start_sim(time_scale=20.0, models=[MODEL, OTHER])
    cfg = config(redis_url, [sim.url])
    cfg["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 2
    cfg["tenants"]["b"]["weight"] = 3
    gateway = await start_gateway(cfg)
    settings = Settings(**cfg)
    redis = Redis.from_url(redis_url)
    live = LiveState(redis, settings, window_s=1.5, sample_every_s=0.1)
    shared = SharedStateMetrics(live, redis, "fairgate:{adm}:stats", TenantLabels(), 0.0)
    stop = asyncio.Event()

    async def client(key: str) -> None:
        while not stop.is_set():
            await chat(gateway, key, max_tokens=40, extra_body={"ignore_eos": True})

    clients = [asyncio.create_task(client(key)) for key in ["key-a", "key-b"] * 6]
    try:
        await asyncio.sleep(0.3)  # both queue from here on
        await live.start()
        await asyncio.sleep(2.0)  # the whole window holds samples with both queued
        await shared.refresh()
        registry = CollectorRegistry()
        registry.register(shared)
        m: Samples = parse(generate_latest(registry).decode())
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await live.stop()
        await redis.aclose()
    band = {"priority": "0"}
    assert value(m, "fairgate_shared_fairness_backlogged_tenants", **band) == 2
    assert value(m, "fairgate_shared_fairness_window_seconds") == pytest.approx(1.5, abs=0.2)
    served = [
        (value(m, "fairgate_shared_tenant_recent_service", tenant=t), weight)
        for t, weight in (("a", 1.0), ("b", 3.0))
    ]
    assert all(service and service > 0 for service, _ in served)
    expected = fairness(served)  # type: ignore[arg-type]
    assert value(m, "fairgate_shared_fairness_jain_index", **band) == pytest.approx(
        expected.jain_index
    )
    assert value(m, "fairgate_shared_fairness_service_gap", **band) == pytest.approx(
        expected.service_gap
    )
