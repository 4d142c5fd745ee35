"""Per-tenant quotas (requests and tokens per minute or day), shared by every replica.

Enforced in Redis, in the same atomic step as admission: a request's charge travels with its
ticket and is taken by the script that queues or runs it (``lua/enqueue.lua``, or
``lua/reuse.lua`` when it takes over a finished request's lease), before anything else: a
request over a quota is refused (429) having changed nothing, and a request within them costs
no Redis round trip of its own. The tenant's state is one hash in the admission domain
(``P.quota:<tenant>``, ``lua/lib/quota.lua``), so that the scripts that touch it touch one Redis
Cluster slot. The algorithm is GCRA (the generic cell rate algorithm) rather than a sliding
window: it keeps one number per limit (when its budget would be whole again) instead of a log
of every request, so a check is O(1) in time and memory whatever the rate; a cost of any size
(a request's tokens) is one subtraction; and giving tokens back at completion is as cheap as
taking them. Its window rolls continuously: a budget refills at ``limit / period`` rather
than all at once at the top of a minute, so no burst of twice the limit straddles a boundary.

Tokens are charged at admission with :attr:`~estimators.cost.Cost.inflight_tokens` (prompt
plus the likely, p90, output): the same reservation admission holds against the tenant's
token budget, so a burst of huge prompts is refused before any of it runs, and a typical
request is over- rather than under-charged. At completion the charge is corrected to the
engine's usage (prompt + completion tokens), freeing what was charged but not used: in the
script call that releases the lease or passes it on. The tokens of a request that was charged
but never ran (refused later by admission, abandoned, unreachable engine) go back on their own
(``lua/quota.lua``). A tenant without quotas costs nothing: no limits, no quota work in Redis.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Literal

from redis.exceptions import RedisError

from admission.errors import AdmissionUnavailable, Refused
from admission.policy import standalone
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import RedisClient, Script
from fairgate.settings import QuotaConfig, QuotaLimits, Settings

log = logging.getLogger(__name__)

Kind = Literal["requests", "tokens"]

_MINUTE_MS, _DAY_MS = 60_000, 86_400_000
#: Quota configs and models whose limits a process keeps at most.
_MAX_CACHED = 4096
#: The correction script of requests that never ran (it needs none of the admission policy).
SOURCE = standalone("quota")


@dataclass(frozen=True)
class Limit:
    """One limit that applies to a request: its field in the tenant's hash, and its rate."""

    field: str  # e.g. ``rpm`` or ``m:<model>:tpm``
    kind: Kind
    limit: int
    period_ms: int
    setting: str  # how the config names it: ``tokens_per_minute``
    model: str | None = None  # the model it is of (None: the tenant's own)

    @property
    def name(self) -> str:
        """The limit as messages name it: ``tokens_per_minute of model 'x'``."""
        return self.setting if self.model is None else f"{self.setting} of model {self.model!r}"


@dataclass(frozen=True)
class LimitState:
    """A limit after a check: what is left of it and in how long it is whole again."""

    limit: Limit
    remaining: int
    reset_ms: int


@dataclass(frozen=True)
class QuotaState:
    """Every limit of one request after its check (the headers report the binding ones)."""

    limits: tuple[LimitState, ...]

    def binding(self, kind: Kind) -> LimitState | None:
        """The limit of ``kind`` with the least remaining (None if none of that kind)."""
        of_kind = [s for s in self.limits if s.limit.kind == kind]
        return min(of_kind, key=lambda s: (s.remaining, -s.reset_ms)) if of_kind else None


class QuotaExceeded(Refused):
    """The tenant's requests or tokens per minute or day would exceed a quota.

    ``state`` is what is left of each of its quotas (:class:`QuotaState`),
    which the gateway reports in the rate-limit headers of the refusal too.
    """

    def __init__(self, message: str, retry_after_s: float, state: QuotaState) -> None:
        super().__init__(message, retry_after_s)
        self.state = state


def limits_of(config: QuotaConfig, model: str) -> tuple[Limit, ...]:
    """The limits a request for ``model`` is checked against: the tenant's, then the model's."""
    found = _limits(config, None)
    if (per_model := config.models.get(model)) is not None:
        found += _limits(per_model, model)
    return found


def all_limits(config: QuotaConfig) -> tuple[Limit, ...]:
    """Every limit of a tenant: its own, then each model's (in the config's order)."""
    found = _limits(config, None)
    for model, per_model in config.models.items():
        found += _limits(per_model, model)
    return found


def _limits(config: QuotaLimits, model: str | None) -> tuple[Limit, ...]:
    field = "" if model is None else f"m:{model}:"
    candidates: list[tuple[str, Kind, int | None, int, str]] = [
        ("rpm", "requests", config.requests_per_minute, _MINUTE_MS, "requests_per_minute"),
        ("tpm", "tokens", config.tokens_per_minute, _MINUTE_MS, "tokens_per_minute"),
        ("tpd", "tokens", config.tokens_per_day, _DAY_MS, "tokens_per_day"),
    ]
    return tuple(
        Limit(field + short, kind, limit, period, name, model)
        for short, kind, limit, period, name in candidates
        if limit is not None
    )


def retry_after_s(wait_ms: int) -> int:
    """Whole seconds until a refused request would fit (rounded up, at least one)."""
    return max(1, math.ceil(wait_ms / 1000))


def _amount(limit: Limit, tokens: int) -> int:
    return 1 if limit.kind == "requests" else tokens


@dataclass(frozen=True)
class QuotaPart:
    """One step on a tenant's quotas inside an admission script call (a *quota part*, as
    ``lua/lib/quota.lua`` reads it): a ``charge`` takes every amount or none, a ``credit`` too
    but only while every limit has room for twice as much (taken ahead, see
    :meth:`QuotaAsk.credit`), a ``correct``
    moves each limit by its amount (negative: gives tokens back), a ``peek`` changes nothing
    and reports where each limit stands; a ``retry`` is a correction sent again after the
    release it rode on failed, applied only if that release had not run (see :meth:`retried`)."""

    mode: Literal["charge", "credit", "correct", "retry", "peek"]
    tenant: str
    amounts: tuple[tuple[Limit, int], ...]

    def retried(self) -> QuotaPart:
        """This correction sent again with a release that Redis may have run already (its
        answer was lost): ``release.lua`` applies it only while the lease is still there, since
        the release that ran took the lease and applied it once."""
        return replace(self, mode="retry")

    def args(self) -> list[str | int]:
        args: list[str | int] = [self.mode, self.tenant, len(self.amounts)]
        for limit, amount in self.amounts:
            args += [limit.field, limit.limit, limit.period_ms, amount]
        return args


@dataclass(frozen=True)
class QuotaAsk:
    """What one request asks of its tenant's quotas: one request, and ``tokens`` of every
    token limit. Its ticket carries it to the admission script that queues or runs it."""

    tenant: str
    limits: tuple[Limit, ...]
    tokens: int

    @property
    def part(self) -> QuotaPart:
        return QuotaPart(
            "charge", self.tenant, tuple((lim, _amount(lim, self.tokens)) for lim in self.limits)
        )

    def credit(self, tokens: int) -> QuotaPart:
        """The charge of a request yet to come, taken ahead by a lease held for reuse: one
        request and ``tokens`` (the lease's) of these limits, taken only while the quotas have
        room for as much again (``credit`` in lua/lib/quota.lua), so that a credit taken early
        never refuses a request of the tenant that comes another way and would have fitted."""
        amounts = tuple((lim, _amount(lim, tokens)) for lim in self.limits)
        return QuotaPart("credit", self.tenant, amounts)

    @property
    def answer_length(self) -> int:
        """How many values the script's answer to the charge has: fits, wait, then two a limit."""
        return 2 + 2 * len(self.limits)

    def answer(self, values: list[int]) -> Charge:
        """The charge taken, from the script's answer; :class:`QuotaExceeded` if it refused."""
        state = _state(self.limits, values[2:])
        if not values[0]:
            raise QuotaExceeded(
                _refusal(self.tenant, state, self.tokens), retry_after_s(values[1]), state
            )
        return Charge(self.tenant, self.limits, self.tokens, state)


@dataclass(frozen=True)
class Charge:
    """What one request took of its tenant's quotas, to correct at completion."""

    tenant: str
    limits: tuple[Limit, ...]
    tokens: int
    state: QuotaState

    def correction(self, tokens_used: int) -> QuotaPart | None:
        """The tokens charged corrected to those used (None: nothing to correct)."""
        delta = tokens_used - self.tokens
        tokens = tuple((lim, delta) for lim in self.limits if lim.kind == "tokens")
        return QuotaPart("correct", self.tenant, tokens) if delta and tokens else None

    def fits(self, ask: QuotaAsk) -> bool:
        """Whether this charge, taken ahead as a credit, covers ``ask``: the same tenant and
        limits (a request for a model with limits of its own is not), no more tokens."""
        return ask.tenant == self.tenant and ask.limits == self.limits and ask.tokens <= self.tokens

    def spent_on(self, ask: QuotaAsk) -> tuple[Charge, QuotaPart | None]:
        """This credit spent on ``ask`` (which it :meth:`fits`): the charge as that request
        took it (what is left of each token limit counting only its own tokens), and the
        correction that gives back the tokens the credit held beyond them."""
        spare = self.tokens - ask.tokens
        state = QuotaState(
            tuple(
                replace(s, remaining=min(s.limit.limit, s.remaining + spare))
                if s.limit.kind == "tokens"
                else s
                for s in self.state.limits
            )
        )
        return Charge(self.tenant, self.limits, ask.tokens, state), self.correction(ask.tokens)


def merged(*parts: QuotaPart | None) -> QuotaPart | None:
    """Corrections of one tenant's quotas as one (amounts of the same limit added up, those
    that cancel out dropped); None if nothing is left to correct. Script calls carry one
    correction: a lease passing on may owe both its request's and what its spent credit held
    beyond the next request's tokens."""
    present = [part for part in parts if part is not None]
    if len(present) <= 1:
        return present[0] if present else None
    totals: dict[str, tuple[Limit, int]] = {}
    for part in present:
        for limit, amount in part.amounts:
            before = totals.get(limit.field, (limit, 0))[1]
            totals[limit.field] = (limit, before + amount)
    amounts = tuple((lim, amount) for lim, amount in totals.values() if amount)
    return QuotaPart("correct", present[0].tenant, amounts) if amounts else None


class Quotas:
    """The quotas of one gateway process: what a request asks of them, and the corrections
    made apart from any lease.

    The charge itself is admission's (:meth:`admission.controller.Admission.acquire`), so with
    Redis unreachable quotas follow ``admission.fail_mode`` as admission does: closed refuses
    (503), open lets the request on unchecked (admission's per-replica limits still hold).
    """

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._script = Script(redis, SOURCE)
        self._keys = [AdmissionKeys.of(settings.redis.key_prefix).prefix]
        #: The limits of a tenant's quotas for a model, by the config's identity (kept with
        #: it, so that the identity is not reused): they are asked for on every request.
        self._limits: dict[tuple[int, str], tuple[QuotaConfig, tuple[Limit, ...]]] = {}

    def ask(
        self, tenant: str, config: QuotaConfig | None, model: str, tokens: int
    ) -> QuotaAsk | None:
        """What a request for ``model`` of ``tokens`` asks of the tenant's quotas; None if no
        limit applies (then it costs nothing)."""
        if config is None:
            return None
        key = (id(config), model)
        cached = self._limits.get(key)
        if cached is None or cached[0] is not config:
            if len(self._limits) >= _MAX_CACHED:
                self._limits.clear()  # tenants were changed many times: start again
            cached = self._limits[key] = (config, limits_of(config, model))
        limits = cached[1]
        return QuotaAsk(tenant, limits, tokens) if limits else None

    async def peek(self, tenant: str, config: QuotaConfig | None) -> QuotaState | None:
        """Where every quota of the tenant stands now, taking nothing (None if it has none).

        The script computes it (mode ``peek``), so the arithmetic stays in one place; with
        Redis unreachable this raises :class:`AdmissionUnavailable` whatever the fail mode
        (there is nothing to let through, only nothing to report).
        """
        limits = all_limits(config) if config is not None else ()
        if not limits:
            return None
        part = QuotaPart("peek", tenant, tuple((lim, 0) for lim in limits))
        try:
            reply = [int(v) for v in await self._script(self._keys, part.args())]
        except RedisError as exc:
            raise AdmissionUnavailable(f"Quotas cannot be read: {exc}") from exc
        return _state(limits, reply[2:])

    async def correct(self, charge: Charge, tokens_used: int) -> None:
        """Correct the tokens charged to those used (fewer give the difference back), on their
        own: for a request that holds no lease (it never ran)."""
        correction = charge.correction(tokens_used)
        if correction is not None:
            try:
                await self._script(self._keys, correction.args())
            except RedisError as exc:  # the estimate stays charged
                log.warning("quota of tenant %s not corrected: %s", charge.tenant, exc)


def _state(limits: tuple[Limit, ...], values: list[int]) -> QuotaState:
    pairs = zip(values[0::2], values[1::2], strict=True)
    return QuotaState(
        tuple(LimitState(lim, rem, reset) for lim, (rem, reset) in zip(limits, pairs, strict=True))
    )


def _refusal(tenant: str, state: QuotaState, tokens: int) -> str:
    """The client's message: the exhausted limit, and whether waiting can help at all."""
    for s in state.limits:
        if s.limit.kind == "tokens" and tokens > s.limit.limit:
            return (
                f"The request's estimated {tokens} tokens exceed tenant '{tenant}''s "
                f"{s.limit.name} quota of {s.limit.limit}; lower max_tokens or the prompt."
            )
    short = [s for s in state.limits if s.remaining < _amount(s.limit, tokens)]
    exhausted = short[0] if short else state.limits[0]
    return f"Tenant '{tenant}' reached its {exhausted.limit.name} quota of {exhausted.limit.limit}."
