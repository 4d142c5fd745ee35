"""Backend state, one owner: down, ejected, busy, drained, and what engines report of their load.

Everything that learns something about a backend reports it here, and nowhere else: the
request handler (a connection failed or succeeded, a request failed or succeeded), the health
probes (:mod:`backends.health`), the engine-load scrapes (:mod:`backends.engine_load`) and an
operator's drain (``fairgate drain``). :class:`BackendStates` keeps this process's view on each
backend (:class:`backends.backend.Health`, which ``/readyz`` and ``/tokenize``'s choice of
engine read) and writes what every replica's dispatch must know to the shared store: admission
in Redis (:class:`admission.controller.Admission` is the one :class:`SharedStore`).

Passive health: a connection refused marks a backend down for ``unhealthy_backoff_s``; a run
of ``eject_after_failures`` failed requests ejects it (an engine whose health endpoint answers
while its requests fail: out of memory, a wedged worker), each ejection in a row doubling the
back-off up to ``max_unhealthy_backoff_s``; a passing probe does not cut an ejection short.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

from backends.backend import Backend
from backends.engine_load import EngineLoad, LoadScraper, effective_budget, tokens_in_use
from backends.health import HealthChecker
from fairgate.settings import Settings

log = logging.getLogger(__name__)


class SharedStore(Protocol):
    """Where backend state reaches every replica's dispatch (admission, in Redis)."""

    async def set_backend_down(self, backend: str, down_for_s: float) -> None:
        """Keep ``backend`` out of dispatch for a while (0 brings it back)."""
        ...

    async def engine_reported(
        self,
        backend: str,
        busy_for_s: float,
        tokens_in_use: int | None,
        token_budget: int | None,
        keep_for_s: float,
    ) -> None:
        """An engine's own load: held while busy, KV in use, its token budget."""
        ...

    async def set_drained(self, backend: str, drained: bool) -> None:
        """Drain ``backend`` (no new work anywhere) or bring it back."""
        ...

    async def backend_load(self, backend: str) -> tuple[int, int]:
        """Requests and estimated tokens in flight on ``backend``, across every replica."""
        ...


class BackendStates:
    """Every backend's state: takes every report about one, keeps this process's view and
    the shared one. ``start`` begins the health probes and the engine-load scrapes."""

    def __init__(self, backends: Iterable[Backend], shared: SharedStore, settings: Settings):
        server = settings.server
        self.backends = list(backends)
        self._shared = shared
        self._backoff_s = server.unhealthy_backoff_s
        self._max_backoff_s = server.max_unhealthy_backoff_s
        self._eject_after = server.eject_after_failures
        #: Whether the shared store last heard this backend was healthy (absent: not told yet).
        self._told_healthy: dict[str, bool] = {}
        #: What each engine last reported of its own load to this process (None: unknown).
        self._loads: dict[str, EngineLoad | None] = {}
        self._by_name = {b.name: b for b in self.backends}
        self._probes = HealthChecker(self.backends, server.health_check_interval_s, self.probed)
        self._scrapes = LoadScraper(
            self.backends,
            server.engine_load_interval_s,
            self.engine_reported,
            settings.admission.engine_max_waiting,
        )

    async def start(self) -> None:
        """Probe every backend once (dispatch starts from what they answer), then keep
        probing and scraping on their intervals."""
        await self._probes.start()
        await self._scrapes.start()

    async def stop(self) -> None:
        await self._scrapes.stop()
        await self._probes.stop()

    # ------------------------------------------------------------ what requests report

    def connected(self, backend: Backend) -> None:
        """A connection to the engine was made: it is up (unless ejected)."""
        self._mark_up(backend)

    async def connect_failed(self, backend: Backend, reason: object) -> None:
        """No connection could be made: skip the backend for a back-off, on every replica.

        Awaited before the request asks admission again, so that its retry goes elsewhere.
        """
        self._mark_down(backend, reason, self._backoff_s)
        await self._tell_down(backend)

    async def request_failed(self, backend: Backend, reason: object) -> None:
        """The engine failed a request (5xx, a timeout, death mid-response): enough in a row
        eject it, on every replica."""
        health = backend.health
        health.failures += 1
        if health.failures < self._eject_after:
            return
        health.failures = 0
        health.ejections += 1
        backoff = min(self._backoff_s * 2 ** (health.ejections - 1), self._max_backoff_s)
        log.warning(
            "backend %s ejected for %.0f s after %d failed requests in a row (last: %s)",
            backend.name,
            backoff,
            self._eject_after,
            reason,
        )
        health.ejected_until = time.monotonic() + backoff
        self._mark_down(backend, reason, backoff)
        await self._tell_down(backend)

    def request_succeeded(self, backend: Backend) -> None:
        """A request ended well: the run of failures (and of ejections) is over."""
        backend.health.failures = backend.health.ejections = 0

    # --------------------------------------------------- what probes and scrapes report

    async def probed(self, backend: Backend, failure: str | None) -> None:
        """A health probe's outcome (``failure`` None: it passed); every replica hears when
        the backend's health changes."""
        if failure is None:
            self._mark_up(backend)
        else:
            self._mark_down(backend, failure, self._backoff_s)
        healthy = backend.healthy
        if self._told_healthy.get(backend.name) != healthy:
            if healthy:
                self._told_healthy[backend.name] = True
                await self._shared.set_backend_down(backend.name, 0.0)
            else:
                await self._tell_down(backend)

    async def engine_reported(self, backend: Backend, load: EngineLoad | None) -> None:
        """An engine's own load (None: unknown), for every replica's dispatch.

        An engine that queues requests inside it is held (busy) until a later scrape shows it
        drained; its KV usage corrects the least-loaded choice; the KV capacity it reports
        becomes its token budget unless the configuration sets one.
        """
        self._loads[backend.name] = load
        scrapes = self._scrapes
        budget = effective_budget(backend.config, load)
        await self._shared.engine_reported(
            backend.name,
            2 * scrapes.next_delay(load) if scrapes.saturated(load) else 0.0,
            tokens_in_use(load),
            budget.max_inflight_tokens if budget.tokens_source == "engine" else None,
            scrapes.max_age_s,
        )

    # ------------------------------------------------------------------- operators

    async def drain(self, backend: str, drained: bool = True) -> None:
        """Drain a backend (no new work on any replica; what runs finishes) or bring it back.

        Kept apart from health, which probes set and clear on their own: a drain holds until
        an operator lifts it.
        """
        await self._shared.set_drained(backend, drained)

    async def running(self, backend: str) -> int:
        """Requests running on a backend, across every replica (a drain waits for 0)."""
        running, _ = await self._shared.backend_load(backend)
        return running

    # ------------------------------------------------------------------- the views

    def backend(self, name: str) -> Backend | None:
        """The backend called ``name`` (None: no such backend)."""
        return self._by_name.get(name)

    def engine_load(self, name: str) -> EngineLoad | None:
        """What the engine of ``name`` last reported of its own load here (None: unknown, or
        an engine that reports nothing). Every replica scrapes every engine, so each one's
        report is as recent as its last scrape."""
        return self._loads.get(name)

    def _mark_down(self, backend: Backend, reason: object, for_s: float) -> None:
        if backend.healthy:
            log.warning("backend %s (%s) is down: %s", backend.name, backend.base_url, reason)
        health = backend.health
        health.down_until = max(health.down_until, time.monotonic() + for_s)

    def _mark_up(self, backend: Backend) -> None:
        health = backend.health
        if time.monotonic() < health.ejected_until:
            return  # a passing probe does not cut an ejection short
        if not health.healthy:
            log.info("backend %s (%s) is back", backend.name, backend.base_url)
        health.down_until = 0.0

    async def _tell_down(self, backend: Backend) -> None:
        """Every replica skips the backend for as long as this one does."""
        self._told_healthy[backend.name] = False
        down_for = backend.health.down_until - time.monotonic()
        await self._shared.set_backend_down(backend.name, max(down_for, 0.001))
