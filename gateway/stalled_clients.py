"""Clients that stop reading a stream: their connection is closed after a limit.

A streamed response is written as the engine produces it. A client that stops reading (a hung
process, a debugger, a hostile one) fills its socket's buffers, and the next write waits for
room that never comes: the relay then reads no more from the engine (backpressure), the
engine's request stays in its batch holding KV cache, and the tenant's admission slot and
tokens stay taken, for as long as the client likes. aiohttp has no write timeout, so
:class:`StallWatch` keeps one: each streamed write records when it began in a
:class:`~gateway.watchdog.Watchdog`, whose sweeper (one task per process, waking a few times
per limit, only while some write is pending) aborts the connection of any write pending longer
than ``server.client_stall_timeout_s``. The write then fails as a disconnect does, and the
request ends as a disconnected one: the engine request is closed, the lease released with the
service used so far.

The cost per chunk is two dictionary operations; a client reading at any pace, however slow,
never waits that long for one write, since each write is one engine chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.watchdog import Watchdog

log = logging.getLogger(__name__)


class StallWatch(Collector):
    """The streamed writes pending now, and the sweeper that ends those pending too long;
    exports ``fairgate_stalled_clients_closed_total``."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._writes = Watchdog("stalled-clients", limit_s)  # the writes pending now
        self.aborted = 0  # connections closed for a stalled read (a metric)

    def stream(self, **kwargs: Any) -> GuardedStream:
        """A streamed response whose writes this watch guards (``web.StreamResponse``'s args)."""
        return GuardedStream(self, **kwargs)

    def began(self, stream: GuardedStream) -> None:
        self._writes.began(stream, time.monotonic())

    def ended(self, stream: GuardedStream) -> None:
        self._writes.ended(stream)

    def stalled(self, stream: GuardedStream) -> None:
        """``stream``'s write has waited past the limit: its connection is closed."""
        self.aborted += 1
        log.info("closed a connection whose client read nothing for %.0f s", self.limit_s)
        stream.abort()

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "fairgate_stalled_clients_closed",
            "Connections closed because the client read nothing of its stream for "
            "server.client_stall_timeout_s (its request ends as a disconnected one).",
            value=self.aborted,
        )

    async def close(self) -> None:
        await self._writes.close()


class GuardedStream(web.StreamResponse):
    """A ``web.StreamResponse`` whose every write is watched for a client that stopped reading."""

    def __init__(self, watch: StallWatch, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._watch = watch
        self._client: asyncio.BaseTransport | None = None

    @property
    def limit_s(self) -> float:
        return self._watch.limit_s

    def expire(self) -> None:
        """Called by the watch's sweeper when a write of it waited past the limit."""
        self._watch.stalled(self)

    async def prepare(self, request: web.BaseRequest) -> Any:
        self._client = request.transport
        return await super().prepare(request)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        watch = self._watch
        watch.began(self)
        try:
            await super().write(data)
        finally:
            watch.ended(self)

    def abort(self) -> None:
        """Close the client's connection at once: the pending write raises, as on a disconnect."""
        if self._client is not None:
            self._client.abort()  # type: ignore[attr-defined]
