"""Which pool a request goes to: ordered rules on its estimated cost, model and tenant.

Classification runs after the cost estimate and before admission, so that a 28,000-token prompt
or a reasoning job waits in (and is released to) the long pool's engines, never the interactive
ones. It is pure: the same request, cost and configuration always give the same route, and
nothing here touches the network or Redis.

The rules come from ``routing.rules`` (:class:`fairgate.settings.RoutingRule`). The first rule
whose conditions all hold *and* whose pool serves the model and the tenant may use wins; a rule
that points at a pool the request cannot use is skipped rather than failing the request (its
tenant's ``pools`` restriction wins). When no rule matches, the request goes to the first pool,
in the configuration's order, that serves the model and the tenant may use: route ``default``.
A tenant with ``allow_pool_header`` may instead name the pool (route ``header``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from estimators.cost import Cost
from fairgate.settings import RoutingRule

#: Route of a request that no rule matched, and of one whose client named its pool.
DEFAULT_ROUTE = "default"
HEADER_ROUTE = "header"


@dataclass(frozen=True)
class Route:
    """Where a request goes, and which rule (or ``default`` / ``header``) sent it there."""

    pool: str
    rule: str


def matches(rule: RoutingRule, model: str, tenant: str, cost: Cost) -> bool:
    """Whether every condition ``rule`` gives holds for this request (bounds inclusive)."""
    if rule.models is not None and model not in rule.models:
        return False
    if rule.tenants is not None and tenant not in rule.tenants:
        return False
    if rule.reasoning is not None and rule.reasoning != cost.reasoning:
        return False
    return (
        _within(cost.prompt_tokens, rule.min_prompt_tokens, rule.max_prompt_tokens)
        and _within(cost.expected_output, rule.min_expected_output, rule.max_expected_output)
        and _within(cost.max_output, rule.min_max_output, rule.max_max_output)
    )


def _within(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


class Classifier:
    """The routing rules of a configuration, and the models each pool serves."""

    def __init__(self, rules: Sequence[RoutingRule], pool_models: Mapping[str, frozenset[str]]):
        self.rules = list(rules)
        self._pool_models = dict(pool_models)  # in configuration order

    def usable(self, model: str, allowed: Sequence[str] | None) -> list[str]:
        """Pools that serve ``model`` among those the tenant may use (all if None), in order."""
        return [
            pool
            for pool, models in self._pool_models.items()
            if model in models and (allowed is None or pool in allowed)
        ]

    def classify(
        self, model: str, tenant: str, allowed: Sequence[str] | None, cost: Cost
    ) -> Route | None:
        """The route of a request; None if no pool the tenant may use serves ``model``."""
        usable = self.usable(model, allowed)
        if not usable:
            return None
        for rule in self.rules:
            if rule.pool in usable and matches(rule, model, tenant, cost):
                return Route(rule.pool, rule.name)
        return Route(usable[0], DEFAULT_ROUTE)
