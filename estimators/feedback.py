"""What one finished request teaches the estimators, recorded in one Redis round trip.

``observe.lua`` updates the model's prompt correction factor and error distribution, pushes
the true output length onto the tenant's and the model's history, and records the output
estimate's error: one atomic step per request, run after the response, off the request path.
"""

from __future__ import annotations

import asyncio
from importlib import resources

from estimators.calibration import Calibration, error_bucket
from estimators.history import OutputHistory
from fairgate.redis_client import RedisClient, Script
from fairgate.settings import EstimationConfig

OBSERVE_LUA = resources.files("estimators").joinpath("observe.lua").read_text()


class _Batch:
    """Observations of one model waiting to be sent, and the future of their outcome."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.keys: list[str] = []
        self.args: list[object] = []
        self.done: asyncio.Future[float] = loop.create_future()

    def key_index(self, key: str) -> int:
        """The 1-based index of ``key`` in KEYS (the calibration hash is KEYS[1])."""
        if key not in self.keys:
            self.keys.append(key)
        return self.keys.index(key) + 2


class Feedback:
    """Writes observations; :class:`OutputHistory` and :class:`Calibration` read them.

    Observations are not latency-critical, and under load one per request would cost Redis as
    much as admission does; so each replica sends a model's observations of the last
    ``feedback_flush_s`` in one script call, and every caller hears the batch's outcome.
    """

    def __init__(
        self,
        redis: RedisClient,
        config: EstimationConfig,
        history: OutputHistory,
        calibration: Calibration,
    ) -> None:
        self._config = config
        self._history = history
        self._calibration = calibration
        self._script = Script(redis, OBSERVE_LUA)
        self._batches: dict[str, _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()

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
        batch = self._batch(model)
        # what is unknown goes as empty strings (observe.lua skips it)
        prompt_args = [*prompt, error_bucket(prompt[1], prompt[2])] if prompt else [0, 0, "", ""]
        output_args = [*output, error_bucket(*output)] if output else [0, "", ""]
        own, everyone = self._history.keys(tenant, model, kind)
        batch.args += [
            batch.key_index(own),
            batch.key_index(everyone),
            *prompt_args,
            *output_args,
        ]
        return await asyncio.shield(batch.done)

    def _batch(self, model: str) -> _Batch:
        batch = self._batches.get(model)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batches[model] = _Batch(loop)
            if self._config.feedback_flush_s > 0:
                loop.call_later(self._config.feedback_flush_s, self._flush, model)
            else:
                loop.call_soon(self._flush, model)
        return batch

    def _flush(self, model: str) -> None:
        batch = self._batches.pop(model)
        task = asyncio.ensure_future(self._send(model, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, model: str, batch: _Batch) -> None:
        settings = [
            self._config.calibration_alpha,
            self._config.history_size,
            int(self._config.history_ttl_s * 1000),
        ]
        keys = [self._calibration.key(model), *batch.keys]
        try:
            factor = float(await self._script(keys, [*settings, *batch.args]))
        except Exception as exc:  # noqa: BLE001 - every caller of the batch must hear it
            batch.done.set_exception(exc)
            batch.done.exception()  # retrieved here too: no warning if no caller is left
        else:
            batch.done.set_result(factor)
