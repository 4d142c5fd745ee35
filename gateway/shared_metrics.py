"""Shared-state gauges: what admission holds in Redis, for every replica, read at a scrape.

Queues and work in flight per tenant and pool, the virtual counters, each tenant's recent share
of service next to its fair share, backends' load, budgets and health, and how fair the last
window was (:func:`fairness`). They come from one consistent read of admission's state
(:meth:`admission.live.LiveState.read`: one ``MULTI``/``EXEC``), taken when ``/metrics`` is
scraped, unless the last read is younger than ``telemetry.metrics.shared_state_max_age_s``:
several scrapers, or a scraper and the status page, cost one read, and concurrent scrapes
wait for the same read.

Every replica exports the same values (each reads the same Redis), so they are named
``fairgate_shared_*`` and read with ``max by (...)``, never summed (docs/metrics.md). When
Redis cannot be read, ``fairgate_shared_state_up`` is 0 and no other shared gauge is exported:
a stale number would look current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from admission.domain import priority_of
from admission.live import BackendLive, LiveSnapshot, LiveState, TenantLive
from fairgate.redis_client import AnyRedis, text
from gateway.request_metrics import OTHER, TenantLabels

#: The one shared family outside the ``fairgate_shared_`` prefix (its name predates it).
_ADMISSION_EVENTS = "fairgate_admission_events"


def is_shared(family: str) -> bool:
    """Whether a metric family is this module's: the state of every replica, read from Redis,
    the same whichever replica (or worker) exports it."""
    return family.startswith("fairgate_shared_") or family == _ADMISSION_EVENTS


@dataclass(frozen=True)
class Fairness:
    """How evenly a band's backlogged tenants were served over a window, per unit of weight.

    ``jain_index``: Jain's index of x_i = service_i / weight_i over the n backlogged tenants,
    (sum x)^2 / (n * sum x^2): 1 when all got the same per unit of weight, 1/n when one got
    everything. ``service_gap``: max x - min x, the largest |S_f/w_f - S_g/w_g| over pairs,
    in service units per unit of weight (the quantity docs/fairness.md bounds). With fewer
    than two backlogged tenants nobody was denied anything: 1 and 0.
    """

    backlogged: int
    jain_index: float
    service_gap: float


def fairness(served: Iterable[tuple[float, float]]) -> Fairness:
    """The fairness of (service, weight) pairs of the backlogged tenants of one band."""
    per_weight = [service / weight for service, weight in served if weight > 0]
    n = len(per_weight)
    if n < 2:
        return Fairness(n, 1.0, 0.0)
    total, squares = sum(per_weight), sum(x * x for x in per_weight)
    jain = total * total / (n * squares) if squares > 0 else 1.0
    return Fairness(n, jain, max(per_weight) - min(per_weight))


def fairness_by_band(tenants: Mapping[str, TenantLive]) -> dict[str, Fairness]:
    """Fairness in each priority band with tenants, among its backlogged ones: priority,
    not weight, decides between bands."""
    bands: dict[str, list[tuple[float, float]]] = {}
    for tenant in tenants.values():
        backlogged = bands.setdefault(tenant.band, [])
        if tenant.backlogged:
            backlogged.append((tenant.recent_service, tenant.weight))
    return {band: fairness(served) for band, served in bands.items()}


class SharedStateMetrics(Collector):
    """The shared-state gauges of a replica's registry: :meth:`refresh` (before a scrape)
    reads Redis at most every ``max_age_s``, :meth:`collect` exports the last read."""

    def __init__(
        self,
        live: LiveState,
        redis: AnyRedis,
        stats_key: str,
        labels: TenantLabels,
        max_age_s: float,
    ) -> None:
        self._live = live
        self._redis = redis
        self._stats_key = stats_key
        self._labels = labels
        self._max_age_s = max_age_s
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._snapshot: LiveSnapshot | None = None
        self._stats: dict[str, float] = {}

    async def refresh(self) -> None:
        """Read the shared state unless the last read is fresh enough (one read at a time)."""
        async with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._max_age_s:
                return
            try:
                snapshot, stats = await asyncio.gather(
                    self._live.read(), self._redis.hgetall(self._stats_key)
                )
            except (RedisError, OSError):
                self._snapshot, self._stats = None, {}
            else:
                self._snapshot = snapshot
                self._stats = {text(k): float(v) for k, v in stats.items()}
            self._read_at = time.monotonic()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # no names reserved in the registry: built only at collect()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._snapshot
        yield GaugeMetricFamily(
            "fairgate_shared_state_up",
            "1 if the last read of the shared state in Redis succeeded, else 0 (and no other "
            "fairgate_shared_* gauge is exported).",
            value=float(snapshot is not None),
        )
        if self._stats:
            events = GaugeMetricFamily(
                _ADMISSION_EVENTS,
                "Admission events of all replicas since Redis started: grants, reclaimed "
                "leases, queue timeouts, and under policy shadow whether VTC agreed with the "
                "FCFS choice.",
                labels=["event"],
            )
            for event, value in self._stats.items():
                events.add_metric([event], value)
            yield events
        if snapshot is not None:
            yield from self._tenants(snapshot)
            yield from _pools(snapshot)
            yield from _backends(snapshot)
            yield from _fairness(snapshot)

    def _tenants(self, snapshot: LiveSnapshot) -> Iterator[GaugeMetricFamily]:
        """Per tenant label: a tenant with work gets a label if there is room; idle tenants
        without one, and those beyond the bound, add up under ``_other``."""
        queued: dict[str, float] = {}
        inflight: dict[tuple[str, str], list[float]] = {}
        recent: dict[str, list[float]] = {}  # label -> [service, share, fair share]
        own: dict[str, tuple[float, float]] = {}  # label -> (weight, counter): not summed
        for tenant, live in snapshot.tenants.items():
            label = self._labels(tenant) if live.active else self._labels.known(tenant)
            queued[label] = queued.get(label, 0.0) + live.queued
            for pool in snapshot.pools:  # zeros too: an idle tenant's series stay
                inflight.setdefault((label, pool), [0.0, 0.0])
            for pool, load in live.by_pool.items():
                held = inflight.setdefault((label, pool), [0.0, 0.0])
                held[0] += load.requests
                held[1] += load.tokens
            shares = recent.setdefault(label, [0.0, 0.0, 0.0])
            shares[0] += live.recent_service
            shares[1] += live.recent_share or 0.0
            shares[2] += live.weight_share or 0.0
            if label != OTHER:
                own[label] = (live.weight, live.counter)
        yield _gauge(
            "fairgate_shared_tenant_queued_requests",
            "Requests waiting in the fair queue, all pools and replicas.",
            ["tenant"],
            {(label,): n for label, n in queued.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_inflight_requests",
            "Requests admitted and running, by the pool of the backend they run on.",
            ["tenant", "pool"],
            {key: held[0] for key, held in inflight.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_inflight_tokens",
            "Estimated tokens (prompt and expected output) of the requests running.",
            ["tenant", "pool"],
            {key: held[1] for key, held in inflight.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_weight",
            "The tenant's weight, as admission uses it.",
            ["tenant"],
            {(label,): weight for label, (weight, _) in own.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_virtual_counter",
            "The tenant's virtual token counter (VTC): service charged per unit of weight, "
            "lifts included; dispatch serves the smallest first.",
            ["tenant"],
            {(label,): counter for label, (_, counter) in own.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_recent_service",
            "Service charged to the tenant over the window "
            "(fairgate_shared_fairness_window_seconds), in service units.",
            ["tenant"],
            {(label,): shares[0] for label, shares in recent.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_service_share",
            "The tenant's share of all service over the window (0 to 1).",
            ["tenant"],
            {(label,): shares[1] for label, shares in recent.items()},
        )
        yield _gauge(
            "fairgate_shared_tenant_fair_share",
            "The tenant's fair share of contended capacity among the tenants active now "
            "(its weight's share within its band, and its band's), 0 if idle.",
            ["tenant"],
            {(label,): shares[2] for label, shares in recent.items()},
        )


def _pools(snapshot: LiveSnapshot) -> Iterator[GaugeMetricFamily]:
    pools = snapshot.pools
    yield _gauge(
        "fairgate_shared_pool_queued_requests",
        "Requests waiting for the pool, all tenants and replicas.",
        ["pool"],
        {(name,): pool.queued for name, pool in pools.items()},
    )
    yield _gauge(
        "fairgate_shared_pool_inflight_requests",
        "Requests running on the pool's backends (work lent to other pools included).",
        ["pool"],
        {(name,): pool.in_flight.requests for name, pool in pools.items()},
    )
    yield _gauge(
        "fairgate_shared_pool_inflight_tokens",
        "Estimated tokens of the requests running on the pool's backends.",
        ["pool"],
        {(name,): pool.in_flight.tokens for name, pool in pools.items()},
    )


#: The per-backend gauges: name (after ``fairgate_shared_backend_``), help, value.
_BACKEND_GAUGES: tuple[tuple[str, str, Callable[[BackendLive], float]], ...] = (
    ("inflight_requests", "Requests running on the backend, all replicas.",
     lambda b: b.in_flight.requests),
    ("inflight_tokens", "Estimated tokens of the requests running on the backend.",
     lambda b: b.in_flight.tokens),
    ("max_concurrency", "The backend's budget of requests in flight.",
     lambda b: b.budget.requests),
    ("max_inflight_tokens", "The backend's budget of tokens in flight (as its engine reported "
     "it, or as configured).", lambda b: b.budget.tokens),
    ("up", "1 if dispatch may use the backend, 0 while it is skipped (a failed probe or "
     "connection, or ejected after failures).", lambda b: float(b.down_until_ms is None)),
    ("drained", "1 while the backend is drained (no new work on any replica).",
     lambda b: float(b.drained)),
    ("engine_busy", "1 while the backend's engine queues requests inside it, so fairgate holds "
     "new ones.", lambda b: float(b.busy_until_ms is not None)),
)  # fmt: skip


def _backends(snapshot: LiveSnapshot) -> Iterator[GaugeMetricFamily]:
    backends = snapshot.backends
    labels = ["pool", "backend"]
    for name, documentation, value in _BACKEND_GAUGES:
        yield _gauge(
            f"fairgate_shared_backend_{name}",
            documentation,
            labels,
            {(b.pool, backend): float(value(b)) for backend, b in backends.items()},
        )
    yield _gauge(
        "fairgate_shared_backend_kv_tokens_in_use",
        "KV-cache tokens in use as the backend's engine last reported (where it does).",
        labels,
        {
            (b.pool, backend): float(b.kv_tokens_in_use)
            for backend, b in backends.items()
            if b.kv_tokens_in_use is not None
        },
    )


def _fairness(snapshot: LiveSnapshot) -> Iterator[GaugeMetricFamily]:
    bands = fairness_by_band(snapshot.tenants)
    priorities = {str(priority_of(band)): found for band, found in bands.items()}
    yield GaugeMetricFamily(
        "fairgate_shared_fairness_window_seconds",
        "The span the recent service and fairness gauges cover (up to 60 s; less after a "
        "replica starts).",
        value=snapshot.window_s,
    )
    yield _gauge(
        "fairgate_shared_fairness_backlogged_tenants",
        "Tenants of the priority band with requests queued throughout the window.",
        ["priority"],
        {(p,): found.backlogged for p, found in priorities.items()},
    )
    yield _gauge(
        "fairgate_shared_fairness_jain_index",
        "Jain's index of service per unit of weight among the band's backlogged tenants over "
        "the window: 1 is even, 1/n is one tenant served alone (1 with fewer than two).",
        ["priority"],
        {(p,): found.jain_index for p, found in priorities.items()},
    )
    yield _gauge(
        "fairgate_shared_fairness_service_gap",
        "The largest difference of service per unit of weight between two backlogged tenants "
        "of the band over the window (service units per unit of weight; 0 with fewer than "
        "two).",
        ["priority"],
        {(p,): found.service_gap for p, found in priorities.items()},
    )


def _gauge(
    name: str,
    documentation: str,
    labels: list[str],
    values: Mapping[tuple[str, ...], float],
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family
