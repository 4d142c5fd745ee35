"""One engine as the gateway sees it at run time: its HTTP session and its health.

Each backend has its own ``aiohttp.ClientSession`` (its own connection pool), so a slow or
dead engine cannot starve connections to the others. Idle keep-alive connections are dropped
after 4 s, below the 5 s that uvicorn-based engines (vLLM, SGLang) keep them: reusing a
connection the server has just closed would fail a request that was never processed.
"""

from __future__ import annotations

import logging
import time

import aiohttp

from backends.delivery import DeliveryRate
from backends.engines import ENGINES, EngineTraits
from fairgate.settings import BackendConfig

log = logging.getLogger(__name__)

_KEEPALIVE_S = 4.0


class Backend:
    """An engine of a pool: where it is, how to reach it, whether to send it work."""

    def __init__(
        self,
        name: str,
        pool: str,
        config: BackendConfig,
        backoff_s: float,
        eject_after: int = 3,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.name = name
        self.pool = pool
        self.config = config
        self.traits: EngineTraits = ENGINES[config.engine]
        self.base_url = str(config.url).rstrip("/")
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._eject_after = eject_after
        self._down_until = 0.0
        self._failures = 0  # failed requests in a row
        self._ejections = 0  # ejections in a row: each doubles the back-off
        self._ejected_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        #: Output tokens per second a request gets here (charges plain responses as they run).
        self.delivery = DeliveryRate()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"backend {self.name} is not started")
        return self._session

    async def start(self) -> None:
        headers = {}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout_s,
                sock_read=self.config.read_timeout_s,
            ),
            headers=headers,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def prefill_capped(self) -> bool:
        """Whether requests hold this backend's prefill cap until their first output."""
        return self.config.max_prefill_tokens is not None

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self._down_until

    def mark_down(self, reason: object) -> None:
        """Skip this backend for a while (it refused a connection or failed its probe)."""
        if self.healthy:
            log.warning("backend %s (%s) is down: %s", self.name, self.base_url, reason)
        self._down_until = time.monotonic() + self._backoff_s

    def request_failed(self, reason: object) -> float:
        """Count a failed request; returns how long the backend is now ejected for (0: not).

        Passive ejection catches an engine whose health endpoint answers while its requests
        fail (out of memory, a wedged worker). Each ejection in a row doubles the back-off.
        """
        self._failures += 1
        if self._failures < self._eject_after:
            return 0.0
        self._failures = 0
        self._ejections += 1
        backoff = min(self._backoff_s * 2 ** (self._ejections - 1), self._max_backoff_s)
        log.warning(
            "backend %s ejected for %.0f s after %d failed requests in a row (last: %s)",
            self.name,
            backoff,
            self._eject_after,
            reason,
        )
        self._ejected_until = self._down_until = time.monotonic() + backoff
        return backoff

    def request_succeeded(self) -> None:
        self._failures = self._ejections = 0

    def mark_up(self) -> None:
        if time.monotonic() < self._ejected_until:
            return  # a passing health probe does not cut an ejection short
        if not self.healthy:
            log.info("backend %s (%s) is back", self.name, self.base_url)
        self._down_until = 0.0
