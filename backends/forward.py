"""Opening a request to an engine of a pool, with one retry where it is safe.

A connection that could not be established carried nothing, so the request is retried once on
the next backend of the same pool. Once bytes may have reached an engine, a failure is not
retried (the engine may be generating already); it becomes a 502, or 504 on a timeout.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from backends.backend import Backend
from backends.pools import Pool
from fairgate.errors import GatewayError, backend_failed, backend_timeout, backend_unavailable

#: Connecting failed: refused, unreachable, DNS, or the connect timeout.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


async def open_upstream(
    pool: Pool, path: str, body: bytes, headers: Mapping[str, str]
) -> tuple[Backend, aiohttp.ClientResponse]:
    """POST ``body`` to ``path`` on a backend of ``pool``; the response with its headers read."""
    failures = []
    for backend in pool.candidates()[:2]:
        try:
            response = await backend.session.post(backend.url(path), data=body, headers=headers)
        except _NOT_CONNECTED as exc:
            backend.mark_down(exc)
            failures.append(f"{backend.name}: {exc}")
            continue
        except aiohttp.ServerTimeoutError as exc:
            raise backend_timeout(f"The engine {backend.name} did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise _failed(backend, exc) from exc
        backend.mark_up()
        return backend, response
    raise backend_unavailable(
        f"No engine of pool '{pool.name}' could be reached ({'; '.join(failures)})."
    )


def _failed(backend: Backend, exc: BaseException) -> GatewayError:
    return backend_failed(f"The engine {backend.name} failed: {exc.__class__.__name__}: {exc}")
