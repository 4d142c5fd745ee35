"""What one gateway process holds for its lifetime, shared by all handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from admission.controller import Admission
from admission.live import LiveState
from admission.quota import Quotas
from backends.pools import Router
from backends.state import BackendStates
from estimators.estimator import CostEstimator
from fairgate.redis_client import AnyRedis
from fairgate.settings import Settings
from gateway.access_log import AccessLog
from gateway.client_address import ClientAddress
from gateway.metering import PlainMeters
from gateway.metrics import AccessLogDrops, GatewayMetrics
from gateway.routing import PoolSelector
from gateway.shared_metrics import SharedStateMetrics
from gateway.silent_engines import SilentEngines
from gateway.stalled_clients import StallWatch
from tenants.directory import Directory
from tenants.usage import Usage

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    redis: AnyRedis
    directory: Directory  # tenants and keys now (the admin API changes them)
    router: Router
    backend_states: BackendStates  # every report about a backend goes here
    estimator: CostEstimator
    metrics: GatewayMetrics
    admission: Admission
    quotas: Quotas  # tenants' requests and tokens per minute or day
    admin_tokens: list[str] = field(init=False)  # digests of the admin API's tokens
    meters: PlainMeters = field(init=False)  # plain responses charged while they run
    pools: PoolSelector = field(init=False)  # which pool serves each request
    usage: Usage = field(init=False)  # tenants' requests, tokens and refusals per model and day
    live: LiveState = field(init=False)  # admission's shared state, for the admin API
    access_log: AccessLog = field(init=False)  # one JSON line per inference request
    client_address: ClientAddress = field(init=False)  # X-Forwarded-For from trusted proxies
    shared_state: SharedStateMetrics = field(init=False)  # the live state as gauges
    stalls: StallWatch = field(init=False)  # streams whose client stopped reading
    silent_engines: SilentEngines = field(init=False)  # streams whose engine stopped sending
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.admin_tokens = self.settings.admin.token_digests()
        self.meters = PlainMeters(self)
        self.pools = PoolSelector(self.router, self.metrics)
        self.usage = Usage(self.redis, self.settings)
        self.live = LiveState(self.redis, self.settings)
        telemetry = self.settings.telemetry
        self.access_log = AccessLog(telemetry.access_log)
        self.client_address = ClientAddress(self.settings.server.trusted_proxies)
        self.stalls = StallWatch(self.settings.server.client_stall_timeout_s)
        self.silent_engines = SilentEngines(
            min(b.config.read_timeout_s for b in self.router.backends)  # one at least
        )
        self.shared_state = SharedStateMetrics(
            self.live,
            self.redis,
            self.admission.keys.stats,
            self.metrics.tenants,
            telemetry.metrics.shared_state_max_age_s,
        )
        self.metrics.add(self.shared_state)
        self.metrics.add(AccessLogDrops(self.access_log))
        self.metrics.add(self.stalls)

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run bookkeeping after a response without delaying it (tasks are kept referenced)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background bookkeeping failed", exc_info=task.exception())

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for bookkeeping still running (at shutdown), for at most ``timeout_s``.

        Releases and feedback finish in milliseconds; one that does not is stuck on something
        that will not come back, and shutdown must not hang on it (a lease it held expires
        with its TTL). What was still running is logged with where it waits.
        """
        if not self._background:
            return
        _, stuck = await asyncio.wait(set(self._background), timeout=timeout_s)
        for task in stuck:
            log.warning("bookkeeping still running at shutdown, cancelled: %r", task.get_stack())
            task.cancel()


GATEWAY = web.AppKey("gateway", Gateway)
