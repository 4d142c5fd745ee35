"""Quota credits: a lease held for reuse takes its flow's next quota charge ahead, so that a
request with quotas runs at once on it instead of waiting for a script call of its own.

What must hold: the request runs with no Redis write on its path; quotas end exactly where the
requests' own charges and usage put them (the credit spent, or given back when nobody spent
it); a credit is taken only while the quotas have room for twice as much; a request of other
limits (a model with its own) does not spend it. Real parts: the admission client and its Lua
scripts on a real ``redis-server``. Windows here refill slower than the tests run (3 requests
a minute: one every 20 s; tokens per day), so what is left is exact.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis

from admission.quota import Charge, Quotas, QuotaState
from admission.ticket import Ticket
from fairgate.redis_client import GatewayRedis
from fairgate.settings import Settings
from tests.conftest import MakeAdmission, read_until

DAY_TOKENS = 10_000


def settings_for(redis_url: str, quotas: dict[str, Any], hold_s: float = 1.0) -> Settings:
    """Tenant ``t`` with ``quotas`` on one backend serving ``m`` and ``m2``; leases held for
    reuse ``hold_s`` (long: a credit is spent or given back by the test, not by the clock)."""
    return Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    "b0": {
                        "url": "http://127.0.0.1:9000",
                        "models": ["m", "m2"],
                        "max_concurrency": 10,
                        "max_inflight_tokens": 100_000,
                    }
                }
            }
        },
        tenants={
            "t": {
                "api_keys": ["k"],
                "max_concurrency": 100,
                "max_inflight_tokens": 10**9,
                "quotas": quotas,
            }
        },
        admission={"upkeep_interval_s": 30, "lease_reuse_s": hold_s},
    )


class Tenant:
    """Tickets of tenant ``t`` with their quota asks, and where its quotas stand in Redis."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self._config = settings.tenants["t"].quotas
        self._quotas = Quotas(GatewayRedis.from_url(redis_url), settings)
        self.charges: list[Charge] = []

    def ticket(self, tokens: int, model: str = "m") -> Ticket:
        ask = self._quotas.ask("t", self._config, model, tokens)
        return Ticket(uuid.uuid4().hex, "t", tokens, float(tokens), "p", "", 30.0, quota=ask)

    async def left(self) -> dict[str, int]:
        """What is left of each limit, by its field (``rpm``, ``tpd``, ``m:m2:tpd``)."""
        state = await self._quotas.peek("t", self._config)
        assert isinstance(state, QuotaState)
        return {s.limit.field: s.remaining for s in state.limits}

    async def left_once(self, expected: dict[str, int]) -> dict[str, int]:
        """What is left once it is ``expected`` (script calls run in the background), or what
        is left after a few seconds."""
        return await read_until(self.left, lambda left: left == expected)


async def test_a_request_with_quotas_runs_on_the_credit_with_no_redis_write_on_its_path(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    settings = settings_for(redis_url, {"requests_per_minute": 3, "tokens_per_day": DAY_TOKENS})
    tenant = Tenant(settings, redis_url)
    admission = await admission_for(settings)
    first = await admission.acquire(tenant.ticket(100), tenant.charges.append)
    await first.release(100.0, reusable=True, correction=tenant.charges[0].correction(60))
    # held for reuse: the credit, one request and the lease's 100 tokens, is taken ahead
    # (the first's correction rides with the lease until it passes on)
    assert await tenant.left_once({"rpm": 1, "tpd": DAY_TOKENS - 200}) == {
        "rpm": 1,
        "tpd": DAY_TOKENS - 200,
    }
    await redis.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # no script runs now
    try:
        second = await asyncio.wait_for(
            admission.acquire(tenant.ticket(80), tenant.charges.append), 10
        )
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    assert second.request_id == first.request_id  # the same lease, taken over at once
    charge = tenant.charges[1]
    assert charge.tokens == 80
    # its headers count its own 80 tokens, not the credit's 100
    assert {s.limit.field: s.remaining for s in charge.state.limits} == {
        "rpm": 1,
        "tpd": DAY_TOKENS - 100 - 80,
    }
    await second.release(80.0, reusable=False, correction=charge.correction(50))
    # two requests, and exactly their usage: the credit spent, nothing more held
    expected = {"rpm": 1, "tpd": DAY_TOKENS - 60 - 50}
    assert await tenant.left_once(expected) == expected


async def test_a_credit_nobody_spends_goes_back_with_the_lease(
    redis_url: str, admission_for: MakeAdmission
) -> None:
    settings = settings_for(
        redis_url, {"requests_per_minute": 3, "tokens_per_day": DAY_TOKENS}, hold_s=0.05
    )
    tenant = Tenant(settings, redis_url)
    admission = await admission_for(settings)
    lease = await admission.acquire(tenant.ticket(100), tenant.charges.append)
    await lease.release(100.0, reusable=True, correction=tenant.charges[0].correction(60))
    # the hold ends with nobody to take the lease: released, its credit given back
    expected = {"rpm": 2, "tpd": DAY_TOKENS - 60}
    assert await tenant.left_once(expected) == expected
    assert await tenant.left() == expected  # and nothing changes after


async def test_no_credit_is_taken_without_room_for_twice_as_much(
    redis_url: str, redis: Redis, admission_for: MakeAdmission
) -> None:
    """Taken early, a credit must not refuse a request that comes another way and would have
    fitted: with 3 requests a minute, the first's lease takes a credit (2 left), the second's
    does not (1 left): the third is charged in its own reuse call, and the fourth refused."""
    settings = settings_for(redis_url, {"requests_per_minute": 3})
    tenant = Tenant(settings, redis_url)
    admission = await admission_for(settings)
    lease = await admission.acquire(tenant.ticket(10), tenant.charges.append)
    await lease.release(10.0, reusable=True)
    assert await tenant.left_once({"rpm": 1}) == {"rpm": 1}  # the first's credit
    lease = await admission.acquire(tenant.ticket(10), tenant.charges.append)
    await lease.release(10.0, reusable=True)
    await asyncio.sleep(0.2)  # time for a credit the quota should refuse
    assert await tenant.left() == {"rpm": 1}  # none taken: room for one request only
    lease = await admission.acquire(tenant.ticket(10), tenant.charges.append)
    assert [c.state.limits[0].remaining for c in tenant.charges] == [2, 1, 0]
    await lease.release(10.0, reusable=True)
    refused = None
    try:
        await admission.acquire(tenant.ticket(10), tenant.charges.append)
    except Exception as exc:  # noqa: BLE001 - the refusal is what is checked
        refused = exc
    assert type(refused).__name__ == "QuotaExceeded"
    assert await redis.hget("fairgate:{adm}:stats", "reused") == b"2"


async def test_a_request_of_other_limits_does_not_spend_the_credit(
    redis_url: str, admission_for: MakeAdmission
) -> None:
    """A model with a quota of its own asks more limits than the credit holds: its request is
    charged in its reuse call, and the credit given back in the same step."""
    quotas = {"requests_per_minute": 3, "models": {"m2": {"tokens_per_day": DAY_TOKENS}}}
    settings = settings_for(redis_url, quotas)
    tenant = Tenant(settings, redis_url)
    admission = await admission_for(settings)
    lease = await admission.acquire(tenant.ticket(100), tenant.charges.append)
    await lease.release(100.0, reusable=True)
    expected = {"rpm": 1, "m:m2:tpd": DAY_TOKENS}
    assert await tenant.left_once(expected) == expected  # the credit: rpm only
    other = await admission.acquire(tenant.ticket(90, "m2"), tenant.charges.append)
    assert other.request_id == lease.request_id
    assert {s.limit.field: s.remaining for s in tenant.charges[1].state.limits} == {
        "rpm": 1,  # charged in its reuse call, after the credit went back
        "m:m2:tpd": DAY_TOKENS - 90,
    }
    await other.release(90.0, reusable=False, correction=tenant.charges[1].correction(70))
    expected = {"rpm": 1, "m:m2:tpd": DAY_TOKENS - 70}
    assert await tenant.left_once(expected) == expected
