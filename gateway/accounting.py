"""What each inference request counts as: one classification for usage, metrics and the log.

Every inference request gets an :class:`Account` when it arrives (:func:`account_requests`, a
middleware inside the error middleware): when it arrived, and, as the handler learns them, its
tenant (:func:`open_account`, once its key names one), model and :class:`InFlight`. When the
handler returns or raises, the middleware classifies the request once into an
:class:`~gateway.ending.Ending`, times it, and hands that one record to the tenant's usage
(:mod:`tenants.usage`), the Prometheus metrics and the access log. It ends in one of three ways:

- the engine answered and the answer was relayed: :func:`answered` counts a success as
  ``served`` with the tokens the engine's usage reports, and an engine's error answer as
  ``rejected`` (its 5xx, 429, 401 and 403 are the engine's or fairgate's own trouble:
  ``upstream``; its other 4xx refused the request: ``invalid_request``);
- a failure was raised on the way (a key, a quota, the queue, an engine that failed, a bad
  body...): :func:`failed` sees the exception itself, before it becomes an HTTP error, and
  counts it by its cause (:func:`reason_of`);
- the client went away first (the handler was cancelled, or a write found the connection
  gone): ``cancelled``; it was neither served nor refused, and counts in no usage.

A request with no tenant (no key, an unknown one: 401, ``auth``) counts in the metrics and the
access log only: usage is per tenant.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from admission.errors import AdmissionError, QueueFull, QueueTimeout
from admission.quota import QuotaExceeded
from backends.errors import EngineError
from estimators.errors import EstimationError
from fairgate.errors import GatewayError
from gateway.access_log import Entry
from gateway.ending import CLIENT_CLOSED, Ending, Rejection
from gateway.inflight import InFlight
from gateway.middleware import Handler, as_gateway_error, request_id_of
from gateway.relay import Relayed
from gateway.request_metrics import NO_POOL
from gateway.requests import Endpoint
from gateway.state import GATEWAY
from tenants.errors import DirectoryError
from tenants.usage import Reason


@dataclass(slots=True)
class Account:
    """One inference request, as its ending will be counted: when it arrived (monotonic and
    wall clock), whose it is and for which model once known, and its :class:`InFlight` once
    it was routed (its pool, backend, timings and the engine's answer)."""

    started: float
    arrived: float  # Unix time, for the access log
    tenant: str = ""  # "" until a key named one
    model: str = ""
    flight: InFlight | None = None


ACCOUNT = web.RequestKey("usage_account", Account)

#: The paths whose POSTs are inference requests.
_INFERENCE = frozenset(endpoint.value for endpoint in Endpoint)


def open_account(request: web.Request, tenant: str) -> Account:
    """Attribute ``request`` to ``tenant``: any failure from now on counts in its usage."""
    account = request.get(ACCOUNT)
    if account is None:  # a handler run without the middleware (counts nowhere)
        account = request[ACCOUNT] = Account(time.monotonic(), time.time())
    account.tenant = tenant
    return account


@web.middleware
async def account_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Classify each inference request once as it ends, and count it everywhere it counts."""
    if request.method != "POST" or request.path not in _INFERENCE:
        return await handler(request)
    account = request[ACCOUNT] = Account(time.monotonic(), time.time())
    try:
        response = await handler(request)
    except Exception as exc:
        _ended(request, account, failed(exc))
        raise
    except asyncio.CancelledError:  # the client went away (fairgate.serving cancels)
        _ended(request, account, Ending("cancelled", CLIENT_CLOSED))
        raise
    else:
        _ended(request, account, answered(account.flight, response.status))
    finally:
        # The request holds its account, the account its flight, the flight the request: a
        # reference cycle per request, which only the cyclic collector could free (its pauses
        # grow with the streams open, issue 17). Counted, the account lets go of the flight.
        account.flight = None
    return response


def failed(exc: BaseException) -> Ending:
    """The ending of a request whose handler raised ``exc``."""
    reason = reason_of(exc)
    if reason is None:
        return Ending("cancelled", CLIENT_CLOSED)
    return Ending("rejected", status_of(exc), reason)


def answered(flight: InFlight | None, status: int) -> Ending:
    """The ending of a request whose handler returned (``status``: its response's)."""
    outcome = flight.outcome if flight is not None else None
    if flight is None or outcome is None:
        return Ending("served", status)  # nothing relayed: nothing more to tell
    if (reason := engine_refusal(outcome)) is not None:
        return Ending("rejected", outcome.status, reason)
    prompt, completion = tokens_of(flight, outcome)
    return Ending("served", outcome.status, None, prompt, completion)


def status_of(exc: BaseException) -> int:
    """The HTTP status the error middleware answers ``exc`` with."""
    if isinstance(exc, GatewayError | web.HTTPException):
        return exc.status
    if isinstance(exc, AdmissionError | EngineError | DirectoryError | EstimationError):
        return as_gateway_error(exc).status
    return 500


def _ended(request: web.Request, account: Account, ending: Ending) -> None:
    """Time the request, then count its ending in usage, the metrics and the access log."""
    now = time.monotonic()
    ending.total_s = now - account.started
    flight = account.flight
    if flight is not None:
        _time_flight(ending, flight, now, account.started)
    gateway = request.app[GATEWAY]
    tenant = account.tenant
    if tenant:
        if ending.outcome == "served":
            gateway.usage.completed(
                tenant, account.model, ending.prompt_tokens, ending.completion_tokens
            )
        elif (reason := usage_reason(ending.reason)) is not None:
            gateway.usage.rejected(tenant, account.model, reason)
    pool = flight.pool.name if flight is not None else NO_POOL
    gateway.metrics.requests.ended(tenant, pool, ending)
    if gateway.access_log.enabled:
        grant = flight.grant if flight is not None else None
        gateway.access_log.write(
            Entry(
                account.arrived,
                request_id_of(request),
                tenant or None,
                None if flight is None else pool,
                None if grant is None else grant.backend.name,
                None if flight is None else account.model,
                request.path,
                flight is not None and flight.parsed.stream,
                ending,
                gateway.client_address.of(request.remote, request.headers.get("X-Forwarded-For")),
            )
        )


def _time_flight(ending: Ending, flight: InFlight, now: float, started: float) -> None:
    """The queue wait, and for a stream the first token and the pace of the rest. A request
    over a quota asked admission (which takes the charge first) but never could wait: it has
    no queue wait."""
    if flight.asked_at is not None and ending.reason != "quota":
        ending.queue_s = flight.queued_s if flight.queued_s is not None else now - flight.asked_at
    outcome = flight.outcome
    if outcome is None or outcome.first_at is None or not flight.parsed.stream:
        return
    ending.ttft_s = outcome.first_at - started
    if ending.completion_tokens > 1 and outcome.last_at is not None:
        ending.itl_s = (outcome.last_at - outcome.first_at) / (ending.completion_tokens - 1)


def usage_reason(reason: Rejection | None) -> Reason | None:
    """A rejection as a tenant's usage counts it (``auth`` has no tenant: none)."""
    return None if reason is None or reason == "auth" else reason


def reason_of(exc: BaseException) -> Rejection | None:
    """Why a request failed, from the exception raised (or the one an error was made from);
    None for a client that went away."""
    if isinstance(exc, GatewayError) and isinstance(exc.__cause__, AdmissionError | EngineError):
        exc = exc.__cause__  # an admission or engine failure answered with quota headers
    if isinstance(exc, QuotaExceeded):
        return "quota"
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, QueueTimeout):
        return "queue_timeout"
    if isinstance(exc, AdmissionError):  # Redis unreachable: closed, or a per-replica limit
        return "unavailable"
    if isinstance(exc, EngineError):
        return "upstream"
    if isinstance(exc, ConnectionResetError):
        return None
    if isinstance(exc, GatewayError):
        return _by_status(exc.status, exc.code)
    if isinstance(exc, web.HTTPException):  # aiohttp's own, such as 413 for a large body
        return _by_status(exc.status, None)
    return "internal"


def _by_status(status: int, code: str | None) -> Rejection | None:
    if status < 400:
        return None
    if status == 401:
        return "auth"
    if status == 403:
        return "permission"
    if status < 500:
        return "invalid_request"
    if code == "admission_unavailable":
        return "unavailable"
    if code in ("backend_unavailable", "backend_error", "backend_timeout"):
        return "upstream"
    return "internal"


def engine_refusal(outcome: Relayed) -> Reason | None:
    """Why an engine's answer is a refusal, or None for a success."""
    status = outcome.status
    if outcome.error is not None or status >= 500 or status in (401, 403, 429):
        return "upstream"
    return "invalid_request" if status >= 400 else None


def tokens_of(flight: InFlight, outcome: Relayed) -> tuple[int, int]:
    """Prompt and completion tokens of a served request: the engine's usage; where it says
    nothing, the estimated prompt and the chunks relayed (a stream; each carries about one
    token, as quotas count them) or none."""
    usage = outcome.usage or {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int):
        prompt = flight.cost.prompt_tokens
    if not isinstance(completion, int):
        completion = outcome.chunks if flight.parsed.stream else 0
    return prompt, completion
