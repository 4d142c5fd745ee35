"""A client light enough to keep thousands of streams open from one core: raw asyncio sockets.

aiohttp's client costs tens of microseconds per chunk read, which at 2,000 streams would make
the load generator the bottleneck it is meant to measure around. Here each open stream is one
keep-alive connection (an :class:`asyncio.Protocol`) that writes prebuilt request bytes and, for
the response, only notes when each SSE event arrived (by counting event terminators, the bytes
are not parsed) and when the chunked body ended. A slot sends its next stream on the same
connection as soon as one ends, until told to stop: K slots keep K streams open.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.stream_bench.workload import Shape, request_bytes

#: How a chunked HTTP/1.1 body ends (the zero-length chunk, no trailers).
_BODY_END = b"\r\n0\r\n\r\n"
#: How an SSE event ends (no ``\n\n`` occurs in the status line, headers or chunk framing).
_EVENT_END = b"\n\n"
#: How long a slot waits after a failed stream before its next (a client backing off).
ERROR_PAUSE_S = 1.0
#: How long a connection may take to open or a stream to start answering.
CONNECT_TIMEOUT_S = 30.0


@dataclass
class Stream:
    """One stream as the client saw it: when it was sent, when each event arrived."""

    seed: int
    sent: float
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each SSE event
    status: int = 0
    complete: bool = False  # the body ended after the events expected
    error: str | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one stream at a time on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._stream: Stream | None = None
        self._done: asyncio.Future[Stream] | None = None
        self._tail = b""  # the last bytes seen: a terminator may straddle two reads
        self._headers = b""  # until the status line has arrived
        self.lost: asyncio.Future[None] = loop.create_future()

    def bind(self, transport: asyncio.Transport) -> None:
        """The connection's transport, as ``create_connection`` returned it (uvloop calls
        ``connection_made`` only after that returns, with a transport that is not an
        ``asyncio.Transport`` subclass)."""
        self._transport = transport

    def send(self, payload: bytes, seed: int) -> asyncio.Future[Stream]:
        assert self._transport is not None
        self._stream = Stream(seed, time.monotonic())
        self._done = self._loop.create_future()
        self._tail = self._headers = b""
        self._transport.write(payload)
        return self._done

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()  # not loop.time(): uvloop's counts whole milliseconds
        stream = self._stream
        if stream is None or self._done is None or self._done.done():
            return
        if not stream.status:
            self._headers += data
            if b"\r\n" not in self._headers:
                return
            data, self._headers = self._headers, b""
            try:
                stream.status = int(data.split(b" ", 2)[1])
            except (IndexError, ValueError):
                stream.status = -1
            if stream.status != 200:  # an error answer: noted, and the connection dropped
                stream.error = data[-300:].decode(errors="replace")
                self._done.set_result(stream)
                self.close()
                return
        seen = self._tail + data
        # the tail was counted already: only terminators that end in the new bytes count
        events = seen.count(_EVENT_END) - self._tail.count(_EVENT_END)
        if events:
            stream.arrivals.extend([now] * events)
        self._tail = seen[-8:]
        if seen.endswith(_BODY_END):
            stream.complete = stream.status == 200
            self._done.set_result(stream)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            assert self._stream is not None
            self._stream.error = f"connection lost ({exc or 'closed by the server'})"
            self._done.set_result(self._stream)
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class Load:
    """K slots keeping streams of ``shape`` open against one address until stopped."""

    host: str
    port: int
    shape: Shape
    key: str
    seeds: itertools.count[int]
    on_stream: Callable[[Stream], None]
    stopping: bool = False
    errors: int = 0

    async def slot(self, start_after: float) -> None:
        """One slot: after ``start_after`` s, streams back to back on one connection (a new
        one after a failure) until :attr:`stopping`."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(start_after)
        connection: _Connection | None = None
        try:
            while not self.stopping:
                if connection is not None and connection.lost.done():
                    connection = None  # the server closed it between two streams
                if connection is None:
                    connection = await self._connect(loop)
                    if connection is None:
                        continue
                seed = next(self.seeds)
                payload = request_bytes(self.shape, seed, self.host, self.port, self.key)
                stream = await connection.send(payload, seed)
                self.on_stream(stream)
                if not stream.complete:
                    self.errors += 1
                    stream.error = stream.error or f"status {stream.status}, incomplete"
                    connection.close()
                    connection = None
                    await asyncio.sleep(ERROR_PAUSE_S)  # as a client would: no storm of retries
        finally:
            if connection is not None:
                connection.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                transport, protocol = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port
                )
        except (OSError, TimeoutError):
            self.errors += 1
            await asyncio.sleep(0.1)
            return None
        protocol.bind(transport)
        return protocol


async def keep_open(load: Load, streams: int, ramp_s: float) -> list[asyncio.Task[None]]:
    """Start ``streams`` slots, their first streams spread evenly over ``ramp_s``."""
    return [
        asyncio.create_task(load.slot(ramp_s * i / streams), name=f"slot-{i}")
        for i in range(streams)
    ]
