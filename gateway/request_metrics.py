"""Per-request metrics of one replica: requests, tokens, rejections and latencies per tenant.

Every inference request's :class:`~gateway.ending.Ending` is counted here, per tenant, pool
and outcome (``fairgate_requests_total``), per reason for a rejection
(``fairgate_rejections_total``), with the tokens of a served request and four latency
histograms: the wait in the fair queue, the time to first token as the client sees it, the
mean time between tokens after it, and the whole request (docs/metrics.md names them all).

Cheap on the request path, which serves thousands of requests a second: each (tenant, pool)
has one :class:`_Series` of plain integers and bucket lists, found by two dict lookups, and a
request costs a few additions and bisects. prometheus_client's own ``Counter`` and
``Histogram`` take a lock per increment (about 1 and 2 µs each here, nine of them a request);
these need none, since counting and :meth:`RequestMetrics.collect` (at a scrape) both run on
the event loop. The Prometheus families are built from the series at scrape time.

Tenant labels are bounded (:class:`TenantLabels`): the tenants listed in
``telemetry.metrics.tenants``, then the first ``max_tenants`` others this replica sees, each
by its id; every other tenant as ``_other``, and a request without a valid key as
``_unknown``. Tenant ids start with a letter or digit, so neither can be a tenant's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fairgate.settings import MetricsConfig
from gateway.ending import OUTCOMES, REJECTIONS, Ending

#: The tenant label of requests without a valid key, and of tenants beyond the bound.
UNKNOWN = "_unknown"
OTHER = "_other"
#: The pool label of requests refused before routing chose a pool.
NO_POOL = "_none"

#: Histogram buckets (upper bounds, seconds).
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class TenantLabels:
    """A tenant's label value: its id for the pinned tenants and the first ``most`` others
    seen, ``_other`` for the rest, ``_unknown`` for no tenant ("").

    First seen rather than most active: a label never changes for the life of the process, so
    a tenant's counters never jump from one series to another.
    """

    def __init__(self, pinned: Iterable[str] = (), most: int = 100) -> None:
        self._labels = {tenant: tenant for tenant in pinned}
        self._room = most

    @classmethod
    def of(cls, config: MetricsConfig) -> TenantLabels:
        return cls(config.tenants, config.max_tenants)

    def __call__(self, tenant: str) -> str:
        label = self._labels.get(tenant)
        if label is not None:
            return label
        if not tenant:
            return UNKNOWN
        if self._room <= 0:
            return OTHER
        self._room -= 1
        self._labels[tenant] = tenant
        return tenant

    def known(self, tenant: str) -> str:
        """The label of ``tenant`` without giving it one (``_other`` if it has none yet)."""
        return self._labels.get(tenant, OTHER)


class _Histogram:
    """Counts per bucket (the last is +Inf) and the sum: what Prometheus exposes cumulated."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a value on a bound counts in it
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulated, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            cumulated.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(total)))
        return cumulated


class _Series:
    """Everything counted for one (tenant label, pool)."""

    __slots__ = (
        "outcomes",
        "rejections",
        "prompt_tokens",
        "completion_tokens",
        "queue_wait",
        "ttft",
        "itl",
        "duration",
    )

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.rejections = dict.fromkeys(REJECTIONS, 0)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.queue_wait = _Histogram(QUEUE_WAIT_BUCKETS)
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.itl = _Histogram(ITL_BUCKETS)
        self.duration = _Histogram(DURATION_BUCKETS)

    def count(self, ending: Ending) -> None:
        self.outcomes[ending.outcome] += 1
        if ending.reason is not None:
            self.rejections[ending.reason] += 1
        if ending.queue_s is not None:
            self.queue_wait.observe(ending.queue_s)
        if ending.outcome != "served":
            return
        self.prompt_tokens += ending.prompt_tokens
        self.completion_tokens += ending.completion_tokens
        self.duration.observe(ending.total_s)
        if ending.ttft_s is not None:
            self.ttft.observe(ending.ttft_s)
        if ending.itl_s is not None:
            self.itl.observe(ending.itl_s)


class RequestMetrics(Collector):
    """The per-request metrics of one replica (a collector of its registry)."""

    def __init__(self, labels: TenantLabels) -> None:
        self.labels = labels
        self._by_tenant: dict[str, dict[str, _Series]] = {}  # tenant id -> its label's pools
        self._by_label: dict[str, dict[str, _Series]] = {}  # label -> pool -> series

    def ended(self, tenant: str, pool: str, ending: Ending) -> None:
        """Count one request of ``tenant`` ("" for none) in ``pool`` (:data:`NO_POOL`)."""
        pools = self._by_tenant.get(tenant)
        if pools is None:
            pools = self._by_label.setdefault(self.labels(tenant), {})
            self._by_tenant[tenant] = pools
        series = pools.get(pool)
        if series is None:
            series = pools[pool] = _Series()
        series.count(ending)

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []  # no names reserved in the registry: built only at collect()

    def collect(self) -> Iterator[Metric]:
        labels = ["tenant", "pool"]
        requests = CounterMetricFamily(
            "fairgate_requests",
            "Inference requests by how they ended: served (the engine's answer relayed in "
            "full), rejected (refused or failed: see fairgate_rejections_total), cancelled "
            "(the client went away first).",
            labels=[*labels, "outcome"],
        )
        rejections = CounterMetricFamily(
            "fairgate_rejections",
            "Requests refused or failed, by reason: quota, queue_full, queue_timeout, "
            "upstream, invalid_request, permission, unavailable, internal, auth.",
            labels=[*labels, "reason"],
        )
        prompt = CounterMetricFamily(
            "fairgate_prompt_tokens", "Prompt tokens of served requests.", labels=labels
        )
        completion = CounterMetricFamily(
            "fairgate_completion_tokens", "Completion tokens of served requests.", labels=labels
        )
        histograms = {
            "queue_wait": _histogram_family(
                "fairgate_queue_wait_seconds",
                "Time in the fair queue, from asking admission to its answer (a grant, a "
                "refusal, a timeout, or the client leaving).",
            ),
            "ttft": _histogram_family(
                "fairgate_time_to_first_token_seconds",
                "From a streamed request's arrival to its first content chunk relayed to the "
                "client (served streams).",
            ),
            "itl": _histogram_family(
                "fairgate_inter_token_latency_seconds",
                "Mean time between output tokens after the first, per served stream.",
            ),
            "duration": _histogram_family(
                "fairgate_request_duration_seconds",
                "From arrival to the end of the answer, per served request.",
            ),
        }
        for label, pools in self._by_label.items():
            for pool, series in pools.items():
                for outcome, n in series.outcomes.items():
                    requests.add_metric([label, pool, outcome], n)
                for reason, n in series.rejections.items():
                    rejections.add_metric([label, pool, reason], n)
                if pool == NO_POOL:
                    continue  # refused before routing: no tokens, never queued nor timed
                prompt.add_metric([label, pool], series.prompt_tokens)
                completion.add_metric([label, pool], series.completion_tokens)
                for name, family in histograms.items():
                    histogram: _Histogram = getattr(series, name)
                    family.add_metric([label, pool], histogram.buckets(), histogram.sum)
        yield from (requests, rejections, prompt, completion, *histograms.values())


def _histogram_family(name: str, documentation: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=["tenant", "pool"])
