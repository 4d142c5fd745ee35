"""Who goes next: weighted fairness, the lift rule, priority bands, FCFS as the baseline.

The first tests drive the admission scripts directly on a real Redis, releasing one request
at a time, so the order of grants is exact. The last ones run real traffic through a gateway.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from admission.domain import band_of, publish_config
from admission.policy import AdmissionPolicy
from admission.scripts import AdmissionScripts
from admission.ticket import Ticket
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import GatewayRedis
from fairgate.settings import Settings
from tests.conftest import (
    RunningGateway,
    StartGateway,
    StartSim,
    gateway_config,
    inflight_state,
)

SERVICE = 100.0  # every test request costs the same: input charged at dispatch
_ids = itertools.count()


class Domain:
    """An admission domain on the test Redis, with helpers to enqueue and release."""

    def __init__(self, scripts: AdmissionScripts, redis: Redis, prefix: str) -> None:
        self.scripts = scripts
        self.redis = redis
        self.prefix = prefix
        self.leased: list[str] = []

    async def enqueue(self, tenant: str, n: int = 1, band: str = "") -> list[str]:
        states = []
        for _ in range(n):
            request_id = f"{tenant}-{next(_ids)}"
            ticket = Ticket(request_id, tenant, 10, SERVICE, "p", band, timeout_s=60.0)
            outcome = await self.scripts.enqueue(ticket, "owner")
            states.append(outcome.state)
            if outcome.state == "granted":
                self.leased.append(request_id)
        return states

    async def release_next(self, used: float = 3 * SERVICE) -> list[str]:
        """Release the oldest lease; returns the tenants granted in consequence."""
        request_id = self.leased.pop(0)
        outcome = await self.scripts.release(request_id, used)
        self.leased.extend(i for i, _ in outcome.grants)
        return [i.split("-")[0] for i, _ in outcome.grants]

    async def release_next_of(self, tenant: str, used: float = 3 * SERVICE) -> list[str]:
        """Release the oldest lease of ``tenant``; returns the tenants granted in consequence."""
        request_id = next(i for i in self.leased if i.startswith(tenant + "-"))
        self.leased.remove(request_id)
        outcome = await self.scripts.release(request_id, used)
        self.leased.extend(i for i, _ in outcome.grants)
        return [i.split("-")[0] for i, _ in outcome.grants]

    async def drain(self) -> None:
        """Cancel everything queued and release every lease (tests leave Redis clean)."""
        for request_id in await self.redis.hkeys(self.prefix + "req"):
            await self.scripts.cancel(request_id.decode())
        while self.leased:
            await self.scripts.release(self.leased.pop(), None)


@pytest.fixture
async def domain(redis_url: str) -> AsyncIterator[Any]:
    """Build a domain: ``await domain(tenants={...}, capacity=1, policy="vtc")``."""
    redis = GatewayRedis.from_url(redis_url)
    made: list[Domain] = []

    async def make(tenants: dict[str, dict], capacity: int = 1, **admission: Any) -> Domain:
        settings = Settings(
            redis={"url": redis_url},
            pools={
                "p": {
                    "backends": {
                        "b": {
                            "url": "http://127.0.0.1:9",
                            "models": ["m"],
                            "max_concurrency": capacity,
                        }
                    }
                }
            },
            tenants={name: {"max_queued": 1000, **cfg} for name, cfg in tenants.items()},
            admission=admission,
        )
        keys = AdmissionKeys.of(settings.redis.key_prefix)
        await publish_config(redis, keys, settings)
        prefix = keys.prefix
        policy_ = AdmissionPolicy(order=settings.admission.policy)
        made.append(Domain(AdmissionScripts(redis, prefix, 60_000, 32, policy_), redis, prefix))
        return made[-1]

    yield make
    for d in made:
        await d.drain()
    await redis.aclose()


async def test_backlogged_tenants_are_served_in_proportion_to_their_weights(domain: Any) -> None:
    d = await domain({"a": {"weight": 1}, "b": {"weight": 2}, "c": {"weight": 4}})
    for tenant in "abc":
        await d.enqueue(tenant, 80)
    served = Counter()
    for _ in range(140):
        served.update(await d.release_next())
    assert abs(served["a"] - 20) <= 1 and abs(served["b"] - 40) <= 1 and abs(served["c"] - 80) <= 2


async def test_fcfs_serves_in_arrival_order_whatever_the_weights(domain: Any) -> None:
    d = await domain({"a": {"weight": 1}, "b": {"weight": 2}, "c": {"weight": 4}}, policy="fcfs")
    for _ in range(50):
        for tenant in "abc":
            await d.enqueue(tenant)
    served = Counter()
    for _ in range(90):
        served.update(await d.release_next())
    assert served == {"a": 30, "b": 30, "c": 30}


async def test_shadow_dispatches_fcfs_and_counts_where_vtc_would_differ(
    domain: Any, redis_url: str
) -> None:
    d = await domain({"a": {"weight": 1}, "c": {"weight": 4}}, policy="shadow")
    for _ in range(20):
        await d.enqueue("a")
        await d.enqueue("c")
    order = [tenant for _ in range(20) for tenant in await d.release_next()]
    assert order == ["c", "a"] * 10  # arrival order: a's first request was granted at once
    stats = await GatewayRedis.from_url(redis_url).hgetall("fairgate:{adm}:stats")
    assert int(stats[b"shadow_differ"]) > 0 and int(stats[b"shadow_agree"]) > 0


async def test_a_flood_cannot_push_a_light_tenant_back_more_than_one_slot(domain: Any) -> None:
    d = await domain({"flood": {}, "light": {}}, capacity=2)
    await d.enqueue("flood", 40)  # two run, 38 wait
    assert await d.enqueue("light") == ["queued"]
    assert await d.release_next() == ["light"]  # the very next free slot


async def test_with_fcfs_the_light_tenant_waits_behind_the_whole_flood(domain: Any) -> None:
    d = await domain({"flood": {}, "light": {}}, capacity=2, policy="fcfs")
    await d.enqueue("flood", 40)
    await d.enqueue("light")
    waited = 0
    while "light" not in await d.release_next():
        waited += 1
    assert waited == 38


async def test_a_returning_tenant_is_lifted_and_cannot_cash_in_idle_time(domain: Any) -> None:
    d = await domain({"a": {}, "b": {}, "idle": {}})
    await d.enqueue("a", 30)
    await d.enqueue("b", 30)
    for _ in range(40):
        await d.release_next()  # a and b have been served a lot; "idle" nothing
    await d.enqueue("idle", 30)
    served = Counter()
    for _ in range(12):
        served.update(await d.release_next())
    assert served == {"a": 4, "b": 4, "idle": 4}  # a third, not all twelve


async def test_a_newcomer_is_not_charged_for_input_granted_but_not_yet_delivered(
    domain: Any, redis: GatewayRedis
) -> None:
    """A request granted while others wait is charged its input at once, but the engine has
    not read that prompt yet: a tenant that becomes backlogged then is lifted to what the
    others have received, not to what they were granted an instant before (issue 12: before,
    it was lifted to the whole counter, and everyone else then repaid the difference)."""
    d = await domain({"a": {}, "b": {}, "late": {}}, capacity=2)
    assert await d.enqueue("a") == ["granted"]  # nothing waits: taken, and forgiven later
    assert await d.enqueue("b", 3) == ["granted", "queued", "queued"]
    assert await d.release_next_of("a") == ["b"]  # granted while b waits: its input pending
    assert float(await redis.hget(d.prefix + "vtc", "p:b")) == SERVICE
    assert await d.enqueue("late") == ["queued"]
    counters = await redis.hgetall(d.prefix + "vtc")
    assert float(counters[b"b"]) == 2 * SERVICE
    assert float(counters[b"late"]) == SERVICE  # b's delivered counter, not its 200
    await d.scripts.charge(d.leased[-1], 1.0)  # b's output flows: its input is delivered
    assert float(await redis.hget(d.prefix + "vtc", "p:b")) == 0


async def test_a_tenant_held_by_its_own_cap_forfeits_its_turn(
    domain: Any, redis: GatewayRedis
) -> None:
    """A capped tenant that comes first in fair order does not bank the turns it cannot take.

    Its counter follows the one served in its place, less one request of its own (a cap that
    binds only for a moment loses nothing). Without the forfeit its counter stays behind while
    the others are served, and it takes every free slot until it has caught up as soon as its
    cap allows.
    """
    d = await domain({"capped": {"max_concurrency": 1}, "free": {}}, capacity=3)
    await d.enqueue("capped", 5)  # one runs, four wait
    await d.enqueue("free", 10)  # two run, eight wait
    for request_id in list(d.leased):
        await d.scripts.charge(request_id, 0.0)  # all are past their prefill
    for _ in range(6):  # capped's one request keeps running: free gets every slot
        await d.release_next_of("free")
    counters = await redis.hgetall(d.prefix + "vtc")
    served_at = float(counters[b"free"]) - SERVICE  # free's counter at its last grant
    assert float(counters[b"capped"]) == served_at - SERVICE  # one request of its own behind
    served = Counter()
    for _ in range(6):  # now both take turns; capped has not banked the six it could not take
        served.update(await d.release_next())
    assert served["capped"] <= 3


@pytest.mark.parametrize("grace_s", [5.0, 0.0])
async def test_a_tenant_between_two_requests_keeps_its_place(
    domain: Any, redis: GatewayRedis, grace_s: float
) -> None:
    """z is owed ten requests when its queue runs dry (b's running request was charged a lot
    of output meanwhile), and z queues again at once. Within the return grace z was between two
    requests, not idle: it keeps what it was owed, up to eight requests, and the next turn.
    Without a grace it is lifted to one request below b, forfeiting the rest (issue 12: a
    tenant whose requests end in waves lost what it was owed at every wave)."""
    d = await domain({"b": {}, "z": {}}, capacity=1, return_grace_s=grace_s)
    await d.enqueue("b", 5)  # one runs, four wait
    assert await d.enqueue("z") == ["queued"]  # lifted to b's counter: 100
    await d.scripts.charge(d.leased[0], 10 * SERVICE)  # b's request streams a long answer
    assert await d.release_next(used=11 * SERVICE) == ["z"]  # z's queue runs dry
    assert await d.enqueue("z") == ["queued"]  # its client's next request, at once
    counters = await redis.hgetall(d.prefix + "vtc")
    if grace_s:  # b's 1,100 less eight requests, plus its own grant's input (pending)
        assert float(counters[b"z"]) == 4 * SERVICE
        assert await d.release_next(used=SERVICE) == ["z"]  # still owed: it goes first
    else:  # lifted to b's 1,100 less one request of its own (its grant's input pending)
        assert float(counters[b"z"]) == float(counters[b"b"]) == 11 * SERVICE
        assert await d.release_next(used=SERVICE) == ["b"]


async def _owed_a_with_b_waiting(domain: Any, policy: str = "vtc") -> tuple[Domain, str]:
    """a runs one request and queues nothing; b runs one and queues four (capacity 2). b's
    running request ends first: b is then ahead of a, so a is owed the next turn."""
    d = await domain({"a": {}, "b": {}}, capacity=2, policy=policy)
    assert await d.enqueue("a") == ["granted"]
    assert await d.enqueue("b", 5) == ["granted"] + ["queued"] * 4
    assert await d.release_next_of("b") == ["b"]
    return d, next(i for i in d.leased if i.startswith("a-"))


async def _hold(d: Domain, lease: str, hold_ms: int = 60_000) -> None:
    """End ``lease`` with a hold: it must be held (a is owed the next turn)."""
    d.leased.remove(lease)
    held = await d.scripts.release(lease, 3 * SERVICE, hold_ms=hold_ms)
    assert (held.state, held.grants) == ("held", [])


def _granted(d: Domain, grants: list[tuple[str, str]]) -> list[str]:
    """The tenants granted (their leases now count as the domain's)."""
    d.leased.extend(i for i, _ in grants)
    return [i.split("-")[0] for i, _ in grants]


async def _stat(redis: GatewayRedis, d: Domain, name: str) -> int:
    return int((await redis.hgetall(d.prefix + "stats")).get(name.encode(), 0))


HELD_FOR_A = f"ant:a:{band_of(0)}"  # leases held for a's next request


async def test_a_finished_lease_is_held_for_its_owed_tenants_next_request(
    domain: Any, redis: GatewayRedis
) -> None:
    """Anticipation: a's request ends while b waits, but a is owed the next turn. What a's
    lease holds is not handed to b: it is held for a's next request, which then comes first
    (the client's next request always arrives an instant after its last answer)."""
    d, lease = await _owed_a_with_b_waiting(domain)
    await _hold(d, lease)
    assert await redis.zrange(d.prefix + HELD_FOR_A, 0, -1) == [lease.encode()]
    assert await d.enqueue("a") == ["granted"]  # it frees the held lease and comes first
    assert await redis.exists(d.prefix + HELD_FOR_A) == 0
    assert (await d.scripts.release(lease, None)).state == "gone"  # the hold's end: no-op
    assert (await _stat(redis, d, "held"), await _stat(redis, d, "held_taken")) == (1, 1)


async def test_a_hold_nobody_takes_lapses_to_the_next_in_fair_order(
    domain: Any, redis: GatewayRedis
) -> None:
    d, lease = await _owed_a_with_b_waiting(domain)
    await _hold(d, lease)
    lapsed = await d.scripts.release(lease, None)  # the hold's end, as its replica times it
    assert lapsed.state == "released" and _granted(d, lapsed.grants) == ["b"]
    assert await _stat(redis, d, "held_lapsed") == 1
    assert await redis.exists(d.prefix + HELD_FOR_A) == 0


async def test_a_hold_expires_with_its_ttl_if_its_replica_dies(
    domain: Any, redis: GatewayRedis
) -> None:
    d, lease = await _owed_a_with_b_waiting(domain)
    await _hold(d, lease, hold_ms=1)
    await asyncio.sleep(0.01)  # no replica ends the hold: the next sweep does
    assert _granted(d, await d.scripts.tick()) == ["b"]
    assert await _stat(redis, d, "held_lapsed") == 1


@pytest.mark.parametrize("case", ["not owed", "fcfs", "own queue"])
async def test_no_hold_unless_the_tenant_is_owed_the_next_turn(domain: Any, case: str) -> None:
    """A tenant that would not come next (it was served more, the policy is FCFS, or it has
    requests of its own queued, which take the capacity anyway) holds nothing back."""
    d, lease = await _owed_a_with_b_waiting(domain, "fcfs" if case == "fcfs" else "vtc")
    used = 10 * SERVICE if case == "not owed" else 3 * SERVICE
    if case == "own queue":
        assert await d.enqueue("a") == ["queued"]
    d.leased.remove(lease)
    released = await d.scripts.release(lease, used, hold_ms=60_000)
    assert released.state == "released" and len(_granted(d, released.grants)) == 1


async def test_a_lower_priority_band_keeps_its_minimum_share(domain: Any) -> None:
    d = await domain({"high": {"priority": 1}, "low": {"priority": 0}}, priority_min_share=0.2)
    await d.enqueue("high", 120)
    await d.enqueue("low", 120)
    served = Counter()
    for _ in range(100):
        served.update(await d.release_next())
    assert 18 <= served["low"] <= 22 and served["high"] == 100 - served["low"]


async def test_a_lower_band_alone_gets_everything(domain: Any) -> None:
    d = await domain({"high": {"priority": 1}, "low": {"priority": 0}})
    assert await d.enqueue("low", 3) == ["granted", "queued", "queued"]
    assert [await d.release_next(), await d.release_next()] == [["low"], ["low"]]


async def test_a_tenant_queued_in_two_bands_leaves_nothing_behind(
    domain: Any, redis_url: str
) -> None:
    d = await domain({"t": {"priority": 1}, "low": {"priority": 0}})
    await d.enqueue("t", 3)  # its own band (the top)
    await d.enqueue("t", 2, band=band_of(0))  # lowered per request
    await d.enqueue("low", 2)
    served = [tenant for _ in range(6) for tenant in await d.release_next()]
    assert sorted(served) == ["low", "low", "t", "t", "t", "t"]
    while d.leased:
        await d.release_next()
    assert await inflight_state(GatewayRedis.from_url(redis_url)) == {}


# ------------------------------------------------------------------- through the gateway


async def shares(
    gateway: RunningGateway, tenants: dict[str, float], measured: int
) -> dict[str, float]:
    """Keep every tenant backlogged; the service each received over ``measured`` requests."""
    service: Counter[str] = Counter()
    done = asyncio.Event()
    completed = 0

    async def worker(tenant: str) -> None:
        nonlocal completed
        client = gateway.client(f"key-{tenant}")
        while not done.is_set():
            reply = await client.chat.completions.create(
                model="llama-3-8b",
                messages=[{"role": "user", "content": "Tell me about queues."}],
                max_tokens=40,
                extra_body={"ignore_eos": True},
            )
            if done.is_set():
                return
            service[tenant] += reply.usage.prompt_tokens + 2 * reply.usage.completion_tokens
            completed += 1
            if completed >= measured:
                done.set()

    workers = [asyncio.create_task(worker(t)) for t in tenants for _ in range(6)]
    await asyncio.gather(*workers)
    total = sum(service.values())
    return {tenant: service[tenant] / total for tenant in tenants}


@pytest.mark.parametrize("policy", ["vtc", "fcfs"])
async def test_gateway_shares_follow_weights_only_with_vtc(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str, policy: str
) -> None:
    sim = await start_sim(time_scale=50.0)
    config = gateway_config(redis_url, {"interactive": [sim.url]}, admission={"policy": policy})
    config["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 2
    weights = {"w1": 1.0, "w2": 2.0, "w4": 4.0}
    config["tenants"] = {
        t: {"weight": w, "api_keys": [f"key-{t}"], "max_concurrency": 6} for t, w in weights.items()
    }
    gateway = await start_gateway(config)
    got = await shares(gateway, weights, measured=280)
    wanted = {t: w / sum(weights.values()) for t, w in weights.items()}
    close = all(abs(got[t] / wanted[t] - 1) <= 0.05 for t in weights)
    assert close is (policy == "vtc"), got


async def test_queue_full_and_queue_timeout_are_429_with_retry_after(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    sim = await start_sim(time_scale=1.0)
    config = gateway_config(redis_url, {"interactive": [sim.url]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 1
    config["tenants"]["a"].update(max_queued=1, queue_timeout_s=30)
    gateway = await start_gateway(config)
    client = gateway.client()
    long = {"max_tokens": 2000, "extra_body": {"ignore_eos": True}}
    messages = [{"role": "user", "content": "hi"}]
    running = asyncio.create_task(
        client.chat.completions.create(model="llama-3-8b", messages=messages, **long)
    )
    while not (await sim.state())["running"]:
        await asyncio.sleep(0.01)
    waiting = asyncio.create_task(
        client.chat.completions.create(model="llama-3-8b", messages=messages, max_tokens=1)
    )
    redis = GatewayRedis.from_url(redis_url)

    async def queued() -> int:
        return await redis.hlen("fairgate:{adm}:req")

    while not await queued():  # the second request waits
        await asyncio.sleep(0.01)
    with pytest.raises(openai.RateLimitError, match="already waiting") as full:
        await client.chat.completions.create(model="llama-3-8b", messages=messages, max_tokens=1)
    assert full.value.response.headers["retry-after"] == "1"
    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        assert 'fairgate_admission_events{event="grants"} 1.0' in await resp.text()
    waiting.cancel()  # a client leaving the queue frees its place at once
    while await queued():
        await asyncio.sleep(0.01)
    with pytest.raises(openai.RateLimitError, match="waited 0.2 s"):
        await client.chat.completions.with_raw_response.create(
            model="llama-3-8b",
            messages=messages,
            max_tokens=1,
            extra_headers={"X-Fairgate-Queue-Timeout": "0.2"},
        )
    running.cancel()
    await asyncio.gather(running, waiting, return_exceptions=True)
    await redis.aclose()
