"""The gateway's routes: OpenAI-compatible inference, the model list, liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

from aiohttp import web
from multidict import istr
from redis.exceptions import RedisError

from admission.domain import band_of
from admission.errors import AdmissionError
from admission.quota import Charge, QuotaState
from admission.ticket import Ticket
from backends.backend import Backend
from backends.errors import BackendUnreachable, EngineError, EngineFailed
from backends.pools import Pool
from backends.tokenize import engine_token_count
from backends.transport import READ_ERRORS, EngineRequest
from estimators.cost import Cost
from fairgate.errors import GatewayError, backend_unavailable, invalid_request
from fairgate.ids import new_id
from fairgate.settings import TenantSettings
from gateway import header_names
from gateway.accounting import open_account
from gateway.auth import authenticate
from gateway.inflight import Granted, InFlight
from gateway.metering import StreamMeter
from gateway.middleware import as_gateway_error, request_id_of
from gateway.ratelimits import rate_limit_headers
from gateway.relay import (
    Relayed,
    is_event_stream,
    relay_body,
    relay_stream,
)
from gateway.requests import Endpoint, InferenceRequest, parse_request, read_body
from gateway.state import GATEWAY, Gateway
from gateway.tracing import current_trace
from gateway.worker_metrics import OWN_SCOPE, SIBLINGS

#: Request headers passed on to the engine (the tenant's key never is), their names made as
#: :mod:`gateway.header_names` says why.
_FORWARDED = tuple(
    map(istr, ("traceparent", "tracestate", "baggage", "Accept", "Accept-Language", "User-Agent"))
)


def inference(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one inference endpoint: auth, parse, estimate, admit, forward, learn."""

    async def handle(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        flight = await _arrive(request, gateway, endpoint)
        asked = flight.asked_at = time.monotonic()
        try:
            granted = await _admit_and_connect(gateway, flight)
        except BaseException as exc:
            if flight.quota is None:
                raise
            # It never ran: its tokens go back to the quota, and its refusal says where the
            # quotas stand, as every response of the tenant does.
            gateway.in_background(gateway.quotas.correct(flight.quota, 0))
            error = _with_quota_headers(exc, flight.quota.state)
            if error is exc:
                raise
            raise error from exc
        flight.granted = granted
        queued_s = flight.queued_s = max(granted.lease.granted_at - asked, 0.0)
        flight.headers[header_names.QUEUE_TIME] = f"{queued_s:.3f}"
        try:
            flight.headers[header_names.BACKEND] = granted.backend.name
            response, flight.outcome = await _relay(gateway, flight)
        except EngineError as exc:
            _engine_failed(gateway, granted.backend, str(exc))  # it failed mid-response
            raise
        finally:
            # Released however the request ended, without delaying the response: a task that
            # the cancellation of this handler cannot reach.
            gateway.in_background(_settle(gateway, flight))
        outcome = flight.outcome
        if outcome.error is not None or outcome.status >= 500:
            _engine_failed(gateway, granted.backend, outcome.error or f"status {outcome.status}")
        else:
            gateway.backend_states.request_succeeded(granted.backend)
        return response

    return handle


async def _arrive(request: web.Request, gateway: Gateway, endpoint: Endpoint) -> InFlight:
    """Who asks, for what, at what estimated cost, in which pool: the request as admission
    will see it (its ticket, with the per-request priority and queue timeout, and its charge to
    its tenant's quotas, which admission takes before it queues)."""
    tenant_id, tenant = authenticate(request, gateway.directory)
    account = open_account(request, tenant_id)  # its usage counts what happens from here
    body = await read_body(request, gateway.settings.server.body_timeout_s)
    parsed = parse_request(endpoint, body)
    account.model = parsed.model
    choice = gateway.pools.start(request.headers, parsed.model, tenant_id, tenant)
    with current_trace().step("estimate"):
        cost = await _estimate(gateway, tenant_id, parsed, choice.estimating)
    pool, chosen = gateway.pools.route(choice, cost)
    headers: dict[str, str] = {
        header_names.REQUEST_ID: request_id_of(request),
        header_names.POOL: pool.name,
        header_names.ROUTE: chosen.rule,
        header_names.ESTIMATE_PROMPT_TOKENS: str(cost.prompt_tokens),
        header_names.ESTIMATE_OUTPUT_TOKENS: str(cost.expected_output),
    }
    band, priority = _priority(request, gateway, tenant)
    timeout_s = _queue_timeout(request, tenant)
    ticket = Ticket(
        request_id=f"{request_id_of(request)}.{new_id()}",
        tenant=tenant_id,
        tokens=cost.inflight_tokens,
        service=cost.input_service(),
        pool=pool.name,
        band=band,
        timeout_s=timeout_s,
        prompt_tokens=cost.prompt_tokens,
        priority=priority,
        prefer=pool.session_backend(request.headers, parsed.body),
        prefer_slack=pool.affinity_slack_tokens,
        quota=gateway.quotas.ask(tenant_id, tenant.quotas, parsed.model, cost.inflight_tokens),
    )
    flight = account.flight = InFlight(
        request, tenant_id, tenant, parsed, cost, pool, ticket, headers
    )
    return flight


async def _estimate(gateway: Gateway, tenant_id: str, parsed: InferenceRequest, pool: Pool) -> Cost:
    remote = partial(engine_token_count, pool) if pool.tokenize == "engine" else None
    return await gateway.estimator.estimate(
        tenant_id, parsed.model, parsed.body, parsed.endpoint.streams, remote
    )


def _priority(request: web.Request, gateway: Gateway, tenant: TenantSettings) -> tuple[str, int]:
    """The request's band and priority: the tenant's own, or lower if it asks for it (with
    ``X-Fairgate-Priority``, where the tenant may), never below the lowest tenant's."""
    band, priority = "", tenant.priority
    if tenant.allow_priority_header and (asked := request.headers.get("X-Fairgate-Priority")):
        priority = max(
            gateway.directory.lowest_priority,
            min(int(_number(asked, "X-Fairgate-Priority")), tenant.priority),
        )
        band = band_of(priority)
    return band, priority


def _queue_timeout(request: web.Request, tenant: TenantSettings) -> float:
    """How long the request may wait: the tenant's queue timeout, or less if it asks."""
    timeout = tenant.queue_timeout_s
    if asked := request.headers.get("X-Fairgate-Queue-Timeout"):
        timeout = min(timeout, max(_number(asked, "X-Fairgate-Queue-Timeout"), 0.001))
    return timeout


def _number(value: str, header: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise invalid_request(f"The {header} header must be a number, not {value!r}.")
    return number


async def _admit_and_connect(gateway: Gateway, flight: InFlight) -> Granted:
    """Wait for admission, then connect to the granted backend.

    A backend that cannot be reached received nothing: it is marked down for every replica,
    its lease released, and admission asked once more (it grants another backend if any).
    A plain response's meter starts with the connection: an engine sends its headers only
    with the whole answer. Once connected, the flight keeps its request without the body
    (:meth:`~gateway.requests.InferenceRequest.sent`).
    """
    ticket, parsed = flight.ticket, flight.parsed
    failures = []
    for attempt in range(2):
        with flight.trace.step("queue"):
            lease = await gateway.admission.acquire(
                ticket  # its quota charge is taken once, by the first attempt
                if attempt == 0
                else replace(ticket, request_id=ticket.request_id + ".retry", quota=None),
                partial(_charged, flight),
                flight.trace.placed,
            )
        backend = gateway.router.backend(lease.backend)
        meter = None
        if not parsed.stream and not backend.prefill_capped and flight.cost.max_output > 0:
            meter = gateway.meters.start(lease, backend.delivery, flight.cost)
        try:
            upstream = await backend.transport.send(
                EngineRequest(
                    "POST",
                    parsed.endpoint.value,
                    parsed.upstream_body(*_engine_fields(backend, flight)),
                    flight.trace.calling(backend, _upstream_headers(flight)),
                )
            )
        except BackendUnreachable as exc:
            flight.trace.call_failed(exc)
            if meter is not None:
                meter.stop()
            failures.append(str(exc))
            await asyncio.shield(lease.release(None))
            await gateway.backend_states.connect_failed(backend, exc)
            continue
        except BaseException as exc:
            if meter is not None:
                meter.stop()
            await asyncio.shield(lease.release(None))
            if isinstance(exc, EngineError):  # the engine failed or timed out before answering
                _engine_failed(gateway, backend, str(exc))
            raise
        gateway.backend_states.connected(backend)
        flight.parsed = parsed.sent()
        return Granted(lease, backend, upstream, meter)
    raise backend_unavailable(
        f"No engine of pool '{ticket.pool}' could be reached ({'; '.join(failures)})."
    )


def _charged(flight: InFlight, charge: Charge) -> None:
    """Admission took the request's quota charge: every response of it reports the quotas."""
    flight.quota = charge
    flight.headers.update(rate_limit_headers(charge.state))


def _with_quota_headers(exc: BaseException, state: QuotaState) -> BaseException:
    """A failure answered to the client, with the rate-limit headers of the tenant's quotas."""
    error = as_gateway_error(exc) if isinstance(exc, (AdmissionError, EngineError)) else exc
    if isinstance(error, GatewayError):
        error.headers.update(rate_limit_headers(state))
    return error


def _engine_failed(gateway: Gateway, backend: Backend, reason: str) -> None:
    """Count a failed request against its engine; enough in a row eject it on every replica."""
    gateway.in_background(gateway.backend_states.request_failed(backend, reason))


async def _relay(gateway: Gateway, flight: InFlight) -> tuple[web.StreamResponse, Relayed]:
    """Relay the engine's answer; streamed output is charged to the tenant as it flows."""
    granted = flight.granted
    upstream = granted.upstream
    try:
        if flight.parsed.stream and is_event_stream(upstream):
            streamed = StreamMeter(
                gateway, granted.lease, flight.cost, prefill_held=granted.backend.prefill_capped
            )
            result = await relay_stream(
                flight.request,
                upstream,
                flight.parsed.client_wants_usage,
                flight.headers,
                gateway.silent_engines.watch(upstream, granted.backend.config.read_timeout_s),
                streamed,
                flight.trace.tap,
                gateway.stalls,
            )
        else:
            result = await _relay_plain(granted, flight.headers)
    except BaseException:
        upstream.close()  # the client went away or the engine failed: abort upstream now
        raise
    upstream.release()
    return result


async def _relay_plain(granted: Granted, headers: dict[str, str]) -> tuple[web.Response, Relayed]:
    """Relay a plain response; its meter learns how fast the backend delivered it."""
    meter = granted.meter
    try:
        response, outcome = await relay_body(granted.upstream, headers)
    except READ_ERRORS as exc:
        raise EngineFailed(f"The engine failed mid-response: {exc!r}") from exc
    finally:
        elapsed = meter.stop() if meter is not None else 0.0
    output = (outcome.usage or {}).get("completion_tokens")
    if meter is not None and outcome.status == 200 and isinstance(output, int):
        granted.backend.delivery.observe(output, elapsed)
    return response, outcome


async def _settle(gateway: Gateway, flight: InFlight) -> None:
    """After the response: release the lease with the service used, correct the tokens
    charged to the tenant's quotas to those used, then learn from usage.

    A request that ended well leaves its lease reusable by the next of its flow (admission
    decides whether it is reused); one that failed or was abandoned releases it.
    """
    used = flight.tokens_used
    await flight.granted.lease.release(
        flight.service_used,
        reusable=flight.ended_well,
        correction=None if flight.quota is None or used is None else flight.quota.correction(used),
    )
    outcome = flight.outcome
    if outcome is None or outcome.usage is None:
        return
    completed = outcome.completed and outcome.status == 200
    model = flight.parsed.model
    seen = await gateway.estimator.observe(
        flight.tenant_id, model, flight.cost, outcome.usage, completed
    )
    gateway.metrics.observed(model, seen)


def _engine_fields(backend: Backend, flight: InFlight) -> tuple[dict[str, int], tuple[str, ...]]:
    """Body fields the gateway sets for this engine, and those the client may not send it.

    The engine's scheduling field (``priority`` on vLLM and SGLang) is the gateway's alone: a
    client that set it could jump the engine's queue. With ``forward_priority`` (vLLM refuses
    a priority unless it runs with ``--scheduling-policy priority``) it carries the request's
    priority, in the direction the engine orders by (higher fairgate priority first);
    otherwise the client's value is removed.
    """
    field, first = backend.traits.priority_field, backend.traits.priority_first
    if field is None:
        return {}, ()
    if not backend.config.forward_priority:
        return {}, (field,)
    priority = flight.ticket.priority
    return {field: -priority if first == "lower" else priority}, ()


def _upstream_headers(flight: InFlight) -> dict[str, str]:
    """Headers of the engine request: the request id, trace context, and the tenant's id.

    The request id is unique per request (the client's id, kept for correlation, and a
    suffix): two tenants sending the same ``X-Request-Id`` must not collide in an engine that
    keys its requests by it (vLLM with ``--enable-request-id-headers``). The client's trace
    context goes on as sent; with tracing on, the engine call's own span replaces it
    (``RequestTrace.calling``), a child of the client's. ``X-Fairgate-Tenant`` names the tenant
    (its id, never its key) so that engines and their logs can attribute work; the simulator
    counts requests per tenant by it.
    """
    request = flight.request
    headers: dict[str, str] = {
        header_names.CONTENT_TYPE: "application/json",
        header_names.REQUEST_ID: flight.ticket.request_id,
        header_names.TENANT: flight.tenant_id,
    }
    for name in _FORWARDED:
        if value := request.headers.get(name):
            headers[name] = value
    return headers


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    _, tenant = authenticate(request, gateway.directory)
    created = int(time.time())
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": "fairgate"}
        for model in gateway.router.models_for(tenant.pools)
    ]
    return web.json_response({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this gateway process, and the shared state read from Redis; of
    every worker on this host if it is one of several (``?scope=worker``: its own alone, what
    its siblings read: :mod:`gateway.worker_metrics`)."""
    gateway = request.app[GATEWAY]
    siblings = request.app.get(SIBLINGS)
    if siblings is not None and request.query.get(OWN_SCOPE[0]) == OWN_SCOPE[1]:
        return gateway.metrics.response()
    await gateway.shared_state.refresh()
    if siblings is None:
        return gateway.metrics.response()
    body = await siblings.exposition(gateway.metrics.registry)
    return web.Response(body=body, content_type="text/plain")


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
