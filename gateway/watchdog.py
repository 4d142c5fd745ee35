"""A watchdog: operations that must not stay pending too long, and one task that ends them.

Two things in the gateway wait on a peer that may never answer, once per streamed chunk: a
write to a client that stopped reading (:mod:`gateway.stalled_clients`) and a read from an
engine that stopped sending (:mod:`gateway.silent_engines`). A timer per operation
(``loop.call_later``, what aiohttp's ``sock_read`` does per read) makes and cancels an object
per chunk of every stream, and keeps one alive per stream between chunks for the garbage
collector to walk. Here an operation costs two dictionary operations (:meth:`Watchdog.began`,
:meth:`Watchdog.ended`), and one sweeper task per watchdog wakes a few times per limit, only
while something is pending, to end what has been pending longer than its limit.

An operation is ended a little after its limit (up to a quarter of the shortest limit later):
these limits are safety nets of seconds to minutes, not deadlines to the millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)

#: The sweeper never wakes more often than this, however short a limit.
MIN_TICK_S = 0.05


class Watched(Protocol):
    """What a watchdog watches: its limit, and what ends it (called once, by the sweeper)."""

    @property
    def limit_s(self) -> float: ...

    def expire(self) -> None: ...


class Watchdog:
    """Operations pending now (each since when), and the sweeper that expires those pending
    longer than their own limit. ``shortest_limit_s`` (the shortest limit any watched thing
    has) sets how often the sweeper wakes: every quarter of it, at least ``MIN_TICK_S``."""

    def __init__(self, name: str, shortest_limit_s: float) -> None:
        self._name = name
        self._tick_s = max(shortest_limit_s / 4, MIN_TICK_S)
        self._pending: dict[Watched, float] = {}  # what -> since when (time.monotonic())
        self._sweeper: asyncio.Task[None] | None = None

    def began(self, watched: Watched, since: float) -> None:
        """``watched`` is pending since ``since`` (a ``time.monotonic()`` the caller read)."""
        self._pending[watched] = since
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name=self._name)

    def ended(self, watched: Watched) -> None:
        """``watched`` is no longer pending (a no-op if the sweeper has just expired it)."""
        self._pending.pop(watched, None)

    def pending(self) -> int:
        """How many operations are pending now."""
        return len(self._pending)

    async def _sweep(self) -> None:
        pending = self._pending
        try:
            while pending:
                await asyncio.sleep(self._tick_s)
                now = time.monotonic()
                over = [w for w, since in pending.items() if now - since > w.limit_s]
                for watched in over:
                    del pending[watched]
                    try:
                        watched.expire()
                    except Exception:  # one that fails to end must not stop the others'
                        log.exception("%s: ending %r failed", self._name, watched)
        finally:
            self._sweeper = None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
