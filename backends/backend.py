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

from backends.engines import ENGINES, EngineTraits
from fairgate.settings import BackendConfig

log = logging.getLogger(__name__)

_KEEPALIVE_S = 4.0


class Backend:
    """An engine of a pool: where it is, how to reach it, whether to send it work."""

    def __init__(self, name: str, pool: str, config: BackendConfig, backoff_s: float) -> None:
        self.name = name
        self.pool = pool
        self.config = config
        self.traits: EngineTraits = ENGINES[config.engine]
        self.base_url = str(config.url).rstrip("/")
        self._backoff_s = backoff_s
        self._down_until = 0.0
        self._session: aiohttp.ClientSession | None = None

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

    def mark_up(self) -> None:
        if not self.healthy:
            log.info("backend %s (%s) is back", self.name, self.base_url)
        self._down_until = 0.0
