"""How one inference request ended: the record that usage, metrics and the access log share.

The request path classifies each request once (:mod:`gateway.accounting`), into an
:class:`Ending`; the tenant's usage (:mod:`tenants.usage`), the Prometheus metrics
(:mod:`gateway.request_metrics`) and the access log (:mod:`gateway.access_log`) each read
what they need of it, so a request can never be a success to one and a refusal to another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from tenants.usage import REASONS, Reason

#: ``served``: the engine answered and the answer was relayed in full; ``rejected``: refused or
#: failed (see :data:`REJECTIONS`); ``cancelled``: the client went away before its answer ended.
Outcome = Literal["served", "rejected", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

#: Why a request was refused or failed: a tenant's usage reasons, and ``auth`` for a request
#: without a valid key (it has no tenant, so it counts in no usage, only in the metrics).
Rejection = Reason | Literal["auth"]
REJECTIONS: tuple[Rejection, ...] = (*REASONS, "auth")

#: The status written for a client that went away (nginx's "client closed request").
CLIENT_CLOSED = 499


@dataclass(slots=True)
class Ending:
    """What happened to one request, and how long each part of it took (seconds).

    ``queue_s``: from asking admission to its answer (a grant, a refusal, a timeout, or the
    client giving up), None for a request that never asked. ``ttft_s``: from arrival to the
    first content chunk relayed to the client, and ``itl_s`` the mean time between output
    tokens after it: streamed answers only. ``total_s``: from arrival to the end.
    """

    outcome: Outcome
    status: int
    reason: Rejection | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float | None = None
    ttft_s: float | None = None
    itl_s: float | None = None
    total_s: float = 0.0
