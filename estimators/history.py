"""Output lengths learned from history, shared by every replica through Redis.

(Recorded by ``observe.lua``, see :mod:`estimators.feedback`; read and blended here.)

For each (tenant, model, kind), where kind is ``chat`` or ``reasoning``, Redis keeps the most
recent output lengths (``estimation.history_size``), and the same for the model across all
tenants. The estimate blends them hierarchically: the configured prior counts as
``prior_weight`` samples against the model's history, and that result counts as
``prior_weight`` samples against the tenant's own. A new tenant therefore starts from what
the model usually produces, and a tenant with a long history gets its own numbers.

Each replica reuses what it read for ``estimation.refresh_s`` seconds, so the read costs at
most one Redis round trip per key every few seconds, not one per request, however many requests
arrive while it is under way (:mod:`estimators.refreshing`).
"""

from __future__ import annotations

from dataclasses import dataclass

from estimators.refreshing import Refreshing
from fairgate.keys import output_history
from fairgate.redis_client import AnyRedis
from fairgate.settings import EstimationConfig, OutputPrior


@dataclass(frozen=True)
class OutputEstimate:
    """Expected (p50) and likely (p90) output tokens."""

    p50: float
    p90: float

    @classmethod
    def of_prior(cls, prior: OutputPrior) -> OutputEstimate:
        return cls(float(prior.p50), float(prior.p90))


def quantile(ordered: list[int], q: float) -> float:
    """The q-quantile of sorted values (nearest rank on the lower side)."""
    return float(ordered[int(q * (len(ordered) - 1))])


def blend(prior: OutputEstimate, samples: list[int], weight: int) -> OutputEstimate:
    """Shrink the samples' quantiles toward the prior, which counts as ``weight`` samples."""
    if not samples:
        return prior
    ordered = sorted(samples)
    n = len(ordered)

    def mix(prior_value: float, observed: float) -> float:
        return (weight * prior_value + n * observed) / (weight + n)

    return OutputEstimate(
        mix(prior.p50, quantile(ordered, 0.5)), mix(prior.p90, quantile(ordered, 0.9))
    )


class OutputHistory:
    """Records output lengths and estimates the next ones, per tenant, model and kind."""

    def __init__(
        self, redis: AnyRedis, prefix: str, config: EstimationConfig, timeout_s: float
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._config = config
        self._estimates: Refreshing[tuple[str, str, str], OutputEstimate] = Refreshing(
            self._read, config.refresh_s, timeout_s
        )

    def keys(self, tenant: str, model: str, kind: str) -> tuple[str, str]:
        """The tenant's and the model's list (the model's hash tag: one cluster slot)."""
        return output_history(self._prefix, model, tenant, kind)

    def cached(self, tenant: str, model: str, kind: str) -> OutputEstimate | None:
        """The estimate computed from this replica's last read, fresh or being refreshed
        (no I/O); None if it has not read this tenant's history yet."""
        return self._estimates.peek((tenant, model, kind))

    async def estimate(self, tenant: str, model: str, kind: str) -> OutputEstimate:
        """The blended estimate for the next request of this tenant, model and kind."""
        return await self._estimates.get((tenant, model, kind))

    async def close(self) -> None:
        await self._estimates.close()

    async def _read(self, key: tuple[str, str, str]) -> OutputEstimate:
        tenant, model, kind = key
        return self._blend(kind, *await self._samples(tenant, model, kind))

    def _blend(self, kind: str, own: list[int], everyone: list[int]) -> OutputEstimate:
        prior = self._config.reasoning_prior if kind == "reasoning" else self._config.chat_prior
        weight = self._config.prior_weight
        model_wide = blend(OutputEstimate.of_prior(prior), everyone, weight)
        return blend(model_wide, own, weight)

    async def _samples(self, tenant: str, model: str, kind: str) -> tuple[list[int], list[int]]:
        tenant_key, model_key = self.keys(tenant, model, kind)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lrange(tenant_key, 0, -1)
            pipe.lrange(model_key, 0, -1)
            own, everyone = await pipe.execute()
        return [int(v) for v in own], [int(v) for v in everyone]
