"""Opening a request to the engine admission chose.

A connection that could not be established carried nothing: :class:`BackendUnreachable` tells
the caller it may try another backend (the gateway asks admission again, once). Once bytes may
have reached an engine, a failure is not retried (the engine may be generating already); it
becomes a 502, or 504 on a timeout.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from backends.backend import Backend
from backends.errors import BackendUnreachable, EngineFailed, EngineTimeout

#: Connecting failed: refused, unreachable, DNS, or the connect timeout.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


async def open_upstream(
    backend: Backend, path: str, body: bytes, headers: Mapping[str, str]
) -> aiohttp.ClientResponse:
    """POST ``body`` to ``path`` on ``backend``; the response with its headers read."""
    try:
        response = await backend.session.post(backend.url(path), data=body, headers=headers)
    except _NOT_CONNECTED as exc:
        backend.mark_down(exc)
        raise BackendUnreachable(f"{backend.name}: {exc}") from exc
    except aiohttp.ServerTimeoutError as exc:
        raise EngineTimeout(f"The engine {backend.name} did not answer in time.") from exc
    except aiohttp.ClientError as exc:
        raise EngineFailed(
            f"The engine {backend.name} failed: {exc.__class__.__name__}: {exc}"
        ) from exc
    backend.mark_up()
    return response
