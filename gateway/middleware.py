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

from admission.errors import AdmissionError, AdmissionUnavailable, Refused
from admission.quota import QuotaExceeded
from backends.errors import EngineError, EngineTimeout
from fairgate.errors import (
    GatewayError,
    admission_unavailable,
    backend_failed,
    backend_timeout,
    body_too_large,
    rate_limited,
)
from fairgate.ids import new_id
from gateway.ratelimits import rate_limit_headers

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
        exc.headers["X-Request-Id"] = request[REQUEST_ID]
        raise
    if not response.prepared:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


def as_gateway_error(exc: AdmissionError | EngineError) -> GatewayError:
    """The one place where admission's and the engines' failures become HTTP and the OpenAI
    error body: status, type, code, ``Retry-After`` (and a quota's rate-limit headers)."""
    message = str(exc)
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


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return exc.response()
    except (AdmissionError, EngineError) as exc:
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
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        failure = GatewayError(500, "Internal error in the gateway.", "server_error", "internal")
        return failure.response()
