"""A request asking to run, as admission sees it: who asks, for which pool, and how much."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
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
