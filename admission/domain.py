"""The admission domain in Redis: priority bands, and the configuration the scripts read.

The scripts read tenants' weights and limits and backends' budgets from Redis rather than from
their arguments, so every replica dispatches by the same numbers, and a change written there
takes effect everywhere at the next decision. Each replica writes the backends and pools of
its settings file at start-up; tenants come from the tenant directory (:mod:`tenants`), whose
every change rewrites their entries and the bands in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from redis.typing import EncodableT, FieldT

from fairgate.keys import AdmissionKeys
from fairgate.redis_client import AnyPipeline, AnyRedis
from fairgate.settings import Settings, TenantSettings

#: Band ids sort so that a higher priority comes first when band counters tie.
_BAND_OFFSET = 500


def band_of(priority: int) -> str:
    return f"{_BAND_OFFSET - priority:03d}"


def priority_of(band: str) -> int:
    """The priority of a band id (:func:`band_of`'s inverse)."""
    return _BAND_OFFSET - int(band)


def band_weights(priorities: Iterable[int], min_share: float) -> dict[str, float]:
    """The top band weighs 1; each lower band enough to keep ``min_share`` (the admission
    setting ``priority_min_share``)."""
    present = set(priorities) or {0}
    top = max(present)
    low = min_share / (1 - min_share)
    return {band_of(p): 1.0 if p == top else low for p in range(min(present), top + 1)}


def tenant_entry(tenant: TenantSettings) -> str:
    """What the scripts read of a tenant (``cfg:tenants``): weight, limits and band."""
    return json.dumps(
        {
            "w": tenant.weight,
            "mc": tenant.max_concurrency,
            "mt": tenant.max_inflight_tokens,
            "mq": tenant.max_queued,
            "band": band_of(tenant.priority),
        }
    )


def write_tenants(
    pipe: AnyPipeline,
    keys: AdmissionKeys,
    changed: Mapping[str, TenantSettings],
    every: Iterable[TenantSettings],
    min_share: float,
) -> None:
    """Queue on ``pipe`` the scripts' entries of ``changed`` tenants and the bands of
    ``every`` tenant. A removed tenant's entry stays: requests it still has in flight are
    released by it, and the entry is harmless once they are gone."""
    if changed:
        entries: dict[FieldT, EncodableT] = {t: tenant_entry(c) for t, c in changed.items()}
        pipe.hset(keys.config("tenants"), mapping=entries)
    bands: dict[FieldT, EncodableT] = dict(
        band_weights((t.priority for t in every), min_share).items()
    )
    pipe.delete(keys.config("bands"))
    pipe.hset(keys.config("bands"), mapping=bands)


async def publish_config(
    redis: AnyRedis,
    keys: AdmissionKeys,
    settings: Settings,
    tenants: Mapping[str, TenantSettings] | None = None,
) -> None:
    """Write tenants, backends, pools, bands and the return grace for the scripts (atomically).

    ``tenants`` are the tenant directory's (not necessarily the settings file's). The policy
    is not shared state: each replica composes its scripts from its own configured policy
    (:mod:`admission.policy`)."""
    tenants = settings.tenants if tenants is None else tenants
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
    async with redis.pipeline(transaction=True) as pipe:
        for table, mapping in (("backends", backends), ("pools", pools), ("lend", lending)):
            pipe.delete(keys.config(table))
            if mapping:
                pipe.hset(keys.config(table), mapping=mapping)
        write_tenants(pipe, keys, tenants, tenants.values(), settings.admission.priority_min_share)
        pipe.set(keys.config("grace"), round(settings.admission.return_grace_s * 1000))
        await pipe.execute()


async def set_drained(redis: AnyRedis, keys: AdmissionKeys, backend: str, drained: bool) -> None:
    """Drain a backend (no new work on any replica; what runs finishes) or bring it back.

    Kept apart from health (``down``), which probes set and clear on their own: a drain holds
    until an operator lifts it.
    """
    if drained:
        await redis.hset(keys.drained, backend, 1)
    else:
        await redis.hdel(keys.drained, backend)


async def backend_load(redis: AnyRedis, keys: AdmissionKeys, backend: str) -> tuple[int, int]:
    """Requests and estimated tokens a backend has in flight, across every replica."""
    running, tokens = await redis.hmget(keys.backend_load, [f"{backend}:r", f"{backend}:t"])
    return int(running or 0), int(tokens or 0)
