"""The admission domain in Redis: key names, priority bands, and the configuration the scripts read.

The scripts read tenants' weights and limits and backends' budgets from Redis rather than from
their arguments, so every replica dispatches by the same numbers and a change made in one
place (the admin API) takes effect everywhere at the next decision. Each replica writes the
configuration of its settings file at start-up.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from fairgate.settings import Settings

#: Band ids sort so that a higher priority comes first when band counters tie.
_BAND_OFFSET = 500


def domain_prefix(settings: Settings) -> str:
    """The key prefix of the admission domain; the braces are its Redis Cluster hash tag."""
    return f"{settings.redis.key_prefix}:{{adm}}:"


def grants_channel(prefix: str, owner: str) -> str:
    """The pub/sub channel on which one replica hears about grants to its waiters."""
    return f"{prefix}grants:{owner}"


def contended_channel(prefix: str) -> str:
    """The pub/sub channel on which every replica hears that requests started to wait.

    Replicas then stop reusing leases at once (see :mod:`admission.reuse`): fair order
    decides who runs next.
    """
    return f"{prefix}contended"


def band_of(priority: int) -> str:
    return f"{_BAND_OFFSET - priority:03d}"


def band_weights(settings: Settings) -> dict[str, float]:
    """The top band weighs 1; each lower band enough to keep ``priority_min_share``."""
    priorities = {t.priority for t in settings.tenants.values()} or {0}
    top = max(priorities)
    share = settings.admission.priority_min_share
    low = share / (1 - share)
    return {band_of(p): 1.0 if p == top else low for p in range(min(priorities), top + 1)}


async def publish_config(redis: Redis, prefix: str, settings: Settings) -> None:
    """Write tenants, backends, pools, bands and the policy for the scripts (atomically)."""
    tenants = {
        tenant_id: json.dumps(
            {
                "w": t.weight,
                "mc": t.max_concurrency,
                "mt": t.max_inflight_tokens,
                "mq": t.max_queued,
                "band": band_of(t.priority),
            }
        )
        for tenant_id, t in settings.tenants.items()
    }
    backends = {
        name: json.dumps(
            {"pool": pool, "mc": b.max_concurrency, "mt": b.max_inflight_tokens}
            | ({"mp": b.max_prefill_tokens} if b.max_prefill_tokens else {})
        )
        for name, (pool, b) in settings.backends().items()
    }
    pools = {name: json.dumps(list(pool.backends)) for name, pool in settings.pools.items()}
    lenders: dict[str, list[list[object]]] = {}
    for name, pool in settings.pools.items():
        for borrower, cap in pool.lend_to.items():
            lenders.setdefault(borrower, []).append([name, cap])
    lending = {borrower: json.dumps(pairs) for borrower, pairs in lenders.items()}
    async with redis.pipeline(transaction=True) as pipe:
        for key, mapping in (
            ("cfg:tenants", tenants),
            ("cfg:backends", backends),
            ("cfg:pools", pools),
            ("cfg:lend", lending),
            ("cfg:bands", band_weights(settings)),
        ):
            pipe.delete(prefix + key)
            if mapping:
                pipe.hset(prefix + key, mapping=mapping)
        pipe.set(prefix + "cfg:policy", settings.admission.policy)
        pipe.set(prefix + "cfg:grace", round(settings.admission.return_grace_s * 1000))
        await pipe.execute()


async def set_drained(redis: Redis, prefix: str, backend: str, drained: bool) -> None:
    """Drain a backend (no new work on any replica; what runs finishes) or bring it back.

    Kept apart from health (``down``), which probes set and clear on their own: a drain holds
    until an operator lifts it.
    """
    if drained:
        await redis.hset(prefix + "drained", backend, 1)
    else:
        await redis.hdel(prefix + "drained", backend)


async def backend_load(redis: Redis, prefix: str, backend: str) -> tuple[int, int]:
    """Requests and estimated tokens a backend has in flight, across every replica."""
    running, tokens = await redis.hmget(prefix + "bload", [f"{backend}:r", f"{backend}:t"])
    return int(running or 0), int(tokens or 0)
