"""Engines that stop sending in the middle of a stream: their response is ended after a limit.

An engine that stops sending a stream (a hung worker, a lost connection without a reset) would
hold the client, the tenant's admission slot and the engine's own request for as long as the
connection stays open. A backend's ``read_timeout_s`` bounds that silence. For a plain answer
and for the wait for a stream's headers, aiohttp's ``sock_read`` timer does it (one timer per
request); for a relayed stream it would cancel and make a timer on every read, so the relay
switches it off (:func:`~backends.transport.stop_read_timer`) and :class:`SilentEngines`
watches instead: the stream is watched by a :class:`~gateway.watchdog.Watchdog` (one sweeper
per process) for as long as it is relayed, and the relay stamps on it when each of its waits for
the engine began (an attribute store per read, cleared when the read returns). A wait pending
longer than the backend's ``read_timeout_s`` ends the response
(:func:`~backends.transport.end_silent`): the relay's read raises ``TimeoutError`` and the
stream ends as it did when aiohttp's timer fired (an SSE error event saying how long the engine
was silent, ``[DONE]``, a failure of the engine).

Only a wait for the engine counts, not the relay's writes to its client: while a write waits for
a slow client, what the engine sends meanwhile waits in the connection's buffer, and the engine
is not silent (a client that stops reading is :mod:`gateway.stalled_clients`'s). A pending wait
means that buffer was empty, i.e. the engine has sent nothing since the last read.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.transport import EngineResponse, end_silent, stop_read_timer
from gateway.watchdog import Watchdog


@dataclass(slots=True, eq=False)
class EngineStream:
    """One relayed stream as the watchdog sees it: its engine response, how long the engine
    may stay silent (its backend's ``read_timeout_s``), and since when the relay has waited for
    it (set by the relay before each read, None while it is not reading)."""

    upstream: EngineResponse
    limit_s: float
    watchdog: Watchdog  # which watches it until :meth:`close`
    waiting_since: float | None = None  # a time.monotonic(): the engine sent nothing since

    def overdue(self, now: float) -> bool:
        since = self.waiting_since
        return since is not None and now - since > self.limit_s

    def expire(self) -> None:
        """Called by the sweeper when the engine has been silent past the limit."""
        end_silent(self.upstream, self.limit_s)

    def close(self) -> None:
        """The relay is over: no longer watched."""
        self.watchdog.unwatch(self)


class SilentEngines:
    """The relayed streams of this process, and the sweeper that ends those whose engine has
    been silent too long. ``shortest_limit_s``: the shortest ``read_timeout_s`` of the
    backends, which sets how often the sweeper wakes."""

    def __init__(self, shortest_limit_s: float) -> None:
        self._streams = Watchdog("silent-engines", shortest_limit_s)

    def watch(self, upstream: EngineResponse, limit_s: float) -> EngineStream:
        """Watch a stream whose headers have arrived, instead of aiohttp's per-read timer,
        until its :meth:`EngineStream.close`."""
        stop_read_timer(upstream)
        stream = EngineStream(upstream, limit_s, self._streams)
        self._streams.watch(stream)
        return stream

    def watching(self) -> int:
        """How many relayed streams are watched now."""
        return self._streams.watching()

    async def close(self) -> None:
        await self._streams.close()
