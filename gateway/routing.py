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

from collections.abc import Mapping
from dataclasses import dataclass

from backends.classify import HEADER_ROUTE, Route
from backends.pools import Pool, Router
from estimators.cost import Cost
from fairgate.errors import invalid_request, model_not_found, permission_denied
from fairgate.settings import TenantSettings
from gateway import header_names
from gateway.metrics import GatewayMetrics

POOL_HEADER = header_names.POOL


@dataclass(frozen=True)
class PoolChoice:
    """One request's pool decision between its two steps.

    ``estimating`` is the pool whose prompt counting the estimate uses (the named pool, else
    the default); :meth:`PoolSelector.route` then places the request by its cost.
    """

    model: str
    tenant_id: str
    tenant: TenantSettings
    estimating: Pool
    pinned: bool  # named by the header: the rules do not apply


class PoolSelector:
    """Chooses the pool of every request: the pool header, the default pool and the routing
    rules in one place. Counts each choice on ``/metrics``."""

    def __init__(self, router: Router, metrics: GatewayMetrics) -> None:
        self._router = router
        self._metrics = metrics

    def start(
        self, headers: Mapping[str, str], model: str, tenant_id: str, tenant: TenantSettings
    ) -> PoolChoice:
        """What is known before the estimate: a pool named by the header (403 if the tenant may
        not name it), else the default pool (404 if no pool the tenant may use serves the
        model)."""
        named = self._named(headers.get(POOL_HEADER), model, tenant)
        estimating = named or self._default(model, tenant)
        return PoolChoice(model, tenant_id, tenant, estimating, pinned=named is not None)

    def route(self, choice: PoolChoice, cost: Cost) -> tuple[Pool, Route]:
        """The pool of the request and the rule that chose it."""
        if choice.pinned:
            chosen = Route(choice.estimating.name, HEADER_ROUTE)
        else:
            found = self._router.classifier.classify(
                choice.model, choice.tenant_id, choice.tenant.pools, cost
            )
            if found is None:  # start() has already refused such a request
                raise model_not_found(choice.model)
            chosen = found
        self._metrics.routed(chosen.pool, chosen.rule)
        return self._router.pools[chosen.pool], chosen

    def _named(self, name: str | None, model: str, tenant: TenantSettings) -> Pool | None:
        if not name:
            return None
        if not tenant.allow_pool_header:
            raise permission_denied(f"This API key may not choose its pool ({POOL_HEADER}).")
        if tenant.pools is not None and name not in tenant.pools:
            raise permission_denied(f"This API key may not use pool {name!r}.")
        pool = self._router.pools.get(name)
        if pool is None:
            raise invalid_request(f"There is no pool {name!r} ({POOL_HEADER}).")
        if model not in pool.models:
            raise invalid_request(f"Pool {name!r} does not serve the model `{model}`.", "model")
        return pool

    def _default(self, model: str, tenant: TenantSettings) -> Pool:
        usable = self._router.classifier.usable(model, tenant.pools)
        if not usable:
            raise model_not_found(model)
        return self._router.pools[usable[0]]
