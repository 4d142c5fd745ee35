"""Active health checks: each backend's liveness endpoint, probed on an interval.

Passive checks (a refused connection, a run of failed requests) are reported where requests
are forwarded; this task brings a recovered backend back without waiting for traffic to find
it, and takes a hung one out before a request does. What a probe finds goes to
:class:`backends.state.BackendStates`, which keeps every view of a backend's health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from backends.backend import Backend
from backends.errors import BackendUnreachable, EngineError, GatewayOutOfFiles
from backends.transport import EngineRequest, fetch
from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0

#: Told each probe's outcome: None when it passed, else why it failed.
ProbeListener = Callable[[Backend, str | None], Awaitable[None]]


async def probe(backend: Backend) -> str | None:
    """Probe one backend once: None if it is healthy, else why not."""
    request = EngineRequest("GET", backend.traits.health_path, timeout_s=_PROBE_TIMEOUT_S)
    try:
        answer = await fetch(backend.transport, request)
    except (BackendUnreachable, EngineError) as exc:
        return f"health probe failed: {exc}"
    return None if answer.status == 200 else f"health probe answered {answer.status}"


class HealthChecker:
    """Probes every backend every ``interval_s`` seconds until stopped."""

    def __init__(self, backends: list[Backend], interval_s: float, on_probe: ProbeListener) -> None:
        self._backends = backends
        self._interval_s = interval_s
        self._on_probe = on_probe
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_all()
        self._task = asyncio.create_task(self._run(), name="backend-health")

    async def stop(self) -> None:
        await cancel_all([self._task])

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(b) for b in self._backends))

    async def _check(self, backend: Backend) -> None:
        try:
            outcome = await probe(backend)
        except GatewayOutOfFiles as exc:  # the gateway's limit: says nothing of the engine
            log.warning("health of %s not probed: %s", backend.name, exc)
            return
        await self._on_probe(backend, outcome)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_all()
