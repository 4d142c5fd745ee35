"""The gateway's Prometheus metrics (``GET /metrics``).

One registry per application, so several gateways can run in one test process. Labels are
bounded: ``model`` takes only the model ids the configuration serves (requests for others are
refused before any metric is touched), ``kind`` is ``prompt`` or ``output``, ``event`` one of
the few admission events, ``pool`` and ``rule`` the configured pools and routing rules (plus
``default`` and ``header``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from estimators.estimator import Observation
from fairgate.redis_client import text

_RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0)


class GatewayMetrics:
    """Metrics of one gateway process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.admission_events = Gauge(
            "fairgate_admission_events",
            "Admission events of all replicas since Redis started: grants, reclaimed leases, "
            "queue timeouts, and under policy shadow whether VTC agreed with the FCFS choice.",
            ["event"],
            registry=self.registry,
        )

    def admission_stats(self, stats: Mapping[bytes | str, bytes | str]) -> None:
        """Mirror the domain's event counters kept in Redis."""
        for event, value in stats.items():
            self.admission_events.labels(text(event)).set(float(value))

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
