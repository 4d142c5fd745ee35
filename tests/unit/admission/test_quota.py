"""The pure parts of quotas: which limits apply to a request, and the Retry-After arithmetic."""

from __future__ import annotations

import pytest

from admission.quota import limits_of, retry_after_s
from fairgate.settings import QuotaConfig


def test_a_request_meets_the_tenants_limits_then_its_models() -> None:
    config = QuotaConfig(
        requests_per_minute=60,
        tokens_per_day=1_000_000,
        models={"big": {"tokens_per_minute": 500}, "small": {"requests_per_minute": 5}},
    )
    limits = limits_of(config, "big")
    assert [(lim.field, lim.kind, lim.limit, lim.period_ms) for lim in limits] == [
        ("rpm", "requests", 60, 60_000),
        ("tpd", "tokens", 1_000_000, 86_400_000),
        ("m:big:tpm", "tokens", 500, 60_000),
    ]
    assert limits[-1].name == "tokens_per_minute of model 'big'"
    assert [lim.field for lim in limits_of(config, "other")] == ["rpm", "tpd"]


def test_empty_quotas_have_no_limits() -> None:
    assert limits_of(QuotaConfig(), "m") == ()


@pytest.mark.parametrize(
    ("wait_ms", "seconds"), [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_001, 60)]
)
def test_retry_after_rounds_up_to_whole_seconds(wait_ms: int, seconds: int) -> None:
    assert retry_after_s(wait_ms) == seconds
