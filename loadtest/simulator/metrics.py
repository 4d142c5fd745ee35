"""Prometheus metrics under vLLM's names, so dashboards and fairgate's scraper work unchanged.

Each simulator has its own registry (several engines can run in one test process). Latency
histograms are in simulated seconds, like everything else the simulator measures.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from loadtest.simulator.profile import EngineProfile
from loadtest.simulator.sequence import Sequence

# vLLM exposes no *_created series; neither do we (this is process-wide).
disable_created_metrics()

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip


class EngineMetrics:
    """The metrics one simulated engine exposes at ``GET /metrics``."""

    def __init__(self, profile: EngineProfile, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine": "0"}
        names = list(labels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=self.registry).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=self.registry).labels(**labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=self.registry).labels(
                **labels
            )

        self.running = gauge("vllm:num_requests_running", "Requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self._success = Counter(
            "vllm:request_success",
            "Count of finished requests by finish reason.",
            [*names, "finished_reason"],
            registry=self.registry,
        )
        for reason in ("stop", "length", "abort"):  # present from the start, as in vLLM
            self._success.labels(**labels, finished_reason=reason)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token (simulated s).",
            _LATENCY_BUCKETS,
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency (simulated s).", _ITL_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end latency (simulated s).",
            _LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds", "Time spent waiting (simulated s).", _LATENCY_BUCKETS
        )
        cache_info = Gauge(
            "vllm:cache_config_info",
            "Information of the KV cache configuration.",
            ["block_size", "num_gpu_blocks", "engine"],
            registry=self.registry,
        )
        cache_info.labels(
            block_size=str(profile.kv_cache.block_size),
            num_gpu_blocks=str(profile.kv_cache.num_blocks),
            engine="0",
        ).set(1)
        self._labels = labels

    def observe_token(self, seq: Sequence) -> None:
        """A sequence produced a token at ``seq.last_token``."""
        assert seq.last_token is not None, "observe_token is called once a token is out"
        self.generation_tokens.inc()
        if seq.previous_token is None:
            self.prompt_tokens.inc(seq.prompt_tokens)
            self.ttft.observe(seq.last_token - seq.arrival)
            if seq.first_scheduled is not None:
                self.queue_time.observe(seq.first_scheduled - seq.arrival)
        else:
            self.itl.observe(seq.last_token - seq.previous_token)

    def observe_end(self, seq: Sequence, now: float) -> None:
        """A sequence finished or was aborted."""
        self._success.labels(**self._labels, finished_reason=seq.finish_reason).inc()
        if seq.finish_reason != "abort":
            self.e2e.observe(now - seq.arrival)

    def set_load(self, running: int, waiting: int, kv_usage: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)

    def render(self) -> bytes:
        return generate_latest(self.registry)
