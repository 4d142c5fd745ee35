"""Values a replica read from Redis and reuses: one read per key at a time, and no request
waiting for a value the replica already holds.

Output histories and prompt correction factors change slowly and are wanted on every request's
path, so each replica keeps what it read for ``estimation.refresh_s``. Kept naively (expire,
then read on the next request), a value that expires under load is read by every request that
arrives before the first read has answered: at 2,000 open streams, with the event loop a few
milliseconds behind, 300 requests at once each read the same two 256-entry histories and
parsed them, and 400 waited for a Redis connection (issue 17's stream bench). That stampede,
once every ``refresh_s``, made the loop later still. Here:

- a fresh value is returned without I/O;
- a stale one too, while one read in the background replaces it (stale-while-revalidate); if
  that read fails, the stale value serves another ``refresh_s`` before the next try;
- a key never read is read once for all the callers that ask before the answer (single
  flight); each of them hears that read's error, if it failed.

``fresh_s`` = 0 means no reuse at all: every call reads (tests and benchmarks that must see
every observation at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Keys held at most; past it everything is dropped and read again (tenants come and go).
MOST_KEYS = 50_000


class Refreshing(Generic[K, V]):
    """``read(key)``'s answers, reused for ``fresh_s`` and refreshed in the background."""

    def __init__(
        self,
        read: Callable[[K], Awaitable[V]],
        fresh_s: float,
        timeout_s: float,
        most_keys: int = MOST_KEYS,
    ) -> None:
        self._read = read
        self._fresh_s = fresh_s
        self._timeout_s = timeout_s
        self._most_keys = most_keys
        self._held: dict[K, tuple[V, float]] = {}  # value, fresh until (monotonic)
        self._reading: dict[K, asyncio.Task[V]] = {}

    def peek(self, key: K) -> V | None:
        """The value held for ``key``, fresh or stale, without I/O (a stale one starts its
        refresh); None if none is held."""
        held = self._held.get(key)
        if held is None:
            return None
        value, fresh_until = held
        if fresh_until <= time.monotonic() and key not in self._reading:
            self._start(key)
        return value

    async def get(self, key: K) -> V:
        """The value for ``key``: held, or the answer of the one read under way for it."""
        if self._fresh_s <= 0:
            return await self._read(key)
        value = self.peek(key)
        if value is not None:
            return value
        reading = self._reading.get(key) or self._start(key)
        return await asyncio.shield(reading)  # a caller that leaves does not end the read

    async def close(self) -> None:
        """Stop the reads under way (the gateway is stopping)."""
        await cancel_all(list(self._reading.values()))

    def _start(self, key: K) -> asyncio.Task[V]:
        task = asyncio.ensure_future(self._refresh(key))
        self._reading[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    async def _refresh(self, key: K) -> V:
        async with asyncio.timeout(self._timeout_s):
            value = await self._read(key)
        if len(self._held) >= self._most_keys and key not in self._held:
            self._held.clear()
        self._held[key] = (value, time.monotonic() + self._fresh_s)
        return value

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        """The read is over: a failure keeps a stale value for another ``fresh_s``."""
        if self._reading.get(key) is task:
            del self._reading[key]
        if task.cancelled():
            return
        error = task.exception()  # retrieved: no warning when nobody was waiting for it
        if error is None:
            return
        log.debug("could not refresh %r: %r", key, error)
        with contextlib.suppress(KeyError):
            value, _ = self._held[key]
            self._held[key] = (value, time.monotonic() + self._fresh_s)
