"""Every way a request can fail, as an OpenAI-style error.

The official SDKs map the HTTP status to an exception class (400 ``BadRequestError``, 401
``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``, 5xx
``InternalServerError``) and read the message from
``{"error": {"message", "type", "param", "code"}}``. The gateway raises :class:`GatewayError`
(built with the constructors below, which are the vocabulary; do not invent statuses and codes
by hand) and its error middleware turns it into that envelope. Admission and the backends raise
their own exceptions (``admission/errors.py``, ``backends/errors.py``), which the middleware
maps to these in one place (``gateway.middleware.as_gateway_error``). The simulator uses
:func:`error_response` directly to answer as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def error_body(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | int | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error response in the OpenAI envelope."""
    return web.json_response(
        error_body(message, type_, code, param), status=status, headers=headers
    )


@dataclass
class GatewayError(Exception):
    """A failure to report to the client."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code or self.type}: {self.message}"

    def response(self) -> web.Response:
        return error_response(
            self.status, self.message, self.type, self.code, self.param, self.headers
        )


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code="invalid_request", param=param)


def invalid_api_key(message: str) -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def permission_denied(message: str, param: str | None = None) -> GatewayError:
    """403: the key is valid but its tenant may not do this (``PermissionDeniedError``)."""
    return GatewayError(403, message, "permission_error", "permission_denied", param)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def not_found(message: str, code: str = "not_found") -> GatewayError:
    """404: no such route, tenant, key or backend (``NotFoundError``)."""
    return GatewayError(404, message, code=code)


def conflict(message: str, code: str = "conflict") -> GatewayError:
    """409: the change conflicts with the current state (``ConflictError``)."""
    return GatewayError(409, message, code=code)


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large"
    )


def backend_unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, type="server_error", code="backend_unavailable")


def backend_failed(message: str) -> GatewayError:
    return GatewayError(502, message, type="server_error", code="backend_error")


def backend_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, type="server_error", code="backend_timeout")


def rate_limited(message: str, retry_after_s: float) -> GatewayError:
    """429 with ``Retry-After``: the SDKs raise ``RateLimitError`` (and may retry after it)."""
    seconds = str(max(1, round(retry_after_s)))
    return GatewayError(
        429, message, "rate_limit_error", "rate_limit_exceeded", headers={"Retry-After": seconds}
    )


def shared_state_unavailable() -> GatewayError:
    """503: Redis, which holds what every replica shares, did not answer."""
    return GatewayError(
        503,
        "The shared state (Redis) is unreachable; try again shortly.",
        type="server_error",
        code="shared_state_unavailable",
        headers={"Retry-After": "1"},
    )


def admission_unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, type="server_error", code="admission_unavailable")


def out_of_files(message: str) -> GatewayError:
    """The gateway process may open no more files: its own limit, a moment's overload."""
    return GatewayError(
        503,
        message,
        type="server_error",
        code="out_of_file_descriptors",
        headers={"Retry-After": "1"},
    )


def internal_error() -> GatewayError:
    """A failure nobody foresaw: logged with its traceback where it happened."""
    return GatewayError(500, "Internal error in the gateway.", "server_error", "internal")
