"""fairgate on a real Redis Cluster that the test starts on loopback.

Unchanged gateways (``redis.mode: cluster``, a seed node) authenticate from the tenant
directory, admit through the scripts (each call routed to its slot's primary), hear grants and
directory changes on sharded pub/sub, learn output lengths, enforce quotas and count usage, with
their keys spread over the shards. Then the topology changes under traffic: the admission
shard's primary dies and its replica takes over; a tenant's quota and usage slots migrate to
another shard; the admission slot itself migrates. Requests are served, or refused per
``admission.fail_mode`` while admission cannot run, and every counter is back to zero after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from fairgate.keys import AdmissionKeys, model_tag, usage
from fairgate.redis_client import GatewayCluster
from tests.conftest import (
    RunningGateway,
    RunningSim,
    StartGateway,
    StartSim,
    gateway_config,
)
from tests.redis_deployments import (
    LEASE_TTL_S,
    MODEL,
    Cluster,
    Traffic,
    allowed,
    chat,
    drained,
    redis_cluster,
    subscribers,
    until,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
ADM = AdmissionKeys.of("fairgate").prefix


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with redis_cluster(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def inspector(cluster: Cluster) -> AsyncIterator[RedisCluster]:
    client = cluster.client()
    try:
        yield client
    finally:
        await client.aclose()


async def drained_cluster(cluster: Cluster) -> None:
    async with inspector(cluster) as client:
        await drained(client)


def cluster_config(seed: str, sim: RunningSim, **sections: Any) -> dict:
    """Gateways on the cluster; pub/sub must carry grants and directory changes (the polls
    that would otherwise find them are minutes apart)."""
    config = gateway_config(
        seed,
        {"interactive": [sim.url]},
        admin={"tokens": ["admin-secret"], "sync_interval_s": 60, "usage_flush_s": 0.2},
        **sections,
    )
    config["redis"]["mode"] = "cluster"
    config["admission"] = {
        "upkeep_interval_s": 30,
        "lease_ttl_s": 90,
        **config.get("admission", {}),
    }
    return config


async def test_gateways_on_a_cluster_work_as_on_one_server(
    cluster: Cluster, start_sim: StartSim, start_gateway: StartGateway
) -> None:
    await cluster.wait_healthy()
    keys = {
        "admission": ADM,
        "estimation": model_tag("fairgate", MODEL),
        "usage of a": usage("fairgate", "a", "2026-01-01"),
    }
    owners = {name: (await cluster.owner(key)).port for name, key in keys.items()}
    assert len(set(owners.values())) >= 2, owners  # the calls must be routed to several shards
    # seeded by a node that does not own admission's slot: every script call is routed
    seed = next(s for s in cluster.primaries if s.port != owners["admission"])
    sim = await start_sim(time_scale=100.0)
    config = cluster_config(f"redis://{seed.address}", sim)
    config["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 2
    config["tenants"]["b"]["quotas"] = {"requests_per_minute": 3}
    first, second = await start_gateway(config), await start_gateway(config)
    admission_node = cluster.server(owners["admission"])

    async def listening() -> bool:  # on admission's shard: sharded pub/sub
        async with admission_node.client() as client:
            return await subscribers(client, f"{ADM}contended", sharded=True) == 2

    await until(listening, 5.0, "both gateways subscribed")

    # 12 requests, 2 at a time on the engine: most wait, granted by the other gateway's
    # releases as often as by their own, through SPUBLISH/SSUBSCRIBE on admission's shard
    replies = await asyncio.gather(*(chat(g) for g in (first, second) * 6))
    assert [r.usage.completion_tokens for r in replies] == [3] * 12
    for _ in range(3):
        await chat(second, "key-b")
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(first, "key-b")  # the quota both gateways share, taken with admission
    assert "requests_per_minute quota of 3" in refused.value.message

    # a tenant created on one gateway authenticates on the other at once (sharded pub/sub)
    async with first.http.post(
        f"{first.url}/admin/v1/tenants", json={"id": "acme"}, headers=ADMIN
    ) as resp:
        assert resp.status == 201, await resp.text()
    async with first.http.post(
        f"{first.url}/admin/v1/tenants/acme/keys", json={"name": "ci"}, headers=ADMIN
    ) as resp:
        secret = (await resp.json())["key"]
    await asyncio.wait_for(_answers(second, secret), timeout=2.0)

    async with inspector(cluster) as client:
        history = f"{model_tag('fairgate', MODEL)}:out:all:chat"
        await until(lambda: client.exists(history), 5.0, "output history recorded")
        assert set(await client.lrange(history, 0, -1)) == {b"3"}

    async def counted() -> bool:
        async with first.http.get(
            f"{first.url}/v1/tenant", headers={"Authorization": "Bearer key-a"}
        ) as resp:
            body = await resp.json()
        return [(r["model"], r["requests"]) for r in body["usage"]["data"]] == [(MODEL, 12)]

    await until(counted, 5.0, "usage of tenant a counted")
    await drained_cluster(cluster)


async def _answers(gateway: RunningGateway, key: str) -> None:
    while True:
        with contextlib.suppress(openai.AuthenticationError):
            await chat(gateway, key)
            return
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------- under traffic


@pytest.mark.slow
@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_the_admission_primary_dies_its_replica_takes_over_and_counters_come_back(
    tmp_path: Path, start_sim: StartSim, start_gateway: StartGateway, fail_mode: str
) -> None:
    with redis_cluster(tmp_path, replicas=1) as cluster:
        await cluster.wait_healthy()
        doomed = await cluster.owner(ADM)
        heir = await cluster.replica_of(doomed)
        sim = await start_sim(time_scale=100.0)
        config = cluster_config(
            f"redis://{heir.address}",
            sim,
            admission={
                "fail_mode": fail_mode,
                "lease_ttl_s": LEASE_TTL_S,
                "upkeep_interval_s": 0.2,
            },
        )
        traffic = Traffic([await start_gateway(config), await start_gateway(config)])
        traffic.start()
        await traffic.serving()

        doomed.kill()
        killed_at = asyncio.get_running_loop().time()
        await until(lambda: _owned_by(cluster, ADM, heir.port), 15.0, "the replica promoted")
        await cluster.wait_healthy()
        await admitting_again(cluster)  # by the scripts on the new primary, not locally
        recovered_at = await traffic.serving()
        await asyncio.sleep(0.5)
        await traffic.stop()

        during = traffic.since(killed_at)
        assert set(during) <= allowed(fail_mode), sorted(set(during))
        assert set(traffic.sent_since(recovered_at)) == {"200"}
        await drained_cluster(cluster)


async def admitting_again(cluster: Cluster, grants: int = 10) -> None:
    """Wait until the admission scripts have granted ``grants`` more requests."""
    async with inspector(cluster) as client:
        before = int(await client.hget(f"{ADM}stats", "grants") or 0)

        async def granting() -> bool:
            return int(await client.hget(f"{ADM}stats", "grants") or 0) >= before + grants

        await until(granting, 10.0, f"{grants} more grants by the admission scripts")


async def _owned_by(cluster: Cluster, key: str, port: int) -> bool:
    return (await cluster.owner(key)).port == port


@pytest.mark.slow
async def test_a_tenants_usage_slot_migrates_under_traffic_and_nothing_is_lost(
    cluster: Cluster, start_sim: StartSim, start_gateway: StartGateway
) -> None:
    """While the slot moves, a call for a key already moved gets ``ASK``: redis-py (usage)
    follows it to the importing node; after, ``MOVED``. Every request is served and counted
    once in usage, and never charged less than it used to the quota (which admission's
    scripts take, on their own slot: its migration is the test below)."""
    await cluster.wait_healthy()
    limit = 100_000  # tokens per day: refills ~1.2 a second, less than one request's worth
    usage_key = usage("fairgate", "a", "2026-01-01")
    sim = await start_sim(time_scale=100.0)
    config = cluster_config(cluster.seed_url, sim)
    config["tenants"]["a"]["quotas"] = {"tokens_per_day": limit}
    gateway = await start_gateway(config)
    traffic = Traffic([gateway, await start_gateway(config)])
    loop = asyncio.get_running_loop()
    began = loop.time()
    traffic.start()
    await traffic.serving()
    for key in (usage_key,):
        source = await cluster.owner(key)
        target = next(s for s in cluster.primaries if s is not source)
        await cluster.migrate_slot(key_slot(key.encode()), source, target, hold_s=1.0)
        assert (await cluster.owner(key)).port == target.port
    await traffic.serving()
    await traffic.stop()

    assert {o for _, o in traffic.outcomes} == {"200"}
    served = len(traffic.outcomes)
    assert await asking_calls(cluster) > 0  # calls really crossed the ASK windows
    refill = limit * (loop.time() - began) / 86_400 + 1
    seen: dict[str, int] = {}

    async def all_counted() -> bool:
        async with gateway.http.get(
            f"{gateway.url}/v1/tenant", headers={"Authorization": "Bearer key-a"}
        ) as resp:
            body = await resp.json()
        rows = body["usage"]["data"]
        seen["requests"] = sum(r["requests"] for r in rows)
        seen["tokens"] = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
        seen["remaining"] = body["quotas"][0]["remaining"]
        charged = limit - seen["remaining"]
        # usage: each request exactly once. The quota (admission's slot, which does not move
        # here) never charges less than was used; a correction that rides on a release the
        # cluster's churn made fail stays charged, the conservative side.
        return seen["requests"] == served and charged + refill >= seen["tokens"]

    try:
        await until(all_counted, 5.0, "every request counted in usage and charged to the quota")
    except AssertionError:
        raise AssertionError(f"{served} requests served, but: {seen}") from None
    await drained_cluster(cluster)


async def asking_calls(cluster: Cluster) -> int:
    """``ASKING`` commands the primaries received: calls that followed an ``ASK``."""
    total = 0
    for server in cluster.primaries:
        async with server.client() as client:
            stats = await client.info("commandstats")
        total += int(stats.get("cmdstat_asking", {}).get("calls", 0))
    return total


@pytest.mark.slow
@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_the_admission_slot_migrates_under_traffic_scripts_wait_for_it(
    cluster: Cluster, start_sim: StartSim, start_gateway: StartGateway, fail_mode: str
) -> None:
    """Admission's scripts derive their keys, so they must not run on a slot half moved: an
    ``ASK`` fails them (per fail_mode) until the slot has moved, then they run on the new
    owner with all their state."""
    await cluster.wait_healthy()
    sim = await start_sim(time_scale=100.0)
    config = cluster_config(
        cluster.seed_url,
        sim,
        admission={"fail_mode": fail_mode, "lease_ttl_s": LEASE_TTL_S, "upkeep_interval_s": 0.2},
    )
    traffic = Traffic([await start_gateway(config), await start_gateway(config)])
    traffic.start()
    await traffic.serving()
    source = await cluster.owner(ADM)
    target = next(s for s in cluster.primaries if s is not source)
    started = asyncio.get_running_loop().time()
    await cluster.migrate_slot(key_slot(ADM.encode()), source, target, hold_s=1.0)
    await admitting_again(cluster)
    recovered_at = await traffic.serving()
    await asyncio.sleep(0.5)
    await traffic.stop()

    during = traffic.since(started)
    assert set(during) <= allowed(fail_mode), sorted(set(during))
    assert set(traffic.sent_since(recovered_at)) == {"200"}
    await drained_cluster(cluster)


async def test_redis_py_resetting_its_slot_map_does_not_cut_the_scripts_in_flight(
    cluster: Cluster,
) -> None:
    """redis-py resets its slot map by calling the client's own ``aclose`` in the middle of a
    command, at every fifth ``MOVED`` answer (``reinitialize_steps``): the script channel must
    not close with it, or the admission calls in flight on it fail ("channel closed": a 503,
    a release lost). Seen as a 503 in the usage slot's migration above, about one run in three
    on a loaded machine."""
    await cluster.wait_healthy()
    client = GatewayCluster.from_url(cluster.seed_url)
    keys = [f"fairgate:{{reset-{i}}}:x" for i in range(client.reinitialize_steps)]
    try:
        for key in keys:
            await client.set(key, 1)  # the slot map is read; each key's owner is known
        in_flight = asyncio.ensure_future(  # on the script channel: answers after 1 s
            client.scripts.execute_routed(ADM + "wait", "BLPOP", ADM + "wait", "1")
        )
        for key in keys:  # every key's slot moves to another primary
            source = await cluster.owner(key)
            target = next(s for s in cluster.primaries if s is not source)
            await cluster.migrate_slot(key_slot(key.encode()), source, target, hold_s=0.0)
        for key in keys:  # a MOVED each: at the last, redis-py resets its slot map
            assert await client.get(key) == b"1"
        assert await in_flight is None  # BLPOP timed out: the channel stayed open
    finally:
        await client.aclose()
