"""Per-tenant usage: requests, tokens and refusals per model and UTC day, shared by replicas.

What a tenant used is an operator's billing and capacity question, asked over days, so it is
counted per tenant, model and UTC day in Redis (:func:`fairgate.keys.usage`), which every
replica adds to. Counting must cost the request path nothing it would notice: a request or
refusal is a dict increment in memory, and each replica writes what it counted in one
batch every ``admin.usage_flush_s`` (or as soon as many events are pending), off the response
path, as the estimators batch their feedback: one ``usage.lua`` call per tenant and day, which
adds that part's counts exactly once. A part whose answer did not come (Redis down, a timeout,
a Cluster slot moving under it) may have run or not; it is sent again, as it was, with the same
number, and Redis skips it if it had run; meanwhile that tenant's newer counts wait, so each
replica's parts of a day arrive in order. What is pending at shutdown is written then.

Each day's hash expires ``admin.usage_retention_days`` after the day began, so Redis holds a
bounded window, and reads may not ask for days before it. Only models some pool serves are
named (a refusal before the model is known, or for a model nobody serves, is counted under
the model ``""``), so a tenant cannot grow its hash with made-up model names.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Literal, get_args

from redis.exceptions import RedisError

from fairgate.keys import usage as usage_key
from fairgate.keys import usage_batches
from fairgate.redis_client import AnyRedis
from fairgate.settings import Settings

log = logging.getLogger(__name__)

USAGE_LUA = resources.files("tenants").joinpath("usage.lua").read_text()

#: Why a request of a known tenant was refused, or failed (see :data:`REASON_MEANINGS`).
Reason = Literal[
    "quota",
    "queue_full",
    "queue_timeout",
    "upstream",
    "invalid_request",
    "permission",
    "unavailable",
    "internal",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
REASON_MEANINGS: dict[Reason, str] = {
    "quota": "Over one of its quotas (429).",
    "queue_full": "max_queued of its requests were waiting already (429).",
    "queue_timeout": "Waited its queue_timeout_s without being admitted (429).",
    "upstream": "No engine reachable, or the engine failed, timed out, died mid-answer, or "
    "answered 5xx, 429, 401 or 403.",
    "invalid_request": "The body, a header or the model was refused (400, 404, 413, or an "
    "engine's other 4xx).",
    "permission": "Not allowed, such as a pool it may not name (403).",
    "unavailable": "Redis unreachable: refused with fail_mode closed (503), or over a "
    "per-replica limit with fail_mode open (429).",
    "internal": "An unexpected error in the gateway (500).",
}

#: A hash field is ``<model><SEP><counter>``: model ids have no NUL (nor any whitespace).
SEP = "\0"
_REJECTED = "rejected:"
#: Pending events after which a replica writes at once instead of waiting for the timer.
FLUSH_EVENTS = 1000


def day_of(timestamp: float) -> date:
    """The UTC day of a Unix timestamp."""
    return datetime.fromtimestamp(timestamp, UTC).date()


def days(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included (none if ``first`` is later)."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def oldest_kept(today: date, retention_days: int) -> date:
    """The first day whose usage is still kept: ``retention_days`` days, today included."""
    return today - timedelta(days=retention_days - 1)


def expires_at(day: date, retention_days: int) -> int:
    """When a day's hash expires (Unix seconds): once it is no longer among the days kept."""
    gone = day + timedelta(days=retention_days)
    return int(datetime(gone.year, gone.month, gone.day, tzinfo=UTC).timestamp())


@dataclass
class Counts:
    """What a tenant did with a model on a day (or over a range, added up)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejections: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def add(self, counter: str, n: int) -> None:
        """Add ``n`` to a counter as the hash names it; one this version does not know (a
        newer replica's reason) is left out rather than failing the read."""
        if counter in ("requests", "prompt_tokens", "completion_tokens"):
            setattr(self, counter, getattr(self, counter) + n)
        elif (reason := counter.removeprefix(_REJECTED)) in self.rejections:
            self.rejections[reason] += n  # type: ignore[index]

    def add_all(self, other: Counts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        for reason, n in other.rejections.items():
            self.rejections[reason] += n


@dataclass(frozen=True)
class DayUsage:
    """One row of a usage report: a tenant's counts for one model on one day."""

    day: date
    model: str
    counts: Counts


def rows_of(day: date, stored: Mapping[bytes | str, bytes | str]) -> list[DayUsage]:
    """A day's hash as rows, one per model, by model id."""
    by_model: dict[str, Counts] = {}
    for raw_field, raw_value in stored.items():
        name = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
        model, sep, counter = name.rpartition(SEP)
        if sep:
            by_model.setdefault(model, Counts()).add(counter, int(raw_value))
    return [DayUsage(day, model, by_model[model]) for model in sorted(by_model)]


def total(rows: Iterable[DayUsage]) -> Counts:
    summed = Counts()
    for row in rows:
        summed.add_all(row.counts)
    return summed


#: One tenant's UTC day.
Day = tuple[str, date]


@dataclass
class _Part:
    """One tenant-day's counts as sent to Redis, numbered (``usage.lua`` adds it once)."""

    tenant: str
    day: date
    counters: Counter[str]
    number: int
    sending: bool = False


class Usage:
    """The usage counters of one gateway process: counts in memory, writes in batches, reads.

    ``clock`` (Unix seconds) decides the day an event counts for: the moment it is counted.
    """

    def __init__(
        self, redis: AnyRedis, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._prefix = settings.redis.key_prefix
        self.retention_days = settings.admin.usage_retention_days
        self._flush_s = settings.admin.usage_flush_s
        self._models = frozenset(m for pool in settings.pools.values() for m in pool.models)
        self._clock = clock
        self._pending: dict[Day, Counter[str]] = {}
        self._unanswered: dict[Day, _Part] = {}  # sent, no answer yet or a failure
        self._batch = 0  # the number of this replica's last part
        self._replica = uuid.uuid4().hex[:16]
        self._script = redis.register_script(USAGE_LUA)
        self._events = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def today(self) -> date:
        return day_of(self._clock())

    async def preload(self) -> None:
        """Make Redis know the usage script before the first flush. Left to its first call,
        redis-py meets ``NOSCRIPT``, loads it and calls again, and the exception it caught is
        left in a reference cycle with its traceback's frames, for the cyclic collector."""
        try:
            await self._redis.script_load(USAGE_LUA)
        except (RedisError, OSError) as exc:
            log.warning("could not load the usage script into Redis: %s", exc)

    # ------------------------------------------------------------------ counting (hot path)

    def completed(
        self, tenant: str, model: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Count a request an engine answered, with the tokens it used."""
        self._count(
            tenant,
            model,
            (
                ("requests", 1),
                ("prompt_tokens", prompt_tokens),
                ("completion_tokens", completion_tokens),
            ),
        )

    def rejected(self, tenant: str, model: str, reason: Reason) -> None:
        """Count a request refused, or failed, for ``reason``."""
        self._count(tenant, model, ((_REJECTED + reason, 1),))

    def _count(self, tenant: str, model: str, counters: Iterable[tuple[str, int]]) -> None:
        if model not in self._models:
            model = ""
        key = (tenant, self.today())
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = Counter()
        for counter, n in counters:
            if n:
                pending[model + SEP + counter] += n
        self._events += 1
        if self._events >= FLUSH_EVENTS:
            self._send_pending()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._send_pending)

    # ------------------------------------------------------------------ writing

    def _send_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._events = self._pending, {}, 0
        parts = self._parts(batch)
        if parts:
            task = asyncio.ensure_future(self._send(parts))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _parts(self, pending: dict[Day, Counter[str]]) -> list[_Part]:
        """What to send now: parts whose answer never came, as they were, and a new numbered
        part for each other tenant and day (a day with a part unanswered keeps its new counts
        pending until that part is through, so that parts are applied in order)."""
        parts = [part for part in self._unanswered.values() if not part.sending]
        for key, counters in pending.items():
            if key in self._unanswered:
                self._pending.setdefault(key, Counter()).update(counters)
            else:
                self._batch += 1
                part = self._unanswered[key] = _Part(key[0], key[1], counters, self._batch)
                parts.append(part)
        return parts

    async def _send(self, parts: list[_Part]) -> None:
        for part in parts:
            part.sending = True
        answers = await asyncio.gather(*(self._apply(p) for p in parts), return_exceptions=True)
        failed = 0
        for part, answer in zip(parts, answers, strict=True):
            part.sending = False
            if isinstance(answer, BaseException):
                if not isinstance(answer, (RedisError, OSError)):
                    raise answer
                failed += 1
                error = answer
            else:
                self._unanswered.pop((part.tenant, part.day), None)
        if failed:
            log.warning("usage not written yet (%d tenant-days, sent again): %s", failed, error)
        if (failed or self._pending) and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._send_pending)

    async def _apply(self, part: _Part) -> None:
        day = part.day.isoformat()
        keys = [
            usage_key(self._prefix, part.tenant, day),
            usage_batches(self._prefix, part.tenant, day),
        ]
        args: list[str | int] = [
            self._replica,
            part.number,
            expires_at(part.day, self.retention_days),
        ]
        for name, n in part.counters.items():
            args += [name, n]
        await self._script(keys=keys, args=args)

    async def flush(self) -> None:
        """Write what this replica counted so far and wait for writes already under way: a
        read after it sees every event this replica counted before it (read your writes)."""
        for _ in range(3):  # counts held back behind a part in flight go once it is through
            self._send_pending()
            if self._sending:
                await asyncio.gather(*self._sending)
            if not self._pending:
                return

    async def close(self) -> None:
        """At shutdown: write what is pending (what Redis does not take then is lost)."""
        await self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        unwritten = [*self._pending.values(), *(p.counters for p in self._unanswered.values())]
        if unwritten:
            lost = Counter[str]()
            for counters in unwritten:
                for name, n in counters.items():
                    lost[name.rpartition(SEP)[2].partition(":")[0]] += n
            log.warning("usage not written at shutdown (Redis unreachable), lost: %s", dict(lost))
            self._pending.clear()
            self._unanswered.clear()

    # ------------------------------------------------------------------ reading

    async def read(self, tenant: str, first: date, last: date) -> list[DayUsage]:
        """The tenant's usage from ``first`` to ``last`` (UTC days, both included), by day
        then model; days and models without any count have no row."""
        span = days(first, last)
        pipe = self._redis.pipeline(transaction=False)
        for day in span:
            pipe.hgetall(usage_key(self._prefix, tenant, day.isoformat()))
        stored = await pipe.execute()
        return [row for day, hash_ in zip(span, stored, strict=True) for row in rows_of(day, hash_)]

    async def kept(self, tenant: str) -> bool:
        """Whether any usage of ``tenant`` is still kept (of a tenant deleted since, say)."""
        today = self.today()
        keys = [
            usage_key(self._prefix, tenant, day.isoformat())
            for day in days(oldest_kept(today, self.retention_days), today)
        ]
        return bool(await self._redis.exists(*keys))
