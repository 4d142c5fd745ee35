"""Serving an aiohttp application the way every fairgate server needs it."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Iterable

from aiohttp import web

#: aiohttp's own default: how long a connection may go without a whole request head.
IDLE_TIMEOUT_S = 75.0


async def serve(
    app: web.Application, host: str, *ports: int, idle_timeout_s: float = IDLE_TIMEOUT_S
) -> web.AppRunner:
    """Start listening on ``host`` at each of ``ports`` (0 picks a free port; see
    ``runner.addresses``).

    ``idle_timeout_s``: a connection that has not sent a whole request head this long after it
    opened, or after its last response, is closed: idle keep-alive connections, and clients
    that send their headers a byte at a time (slowloris) or never.

    ``handler_cancellation=True``: when a client disconnects, its handler is cancelled at once.
    Both the gateway (which must close the engine connection so the engine stops generating)
    and the simulator (which must free the request's KV cache, as vLLM does) rely on it.
    The caller keeps the runner and calls ``cleanup()`` to stop.
    """
    runner = await _runner(app, idle_timeout_s)
    for port in ports:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    return runner


async def serve_sockets(
    app: web.Application,
    sockets: Iterable[socket.socket],
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> web.AppRunner:
    """As :func:`serve`, on sockets already listening (a worker's, from its supervisor:
    :mod:`fairgate.workers`)."""
    runner = await _runner(app, idle_timeout_s)
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    return runner


async def _runner(app: web.Application, idle_timeout_s: float) -> web.AppRunner:
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, keepalive_timeout=idle_timeout_s
    )
    await runner.setup()
    return runner


async def until_signalled(unless: Callable[[], bool] | None = None) -> None:
    """Wait for SIGINT or SIGTERM: how every fairgate server (and a benchmark's) ends cleanly;
    or, checked every second, until ``unless()`` is true (a worker whose supervisor is gone).

    Handlers on the running loop, so that the caller's ``finally`` (``runner.cleanup()``) runs
    instead of the process dying mid-request.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        if unless is not None and unless():
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0 if unless is not None else None)
        except TimeoutError:
            continue
