"""Which pool serves a request: the one its client named, if allowed, else the routing rules.

A tenant with ``allow_pool_header`` may name a pool with ``X-Fairgate-Pool`` (among the pools
it may use that serve the model); any other tenant that sends the header gets 403, so a client
cannot buy its way into a protected pool. Everyone else is classified by the rules of
``routing:`` on the request's estimated cost (:mod:`backends.classify`).

The cost is estimated before the pool is known, because the rules need it. A pool may count
prompts with its engine's ``/tokenize`` (``tokenize: engine``); the estimate then uses the
pool the request would get without rules (the named pool, else the first pool that serves the
model and the tenant may use), so the setting of that default pool decides how prompts of the
model are counted.
"""

from __future__ import annotations

from aiohttp import web

from backends.classify import HEADER_ROUTE, Route
from backends.pools import Pool
from estimators.cost import Cost
from fairgate.errors import invalid_request, model_not_found, permission_denied
from fairgate.settings import TenantConfig
from gateway.state import Gateway

POOL_HEADER = "X-Fairgate-Pool"


def requested_pool(
    request: web.Request, gateway: Gateway, model: str, tenant: TenantConfig
) -> Pool | None:
    """The pool named by ``X-Fairgate-Pool``, if any and if the tenant may name it."""
    name = request.headers.get(POOL_HEADER)
    if not name:
        return None
    if not tenant.allow_pool_header:
        raise permission_denied(f"This API key may not choose its pool ({POOL_HEADER}).")
    if tenant.pools is not None and name not in tenant.pools:
        raise permission_denied(f"This API key may not use pool {name!r}.")
    pool = gateway.router.pools.get(name)
    if pool is None:
        raise invalid_request(f"There is no pool {name!r} ({POOL_HEADER}).")
    if model not in pool.models:
        raise invalid_request(f"Pool {name!r} does not serve the model `{model}`.", "model")
    return pool


def default_pool(gateway: Gateway, model: str, tenant: TenantConfig) -> Pool:
    """Where the request goes when no rule matches; 404 if no usable pool serves ``model``."""
    usable = gateway.router.classifier.usable(model, tenant.pools)
    if not usable:
        raise model_not_found(model)
    return gateway.router.pools[usable[0]]


def route(
    gateway: Gateway,
    tenant_id: str,
    tenant: TenantConfig,
    model: str,
    cost: Cost,
    pinned: Pool | None,
) -> tuple[Pool, Route]:
    """The pool of a request and the rule that chose it, counted on ``/metrics``."""
    if pinned is not None:
        chosen = Route(pinned.name, HEADER_ROUTE)
    else:
        found = gateway.router.classifier.classify(model, tenant_id, tenant.pools, cost)
        if found is None:  # default_pool() has already refused such a request
            raise model_not_found(model)
        chosen = found
    gateway.metrics.routed(chosen.pool, chosen.rule)
    return gateway.router.pools[chosen.pool], chosen
