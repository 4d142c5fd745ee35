"""fairgate on a primary that Sentinels watch: it follows a promotion, on both Redis paths.

The test starts a primary, its replica and three Sentinels on loopback. Gateways configured
with ``redis.mode: sentinel`` find the primary through the Sentinels (redis-py's pool and the
script channel alike). Then, under traffic, the primary dies (SIGKILL), or is demoted while it
stays up (``SENTINEL FAILOVER``: connections to it now reach a replica, which answers writes
with ``READONLY``). Meanwhile requests are served or refused per ``admission.fail_mode``;
after, they are admitted by the scripts on the new primary, and every counter is back to zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from fairgate.keys import AdmissionKeys
from fairgate.redis_client import connect
from fairgate.settings import RedisConfig
from tests.conftest import RunningSim, StartGateway, StartSim, gateway_config
from tests.redis_deployments import (
    LEASE_TTL_S,
    SentinelGroup,
    Traffic,
    allowed,
    chat,
    drained,
    sentinel_group,
    subscribers,
    until,
)

ADM = AdmissionKeys.of("fairgate").prefix


@pytest.fixture
async def group(tmp_path: Path) -> AsyncIterator[SentinelGroup]:
    with sentinel_group(tmp_path) as running:
        await until(running.ready, 15.0, "the Sentinels know each other and the replica")
        yield running


def redis_config(group: SentinelGroup, **options: Any) -> dict[str, Any]:
    """The URL names no server: the Sentinels name the primary."""
    return {
        "url": "redis://unused:1/0",
        "mode": "sentinel",
        "sentinels": group.addresses,
        "sentinel_master": SentinelGroup.MASTER,
        **options,
    }


async def primary(group: SentinelGroup) -> Redis:
    return Redis(host="127.0.0.1", port=await group.primary_port())


async def test_both_paths_reach_the_primary_the_sentinels_name(group: SentinelGroup) -> None:
    client = connect(RedisConfig(**redis_config(group)))
    try:
        await client.set("fairgate:probe", "1")  # a write: redis-py reached the primary
        role = await client.scripts.execute("ROLE")
        assert role[0] == b"master"
        assert await client.scripts.execute("GET", "fairgate:probe") == b"1"
        async with group.primary.client() as direct:
            assert await direct.get("fairgate:probe") == b"1"
    finally:
        await client.aclose()


def config(group: SentinelGroup, sim: RunningSim, fail_mode: str) -> dict[str, Any]:
    cfg = gateway_config("redis://unused:1/0", {"interactive": [sim.url]})
    cfg["redis"] = redis_config(group)
    cfg["admission"] = {"fail_mode": fail_mode, "lease_ttl_s": LEASE_TTL_S}
    cfg["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 4
    return cfg


async def test_gateways_queue_and_hear_grants_through_the_sentinels_primary(
    group: SentinelGroup, start_sim: StartSim, start_gateway: StartGateway
) -> None:
    sim = await start_sim(time_scale=100.0)
    cfg = config(group, sim, "closed")
    cfg["admission"].update(upkeep_interval_s=30, lease_ttl_s=90)  # grants must come by pub/sub
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    async with await primary(group) as client:
        channel = f"{ADM}contended"  # every gateway listens there with its grants channel

        async def listening() -> bool:
            return await subscribers(client, channel) == 2

        await until(listening, 5.0, "both gateways subscribed")
        replies = await asyncio.gather(*(chat(g) for g in (first, second) * 6))
        assert [r.usage.completion_tokens for r in replies] == [3] * 12
        assert await client.hget(f"{ADM}stats", "grants") == b"12"
        await drained(client)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "fail_mode"),
    [("kill", "closed"), ("kill", "open"), ("demote", "closed")],
)
async def test_the_primary_fails_over_under_traffic_and_counters_come_back(
    group: SentinelGroup,
    start_sim: StartSim,
    start_gateway: StartGateway,
    how: str,
    fail_mode: str,
) -> None:
    sim = await start_sim(time_scale=100.0)
    cfg = config(group, sim, fail_mode)
    traffic = Traffic([await start_gateway(cfg), await start_gateway(cfg)])
    traffic.start()
    await traffic.serving()
    loop = asyncio.get_running_loop()
    old = group.primary.port
    if how == "kill":
        group.primary.kill()
    else:
        async with group.sentinels[0].client() as sentinel:
            await sentinel.execute_command("SENTINEL FAILOVER", SentinelGroup.MASTER)
    changed_at = loop.time()

    async def promoted() -> bool:
        return await group.primary_port() == group.replica.port

    await until(promoted, 20.0, "the Sentinels promoted the replica")
    assert old != group.replica.port
    async with await primary(group) as client:
        before = int(await client.hget(f"{ADM}stats", "grants") or 0)

        async def admitting() -> bool:  # by the scripts on the new primary, not locally
            return int(await client.hget(f"{ADM}stats", "grants") or 0) >= before + 10

        await until(admitting, 10.0, "grants by the scripts on the new primary")
        recovered_at = await traffic.serving()
        await asyncio.sleep(0.5)
        await traffic.stop()

        during = traffic.since(changed_at)
        assert set(during) <= allowed(fail_mode), sorted(set(during))
        assert set(traffic.sent_since(recovered_at)) == {"200"}
        await drained(client)
