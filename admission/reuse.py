"""Lease reuse: a finished request's lease passes to the next request of its flow.

While nothing waits anywhere, admission has no order to keep: whatever fits runs at once. So a
replica that has just finished a request keeps its lease for a moment (``lease_reuse_s``)
instead of releasing it, and the next request of the same flow (tenant, pool, band) on this
replica takes it over and starts at once, with no Redis round trip on its path. One script
call, sent off the request path (``reuse.lua``), settles the finished request's service,
charges the new one's input as a grant would, and holds the new one's tokens, which may not
exceed what the lease held: every budget holds exactly as if the lease had been released and
granted again, and the replica makes one script call per request instead of two.

Reuse stops as soon as requests wait anywhere, and the leases held are released, so that fair
order decides again who runs next: the first request to wait is announced to every replica on
pub/sub (``contended``), and every answer from Redis says whether requests wait. A request that
took a held lease before the news arrived runs (the lease was the replica's); that is the most
reuse can take ahead of fair order. Reuse also stops when the lease's backend closes (down,
busy or drained). A lease no request takes within the moment is released; so is every held lease
at shutdown. A replica that dies holding leases loses them with the lease TTL, like any lease.
Backends with a prefill cap never reuse (their hold lasts until a request's first output).

A request with quotas must have its charge taken before it runs. So that it need not wait for a
script call either, a lease of a tenant with quotas takes a *credit* as it goes on the shelf:
one script call, off any request's path, charges its quotas one request and the lease's tokens
(the most any request taking the lease may hold). The next request of the flow, if its limits
are the credit's, runs on it at once, and its reuse call gives back the tokens the credit held
beyond its own. A credit nobody spends goes back with the lease's release; one the quotas
refused leaves the next request to take its charge in its reuse call, and to be refused there.
Quotas are never exceeded: a credit is charged before it is spent. What it costs is a request's
worth of each quota taken up to ``lease_reuse_s`` early, and one more script call per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from admission.quota import Charge, QuotaPart

#: A flow: tenant, pool, band ('' for the tenant's own).
Flow = tuple[str, str, str]


@dataclass
class HeldLease:
    """A finished request's lease, waiting for the next request of its flow."""

    lease_id: str
    backend: str
    tokens: int  # what the lease holds in Redis: the most a request taking it may need
    used: float | None  # service the finished request used, settled when the lease moves on
    correction: QuotaPart | None = None  # the finished request's quota correction, likewise
    #: With quotas: the credit taken ahead for the next request (its charge, None if refused or
    #: unknown), charged while the lease waits on the shelf
    credit: asyncio.Future[Charge | None] | None = None
    timer: asyncio.TimerHandle | None = None


class LeaseShelf:
    """The leases one replica holds for reuse, by flow; each lets go after ``hold_s``."""

    def __init__(self, hold_s: float, let_go: Callable[[HeldLease], None]) -> None:
        self.hold_s = hold_s
        self._let_go = let_go
        self._held: dict[Flow, list[HeldLease]] = {}

    def put(self, flow: Flow, held: HeldLease) -> None:
        held.timer = asyncio.get_running_loop().call_later(self.hold_s, self._expired, flow, held)
        self._held.setdefault(flow, []).append(held)

    def take(self, flow: Flow, tokens: int, backend: str = "") -> HeldLease | None:
        """The most recently held lease of ``flow`` big enough for ``tokens`` (on ``backend``,
        if the request prefers one), no longer held; None if there is none."""
        shelf = self._held.get(flow) or []
        for index in range(len(shelf) - 1, -1, -1):
            held = shelf[index]
            if held.tokens >= tokens and backend in ("", held.backend):
                self._remove(flow, index)
                return held
        return None

    def take_all(self) -> list[HeldLease]:
        """Every held lease, no longer held (to be released)."""
        everything = [held for shelf in self._held.values() for held in shelf]
        self._held.clear()
        for held in everything:
            if held.timer is not None:
                held.timer.cancel()
        return everything

    def _remove(self, flow: Flow, index: int) -> None:
        shelf = self._held[flow]
        held = shelf.pop(index)
        if not shelf:
            del self._held[flow]
        if held.timer is not None:
            held.timer.cancel()

    def _expired(self, flow: Flow, held: HeldLease) -> None:
        shelf = self._held.get(flow, [])
        for index, candidate in enumerate(shelf):
            if candidate is held:
                self._remove(flow, index)
                self._let_go(held)
                return
