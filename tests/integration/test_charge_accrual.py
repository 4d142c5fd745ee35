"""Streamed output charges of one window go to Redis together (admission/accrual.py), each with
the effect of a call of its own; those not sent when their request ends are settled by its
release, never added to a lease that passed on."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from admission.accrual import MOST_PER_CALL
from admission.ticket import Ticket
from fairgate.settings import Settings
from tests.conftest import MakeAdmission, read_until

PREFIX = "fairgate:{adm}:"


def settings_for(redis_url: str, window_s: float, reuse_s: float = 0.0) -> Settings:
    """One backend with room for everything; charges sent every ``window_s``; leases held for
    reuse ``reuse_s`` (0: released at once)."""
    backend = {"url": "http://127.0.0.1:9000", "models": ["m"], "max_concurrency": 1_000}
    room = {"max_concurrency": 1_000, "max_inflight_tokens": 10**9}
    return Settings(
        redis={"url": redis_url},
        pools={"p": {"backends": {"b0": {**backend, "max_inflight_tokens": 10**9}}}},
        tenants={"a": {"api_keys": ["ka"], **room}, "b": {"api_keys": ["kb"], **room}},
        admission={
            "upkeep_interval_s": 30,
            "charge_interval_s": window_s,
            "lease_reuse_s": reuse_s,
        },
    )


def ticket(tenant: str, tokens: int = 100) -> Ticket:
    return Ticket(uuid.uuid4().hex, tenant, tokens, float(tokens), "p", "", 30.0)


async def counters(redis: Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in (await redis.hgetall(PREFIX + "vtc")).items()}


async def script_calls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_windows_charges_go_as_few_calls_and_each_reaches_its_tenant(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    admission = await admission_for(settings_for(redis_url, window_s=0.2))
    leases = [await admission.acquire(ticket(t)) for t in ("a",) * 300 + ("b",) * 20]
    before, calls_before = await counters(redis), await script_calls(redis)

    for lease in leases:  # in one turn: every charge joins the same window
        lease.charge_soon(1.5)
        lease.charge_soon(2.5)
    expected = {"a": before["a"] + 300 * 4.0, "b": before["b"] + 20 * 4.0}
    after = await read_until(lambda: counters(redis), lambda c: c.get("b") == expected["b"])

    assert {t: after[t] for t in ("a", "b")} == expected
    # 320 requests' charges: two calls of at most MOST_PER_CALL, not 640 calls
    assert MOST_PER_CALL < 320 <= 2 * MOST_PER_CALL
    assert await script_calls(redis) - calls_before == 2
    for lease in leases:
        await lease.release(None)


async def test_charges_not_sent_when_a_request_ends_are_settled_by_its_release(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    """The lease is held for the next request of its flow: a charge of the request that
    ended, sent after its release, would be added to the lease the next request now runs on."""
    admission = await admission_for(settings_for(redis_url, window_s=0.1, reuse_s=1.0))
    lease = await admission.acquire(ticket("a", 100))
    lease.charge_soon(50.0)  # due at the window's end...
    await lease.release(120.0, reusable=True)  # ...but the request ends first: 120 in all
    nxt = await admission.acquire(ticket("a", 100))
    assert nxt.request_id == lease.request_id  # the next request took the held lease

    # the reuse, recorded in the background, settles the first at 120 and charges the next 100
    settled = await read_until(lambda: counters(redis), lambda c: c.get("a") == 220.0)
    assert settled["a"] == 220.0
    await asyncio.sleep(0.3)  # three windows: the first request's 50 is never sent
    assert (await counters(redis))["a"] == 220.0
    await nxt.release(None)


async def test_a_release_that_keeps_what_was_charged_sends_what_was_not_yet(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    admission = await admission_for(settings_for(redis_url, window_s=30.0))
    lease = await admission.acquire(ticket("b", 100))
    lease.charge_soon(30.0)  # the window is long: still unsent at the release
    await lease.release(None)  # the service used is not known: keep what was charged
    assert (await counters(redis))["b"] == 130.0
