"""Active health checks: each backend's liveness endpoint, probed on an interval.

Passive checks (a refused connection marks a backend down for a back-off period) happen where
requests are forwarded; this task brings a recovered backend back without waiting for traffic
to find it, and takes a hung one out before a request does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from backends.backend import Backend
from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


HealthListener = Callable[[Backend, bool], Awaitable[None]]


async def probe(backend: Backend) -> None:
    """Probe one backend once and record the result."""
    try:
        async with backend.session.get(
            backend.url(backend.traits.health_path), timeout=_PROBE_TIMEOUT
        ) as response:
            if response.status == 200:
                backend.mark_up()
            else:
                backend.mark_down(f"health probe answered {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        backend.mark_down(f"health probe failed: {exc!r}")


class HealthChecker:
    """Probes every backend every ``interval_s`` seconds until stopped."""

    def __init__(
        self,
        backends: list[Backend],
        interval_s: float,
        on_change: HealthListener | None = None,
    ) -> None:
        self._backends = backends
        self._interval_s = interval_s
        self._on_change = on_change
        self._last: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_all()
        self._task = asyncio.create_task(self._run(), name="backend-health")

    async def stop(self) -> None:
        await cancel_all([self._task])

    async def check_all(self) -> None:
        await asyncio.gather(*(probe(b) for b in self._backends))
        for backend in self._backends:
            if self._last.get(backend.name) != backend.healthy:
                self._last[backend.name] = backend.healthy
                if self._on_change is not None:
                    await self._on_change(backend, backend.healthy)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_all()
