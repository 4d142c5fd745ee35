"""The admission domain in Redis: priority bands, and the configuration the scripts read.

The scripts read tenants' weights and limits and backends' budgets from Redis rather than from
their arguments, so every replica dispatches by the same numbers, and a change written there
takes effect everywhere at the next decision. Each replica writes the configuration of its
settings file at start-up (an admin API that changes it at run time is issue 14).
"""

from __future__ import annotations

import json

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from fairgate.keys import AdmissionKeys
from fairgate.settings import Settings

#: Band ids sort so that a higher priority comes first when band counters tie.
_BAND_OFFSET = 500


def band_of(priority: int) -> str:
    return f"{_BAND_OFFSET - priority:03d}"


def band_weights(settings: Settings) -> dict[str, float]:
    """The top band weighs 1; each lower band enough to keep ``priority_min_share``."""
    priorities = {t.priority for t in settings.tenants.values()} or {0}
    top = max(priorities)
    share = settings.admission.priority_min_share
    low = share / (1 - share)
    return {band_of(p): 1.0 if p == top else low for p in range(min(priorities), top + 1)}


async def publish_config(redis: Redis, keys: AdmissionKeys, settings: Settings) -> None:
    """Write tenants, backends, pools, bands and the return grace for the scripts (atomically).

    The policy is not shared state: each replica composes its scripts from its own
    configured policy (:mod:`admission.policy`)."""
    tenants: dict[FieldT, EncodableT] = {
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
    backends: dict[FieldT, EncodableT] = {
        name: json.dumps(
            {"pool": pool, "mc": b.max_concurrency, "mt": b.max_inflight_tokens}
            | ({"mp": b.max_prefill_tokens} if b.max_prefill_tokens else {})
        )
        for name, (pool, b) in settings.backends().items()
    }
    pools: dict[FieldT, EncodableT] = {
        name: json.dumps(list(pool.backends)) for name, pool in settings.pools.items()
    }
    lenders: dict[str, list[list[object]]] = {}
    for name, pool in settings.pools.items():
        for borrower, cap in pool.lend_to.items():
            lenders.setdefault(borrower, []).append([name, cap])
    lending: dict[FieldT, EncodableT] = {b: json.dumps(pairs) for b, pairs in lenders.items()}
    bands: dict[FieldT, EncodableT] = dict(band_weights(settings).items())
    async with redis.pipeline(transaction=True) as pipe:
        for table, mapping in (
            ("tenants", tenants),
            ("backends", backends),
            ("pools", pools),
            ("lend", lending),
            ("bands", bands),
        ):
            pipe.delete(keys.config(table))
            if mapping:
                pipe.hset(keys.config(table), mapping=mapping)
        pipe.set(keys.config("grace"), round(settings.admission.return_grace_s * 1000))
        await pipe.execute()


async def set_drained(redis: Redis, keys: AdmissionKeys, backend: str, drained: bool) -> None:
    """Drain a backend (no new work on any replica; what runs finishes) or bring it back.

    Kept apart from health (``down``), which probes set and clear on their own: a drain holds
    until an operator lifts it.
    """
    if drained:
        await redis.hset(keys.drained, backend, 1)
    else:
        await redis.hdel(keys.drained, backend)


async def backend_load(redis: Redis, keys: AdmissionKeys, backend: str) -> tuple[int, int]:
    """Requests and estimated tokens a backend has in flight, across every replica."""
    running, tokens = await redis.hmget(keys.backend_load, [f"{backend}:r", f"{backend}:t"])
    return int(running or 0), int(tokens or 0)
