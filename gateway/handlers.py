"""The gateway's routes: OpenAI-compatible inference, the model list, liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from backends.forward import open_upstream
from backends.pools import Pool
from backends.tokenize import engine_token_count
from estimators.cost import Cost
from fairgate.errors import backend_failed, invalid_api_key, model_not_found
from fairgate.settings import TenantConfig
from gateway.auth import authenticate
from gateway.middleware import request_id_of
from gateway.relay import (
    UPSTREAM_READ_ERRORS,
    Outcome,
    is_event_stream,
    relay_body,
    relay_stream,
)
from gateway.requests import Endpoint, InferenceRequest, parse_request
from gateway.state import GATEWAY, Gateway

#: Request headers passed on to the engine (the tenant's key never is).
_FORWARDED = ("traceparent", "tracestate", "baggage", "Accept", "Accept-Language", "User-Agent")


async def _tenant(request: web.Request, gateway: Gateway) -> tuple[str, TenantConfig]:
    tenant_id = await authenticate(request, gateway.keys)
    tenant = gateway.settings.tenants.get(tenant_id)
    if tenant is None:  # a key whose tenant has been removed
        raise invalid_api_key("The API key belongs to no active tenant.")
    return tenant_id, tenant


def inference(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one inference endpoint."""

    async def handle(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        tenant_id, tenant = await _tenant(request, gateway)
        parsed = parse_request(endpoint, await request.read())
        pool = _pool_for(gateway, parsed, tenant)
        cost = await _estimate(gateway, tenant_id, parsed, pool)
        headers = {
            "X-Request-Id": request_id_of(request),
            "X-Fairgate-Pool": pool.name,
            "x-fairgate-estimate-prompt-tokens": str(cost.prompt_tokens),
            "x-fairgate-estimate-output-tokens": str(cost.expected_output),
        }
        response, outcome = await _forward(request, pool, parsed, headers)
        if outcome.usage is not None:
            gateway.in_background(_learn(gateway, tenant_id, parsed.model, cost, outcome))
        return response

    return handle


def _pool_for(gateway: Gateway, parsed: InferenceRequest, tenant: TenantConfig) -> Pool:
    pools = gateway.router.pools_for(parsed.model, tenant.pools)
    if not pools:
        raise model_not_found(parsed.model)
    return pools[0]


async def _estimate(gateway: Gateway, tenant_id: str, parsed: InferenceRequest, pool: Pool) -> Cost:
    remote = partial(engine_token_count, pool) if pool.tokenize == "engine" else None
    return await gateway.estimator.estimate(
        tenant_id, parsed.model, parsed.body, parsed.endpoint.streams, remote
    )


async def _forward(
    request: web.Request, pool: Pool, parsed: InferenceRequest, headers: dict[str, str]
) -> tuple[web.StreamResponse, Outcome]:
    """Send the request to an engine of ``pool`` and relay its answer to the client."""
    backend, upstream = await open_upstream(
        pool, parsed.endpoint.value, parsed.upstream_body(), _upstream_headers(request)
    )
    headers = {**headers, "X-Fairgate-Backend": backend.name}
    try:
        if parsed.stream and is_event_stream(upstream):
            result = await relay_stream(request, upstream, parsed.client_wants_usage, headers)
        else:
            try:
                result = await relay_body(upstream, headers)
            except UPSTREAM_READ_ERRORS as exc:
                message = f"The engine {backend.name} failed mid-response: {exc!r}"
                raise backend_failed(message) from exc
    except BaseException:
        upstream.close()  # the client went away or the engine failed: abort upstream now
        raise
    upstream.release()
    return result


async def _learn(
    gateway: Gateway, tenant_id: str, model: str, cost: Cost, outcome: Outcome
) -> None:
    assert outcome.usage is not None
    completed = outcome.completed and outcome.status == 200
    seen = await gateway.estimator.observe(tenant_id, model, cost, outcome.usage, completed)
    gateway.metrics.observed(model, seen)


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


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this gateway process."""
    return request.app[GATEWAY].metrics.response()


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
