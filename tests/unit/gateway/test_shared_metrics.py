"""gateway/shared_metrics.py: fairness among backlogged tenants, and reading the shared state
at most once per max age, exporting nothing stale when Redis cannot be read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError

from admission.domain import band_of
from admission.live import LiveSnapshot, Load, TenantLive
from gateway.request_metrics import TenantLabels
from gateway.shared_metrics import Fairness, SharedStateMetrics, fairness, fairness_by_band


def test_even_service_per_weight_is_an_index_of_one_and_no_gap() -> None:
    assert fairness([(100.0, 1.0), (300.0, 3.0)]) == Fairness(2, 1.0, 0.0)


def test_one_tenant_served_alone_is_an_index_of_one_over_n() -> None:
    found = fairness([(90.0, 1.0), (0.0, 1.0), (0.0, 1.0)])
    assert found.jain_index == pytest.approx(1 / 3)
    assert found.service_gap == 90.0


def test_the_gap_is_the_largest_difference_of_service_per_weight() -> None:
    # x = 100, 50, 80: index (230^2) / (3 * (10000 + 2500 + 6400)), gap 100 - 50
    found = fairness([(100.0, 1.0), (100.0, 2.0), (240.0, 3.0)])
    assert found.jain_index == pytest.approx(230**2 / (3 * 18900))
    assert found.service_gap == pytest.approx(50.0)


def test_fewer_than_two_backlogged_tenants_is_trivially_fair() -> None:
    assert fairness([]) == Fairness(0, 1.0, 0.0)
    assert fairness([(5.0, 1.0)]) == Fairness(1, 1.0, 0.0)
    assert fairness([(0.0, 1.0), (0.0, 2.0)]) == Fairness(2, 1.0, 0.0)  # nobody served


def tenant(service: float, weight: float, priority: int, backlogged: bool) -> TenantLive:
    return TenantLive(
        weight=weight,
        band=band_of(priority),
        queued=int(backlogged),
        in_flight=Load(),
        by_pool={},
        counter=0.0,
        recent_service=service,
        recent_share=None,
        weight_share=None,
        backlogged=backlogged,
    )


def test_fairness_is_judged_within_each_band_among_its_backlogged_tenants() -> None:
    tenants = {
        "a": tenant(100, 1, 0, True),
        "b": tenant(100, 2, 0, True),
        "idle": tenant(0, 1, 0, False),  # not backlogged: asking for less is no unfairness
        "vip": tenant(900, 1, 1, True),  # another band: priority, not weight, decides
    }
    bands = fairness_by_band(tenants)
    assert bands[band_of(0)] == fairness([(100, 1), (100, 2)])
    assert bands[band_of(1)] == Fairness(1, 1.0, 0.0)


class _Live:
    """A LiveState stand-in: counts reads; fails while ``failing``."""

    def __init__(self) -> None:
        self.reads = 0
        self.failing = False

    async def read(self) -> LiveSnapshot:
        self.reads += 1
        await asyncio.sleep(0)
        if self.failing:
            raise RedisConnectionError("down")
        tenants = {"a": tenant(10, 1, 0, True)}
        return LiveSnapshot(0, 60.0, tenants, {}, {})


class _Redis:
    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {b"grants": b"3"}


def exported(shared: SharedStateMetrics) -> str:
    registry = CollectorRegistry()
    registry.register(shared)
    return generate_latest(registry).decode()


async def test_scrapes_within_the_max_age_share_one_read() -> None:
    live = _Live()
    shared = SharedStateMetrics(live, _Redis(), "stats", TenantLabels(), 60.0)  # type: ignore[arg-type]
    await asyncio.gather(*(shared.refresh() for _ in range(5)))  # concurrent scrapes
    await shared.refresh()
    assert live.reads == 1
    text = exported(shared)
    assert "fairgate_shared_state_up 1.0" in text
    assert 'fairgate_admission_events{event="grants"} 3.0' in text
    assert 'fairgate_shared_tenant_queued_requests{tenant="a"} 1.0' in text


async def test_redis_unreadable_exports_up_zero_and_nothing_stale() -> None:
    live: Any = _Live()
    shared = SharedStateMetrics(live, _Redis(), "stats", TenantLabels(), 0.0)  # type: ignore[arg-type]
    await shared.refresh()
    live.failing = True
    await shared.refresh()
    text = exported(shared)
    assert "fairgate_shared_state_up 0.0" in text
    assert "fairgate_shared_tenant" not in text and "fairgate_admission_events" not in text
