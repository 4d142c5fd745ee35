"""What one finished request teaches the estimators, recorded in one Redis round trip.

``observe.lua`` updates the model's prompt correction factor and error distribution, pushes
the true output length onto the tenant's and the model's history, and records the output
estimate's error: one atomic step per request, run after the response, off the request path.
"""

from __future__ import annotations

from importlib import resources

from estimators.calibration import Calibration, error_bucket
from estimators.history import OutputHistory
from fairgate.redis_client import GatewayRedis, Script
from fairgate.settings import EstimationConfig

_OBSERVE = resources.files("estimators").joinpath("observe.lua").read_text()


class Feedback:
    """Writes observations; :class:`OutputHistory` and :class:`Calibration` read them."""

    def __init__(
        self,
        redis: GatewayRedis,
        config: EstimationConfig,
        history: OutputHistory,
        calibration: Calibration,
    ) -> None:
        self._config = config
        self._history = history
        self._calibration = calibration
        self._script = Script(redis, _OBSERVE)

    async def record(
        self,
        tenant: str,
        model: str,
        kind: str,
        prompt: tuple[int, int, int] | None,
        output: tuple[int, int] | None,
    ) -> float:
        """Record ``prompt`` = (raw count, estimate, actual) and ``output`` = (estimate, actual),
        either of which may be None; returns the model's prompt correction factor."""
        raw, used, actual = prompt or (0, 0, "")
        expected, produced = output or (0, "")
        args = [
            self._config.calibration_alpha,
            self._config.history_size,
            int(self._config.history_ttl_s * 1000),
            raw,
            used,
            actual,
            error_bucket(used, actual) if prompt else "",
            expected,
            produced,
            error_bucket(expected, produced) if output else "",
        ]
        keys = [self._calibration.key(model), *self._history.keys(tenant, model, kind)]
        return float(await self._script(keys, args))
