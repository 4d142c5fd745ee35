"""admission/live.py: recent service from sampled totals, and fair shares by weight and band."""

from __future__ import annotations

import pytest

from admission.domain import band_of, band_weights
from admission.live import ServiceWindow, weight_shares


def test_recent_service_is_the_increase_since_the_oldest_sample_in_the_window() -> None:
    window = ServiceWindow(window_s=60)
    window.add(0, {"a": 100.0})
    window.add(30, {"a": 160.0, "b": 10.0})
    assert window.since(50, {"a": 200.0, "b": 40.0}) == (50, {"a": 100.0, "b": 40.0})
    window.add(65, {"a": 230.0, "b": 50.0})  # the sample at 0 is out of the window now
    assert window.since(80, {"a": 250.0, "b": 50.0}) == (50, {"a": 90.0, "b": 40.0})


def test_no_earlier_sample_is_no_window_and_a_fallen_total_is_no_service() -> None:
    window = ServiceWindow(window_s=60)
    assert window.since(5, {"a": 1.0}) == (0.0, {})
    window.add(5, {"a": 1.0})
    assert window.since(5, {"a": 1.0}) == (0.0, {})  # a sample of this very moment
    assert window.since(100, {"a": 3.0}) == (0.0, {})  # every sample is too old
    window = ServiceWindow(window_s=60)
    window.add(10, {"a": 500.0, "b": 7.0})
    assert window.since(20, {"a": 3.0}) == (10, {"a": 0.0})  # Redis lost its data meanwhile


def test_fair_shares_split_by_weight_among_the_active_tenants_of_a_band() -> None:
    tenants = {"a": (1.0, "500"), "b": (3.0, "500"), "c": (2.0, "500")}
    assert weight_shares(tenants, {"a", "b"}, {"500": 1.0}) == {"a": 0.25, "b": 0.75}
    assert weight_shares(tenants, set(), {"500": 1.0}) == {}


def test_a_lower_band_keeps_its_minimum_share_under_contention() -> None:
    bands = band_weights([0, 1], min_share=0.1)
    tenants = {"low": (5.0, band_of(0)), "high": (1.0, band_of(1)), "high2": (3.0, band_of(1))}
    shares = weight_shares(tenants, {"low", "high", "high2"}, bands)
    assert shares["low"] == pytest.approx(0.1)
    assert shares["high"] == pytest.approx(0.9 / 4) and shares["high2"] == pytest.approx(2.7 / 4)
    assert weight_shares(tenants, {"low"}, bands) == {"low": 1.0}  # alone, it has it all


def test_backlogged_means_queued_now_and_at_every_sample_of_the_window() -> None:
    window = ServiceWindow(window_s=10)
    window.add(0, {}, ["a"])  # out of the window by t=20
    window.add(12, {}, ["a", "b", "c"])
    window.add(16, {}, ["a", "b"])
    assert window.backlogged(20, ["a", "b", "c", "d"]) == {"a", "b"}
    assert window.backlogged(25, ["b", "c"]) == {"b"}  # only the sample at 16 is left
    assert window.backlogged(27, ["b", "c"]) == {"b", "c"}  # none left: queued now is all
    assert ServiceWindow(window_s=10).backlogged(5, ["a"]) == {"a"}  # no sample: now only
