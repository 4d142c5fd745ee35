"""The workload of the admission benchmark: one pool, four weighted tenants, tickets to admit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from admission.ticket import Ticket
from fairgate.settings import Settings

#: Concurrent acquire/release loops per process in the throughput runs.
CONCURRENCY = 32
TENANTS = ("t1", "t2", "t3", "t4")
#: The backend's request budget in the queueing runs (far below :data:`CONCURRENCY`).
QUEUEING_BUDGET = 8
#: A budget that never binds.
OPEN_BUDGET = 1_000_000
#: Requests of the latency runs not measured: script loading, the connection pool.
WARMUP_REQUESTS = 200
#: With lease reuse, the next request starts this long after the previous one ends: time for
#: the background script call of the previous reuse to finish, as for a busy tenant's flow.
REUSE_GAP_S = 0.0005
#: Every ticket's tokens (held against budgets) and service (charged at dispatch), and the
#: output tokens each release reports.
TICKET_TOKENS = 500
TICKET_SERVICE = 100.0
RELEASED_OUTPUT = 300.0


def settings_for(redis_url: str, contended: bool) -> Settings:
    """One pool; budgets that never bind, or :data:`QUEUEING_BUDGET` requests at a time."""
    budget = QUEUEING_BUDGET if contended else OPEN_BUDGET
    return Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    "b": {
                        "url": "http://127.0.0.1:9",
                        "models": ["m"],
                        "max_concurrency": budget,
                        "max_inflight_tokens": 10**12,
                    }
                }
            }
        },
        tenants={
            t: {"weight": i + 1, "max_concurrency": 100_000, "max_queued": 100_000}
            for i, t in enumerate(TENANTS)
        },
        admission={"upkeep_interval_s": 0.1},
    )


def ticket(tenant: str) -> Ticket:
    return Ticket(uuid.uuid4().hex, tenant, TICKET_TOKENS, TICKET_SERVICE, "p", "", 60.0)


@dataclass(frozen=True)
class Mix:
    """What each loop of a throughput run does, over and over."""

    name: str  # the worker's --mix
    label: str  # its row in the report
    contended: bool = False  # budgets bind: requests queue, grants come by pub/sub
    reuse: bool = False  # requests end well and their leases pass to the next of the flow
    charges: int = 0  # output charged this many times between acquire and release
    engine_reports: bool = False  # no requests: the loops report engine load instead
    #: no requests coming and going: :data:`CHARGED_STREAMS` leases held, their output charged
    #: :data:`CHARGES_PER_S` times a second each, gathered per window ("window", what the
    #: gateway does) or each in a call of its own ("calls", what it did before)
    charging: str | None = None


#: A streamed request is charged about every ``charge_interval_s`` (0.25 s) while it runs:
#: :data:`STREAM_CHARGES` charges are what a one-second stream costs.
STREAM_CHARGES = 4
#: Streams each process of a charging run keeps open, and how often each is charged.
CHARGED_STREAMS = 500
CHARGES_PER_S = 4
MIXES = {
    mix.name: mix
    for mix in (
        Mix("open", "never bind"),
        Mix("reuse", "never bind, lease reuse", reuse=True),
        Mix("queueing", "queueing", contended=True),
        Mix("stream", f"never bind, {STREAM_CHARGES} charges each", charges=STREAM_CHARGES),
        Mix("engine", "engine load reports (per report)", engine_reports=True),
        Mix("calls", "output charges, a call each (per charge)", charging="calls"),
        Mix("window", "output charges, per window (per charge)", charging="window"),
    )
}
