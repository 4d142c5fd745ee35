"""The OpenAI error envelope, so that SDKs raise the right exception for every failure.

The official SDKs map the HTTP status to an exception class (400 ``BadRequestError``, 401
``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``, ...) and read the
message from ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

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
