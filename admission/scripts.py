"""The admission Lua scripts, loaded once per Redis client.

Each state change of admission is one script: one atomic step on the Redis server. The
scripts share their functions through ``lua/lib.lua``, which is prepended to each entry script
(Redis has no ``require``). ``KEYS[1]`` is always the admission domain's key prefix; every
other key shares its hash tag, so the scripts also run on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from admission.ticket import Ticket
from fairgate.redis_client import GatewayRedis, Script, text

_LUA = resources.files("admission").joinpath("lua")
_LIB = _LUA.joinpath("lib.lua").read_text()


def _load(redis: GatewayRedis, name: str) -> Script:
    return Script(redis, _LIB + "\n" + _LUA.joinpath(f"{name}.lua").read_text())


def _pairs(values: list[bytes | str]) -> list[tuple[str, str]]:
    """``[id, backend, id, backend, ...]`` as pairs."""
    items = [text(v) for v in values]
    return list(zip(items[0::2], items[1::2], strict=True))


@dataclass(frozen=True)
class Decision:
    """What a script decided: the state of the request asked about, and every grant made."""

    state: str
    backend: str
    grants: list[tuple[str, str]]
    #: Whether a finished lease may be held for reuse now: nothing waits anywhere (and, from
    #: ``reuse``, the lease's backend is open). See :mod:`admission.reuse`.
    may_reuse: bool = False


#: release.lua's first answer
_RELEASED = ("gone", "released", "held")


class AdmissionScripts:
    """Typed calls of the admission scripts for one admission domain.

    Calls are bounded by the channel's deadline (``redis.timeout_s``): past it they raise
    redis-py's ``TimeoutError``, a ``RedisError`` like every other Redis failure.
    """

    def __init__(self, redis: GatewayRedis, prefix: str, ttl_ms: int, max_grants: int) -> None:
        self._keys = [prefix]
        self._ttl = ttl_ms
        self._max = max_grants
        self._enqueue = _load(redis, "enqueue")
        self._release = _load(redis, "release")
        self._charge = _load(redis, "charge")
        self._renew = _load(redis, "renew")
        self._cancel = _load(redis, "cancel")
        self._tick = _load(redis, "tick")
        self._engine = _load(redis, "engine")
        self._reuse = _load(redis, "reuse")

    async def enqueue(self, ticket: Ticket, owner: str) -> Decision:
        """Ask for ``ticket`` to run; ``owner`` is the replica that waits for it. ``granted``
        (on ``backend``), ``queued`` or ``full``; or ``unknown_tenant``, ``unknown_pool``
        (Redis lacks the config) or ``duplicate``."""
        args = [ticket.request_id, ticket.tenant, ticket.tokens, ticket.service, ticket.pool]
        args += [ticket.band, owner, int(ticket.timeout_s * 1000), self._ttl, self._max]
        args += [ticket.prompt_tokens, ticket.prefer, ticket.prefer_slack]
        result = await self._enqueue(self._keys, args)
        state, grants = text(result[0]), _pairs(result[2:])
        # granted with no grant listed: the fast path, taken only while nothing waits
        return Decision(state, text(result[1]), grants, state == "granted" and not grants)

    async def release(self, request_id: str, service: float | None, hold_ms: int = 0) -> Decision:
        """End a lease: ``released`` (or ``gone``), or ``held`` for the next request of its
        tenant for up to ``hold_ms`` (see ``hold_for_next`` in lib.lua): then it is to be
        released again when the hold ends."""
        used = "" if service is None else service
        args = [request_id, used, self._ttl, self._max, hold_ms]
        result = await self._release(self._keys, args)
        state = _RELEASED[int(result[0])]
        return Decision(state, "", _pairs(result[2:]), may_reuse=not int(result[1]))

    async def reuse(
        self, lease_id: str, used: float | None, tokens: int, service: float
    ) -> Decision:
        """Pass a finished request's lease (``used``: its service) to the next of its flow.

        ``reused`` (or ``gone``); ``may_reuse`` if nothing waits anywhere and the lease's
        backend is open.
        """
        args = [lease_id, "" if used is None else used, tokens, service, self._ttl, self._max]
        result = await self._reuse(self._keys, args)
        state = "reused" if int(result[0]) else "gone"
        return Decision(state, "", _pairs(result[2:]), may_reuse=bool(int(result[1])))

    async def charge(self, request_id: str, service: float) -> Decision:
        """Charge streamed output (``charged``, or ``gone``); ends the request's prefill hold,
        so the grants that freed are returned."""
        result = await self._charge(self._keys, [request_id, service, self._ttl, self._max])
        return Decision("charged" if int(result[0]) else "gone", "", _pairs(result[1:]))

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
