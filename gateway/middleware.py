"""Cross-cutting request handling: request ids and the OpenAI error envelope for everything.

``request_id``: every request gets an ``X-Request-Id`` (the caller's, if it sent a sane one),
which is forwarded to the engine and returned on the response, errors included.

``openai_errors``: whatever goes wrong, including aiohttp's own 404/405/413 and unexpected
exceptions, the client receives a JSON error body it can parse, never an HTML page.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.exceptions import RedisError

from admission.errors import AdmissionError, AdmissionUnavailable, Refused
from admission.quota import QuotaExceeded
from backends.errors import OUT_OF_FILES, EngineError, EngineTimeout
from estimators.errors import ContextLengthExceeded, EstimationError
from fairgate.errors import (
    GatewayError,
    admission_unavailable,
    backend_failed,
    backend_timeout,
    body_too_large,
    conflict,
    internal_error,
    invalid_request,
    not_found,
    out_of_files,
    rate_limited,
    shared_state_unavailable,
)
from fairgate.ids import new_id
from gateway import header_names
from gateway.ratelimits import rate_limit_headers
from tenants.errors import (
    DirectoryError,
    InvalidTenant,
    KeyNotFound,
    TenantExists,
    TenantNotFound,
    VersionConflict,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = web.RequestKey("request_id", str)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(request: web.Request) -> str:
    """The id assigned to ``request`` by the middleware."""
    return request[REQUEST_ID]


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if _SANE_ID.match(given) else new_id()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[header_names.REQUEST_ID] = request[REQUEST_ID]
        raise
    if not response.prepared:
        response.headers[header_names.REQUEST_ID] = request[REQUEST_ID]
    return response


def as_gateway_error(
    exc: AdmissionError | EngineError | DirectoryError | EstimationError,
) -> GatewayError:
    """The one place where admission's, the engines', estimation's and the tenant
    directory's failures become HTTP and the OpenAI error body: status, type, code,
    ``Retry-After`` (and a quota's rate-limit headers)."""
    message = str(exc)
    if isinstance(exc, ContextLengthExceeded):
        return GatewayError(400, message, code="context_length_exceeded", param="messages")
    if isinstance(exc, TenantNotFound | KeyNotFound):
        return not_found(message)
    if isinstance(exc, VersionConflict):
        return conflict(message, "version_conflict")
    if isinstance(exc, TenantExists):
        return conflict(message, "tenant_exists")
    if isinstance(exc, InvalidTenant):
        return invalid_request(message)
    if isinstance(exc, QuotaExceeded):
        error = rate_limited(message, exc.retry_after_s)
        error.headers.update(rate_limit_headers(exc.state))
        return error
    if isinstance(exc, Refused):
        return rate_limited(message, exc.retry_after_s)
    if isinstance(exc, AdmissionUnavailable):
        return admission_unavailable(message)
    if isinstance(exc, EngineTimeout):
        return backend_timeout(message)
    if isinstance(exc, EngineError):
        return backend_failed(message)
    raise TypeError(f"no mapping for {exc!r}")  # a new failure kind: map it here


def admin_port_only(admin_port: int) -> Middleware:
    """With ``server.admin_port``: the admin API and page answer only on that port, the
    proxy only on the other (liveness and readiness on both). The listening socket decides,
    not the Host header, which a client could forge."""

    @web.middleware
    async def split(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        on_admin_port = sockname is not None and sockname[1] == admin_port
        admin_path = request.path == "/admin" or request.path.startswith("/admin/")
        if on_admin_port != admin_path and request.path not in ("/healthz", "/readyz"):
            raise not_found(f"No route {request.path} on this port.")
        return await handler(request)

    return split


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return exc.response()
    except (AdmissionError, EngineError, DirectoryError, EstimationError) as exc:
        return as_gateway_error(exc).response()
    except web.HTTPRequestEntityTooLarge:
        return body_too_large(request.client_max_size).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        code = exc.reason.lower().replace(" ", "_")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return GatewayError(exc.status, exc.reason, kind, code, headers=allow).response()
    except ConnectionResetError:
        raise
    except RedisError as exc:  # where no fail mode applies (admin calls): say so, not 500
        log.warning("Redis unreachable serving %s %s: %s", request.method, request.path, exc)
        return shared_state_unavailable().response()
    except OSError as exc:
        if exc.errno not in OUT_OF_FILES:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return internal_error().response()
        log.error("out of file descriptors serving %s %s: %s", request.method, request.path, exc)
        return out_of_files(str(exc)).response()
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return internal_error().response()
