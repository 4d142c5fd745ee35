"""One inference request on its way through the gateway: what the handler's steps share.

The handler (:mod:`gateway.handlers`) takes a request through arrival (who asks, for what, at
what estimated cost, in which pool), admission and the connection to an engine, the relay of
the answer, and the settlement (the lease released with the service used, the estimator taught
from the usage). Each step reads what the earlier ones learned and adds its own part to one
:class:`InFlight`, rather than passing six or seven loose values on to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from admission.lease import Lease
from admission.quota import Charge
from admission.ticket import Ticket
from backends.backend import Backend
from backends.pools import Pool
from backends.transport import EngineResponse
from estimators.cost import Cost
from fairgate.settings import TenantSettings
from gateway.metering import PlainMeter
from gateway.relay import Relayed
from gateway.requests import InferenceRequest
from gateway.tracing import NO_TRACE, RequestTrace, current_trace


@dataclass(frozen=True, slots=True)
class Granted:
    """What admission granted a request, and its connection there: the lease to release, the
    backend it runs on, the engine's response (its headers arrived), and, for a plain response,
    the meter that charges its output while it runs."""

    lease: Lease
    backend: Backend
    upstream: EngineResponse
    meter: PlainMeter | None


@dataclass(slots=True)
class InFlight:
    """One request from its arrival to its settlement.

    Known on arrival: the client's request, the tenant, the parsed request (its body only
    until an engine has it), the estimated cost, the pool routed to and the ticket admission
    sees, and the response headers so far. Then, once admitted and connected, :attr:`granted`;
    once relayed, the :attr:`outcome` (it stays None if the engine failed or the client left
    first). Slotted, as every object a request keeps while it streams: thousands are open at
    once (issue 17).
    """

    request: web.Request
    tenant_id: str
    tenant: TenantSettings
    parsed: InferenceRequest
    cost: Cost
    pool: Pool
    ticket: Ticket
    headers: dict[str, str]  # the response's own: request id, pool, route, estimates, ...
    asked_at: float | None = None  # when it asked admission (monotonic)
    queued_s: float | None = None  # from then to its grant
    quota: Charge | None = None  # what it took of its tenant's quotas (None: it has none)
    outcome: Relayed | None = None
    _granted: Granted | None = field(default=None, init=False, repr=False)
    #: Its spans (gateway/tracing.py), begun by the traced handler; NO_TRACE when tracing is off.
    trace: RequestTrace = field(default=NO_TRACE, init=False, repr=False)

    def __post_init__(self) -> None:
        self.trace = current_trace()
        self.trace.attach(self)

    @property
    def granted(self) -> Granted:
        """The grant and connection (a step before admission has none to ask for)."""
        if self._granted is None:
            raise RuntimeError(f"request {self.ticket.request_id} has not been granted yet")
        return self._granted

    @granted.setter
    def granted(self, granted: Granted) -> None:
        self._granted = granted

    @property
    def grant(self) -> Granted | None:
        """The grant and connection if it got that far (None: not, or not yet)."""
        return self._granted

    @property
    def ended_well(self) -> bool:
        """The engine answered in full without failing: the lease may pass to the next
        request of its flow."""
        outcome = self.outcome
        return (
            outcome is not None
            and outcome.error is None
            and outcome.status < 500
            and outcome.completed
        )

    @property
    def refused(self) -> bool:
        """The engine answered with an error status: it ran nothing of the request that a
        client received (a 400 for a context exceeded comes before any prefill), so the
        tenant is charged nothing for it."""
        return self.outcome is not None and self.outcome.status >= 400

    @property
    def tokens_used(self) -> int | None:
        """Prompt plus output tokens, from the engine's usage, else from the chunks relayed
        (a stream), none for an error answer; None where nothing says (its quota keeps the
        estimate charged)."""
        if self.outcome is None:
            return None
        if self.refused:
            return 0
        usage = self.outcome.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            return prompt + (completion if isinstance(completion, int) else 0)
        if self.parsed.stream:
            return self.cost.prompt_tokens + self.outcome.chunks
        return None

    @property
    def service_used(self) -> float | None:
        """The service the request used, from the engine's usage, else from the chunks
        relayed, none for an error answer; None where nothing says (the lease keeps what was
        charged)."""
        if self.outcome is None:
            return None
        if self.refused:
            return 0.0
        usage = self.outcome.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            return self.cost.service(prompt, completion if isinstance(completion, int) else 0)
        if self.parsed.stream:
            return self.cost.service(self.cost.prompt_tokens, self.outcome.chunks)
        return None
