"""Lease reuse: while nothing waits, a finished lease passes to the next request of its flow.

The budgets must hold exactly as if the lease had been released and granted again (the scripts'
side is also driven by the property test's ``reuse`` rule); these tests pin down the replica's
side: when it holds a lease, who may take it, and that it lets go as soon as anyone waits.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from admission import controller
from admission.ticket import Ticket
from fairgate.settings import Settings
from tests.conftest import (
    MakeAdmission,
    StartGateway,
    StartSim,
    gateway_config,
    inflight_state,
    read_until,
)

PREFIX = "fairgate:{adm}:"
MessageList = list[ChatCompletionMessageParam]


def settings_for(redis_url: str, max_tokens: int = 100_000, hold_s: float = 1.0) -> Settings:
    """One backend; leases held for reuse for ``hold_s`` (long: nothing here depends on timing)."""
    return Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    "b0": {
                        "url": "http://127.0.0.1:9000",
                        "models": ["m"],
                        "max_concurrency": 10,
                        "max_inflight_tokens": max_tokens,
                    }
                }
            }
        },
        tenants={"t": {"api_keys": ["k"], "max_concurrency": 100, "max_inflight_tokens": 10**9}},
        admission={"upkeep_interval_s": 30, "lease_reuse_s": hold_s},
    )


def ticket(tokens: int = 100) -> Ticket:
    return Ticket(uuid.uuid4().hex, "t", tokens, float(tokens), "p", "", 30.0)


async def stat(redis: Redis, name: str, expected: int) -> int:
    """The admission stat ``name`` once it reaches ``expected`` (script calls run in the
    background), or its value after a few seconds."""

    async def read() -> int:
        return int(await redis.hget(PREFIX + "stats", name) or 0)

    return await read_until(read, lambda value: value >= expected)


async def test_the_next_request_of_a_flow_takes_the_finished_lease(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    admission = await admission_for(settings_for(redis_url))
    first = await admission.acquire(ticket(100))
    await first.release(150.0, reusable=True)
    assert await redis.hget(PREFIX + "tload", "t:r") == b"1"  # held, not released
    second = await admission.acquire(ticket(80))
    assert second.request_id == first.request_id  # the same lease, no new grant
    assert await stat(redis, "reused", 1) == 1
    assert await stat(redis, "grants", 2) == 2  # still one grant per request admitted
    # the finished request's 150 settled, the next one's 80 charged at its "grant"
    assert float(await redis.hget(PREFIX + "vtc", "t")) == 150.0 + 80.0
    assert await redis.hmget(PREFIX + "tload", "t:r", "t:t") == [b"1", b"80"]
    await second.release(None)  # not reusable: released at once
    assert await inflight_state(redis) == {}


async def test_a_bigger_request_gets_a_lease_of_its_own(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    admission = await admission_for(settings_for(redis_url))
    first = await admission.acquire(ticket(100))
    await first.release(None, reusable=True)
    bigger = await admission.acquire(ticket(101))  # more than the held lease holds
    assert bigger.request_id != first.request_id
    assert await redis.hmget(PREFIX + "tload", "t:r", "t:t") == [b"2", b"201"]
    await bigger.release(None)
    assert await stat(redis, "reused", 0) == 0


async def test_a_failed_request_releases_its_lease(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    admission = await admission_for(settings_for(redis_url))
    first = await admission.acquire(ticket(100))
    await first.release(None)  # reusable=False: it failed, or its client left
    assert await inflight_state(redis) == {}
    second = await admission.acquire(ticket(100))
    assert second.request_id != first.request_id
    await second.release(None)


async def test_no_reuse_while_too_many_reuse_calls_are_in_flight(
    redis_url: str, redis: Redis, admission_for: MakeAdmission, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound, a request asks Redis (and waits for it) instead of taking a held lease."""
    monkeypatch.setattr(controller, "MAX_REUSES_IN_FLIGHT", 0)
    admission = await admission_for(settings_for(redis_url))
    first = await admission.acquire(ticket(100))
    await first.release(None, reusable=True)
    second = await admission.acquire(ticket(100))
    assert second.request_id != first.request_id
    await second.release(None)
    assert await stat(redis, "reused", 0) == 0


async def test_a_lease_nobody_takes_goes_back(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    admission = await admission_for(settings_for(redis_url, hold_s=0.05))
    lease = await admission.acquire(ticket(100))
    await lease.release(10.0, reusable=True)
    for _ in range(200):  # released by its timer, with the service it used
        if not await inflight_state(redis):
            break
        await asyncio.sleep(0.02)
    assert await inflight_state(redis) == {}
    # settled with the service it used: the 90 charged beyond its usage are returned
    assert float(await redis.hget(PREFIX + "vtc", "t")) == 10.0


async def test_no_lease_is_held_while_a_request_waits(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    """The waiter is granted the capacity the finished request frees: fair order decides."""
    admission = await admission_for(settings_for(redis_url, max_tokens=100))
    first = await admission.acquire(ticket(100))
    waiting = asyncio.ensure_future(admission.acquire(ticket(100)))
    while not await redis.exists(PREFIX + "bandlog"):  # queued: the token budget is full
        await asyncio.sleep(0.01)
    await first.release(100.0, reusable=True)
    second = await asyncio.wait_for(waiting, 10)
    assert second.request_id != first.request_id
    assert await stat(redis, "reused", 0) == 0
    await second.release(None)


async def test_a_replica_holding_a_lease_lets_go_as_soon_as_another_has_a_request_waiting(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    """Replica A holds a lease (here for an hour); B's request, which waits for it, is granted
    at once: the first request to wait is announced to every replica, which lets go."""
    a = await admission_for(settings_for(redis_url, max_tokens=100))
    b = await admission_for(settings_for(redis_url, max_tokens=100))
    a._shelf.hold_s = 3600.0  # noqa: SLF001 - nothing but the announcement can release it
    first = await a.acquire(ticket(100))
    await first.release(None, reusable=True)
    assert await redis.hget(PREFIX + "tload", "t:r") == b"1"  # held by A
    granted = await asyncio.wait_for(b.acquire(ticket(100)), 10)
    assert granted.request_id != first.request_id
    waiting = asyncio.ensure_future(a.acquire(ticket(100)))  # no reuse: A asks, and waits
    await granted.release(None)
    again = await asyncio.wait_for(waiting, 10)
    assert again.request_id != first.request_id
    await again.release(None)


async def test_sequential_requests_through_the_gateway_reuse_one_lease(
    redis_url: str, redis: Redis, start_sim: StartSim, start_gateway: StartGateway
) -> None:
    sim = await start_sim()
    config = gateway_config(redis_url, {"chat": [sim.url]}, admission={"lease_reuse_s": 1.0})
    gateway = await start_gateway(config)
    client = gateway.client()
    messages: MessageList = [{"role": "user", "content": "Hello there."}]
    for _ in range(5):
        reply = await client.chat.completions.create(
            model="llama-3-8b", messages=messages, max_tokens=4
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert await stat(redis, "reused", 4) == 4  # one lease served all five
    assert await stat(redis, "grants", 5) == 5


async def test_admission_loads_its_scripts_before_the_first_request(
    admission_for: MakeAdmission, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url)
    await redis.script_flush()
    admission = await admission_for(settings_for(redis_url))
    scripts = admission.scripts
    shas = [
        s.sha
        for s in (scripts._enqueue, scripts._release, scripts._charge, scripts._reuse)
        + (scripts._renew, scripts._cancel, scripts._tick, scripts._engine)
    ]
    assert await redis.script_exists(*shas) == [True] * len(shas)
    await redis.aclose()


async def test_a_charge_that_reaches_redis_after_its_release_is_no_reclaim(
    admission_for: MakeAdmission, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The release of a request may overtake its last charge (both in flight at once, the
    charge resent whole after a NOSCRIPT): its lease is gone then, but nobody reclaimed it."""
    admission = await admission_for(settings_for(redis_url, hold_s=0))
    redis = Redis.from_url(redis_url)
    await redis.script_flush()  # as on a Redis restarted since: the charge's first try fails
    lease = await admission.acquire(ticket())  # (enqueue and release are sent whole again)
    await lease.release(None)
    lease = await admission.acquire(ticket())
    charging = asyncio.ensure_future(lease.charge(5.0))
    await asyncio.sleep(0)  # the charge leaves first ...
    await lease.release(None)  # ... and the release, known to Redis now, overtakes its resend
    await charging

    assert "reclaimed" not in caplog.text
    assert await inflight_state(redis) == {}
    await redis.aclose()
