"""How good the estimates are, and the correction that makes prompt estimates better.

After every request the estimate is compared with the engine's reported ``usage``, per model:

- a **correction factor** for prompt counts (actual / counted, a moving average): a local
  tokenizer that differs from the model's (tiktoken for a Llama, say) is systematically off by
  a ratio, which the factor removes;
- the **error distribution** of the estimates actually used, prompt and output: a mean absolute
  percentage error and a histogram of signed errors by bucket.

All of it lives in one Redis hash per model (``{prefix}:{est:<model>}:calib``), updated by
``observe.lua`` once per finished request (see :mod:`estimators.feedback`), so every replica
learns from every request; each replica re-reads the factor every ``estimation.refresh_s`` s
(:mod:`estimators.refreshing`).
"""

from __future__ import annotations

from dataclasses import dataclass

from estimators.refreshing import Refreshing
from fairgate.keys import calibration
from fairgate.redis_client import AnyRedis, text

#: Upper bounds (ratios estimate / actual - 1) of the error buckets, and their names.
ERROR_BUCKETS = ((-0.5, "under_50"), (-0.2, "under_20"), (-0.05, "under_5"), (0.05, "within_5"),
                 (0.2, "over_5"), (0.5, "over_20"), (float("inf"), "over_50"))  # fmt: skip


def error_bucket(estimate: float, actual: float) -> str:
    """The bucket of a signed relative error: ``under_20`` is 5-20% too low, and so on."""
    if actual <= 0:
        return "within_5" if estimate <= 0 else "over_50"
    error = estimate / actual - 1
    return next(name for bound, name in ERROR_BUCKETS if error < bound or bound == float("inf"))


@dataclass(frozen=True)
class CalibrationReport:
    """What Redis holds about one model's estimates of one kind."""

    observations: int
    factor: float
    mean_abs_pct_error: float
    errors: dict[str, int]


class Calibration:
    """Per-model correction factors and error statistics, as shared in Redis."""

    def __init__(self, redis: AnyRedis, prefix: str, refresh_s: float, timeout_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._factors: Refreshing[str, float] = Refreshing(self._read, refresh_s, timeout_s)

    def key(self, model: str) -> str:
        return calibration(self._prefix, model)

    def cached_factor(self, model: str) -> float | None:
        """The factor this replica read last, fresh or being refreshed (no I/O)."""
        return self._factors.peek(model)

    async def prompt_factor(self, model: str) -> float:
        """The correction factor for prompt counts of a model (1 until it has observations)."""
        return await self._factors.get(model)

    async def close(self) -> None:
        await self._factors.close()

    async def _read(self, model: str) -> float:
        stored = await self._redis.hget(self.key(model), "prompt:factor")
        return float(stored) if stored else 1.0

    async def report(self, model: str, kind: str) -> CalibrationReport:
        """Everything recorded for one model and kind (the estimation benchmark reads it)."""
        fields = {text(k): text(v) for k, v in (await self._redis.hgetall(self.key(model))).items()}
        n = int(fields.get(f"{kind}:n", 0))
        prefix = f"{kind}:error:"
        return CalibrationReport(
            observations=n,
            factor=float(fields.get(f"{kind}:factor", 1.0)),
            mean_abs_pct_error=float(fields.get(f"{kind}:abs_pct_error_sum", 0.0)) / max(n, 1),
            errors={
                k.removeprefix(prefix): int(v) for k, v in fields.items() if k.startswith(prefix)
            },
        )
