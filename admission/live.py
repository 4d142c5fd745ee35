"""The live state of admission, as every replica shares it in Redis: one read, one snapshot.

What the admin API's ``/admin/v1/state`` and the status page show of tenants, pools and
backends: requests queued and in flight, tokens in flight, virtual counters, drains, health
and engine-reported KV use, and each tenant's recent share of service next to its weight's.

One read is one ``MULTI``/``EXEC`` of plain reads (all keys share the admission hash tag), so
the numbers are one consistent moment of the domain, not a mix of moments, and cost one round
trip. Everything read is O(tenants + backends), except the leases (each tenant's in-flight
work per pool), whose number the backends' budgets bound: never the queues, which tenants'
``max_queued`` alone bounds.

Recent shares: the scripts add every charge and settlement to a tenant's ``served`` total
(``admission/lua/lib/counters.lua``, one ``HINCRBYFLOAT`` in the script call that already
charges, no round trip of its own). The virtual counters cannot serve instead: they also jump
when a tenant's queue refills and the lift rule raises them to the floor, which is no service,
and a weight change rescales what they mean. A :class:`ServiceWindow` per replica keeps
snapshots of the totals for the last minute (taken every few seconds by :class:`LiveState`'s
sampler, and at each read); the difference between now and the oldest snapshot of the window
is each tenant's service in it. No replica needs another's samples, and the request path does
no work for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from fairgate.keys import AdmissionKeys
from fairgate.redis_client import AnyRedis, text
from fairgate.settings import Settings
from fairgate.tasks import cancel_all

#: The window of recent shares, and how often each replica samples the service totals.
WINDOW_S = 60.0
SAMPLE_EVERY_S = 5.0


@dataclass(frozen=True)
class Load:
    """Requests and estimated tokens (prompt and expected output) held."""

    requests: int = 0
    tokens: int = 0

    def __add__(self, other: Load) -> Load:
        return Load(self.requests + other.requests, self.tokens + other.tokens)


@dataclass(frozen=True)
class TenantLive:
    weight: float
    band: str  # its priority band (admission.domain.band_of)
    queued: int
    in_flight: Load
    by_pool: dict[str, Load]  # in flight, by the pool of the backend it runs on
    counter: float  # its virtual counter: service / weight, lifts included
    recent_service: float  # service charged in the window (service units)
    recent_share: float | None  # of all service in the window (None: no service in it)
    weight_share: float | None  # its fair share among the tenants active now (None: idle)
    backlogged: bool = False  # requests queued now and at every sample of the window

    @property
    def active(self) -> bool:
        return self.queued > 0 or self.in_flight.requests > 0


@dataclass(frozen=True)
class BackendLive:
    pool: str
    in_flight: Load
    budget: Load  # max_concurrency and max_inflight_tokens as the scripts use them
    down_until_ms: int | None  # skipped until then (a failed probe or connection, ejection)
    busy_until_ms: int | None  # its engine queues requests inside it: held until then
    drained: bool
    kv_tokens_in_use: int | None  # as its engine last reported (None: unknown)


@dataclass(frozen=True)
class PoolLive:
    backends: list[str]
    queued: int = 0
    in_flight: Load = Load()  # on its own backends (work lent to other pools included)


@dataclass(frozen=True)
class LiveSnapshot:
    now_ms: int  # Redis' clock at the read
    window_s: float  # the span recent shares cover (0: no earlier sample yet)
    tenants: dict[str, TenantLive]  # every tenant the scripts know
    backends: dict[str, BackendLive]  # every configured backend, in the configuration's order
    pools: dict[str, PoolLive]  # every configured pool, in the configuration's order


@dataclass
class ServiceWindow:
    """Snapshots of the service totals over the last ``window_s`` seconds (monotonic time),
    and of which tenants had requests queued then (to tell who was backlogged all along)."""

    window_s: float = WINDOW_S
    _samples: deque[tuple[float, dict[str, float], frozenset[str]]] = field(default_factory=deque)

    def add(self, at: float, served: Mapping[str, float], queued: Iterable[str] = ()) -> None:
        self._samples.append((at, dict(served), frozenset(queued)))
        while self._samples[0][0] < at - self.window_s:
            self._samples.popleft()

    def backlogged(self, at: float, queued: Iterable[str]) -> set[str]:
        """Of the tenants with requests ``queued`` at ``at``, those that had some queued at
        every sample within ``window_s`` before it too: backlogged all along, as far as the
        samples (every few seconds) can tell."""
        found = set(queued)
        for then, _, earlier in self._samples:
            if then >= at - self.window_s:
                found &= earlier
        return found

    def since(self, at: float, served: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        """The span covered and each tenant's service in it, from the oldest sample within
        ``window_s`` of ``at`` to ``served`` (the totals at ``at``); (0, {}) without one.

        A total that fell (Redis lost its data; a settlement returned more than the window
        charged) counts as no service rather than negative service."""
        start = next(((t, s) for t, s, _ in self._samples if t >= at - self.window_s), None)
        if start is None or start[0] >= at:
            return 0.0, {}
        then, before = start
        return at - then, {t: max(0.0, v - before.get(t, 0.0)) for t, v in served.items()}


def weight_shares(
    tenants: Mapping[str, tuple[float, str]],
    active: set[str],
    band_weights: Mapping[str, float],
) -> dict[str, float]:
    """Each active tenant's fair share of contended capacity: its band's share among the
    bands with active tenants (``priority_min_share`` for a lower band), times its weight's
    share among its band's active tenants. ``tenants``: tenant -> (weight, band).

    What the virtual counters converge to while every one of these tenants keeps requests
    queued; one that asks for less leaves the rest to the others (admission is work
    conserving), so their recent shares may exceed these."""
    in_band: dict[str, float] = {}
    for tenant in active:
        weight, band = tenants[tenant]
        in_band[band] = in_band.get(band, 0.0) + weight
    bands_total = sum(band_weights.get(b, 1.0) for b in in_band)
    shares = {}
    for tenant in active:
        weight, band = tenants[tenant]
        shares[tenant] = band_weights.get(band, 1.0) / bands_total * weight / in_band[band]
    return shares


class LiveState:
    """Reads admission's live state (:meth:`read`) and samples service totals for recent
    shares (:meth:`start` begins the sampler; :meth:`stop` ends it)."""

    def __init__(
        self,
        redis: AnyRedis,
        settings: Settings,
        window_s: float = WINDOW_S,
        sample_every_s: float = SAMPLE_EVERY_S,
    ) -> None:
        """Pools and backends are the configured ones (in the configuration's order), so
        they show even while Redis has lost the scripts' configuration (a restart without
        persistence: replicas write it again at their next request)."""
        self._redis = redis
        self._keys = AdmissionKeys.of(settings.redis.key_prefix)
        self._pools = {name: list(pool.backends) for name, pool in settings.pools.items()}
        self._budgets = {
            name: (pool, Load(b.max_concurrency, b.max_inflight_tokens))
            for name, (pool, b) in settings.backends().items()
        }
        self._window = ServiceWindow(window_s)
        self._every_s = sample_every_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sample(), name="live-state-sampler")

    async def stop(self) -> None:
        await cancel_all([self._task])
        self._task = None

    async def _sample(self) -> None:
        while True:
            # AttributeError too: redis-py's Cluster pipeline, its node's connection dropped
            # mid-call (a primary that died), writes to a writer it has just let go of
            with contextlib.suppress(RedisError, OSError, AttributeError):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hgetall(self._keys.served)
                    pipe.hgetall(self._keys.queued)
                    served, queued = await pipe.execute()
                self._window.add(time.monotonic(), _floats(served), _queued(_floats(queued)))
            await asyncio.sleep(self._every_s)

    async def read(self) -> LiveSnapshot:
        """The live state now (raises ``RedisError`` if Redis cannot be read)."""
        keys = self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in (
                keys.config("tenants"), keys.config("backends"), keys.config("bands"),
                keys.queued, keys.tenant_load, keys.backend_load, keys.counters, keys.served,
                keys.down, keys.drained, keys.engine,
            ):  # fmt: skip
                pipe.hgetall(key)
            pipe.hvals(keys.leases)
            # TIME apart: it names no key, so a Cluster cannot place it in the transaction
            (seconds, micros), replies = await asyncio.gather(self._redis.time(), pipe.execute())
        at = time.monotonic()
        *hashes, leases = replies
        cfg_tenants, cfg_backends, cfg_bands = (_texts(h) for h in hashes[:3])
        queued, tload, bload, counters, served, down, drained, engine = (
            _floats(h) for h in hashes[3:]
        )
        now_ms = seconds * 1000 + micros // 1000
        window_s, recent = self._window.since(at, served)
        backlogged = self._window.backlogged(at, _queued(queued))
        self._window.add(at, served, _queued(queued))
        backends = self._backends(cfg_backends, bload, down, drained, engine, now_ms)
        tenants = _tenants(
            cfg_tenants, cfg_bands, queued, tload, counters, recent,
            _in_flight_by_pool(leases, backends), backlogged,
        )  # fmt: skip
        pools = {
            pool: PoolLive(
                members,
                int(queued.get(f"pool:{pool}", 0)),
                sum((backends[b].in_flight for b in members), Load()),
            )
            for pool, members in self._pools.items()
        }
        return LiveSnapshot(now_ms, window_s, tenants, backends, pools)

    def _backends(
        self,
        cfg_backends: Mapping[str, str],
        bload: Mapping[str, float],
        down: Mapping[str, float],
        drained: Mapping[str, float],
        engine: Mapping[str, float],
        now_ms: int,
    ) -> dict[str, BackendLive]:
        def until(value: float | None) -> int | None:
            return int(value) if value is not None and value > now_ms else None

        backends = {}
        for name, (pool, budget) in self._budgets.items():
            if name in cfg_backends:  # the token budget an engine reported replaces the file's
                budget = Load(budget.requests, int(json.loads(cfg_backends[name])["mt"]))
            kv = engine.get(f"{name}:tokens")
            backends[name] = BackendLive(
                pool=pool,
                in_flight=Load(int(bload.get(f"{name}:r", 0)), int(bload.get(f"{name}:t", 0))),
                budget=budget,
                down_until_ms=until(down.get(name)),
                busy_until_ms=until(engine.get(f"{name}:busy")),
                drained=name in drained,
                kv_tokens_in_use=None if kv is None else int(kv),
            )
        return backends


def _tenants(
    cfg_tenants: Mapping[str, str],
    cfg_bands: Mapping[str, str],
    queued: Mapping[str, float],
    tload: Mapping[str, float],
    counters: Mapping[str, float],
    recent: Mapping[str, float],
    by_pool: Mapping[str, dict[str, Load]],
    backlogged: set[str],
) -> dict[str, TenantLive]:
    """Every tenant the scripts know (their ``cfg:tenants``: weight and band as dispatch uses
    them), with its queue, its work in flight, its counter and its shares."""
    weights = {t: (float(c["w"]), str(c["band"])) for t, c in map(_decoded, cfg_tenants.items())}
    loads = {t: Load(int(tload.get(f"{t}:r", 0)), int(tload.get(f"{t}:t", 0))) for t in weights}
    active = {t for t in weights if queued.get(t, 0) > 0 or loads[t].requests > 0}
    fair = weight_shares(weights, active, {b: float(w) for b, w in cfg_bands.items()})
    total = sum(recent.values())
    return {
        t: TenantLive(
            weight=weight,
            band=band,
            queued=int(queued.get(t, 0)),
            in_flight=loads[t],
            by_pool=by_pool.get(t, {}),
            counter=counters.get(t, 0.0),
            recent_service=recent.get(t, 0.0),
            recent_share=recent.get(t, 0.0) / total if total > 0 else None,
            weight_share=fair.get(t),
            backlogged=t in backlogged,
        )
        for t, (weight, band) in weights.items()
    }


def _queued(queued: Mapping[str, float]) -> list[str]:
    """The tenants with requests queued, from the queue counts (which also count pools')."""
    return [name for name, n in queued.items() if n > 0 and not name.startswith("pool:")]


def _decoded(item: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    return item[0], json.loads(item[1])


def _in_flight_by_pool(
    leases: list[bytes], backends: Mapping[str, BackendLive]
) -> dict[str, dict[str, Load]]:
    """tenant -> pool -> what it has in flight on that pool's backends (from the leases)."""
    found: dict[str, dict[str, Load]] = {}
    for raw in leases:
        lease = json.loads(raw)
        backend = backends.get(lease["b"])
        if backend is None:
            continue  # a backend no longer configured: its last leases end soon
        pools = found.setdefault(lease["t"], {})
        pools[backend.pool] = pools.get(backend.pool, Load()) + Load(1, int(lease["tok"]))
    return found


def _texts(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {text(k): text(v) for k, v in reply.items()}


def _floats(reply: Mapping[bytes | str, bytes | str]) -> dict[str, float]:
    return {text(k): float(v) for k, v in reply.items()}
