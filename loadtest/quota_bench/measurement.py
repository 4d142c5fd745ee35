"""The measurement of the quota benchmark: the overload, its windows, and their figures.

Each tenant's window starts :data:`SETTLE_S` after its first refusal (its burst is spent) and
lasts the run's window; the overload goes on until every tenant's window has ended. A request
counts in the window its client sent it in (admission answers within milliseconds: nothing
queues), with the tokens the engine's usage reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from loadtest.quota_bench.workload import BINDING, Answer, overload

#: After a tenant's first refusal, its window starts this much later.
SETTLE_S = 1.0
#: A tenant must be refused within this long of the start (else its quota is not overloaded).
MAX_BURST_S = 60.0
#: The most the admitted load may stray from the limit's rate over a window.
TOLERANCE = 0.05


@dataclass(frozen=True)
class Window:
    """One tenant's measurement window and what was admitted and refused in it."""

    tenant: str
    kind: str  # what its binding limit counts: requests or tokens
    limit: int  # per minute
    start: float  # seconds since the load started
    seconds: float
    admitted: int  # requests answered 200
    tokens: int  # their tokens, by the engine's usage
    refused: int  # requests answered 429
    #: Answers that were neither a 200 nor a 429 with Retry-After and ``rate_limit_exceeded``.
    other: int
    burst: int  # requests (or tokens) admitted before the first refusal

    @property
    def expected(self) -> float:
        """What the limit's rate allows over the window."""
        return self.limit * self.seconds / 60

    @property
    def measured(self) -> int:
        return self.admitted if self.kind == "requests" else self.tokens

    @property
    def per_minute(self) -> float:
        return self.measured * 60 / self.seconds

    @property
    def deviation(self) -> float:
        """The admitted load over the limit's rate, minus one."""
        return self.measured / self.expected - 1

    @property
    def held(self) -> bool:
        return abs(self.deviation) <= TOLERANCE and self.other == 0


def window_of(tenant: str, answers: list[Answer], refused_at: float, seconds: float) -> Window:
    """Tenant ``tenant``'s window, from its first refusal (seconds since the start)."""
    kind, limit = BINDING[tenant]
    start = refused_at + SETTLE_S
    mine = [a for a in answers if a.tenant == tenant]
    inside = [a for a in mine if start <= a.sent < start + seconds]
    admitted = [a for a in inside if a.status == 200]
    before = [a for a in mine if a.sent < refused_at and a.status == 200]
    return Window(
        tenant,
        kind,
        limit,
        start,
        seconds,
        len(admitted),
        sum(a.tokens for a in admitted),
        sum(a.status == 429 for a in inside),
        sum(not _ok(a) for a in mine),
        len(before) if kind == "requests" else sum(a.tokens for a in before),
    )


def _ok(answer: Answer) -> bool:
    """A 200, or a quota's refusal: 429 with a Retry-After and OpenAI's code."""
    if answer.status == 200:
        return True
    return (
        answer.status == 429
        and answer.retry_after is not None
        and answer.retry_after.isdigit()
        and int(answer.retry_after) >= 1
        and answer.code == "rate_limit_exceeded"
    )


async def measure(urls: list[str], keys: Mapping[str, str], seconds: float) -> list[Window]:
    """Overload every tenant of ``keys`` through ``urls`` until each has had a window of
    ``seconds`` after its burst; each tenant's window."""
    answers: list[Answer] = []
    stop = asyncio.Event()
    started = time.monotonic()
    load = asyncio.create_task(overload(urls, keys, stop, answers, started))
    try:
        refused = await _first_refusals(set(keys), answers, load)
        end = max(refused.values()) + SETTLE_S + seconds
        await asyncio.sleep(max(0.0, started + end - time.monotonic()))
    finally:
        stop.set()
        await load
    return [window_of(t, answers, refused[t], seconds) for t in sorted(keys)]


async def _first_refusals(
    tenants: set[str], answers: list[Answer], load: asyncio.Task[None]
) -> dict[str, float]:
    """When each tenant was first refused (seconds since the start of the load)."""
    refused: dict[str, float] = {}
    seen = 0
    deadline = time.monotonic() + MAX_BURST_S
    while set(refused) != tenants:
        if load.done():
            await load  # raises what stopped the load
            raise RuntimeError("the load stopped before every tenant was refused")
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(tenants - set(refused)))
            raise RuntimeError(f"not refused within {MAX_BURST_S:g} s: {missing}")
        for answer in answers[seen:]:
            if answer.status == 429:
                refused.setdefault(answer.tenant, answer.sent)
        seen = len(answers)
        await asyncio.sleep(0.05)
    return refused
