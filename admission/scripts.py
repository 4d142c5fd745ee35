"""The admission Lua scripts, loaded once per Redis client.

Each state change of admission is one script: one atomic step on the Redis server. Each entry
script (``lua/enqueue.lua``, ``lua/release.lua``, ...) is composed with the shared functions and
the parts of the configured policy (:mod:`admission.policy`; Redis has no ``require``).
``KEYS[1]`` is always the admission domain's key prefix; every other key shares its hash tag,
so the scripts also run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from admission.batching import ScriptBatch
from admission.policy import AdmissionPolicy
from admission.quota import QuotaPart
from admission.ticket import Ticket
from fairgate.pubsub import publish_command
from fairgate.redis_client import RedisClient, Script, text
from fairgate.resp import Arg


def _pairs(values: list[bytes | str]) -> list[tuple[str, str]]:
    """``[id, backend, id, backend, ...]`` as pairs."""
    items = [text(v) for v in values]
    return list(zip(items[0::2], items[1::2], strict=True))


@dataclass(frozen=True)
class QueuePlace:
    """Where a request stood when it arrived: its tenant's requests already queued ahead of it
    (in its band; its own order is arrival order) and every request queued in its pool. Both
    are 0 when nothing waited anywhere (it ran at once). A trace's ``fairgate.queue.*``."""

    ahead: int = 0
    depth: int = 0


#: The place of a request that found nothing waiting.
AT_ONCE = QueuePlace()


@dataclass(frozen=True)
class Decision:
    """What a script decided: the state of the request asked about, and every grant made."""

    state: str
    backend: str
    grants: list[tuple[str, str]]
    #: Whether a finished lease may be held for reuse now: nothing waits anywhere (and, from
    #: ``reuse``, the lease's backend is open). See :mod:`admission.reuse`.
    may_reuse: bool = False
    #: The quota script part's answer to the request's charge (see ``lua/lib/quota.lua``), when
    #: it had one and the script got as far as taking it.
    quota: list[int] = field(default_factory=list)
    #: enqueue's answer: where the request stood on arrival.
    place: QueuePlace = AT_ONCE


#: release.lua's first answer
_RELEASED = ("gone", "released", "held")
#: reuse.lua's first answer
_REUSED = ("gone", "reused", "quota")
#: enqueue.lua's states that answer a place on arrival and a quota charge
_CHARGED = frozenset(("granted", "queued", "full", "quota"))
#: The entry scripts whose calls of one event-loop turn go as one call (admission/batching.py):
#: those made after a request (releases, charges, reuses, the quota credits of held leases), and
#: the reuse a request with quotas waits for (held back one event-loop turn for its share).
BATCHED = ("release", "reuse", "charge", "credit")


def _quota_args(*parts: QuotaPart | None) -> list[str | int]:
    return [arg for part in parts if part is not None for arg in part.args()]


class AdmissionScripts:
    """Typed calls of the admission scripts for one admission domain.

    Calls are bounded by the channel's deadline (``redis.timeout_s``): past it they raise
    redis-py's ``TimeoutError``, a ``RedisError`` like every other Redis failure.
    """

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        ttl_ms: int,
        max_grants: int,
        policy: AdmissionPolicy | None = None,
    ) -> None:
        self._keys = [prefix]
        self._ttl = ttl_ms
        self._max = max_grants
        self.policy = policy or AdmissionPolicy()

        publish = publish_command(redis)

        def load(entry: str) -> Script:
            # the scripts derive their keys from KEYS[1]: never run on a slot half migrated
            return Script(redis, self.policy.compose(entry, publish), keys_declared=False)

        self._enqueue = load("enqueue")
        self._release = load("release")
        self._charge = load("charge")
        self._renew = load("renew")
        self._cancel = load("cancel")
        self._tick = load("tick")
        self._engine = load("engine")
        self._reuse = load("reuse")
        self._credit = load("credit")
        self._batched = Script(
            redis, self.policy.compose_batch(BATCHED, publish), keys_declared=False
        )
        alone = {"release": self._release, "reuse": self._reuse, "charge": self._charge}
        alone["credit"] = self._credit
        self._batch = ScriptBatch(self._batched, self._keys, alone)

    async def preload(self) -> None:
        """Load every script into Redis before the first request needs it: a call answered
        ``NOSCRIPT`` goes again a round trip later, and a request's charge would then reach
        Redis after its release (which finds its lease gone)."""
        scripts = [self._enqueue, self._release, self._charge, self._renew, self._cancel]
        scripts += [self._tick, self._engine, self._reuse, self._credit, self._batched]
        await asyncio.gather(*(script.load() for script in scripts))

    async def enqueue(self, ticket: Ticket, owner: str) -> Decision:
        """Ask for ``ticket`` to run; ``owner`` is the replica that waits for it. ``granted``
        (on ``backend``), ``queued`` or ``full``; ``quota`` (the ticket's quota charge was
        refused: nothing changed); or ``unknown_tenant``, ``unknown_pool`` (Redis lacks the
        config) or ``duplicate``."""
        args: list[str | int | float] = [ticket.request_id, ticket.tenant, ticket.tokens]
        args += [ticket.service, ticket.pool, ticket.band, owner, int(ticket.timeout_s * 1000)]
        args += [self._ttl, self._max, ticket.prompt_tokens, ticket.prefer, ticket.prefer_slack]
        ask = ticket.quota
        if ask is not None:
            args += ask.part.args()
        result = await self._enqueue(self._keys, args)
        state = text(result[0])
        if state not in _CHARGED:  # refused before its place or its quota was looked at
            return Decision(state, text(result[1]), [])
        place = QueuePlace(int(result[2]), int(result[3]))
        answered = ask.answer_length if ask is not None else 0
        quota, grants = [int(v) for v in result[4 : 4 + answered]], _pairs(result[4 + answered :])
        # granted with no grant listed: the fast path, taken only while nothing waits
        fast = state == "granted" and not grants
        return Decision(state, text(result[1]), grants, fast, quota, place)

    async def release(
        self,
        request_id: str,
        service: float | None,
        hold_ms: int = 0,
        correction: QuotaPart | None = None,
    ) -> Decision:
        """End a lease: ``released`` (or ``gone``), or ``held`` for the next request of its
        tenant for up to ``hold_ms`` (see ``hold_for_next`` in lib/dispatch.lua): then it is to
        be released again when the hold ends. ``correction``: its request's quota correction,
        applied in the same step (whatever became of the lease)."""
        used = "" if service is None else service
        args = [request_id, used, self._ttl, self._max, hold_ms, *_quota_args(correction)]
        result = await self._batch.call("release", args)
        state = _RELEASED[int(result[0])]
        return Decision(state, "", _pairs(result[2:]), may_reuse=not int(result[1]))

    async def reuse(
        self,
        lease_id: str,
        used: float | None,
        next_: Ticket,
        correction: QuotaPart | None = None,
        spends_credit: bool = False,
    ) -> Decision:
        """Pass a finished request's lease (``used``: its service) to ``next_``, the next
        request of its flow (its tokens held, its input service charged); in the same step,
        apply the finished request's quota ``correction``, spend the lease's credit
        (``spends_credit``: ``next_`` ran on it) or give it back, and take ``next_``'s quota
        charge.

        ``reused``, ``gone``, or ``quota`` (the charge was refused; the lease was not passed
        on); ``may_reuse`` if nothing waits anywhere and the lease's backend is open.
        """
        used_arg = "" if used is None else used
        args: list[str | int | float] = [lease_id, used_arg, next_.tokens, next_.service]
        args += [self._ttl, self._max, "1" if spends_credit else ""]
        ask = next_.quota
        args += _quota_args(correction, ask.part if ask is not None else None)
        result = await self._batch.call("reuse", args)
        state = _REUSED[int(result[0])]
        answered = ask.answer_length if ask is not None and state != "gone" else 0
        quota, grants = [int(v) for v in result[2 : 2 + answered]], _pairs(result[2 + answered :])
        return Decision(state, "", grants, may_reuse=bool(int(result[1])), quota=quota)

    async def credit(self, lease_id: str, part: QuotaPart) -> list[int]:
        """Take a credit (``part``) on a lease held for reuse, kept on the lease until the
        lease passes on or ends (``lua/credit.lua``): the part's answer, empty if the lease is
        gone or keeps one already."""
        return [int(v) for v in await self._batch.call("credit", [lease_id, *part.args()])]

    async def charge(self, request_id: str, service: float) -> Decision:
        """Charge streamed output (``charged``, or ``gone``); ends the request's prefill hold,
        so the grants that freed are returned."""
        args: list[Arg] = [request_id, service, self._ttl, self._max]
        return _charged(await self._batch.call("charge", args))

    async def charge_all(self, charges: list[tuple[str, float]]) -> list[Decision | Exception]:
        """Charge several requests' streamed output in one script call (as :meth:`charge`
        each): each one's decision, or its error."""
        calls: list[list[Arg]] = [[i, service, self._ttl, self._max] for i, service in charges]
        replies = await self._batch.call_all("charge", calls)
        return [r if isinstance(r, Exception) else _charged(r) for r in replies]

    async def renew(self, request_ids: list[str]) -> list[str]:
        """Renew expiries; returns the ids that no longer exist."""
        if not request_ids:
            return []
        lost = await self._renew(self._keys, [self._ttl, *request_ids])
        return [text(v) for v in lost]

    async def cancel(self, request_id: str) -> Decision:
        result = await self._cancel(self._keys, [request_id, self._ttl, self._max])
        return Decision(text(result[0]), text(result[1]), _pairs(result[2:]))

    async def tick(self) -> list[tuple[str, str]]:
        return _pairs(await self._tick(self._keys, [self._ttl, self._max]))

    async def engine(
        self, backend: str, busy_ms: int, tokens: int | None, budget: int | None, ttl_ms: int
    ) -> list[tuple[str, str]]:
        """Record an engine's reported load (see ``engine.lua``); returns the grants made."""
        args = [backend, busy_ms, "" if tokens is None else tokens]
        args += ["" if budget is None else budget, ttl_ms, self._ttl, self._max]
        return _pairs(await self._engine(self._keys, args))


def _charged(result: list[Any]) -> Decision:
    """``charge.lua``'s answer."""
    return Decision("charged" if int(result[0]) else "gone", "", _pairs(result[1:]))
