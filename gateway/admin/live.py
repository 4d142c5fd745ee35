"""``/admin/v1/state`` and the drain actions: what admission holds now, and taking a backend
out of dispatch (and back) on every replica.

The state is one consistent read of admission's shared state in Redis (:mod:`admission.live`),
shown with the tenant directory's tenants and this replica's view of each backend (its engine's
last reported load, an ejection it decided). A drain goes through
:class:`backends.state.BackendStates`, the one owner of backend state, as ``fairgate drain``
does: every replica's dispatch reads it at its next decision.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web
from redis.exceptions import RedisError

from admission import live
from backends.engine_load import EngineLoad
from fairgate.errors import GatewayError, admission_unavailable, not_found
from gateway.admin.api import ADMIN, Param, as_json
from gateway.admin.live_models import (
    BackendState,
    Engine,
    LiveState,
    Load,
    PoolState,
    TenantPool,
    TenantState,
)
from gateway.state import Gateway

BACKEND = Param("backend", "path", "The backend's name, as in the configuration's pools.")


@ADMIN.route(
    "GET",
    "/admin/v1/state",
    summary="Live state: tenants' queues, work in flight and shares; backends; pools",
    tag="state",
    response=LiveState,
)
async def get_state(request: web.Request, gateway: Gateway) -> web.Response:
    snapshot = await _read(gateway)
    directory = gateway.directory.snapshot
    return as_json(
        LiveState(
            version=directory.version,
            replica=gateway.admission.owner,
            at=_at(snapshot.now_ms),
            window_s=round(snapshot.window_s, 3),
            tenants=[
                _tenant(t, r.config.weight, r.config.priority, snapshot)
                for t, r in sorted(directory.tenants.items())
            ],
            backends=[_backend(gateway, b.name, snapshot) for b in gateway.backend_states.backends],
            pools=[
                PoolState(
                    name=name,
                    queued=pool.queued,
                    in_flight=_load(pool.in_flight),
                    backends=pool.backends,
                )
                for name, pool in snapshot.pools.items()
            ],
        )
    )


@ADMIN.route(
    "POST",
    "/admin/v1/backends/{backend}/drain",
    summary="Drain a backend: no new work on any replica, what runs finishes",
    tag="backends",
    response=BackendState,
    errors=(404,),
    params=(BACKEND,),
)
async def drain_backend(request: web.Request, gateway: Gateway) -> web.Response:
    return await _drain(request, gateway, True)


@ADMIN.route(
    "POST",
    "/admin/v1/backends/{backend}/undrain",
    summary="Lift a backend's drain: it takes new work again on every replica",
    tag="backends",
    response=BackendState,
    errors=(404,),
    params=(BACKEND,),
)
async def undrain_backend(request: web.Request, gateway: Gateway) -> web.Response:
    return await _drain(request, gateway, False)


async def _drain(request: web.Request, gateway: Gateway, drained: bool) -> web.Response:
    """Drain or undrain (both idempotent); the backend's state after the change."""
    name = request.match_info["backend"]
    if gateway.backend_states.backend(name) is None:
        raise not_found(f"No backend '{name}'.")
    try:
        await gateway.backend_states.drain(name, drained)
    except RedisError as exc:
        raise _unavailable(exc) from None
    return as_json(_backend(gateway, name, await _read(gateway)))


async def _read(gateway: Gateway) -> live.LiveSnapshot:
    try:
        return await gateway.live.read()
    except RedisError as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: RedisError) -> GatewayError:
    return admission_unavailable(f"The live state is in Redis, which did not answer: {exc}")


def _tenant(tenant: str, weight: float, priority: int, snapshot: live.LiveSnapshot) -> TenantState:
    found = snapshot.tenants.get(tenant)
    if found is None:  # not yet in the scripts' configuration: nothing of it can run yet
        found = live.TenantLive(weight, "", 0, live.Load(), {}, 0.0, 0.0, None, None)
    return TenantState(
        id=tenant,
        weight=weight,
        priority=priority,
        queued=found.queued,
        in_flight=_load(found.in_flight),
        virtual_counter=found.counter,
        recent_service=round(found.recent_service, 3),
        recent_share=found.recent_share,
        weight_share=found.weight_share,
        pools={p: TenantPool(in_flight=_load(load)) for p, load in sorted(found.by_pool.items())},
    )


def _backend(gateway: Gateway, name: str, snapshot: live.LiveSnapshot) -> BackendState:
    states = gateway.backend_states
    backend = states.backend(name)
    assert backend is not None  # the backends BackendStates knows are the configured ones
    found = snapshot.backends[name]
    health = backend.health
    ejected_for = health.ejected_until - time.monotonic()
    return BackendState(
        name=name,
        pool=found.pool,
        engine_kind=backend.config.engine,
        healthy=found.down_until_ms is None,
        down_until=_time(found.down_until_ms),
        ejected_until=_at((time.time() + ejected_for) * 1000) if ejected_for > 0 else None,
        drained=found.drained,
        in_flight=_load(found.in_flight),
        budget=_load(found.budget),
        engine=_engine(states.engine_load(name), found),
    )


def _engine(load: EngineLoad | None, found: live.BackendLive) -> Engine:
    return Engine(
        running=load.running if load else None,
        waiting=load.waiting if load else None,
        kv_cache_usage=load.kv_cache_usage if load else None,
        kv_capacity_tokens=load.kv_capacity_tokens if load else None,
        kv_tokens_in_use=found.kv_tokens_in_use,
        busy_until=_time(found.busy_until_ms),
        scraped_at=_at(load.scraped_at * 1000) if load else None,
    )


def _load(load: live.Load) -> Load:
    return Load(requests=load.requests, tokens=load.tokens)


def _at(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _time(ms: float | None) -> datetime | None:
    return None if ms is None else _at(ms)
