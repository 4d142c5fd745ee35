"""A request asking to run, as admission sees it: who asks, for which pool, and how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from admission.quota import QuotaAsk


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request asking to run: who, where, how much."""

    request_id: str
    tenant: str
    tokens: int  # held against budgets while it runs
    service: float  # charged at dispatch (the input cost)
    pool: str
    band: str  # '' for the tenant's own
    timeout_s: float
    prompt_tokens: int = 0  # held against a backend's prefill cap until output flows
    priority: int = 0  # the request's effective priority (its band; passed on to engines)
    prefer: str = ""  # the session's backend (affinity), taken while within prefer_slack tokens
    prefer_slack: int = 0
    #: Its charge to its tenant's quotas, taken by the script that queues or runs it (None:
    #: no quota applies, or it was taken already)
    quota: QuotaAsk | None = None
