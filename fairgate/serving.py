"""Serving an aiohttp application the way every fairgate server needs it."""

from __future__ import annotations

import asyncio
import signal
import ssl

from aiohttp import web

from fairgate.settings import ListenerTls


async def serve(
    app: web.Application, host: str, *ports: int, tls: ListenerTls | None = None
) -> web.AppRunner:
    """Start listening on ``host`` at each of ``ports`` (0 picks a free port; see
    ``runner.addresses``), over TLS with ``tls``'s certificate and key if given.

    ``handler_cancellation=True``: when a client disconnects, its handler is cancelled at once.
    Both the gateway (which must close the engine connection so the engine stops generating)
    and the simulator (which must free the request's KV cache, as vLLM does) rely on it.
    The caller keeps the runner and calls ``cleanup()`` to stop.
    """
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    context = None if tls is None else server_ssl_context(tls)
    for port in ports:
        await web.TCPSite(runner, host, port, backlog=1024, ssl_context=context).start()
    return runner


def server_ssl_context(tls: ListenerTls) -> ssl.SSLContext:
    """A server context with Python's secure defaults (TLS 1.2 and later) for the listener."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


async def until_signalled() -> None:
    """Wait for SIGINT or SIGTERM: how every fairgate server (and a benchmark's) ends cleanly.

    Handlers on the running loop, so that the caller's ``finally`` (``runner.cleanup()``) runs
    instead of the process dying mid-request.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
