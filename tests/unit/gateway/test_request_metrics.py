"""gateway/request_metrics.py: bounded tenant labels, histogram buckets, and what each ending
counts, as Prometheus reads it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ending import Ending
from gateway.request_metrics import (
    NO_POOL,
    OTHER,
    UNKNOWN,
    RequestMetrics,
    TenantLabels,
    _Histogram,
)


def test_listed_tenants_then_the_first_seen_get_labels_the_rest_are_other() -> None:
    labels = TenantLabels(["vip"], most=2)
    assert [labels(t) for t in ("a", "vip", "b", "c", "a", "")] == [
        "a", "vip", "b", OTHER, "a", UNKNOWN,
    ]  # fmt: skip
    assert labels.known("b") == "b" and labels.known("d") == OTHER
    assert labels("d") == OTHER  # no room is ever made: a label never moves
    assert TenantLabels(most=0)("a") == OTHER


def test_known_does_not_take_a_label() -> None:
    labels = TenantLabels(most=1)
    assert labels.known("a") == OTHER
    assert labels("b") == "b"
    assert labels("a") == OTHER


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = _Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 2.0), ("1", 4.0), ("+Inf", 5.0)]
    assert histogram.sum == 0.05 + 0.1 + 0.5 + 1.0 + 3.0


def samples(metrics: RequestMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_ending_counts_its_outcome_reason_tokens_and_times() -> None:
    metrics = RequestMetrics(TenantLabels(most=1))
    served = Ending("served", 200, None, 10, 4, queue_s=0.002, ttft_s=0.3, itl_s=0.02, total_s=1)
    metrics.ended("a", "chat", served)
    metrics.ended("a", "chat", Ending("served", 200, None, 5, 1, queue_s=0.001, total_s=0.2))
    metrics.ended("a", "chat", Ending("rejected", 429, "queue_timeout", queue_s=30, total_s=30))
    metrics.ended("b", "chat", Ending("rejected", 429, "quota", total_s=0.001))  # b: _other
    metrics.ended("", NO_POOL, Ending("rejected", 401, "auth"))
    metrics.ended("a", "chat", Ending("cancelled", 499, queue_s=0.5, total_s=2))
    m = samples(metrics)

    def at(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    a = {"tenant": "a", "pool": "chat"}
    assert at("fairgate_requests_total", **a, outcome="served") == 2
    assert at("fairgate_requests_total", **a, outcome="rejected") == 1
    assert at("fairgate_requests_total", **a, outcome="cancelled") == 1
    assert at("fairgate_rejections_total", **a, reason="queue_timeout") == 1
    assert at("fairgate_rejections_total", **a, reason="quota") == 0  # every reason, from 0
    assert at("fairgate_rejections_total", tenant=OTHER, pool="chat", reason="quota") == 1
    assert at("fairgate_rejections_total", tenant=UNKNOWN, pool=NO_POOL, reason="auth") == 1
    assert at("fairgate_prompt_tokens_total", **a) == 15
    assert at("fairgate_completion_tokens_total", **a) == 5
    assert at("fairgate_queue_wait_seconds_count", **a) == 4  # every one that asked admission
    assert at("fairgate_request_duration_seconds_count", **a) == 2  # served ones only
    assert at("fairgate_request_duration_seconds_sum", **a) == 1.2
    assert at("fairgate_time_to_first_token_seconds_count", **a) == 1
    assert at("fairgate_time_to_first_token_seconds_bucket", **a, le="0.25") == 0
    assert at("fairgate_time_to_first_token_seconds_bucket", **a, le="0.5") == 1
    assert at("fairgate_inter_token_latency_seconds_sum", **a) == 0.02
    # refused before routing: counted, but no tokens and no histograms
    assert not [key for key in m if ("pool", NO_POOL) in key[1] and "seconds" in key[0]]
    assert not [key for key in m if ("pool", NO_POOL) in key[1] and "tokens" in key[0]]
