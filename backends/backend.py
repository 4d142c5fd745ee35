"""One engine as the gateway sees it at run time: how to reach it, and its health here.

A backend reaches its engine only through its :class:`~backends.transport.Transport` (its own
``aiohttp.ClientSession`` in production, a fake in tests). Its :class:`Health` is this
process's view of whether to send it work; :class:`backends.state.BackendStates` is the one
thing that changes it (and tells every other replica, through Redis).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from backends.delivery import DeliveryRate
from backends.engines import ENGINES, EngineTraits
from backends.transport import AiohttpTransport, Transport
from fairgate.settings import BackendConfig


@dataclass
class Health:
    """One backend's health as this process sees it (``time.monotonic`` instants)."""

    down_until: float = 0.0  # skipped until then: a failed probe or connection, an ejection
    ejected_until: float = 0.0  # a passing probe does not end an ejection before this
    failures: int = 0  # failed requests in a row
    ejections: int = 0  # ejections in a row: each doubles the back-off

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until


class Backend:
    """An engine of a pool: where it is, how to reach it, whether to send it work."""

    def __init__(self, name: str, config: BackendConfig, transport: Transport | None = None):
        self.name = name
        self.config = config
        self.traits: EngineTraits = ENGINES[config.engine]
        self.base_url = str(config.url).rstrip("/")
        #: Every request to the engine goes through here.
        self.transport: Transport = transport or AiohttpTransport(name, config)
        self.health = Health()
        #: Output tokens per second a request gets here (charges plain responses as they run).
        self.delivery = DeliveryRate()

    async def close(self) -> None:
        await self.transport.close()

    @property
    def prefill_capped(self) -> bool:
        """Whether requests hold this backend's prefill cap until their first output."""
        return self.config.max_prefill_tokens is not None

    @property
    def healthy(self) -> bool:
        return self.health.healthy
