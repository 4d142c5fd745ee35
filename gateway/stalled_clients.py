"""Clients that stop reading a stream: their connection is closed after a limit.

A streamed response is written as the engine produces it. A client that stops reading (a hung
process, a debugger, a hostile one) fills its socket's buffers, and the next write waits for
room that never comes: the relay then reads no more from the engine (backpressure), the
engine's request stays in its batch holding KV cache, and the tenant's admission slot and
tokens stay taken, for as long as the client likes.

aiohttp has no write timeout, so :class:`StallWatch` keeps one: every streamed response is
watched by a :class:`~gateway.watchdog.Watchdog` while it is open, whose sweeper (one task per
process, waking a few times per limit) looks at each response's connection. One whose send
buffer holds data that has not moved (nothing read by the client, nothing more written by the
relay) since the sweeper first saw it so, longer than ``server.client_stall_timeout_s``, is a
client that stopped reading: its connection is aborted. The pending write then fails as a
disconnect does, and the request ends as a disconnected one: the engine request is closed, the
lease released with the service used so far.

The buffer fills only once the kernel's is full, i.e. the client has left a socket's worth of
the stream unread; a client reading at any pace, however slow, moves it, and the relay's writes
carry no cost for the watch: nothing is recorded per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.watchdog import Watchdog

log = logging.getLogger(__name__)


class StallWatch(Collector):
    """The streamed responses open now, and the sweeper that ends those whose client stopped
    reading; exports ``fairgate_stalled_clients_closed_total``."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._streams = Watchdog("stalled-clients", limit_s)  # the streamed responses open now
        self.aborted = 0  # connections closed for a stalled read (a metric)

    def stream(self, **kwargs: Any) -> GuardedStream:
        """A streamed response this watch guards once prepared (``web.StreamResponse``'s args)."""
        return GuardedStream(self, **kwargs)

    def watch(self, stream: GuardedStream) -> None:
        self._streams.watch(stream)

    def unwatch(self, stream: GuardedStream) -> None:
        """``stream`` has ended (or failed): no longer watched."""
        self._streams.unwatch(stream)

    def watching(self) -> int:
        """How many streamed responses are watched now."""
        return self._streams.watching()

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
        await self._streams.close()


class GuardedStream(web.StreamResponse):
    """A ``web.StreamResponse`` whose connection is watched, while it is open, for a client
    that stopped reading; :meth:`StallWatch.unwatch` once it is over."""

    def __init__(self, watch: StallWatch, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._watch = watch
        self._client: asyncio.Transport | None = None
        #: the connection's state when the sweeper first saw its data unmoved, and when
        self._stuck: tuple[int, int] | None = None
        self._stuck_since = 0.0

    @property
    def limit_s(self) -> float:
        return self._watch.limit_s

    def overdue(self, now: float) -> bool:
        """Whether the client has read nothing of what waits in the connection's send buffer,
        and the relay written nothing more, for longer than the limit (as far as the
        sweeper's looks at it tell: it compares what it sees with what it saw before)."""
        client, writer = self._client, self._payload_writer
        waiting = client.get_write_buffer_size() if client is not None else 0
        if not waiting or writer is None or client is None or client.is_closing():
            self._stuck = None
            return False
        state = (waiting, writer.output_size)
        if state != self._stuck:
            self._stuck, self._stuck_since = state, now
            return False
        return now - self._stuck_since > self.limit_s

    def expire(self) -> None:
        """Called by the watch's sweeper when the client has stalled past the limit."""
        self._watch.stalled(self)

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:  # aiohttp prepares a handler's response again once it has returned
            return await super().prepare(request)
        self._client = request.transport
        writer = await super().prepare(request)
        self._watch.watch(self)  # from its headers on (the first write), until unwatched
        return writer

    def unwatch(self) -> None:
        """The response is over (ended, failed or abandoned): no longer watched."""
        self._watch.unwatch(self)

    def abort(self) -> None:
        """Close the client's connection at once: the pending write raises, as on a disconnect."""
        if self._client is not None:
            self._client.abort()
