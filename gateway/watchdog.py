"""A watchdog: open streams that must not stay stuck too long, and one task that ends them.

Two things in the gateway wait on a peer that may never answer, once per streamed chunk: a
write to a client that stopped reading (:mod:`gateway.stalled_clients`) and a read from an
engine that stopped sending (:mod:`gateway.silent_engines`). A timer per operation
(``loop.call_later``, what aiohttp's ``sock_read`` does per read) makes and cancels an object
per chunk of every stream; a register of pending operations costs a dictionary insertion and
removal per chunk, and a sweeper started whenever the register turns non-empty (a task per
chunk where the operations end at once, as most writes do). Here the watchdog holds the open
*streams*, each added once and removed once: every stream knows for itself whether what it
waits on has been pending past its limit (:meth:`Watched.overdue`, from a timestamp or two it
keeps), and one sweeper task per watchdog, alive while any stream is open, asks each a few times
per limit and ends those that are. Per chunk, nothing reaches the watchdog at all.

A stream is ended a little after its limit (up to a quarter of the shortest limit later, and a
stream that only the sweeper's own samples can time, up to half): these limits are safety nets
of seconds to minutes, not deadlines to the millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

#: The sweeper never wakes more often than this, however short a limit.
MIN_TICK_S = 0.05


class Watched(Protocol):
    """What a watchdog watches: whether it is stuck past its limit, and what ends it (called
    once, by the sweeper, which then stops watching it)."""

    def overdue(self, now: float) -> bool:
        """Whether what it waits on has been pending longer than its limit at ``now`` (a
        ``time.monotonic()``); asked by the sweeper only, a few times per limit."""
        ...

    def expire(self) -> None: ...


class Watchdog:
    """Streams open now, and the sweeper that expires those :meth:`Watched.overdue`.
    ``shortest_limit_s`` (the shortest limit any watched thing has) sets how often the sweeper
    wakes: every quarter of it, at least ``MIN_TICK_S``."""

    def __init__(self, name: str, shortest_limit_s: float) -> None:
        self._name = name
        self._tick_s = max(shortest_limit_s / 4, MIN_TICK_S)
        self._watched: set[Watched] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, watched: Watched) -> None:
        """Watch ``watched`` until :meth:`unwatch` (or until it is expired)."""
        self._watched.add(watched)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name=self._name)

    def unwatch(self, watched: Watched) -> None:
        """Stop watching ``watched`` (a no-op if the sweeper has just expired it)."""
        self._watched.discard(watched)

    def watching(self) -> int:
        """How many things are watched now."""
        return len(self._watched)

    async def _sweep(self) -> None:
        watched = self._watched
        try:
            while watched:
                await asyncio.sleep(self._tick_s)
                now = time.monotonic()
                for stuck in [w for w in watched if w.overdue(now)]:
                    watched.discard(stuck)
                    try:
                        stuck.expire()
                    except Exception:  # one that fails to end must not stop the others'
                        log.exception("%s: ending %r failed", self._name, stuck)
        finally:
            self._sweeper = None

    async def close(self) -> None:
        await cancel_all([self._sweeper])
