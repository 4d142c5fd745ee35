"""The gateway's routes: OpenAI-compatible inference, the model list, liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from backends.forward import open_upstream
from fairgate.errors import backend_failed, invalid_api_key, model_not_found
from fairgate.settings import TenantConfig
from gateway.auth import authenticate
from gateway.middleware import request_id_of
from gateway.relay import UPSTREAM_READ_ERRORS, is_event_stream, relay_body, relay_stream
from gateway.requests import Endpoint, parse_request
from gateway.state import GATEWAY, Gateway

#: Request headers passed on to the engine (the tenant's key never is).
_FORWARDED = ("traceparent", "tracestate", "baggage", "Accept", "Accept-Language", "User-Agent")


async def _tenant(request: web.Request, gateway: Gateway) -> tuple[str, TenantConfig]:
    tenant_id = await authenticate(request, gateway.keys)
    tenant = gateway.settings.tenants.get(tenant_id)
    if tenant is None:  # a key whose tenant has been removed
        raise invalid_api_key("The API key belongs to no active tenant.")
    return tenant_id, tenant


def inference(endpoint: Endpoint):  # noqa: ANN201 - returns an aiohttp handler
    """The handler of one inference endpoint."""

    async def handle(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        _, tenant = await _tenant(request, gateway)
        parsed = parse_request(endpoint, await request.read())
        pools = gateway.router.pools_for(parsed.model, tenant.pools)
        if not pools:
            raise model_not_found(parsed.model)
        pool = pools[0]
        backend, upstream = await open_upstream(
            pool, endpoint.value, parsed.upstream_body(), _upstream_headers(request)
        )
        extra = {
            "X-Request-Id": request_id_of(request),
            "X-Fairgate-Pool": pool.name,
            "X-Fairgate-Backend": backend.name,
        }
        try:
            if parsed.stream and is_event_stream(upstream):
                response, _ = await relay_stream(
                    request, upstream, parsed.client_wants_usage, extra
                )
            else:
                try:
                    response, _ = await relay_body(upstream, extra)
                except UPSTREAM_READ_ERRORS as exc:
                    raise backend_failed(
                        f"The engine {backend.name} failed mid-response: {exc!r}"
                    ) from exc
        except BaseException:
            upstream.close()  # the client went away or the engine failed: abort upstream now
            raise
        upstream.release()
        return response

    return handle


def _upstream_headers(request: web.Request) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id_of(request)}
    for name in _FORWARDED:
        if value := request.headers.get(name):
            headers[name] = value
    return headers


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    _, tenant = await _tenant(request, gateway)
    created = int(time.time())
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": "fairgate"}
        for model in gateway.router.models_for(tenant.pools)
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process is serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis answers and at least one backend is healthy."""
    gateway = request.app[GATEWAY]
    checks: dict[str, Any] = {"redis": await _redis_ok(gateway)}
    checks["backends"] = {b.name: b.healthy for b in gateway.router.backends}
    ready = checks["redis"] and any(checks["backends"].values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503
    )


async def _redis_ok(gateway: Gateway) -> bool:
    with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
        async with asyncio.timeout(1.0):
            return bool(await gateway.redis.ping())
    return False
