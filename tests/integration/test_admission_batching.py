"""Releases, lease reuses and charges of one event-loop turn go to Redis as one script call
(admission/batching.py, lua/batch.lua), each with the effect and the answer of a call of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from admission.domain import publish_config
from admission.policy import AdmissionPolicy
from admission.scripts import AdmissionScripts, Decision
from admission.ticket import Ticket
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import GatewayRedis
from fairgate.settings import Settings

TTL_MS, MAX_GRANTS = 10_000, 32


def _settings(redis_url: str, prefix: str) -> Settings:
    """Pool ``p`` with one backend of 3 requests; tenants a (weight 1) and b (weight 2)."""
    backend = {"url": "http://127.0.0.1:9", "models": ["m"], "max_concurrency": 3}
    return Settings(
        redis={"url": redis_url, "key_prefix": prefix},
        pools={"p": {"backends": {"b": {**backend, "max_inflight_tokens": 10_000}}}},
        tenants={"a": {"weight": 1}, "b": {"weight": 2}},
    )


async def _domain(redis: GatewayRedis, redis_url: str, prefix: str) -> tuple[AdmissionScripts, str]:
    settings = _settings(redis_url, prefix)
    keys = AdmissionKeys.of(prefix)
    await publish_config(redis, keys, settings)
    return AdmissionScripts(redis, keys.prefix, TTL_MS, MAX_GRANTS, AdmissionPolicy()), keys.prefix


def _ticket(request_id: str, tenant: str, tokens: int) -> Ticket:
    return Ticket(request_id, tenant, tokens, float(tokens), "p", "", 60.0)


async def _setup(scripts: AdmissionScripts) -> None:
    """Three requests run (the backend's budget), two wait."""
    for request_id, tenant, tokens in (
        ("r1", "a", 10), ("r2", "b", 20), ("r3", "a", 30), ("w1", "b", 40), ("w2", "a", 50)
    ):  # fmt: skip
        await scripts.enqueue(_ticket(request_id, tenant, tokens), "owner")


def _operations(scripts: AdmissionScripts) -> list[Any]:
    """What a replica might do in one turn: charges, a reuse, releases (one of a lease that is
    not there), each a coroutine to run."""
    return [
        scripts.charge("r2", 7.0),
        scripts.reuse("r3", 45.0, _ticket("r3-next", "a", 25)),
        scripts.release("r1", 12.0),
        scripts.charge("gone", 1.0),
        scripts.release("r2", 33.0),
        scripts.release("never-granted", None),
    ]


async def _state(redis: GatewayRedis, prefix: str) -> dict[str, Any]:
    """What the operations change, with nothing that depends on the clock."""
    state: dict[str, Any] = {}
    for name in ("tload", "bload", "vtc", "served", "granted", "queued"):
        state[name] = await redis.hgetall(prefix + name)
    state["leases"] = sorted(await redis.hkeys(prefix + "lease"))
    state["fifo"] = await redis.zrange(prefix + "fifo", 0, -1)
    return state


def _evalsha_calls(stats: dict[str, Any]) -> int:
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_one_turns_operations_are_one_call_with_the_answers_of_one_call_each(
    redis_url: str,
) -> None:
    redis = GatewayRedis.from_url(redis_url)
    one_each, one_each_prefix = await _domain(redis, redis_url, "one-each")
    batched, batched_prefix = await _domain(redis, redis_url, "batched")
    await _setup(one_each)
    await _setup(batched)

    answers_one_each: list[Decision] = []
    for operation in _operations(one_each):  # awaited one at a time: a call each
        answers_one_each.append(await operation)
    await batched.charge("r2", 0.0)  # the batch script is loaded: EVALSHA from here on
    await asyncio.gather(batched.release("x", None), batched.release("y", None))
    before = _evalsha_calls(await redis.info("commandstats"))
    answers_batched = await asyncio.gather(*_operations(batched))  # all in one turn
    calls = _evalsha_calls(await redis.info("commandstats")) - before

    assert calls == 1
    assert answers_batched == answers_one_each
    assert [a.state for a in answers_batched] == [
        "charged", "reused", "released", "gone", "released", "gone"
    ]  # fmt: skip
    assert answers_batched[2].grants == [("w1", "b")]  # the releases dispatched the waiters
    assert answers_batched[4].grants == [("w2", "b")]
    assert await _state(redis, batched_prefix) == await _state(redis, one_each_prefix)
    await redis.aclose()


async def test_an_operation_that_fails_fails_alone(redis_url: str) -> None:
    """A script error in one operation reaches its caller only; the others take effect."""
    redis = GatewayRedis.from_url(redis_url)
    scripts, prefix = await _domain(redis, redis_url, "failing")
    await _setup(scripts)
    broken = scripts.charge("r2", "not a number")  # type: ignore[arg-type]
    answers = await asyncio.gather(
        scripts.release("r1", 12.0), broken, scripts.release("r3", 30.0), return_exceptions=True
    )
    assert isinstance(answers[1], ResponseError)
    assert [getattr(a, "state", None) for a in (answers[0], answers[2])] == ["released"] * 2
    assert sorted(await redis.hkeys(prefix + "lease")) == [b"r2", b"w1", b"w2"]
    await redis.aclose()


@pytest.mark.parametrize("leave", ["before_sending", "while_sent"])
async def test_a_caller_that_leaves_does_not_strand_the_others(redis_url: str, leave: str) -> None:
    """The first call of a turn sends the batch; if it is cancelled, the others still get
    their answers (before it was sent) or hear that the outcome is unknown (while in flight)."""
    redis = GatewayRedis.from_url(redis_url)
    scripts, prefix = await _domain(redis, redis_url, f"leaving-{leave}")
    await _setup(scripts)
    first = asyncio.ensure_future(scripts.release("r1", 12.0))
    others = [asyncio.ensure_future(scripts.release(i, 1.0)) for i in ("r2", "r3")]
    await asyncio.sleep(0)  # every call queued; the first waits a turn for the others
    if leave == "while_sent":
        await asyncio.sleep(0)  # the batch is sent
    first.cancel()
    answers = await asyncio.gather(*others, return_exceptions=True)
    if leave == "before_sending":
        assert [getattr(a, "state", None) for a in answers] == ["released", "released"]
        assert sorted(await redis.hkeys(prefix + "lease")) == [b"w1", b"w2"]
    else:
        assert all(isinstance(a, RedisConnectionError) for a in answers), answers
    await redis.aclose()
