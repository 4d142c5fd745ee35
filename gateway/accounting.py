"""What each inference request counts as in its tenant's usage (:mod:`tenants.usage`).

A request is attributed to its tenant as soon as its key names one (:func:`open_account`, on
arrival), and to its model once the body names it. From then on it ends in one of two ways:

- the engine answered and the answer was relayed: :func:`settled` (from the handler's
  settlement) counts a success as a request with the tokens the engine's usage reports, and an
  engine's error answer as a rejection (its 5xx, 429, 401 and 403 are the engine's or
  fairgate's own trouble: ``upstream``; its other 4xx refused the request: ``invalid_request``);
- a failure was raised on the way (a quota, the queue, an engine that failed, a bad body...):
  :func:`usage_rejections`, a middleware inside the error middleware, sees the exception
  itself, before it becomes an HTTP error, and counts it by its cause (:func:`reason_of`).

A request with no tenant (no key, an unknown one: 401) counts nowhere, and neither does one
whose client went away before its answer ended: it was neither served nor refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from admission.errors import AdmissionError, QueueFull, QueueTimeout
from admission.quota import QuotaExceeded
from backends.errors import EngineError
from fairgate.errors import GatewayError
from gateway.inflight import InFlight
from gateway.middleware import Handler
from gateway.relay import Relayed
from gateway.state import GATEWAY
from tenants.usage import Reason, Usage


@dataclass
class Account:
    """Whose usage a request counts in: its tenant, and its model once known."""

    tenant: str
    model: str = ""


ACCOUNT = web.RequestKey("usage_account", Account)


def open_account(request: web.Request, tenant: str) -> Account:
    """Attribute ``request`` to ``tenant``: any failure from now on counts in its usage."""
    account = request[ACCOUNT] = Account(tenant)
    return account


@web.middleware
async def usage_rejections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the failure of an attributed request by its cause, then let it be answered."""
    try:
        return await handler(request)
    except Exception as exc:
        account = request.get(ACCOUNT)
        if account is not None and (reason := reason_of(exc)) is not None:
            request.app[GATEWAY].usage.rejected(account.tenant, account.model, reason)
        raise


def reason_of(exc: BaseException) -> Reason | None:
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


def _by_status(status: int, code: str | None) -> Reason | None:
    if status < 400 or status == 401:
        return None
    if status == 403:
        return "permission"
    if status < 500:
        return "invalid_request"
    if code == "admission_unavailable":
        return "unavailable"
    if code in ("backend_unavailable", "backend_error", "backend_timeout"):
        return "upstream"
    return "internal"


def settled(usage: Usage, flight: InFlight) -> None:
    """Count a request whose engine answer was relayed (nothing if the client left first)."""
    outcome = flight.outcome
    if outcome is None:
        return
    if (reason := engine_refusal(outcome)) is not None:
        usage.rejected(flight.tenant_id, flight.parsed.model, reason)
    else:
        usage.completed(flight.tenant_id, flight.parsed.model, *tokens_of(flight, outcome))


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
