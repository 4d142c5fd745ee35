"""The gateway's Prometheus metrics (``GET /metrics``; every one is in docs/metrics.md).

One registry per application, so several gateways can run in one test process. It holds this
replica's own metrics: estimates and routing here, requests, tokens, rejections and latencies
per tenant in :mod:`gateway.request_metrics`; and the shared state of every replica, read from
Redis at a scrape, in :mod:`gateway.shared_metrics`.

Labels are bounded: ``model`` takes only the model ids the configuration serves (requests for
others are refused before any metric is touched), ``kind`` is ``prompt`` or ``output``,
``pool`` and ``rule`` the configured pools and routing rules (plus ``default`` and
``header``), ``tenant`` at most ``telemetry.metrics.max_tenants`` tenants plus the listed ones,
``_other`` and ``_unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from estimators.estimator import Observation
from fairgate.settings import MetricsConfig
from gateway.access_log import AccessLog
from gateway.request_metrics import RequestMetrics, TenantLabels

_RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0)


class GatewayMetrics:
    """Metrics of one gateway process."""

    def __init__(self, config: MetricsConfig | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenants = TenantLabels.of(config or MetricsConfig())
        self.requests = RequestMetrics(self.tenants)
        self.registry.register(self.requests)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.estimate_ratio = Histogram(
            "fairgate_estimate_ratio",
            "Estimated / actual tokens of finished requests (1 is exact).",
            ["model", "kind"],
            buckets=_RATIO_BUCKETS,
            registry=self.registry,
        )
        self.correction_factor = Gauge(
            "fairgate_estimate_correction_factor",
            "Learned actual / counted ratio applied to prompt token counts.",
            ["model"],
            registry=self.registry,
        )
        self.routed_requests = Counter(
            "fairgate_routed_requests",
            "Requests by the pool they were sent to and the routing rule that chose it "
            "(default: no rule matched; header: the client named the pool).",
            ["pool", "rule"],
            registry=self.registry,
        )

    def add(self, collector: Collector) -> None:
        """Export ``collector``'s metrics too (the shared state, the access log's drops)."""
        self.registry.register(collector)

    def routed(self, pool: str, rule: str) -> None:
        """Count one request classified into ``pool`` by ``rule``."""
        self._child(self.routed_requests, pool, rule).inc()

    def observed(self, model: str, seen: Observation) -> None:
        """Record what one comparison of estimate and usage showed."""
        if seen.prompt_ratio is not None:
            self._child(self.estimate_ratio, model, "prompt").observe(seen.prompt_ratio)
        if seen.output_ratio is not None:
            self._child(self.estimate_ratio, model, "output").observe(seen.output_ratio)
        if seen.prompt_factor is not None:
            self._child(self.correction_factor, model).set(seen.prompt_factor)

    def _child(self, metric: Any, *labels: str) -> Any:
        """A metric's labelled series, looked up once (``labels()`` is costly per request)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def response(self) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


class AccessLogDrops(Collector):
    """``fairgate_access_log_dropped_lines_total``: lines the access log could not keep."""

    def __init__(self, access_log: AccessLog) -> None:
        self._log = access_log

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "fairgate_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind (a slow or blocked stream).",
            value=self._log.dropped,
        )
