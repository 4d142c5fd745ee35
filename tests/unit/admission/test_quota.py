"""The pure parts of quotas: which limits apply to a request, and the Retry-After arithmetic."""

from __future__ import annotations

import pytest

from admission.quota import (
    Charge,
    LimitState,
    QuotaAsk,
    QuotaState,
    limits_of,
    merged,
    retry_after_s,
)
from fairgate.settings import QuotaConfig, QuotaLimits


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


def _charge(tokens: int, remaining: tuple[int, int]) -> Charge:
    """A charge on 10 requests per minute and 1,000 tokens per day, ``remaining`` left."""
    limits = limits_of(QuotaConfig(requests_per_minute=10, tokens_per_day=1000), "m")
    state = QuotaState(
        tuple(LimitState(lim, left, 0) for lim, left in zip(limits, remaining, strict=True))
    )
    return Charge("t", limits, tokens, state)


def test_a_credit_spent_gives_back_the_tokens_beyond_the_request() -> None:
    credit = _charge(100, (8, 800))
    ask = QuotaAsk("t", credit.limits, 70)
    assert credit.fits(ask)
    charge, spare = credit.spent_on(ask)
    assert charge.tokens == 70
    # what is left counts the request's 70 tokens, not the credit's 100
    assert [s.remaining for s in charge.state.limits] == [8, 830]
    assert spare is not None and [(lim.field, a) for lim, a in spare.amounts] == [("tpd", -30)]
    assert credit.spent_on(QuotaAsk("t", credit.limits, 100))[1] is None  # nothing to give back


def test_a_credit_covers_only_its_own_limits_and_no_more_tokens() -> None:
    credit = _charge(100, (8, 800))
    assert not credit.fits(QuotaAsk("t", credit.limits, 101))
    assert not credit.fits(QuotaAsk("other", credit.limits, 10))
    config = QuotaConfig(requests_per_minute=10, models={"m": QuotaLimits(tokens_per_day=5)})
    per_model = limits_of(config, "m")
    assert not credit.fits(QuotaAsk("t", per_model, 10))


def test_merged_corrections_add_up_per_limit_and_drop_what_cancels() -> None:
    credit = _charge(100, (8, 800))
    used = credit.correction(60)  # a finished request's: 40 tokens back
    spare = credit.spent_on(QuotaAsk("t", credit.limits, 90))[1]  # the credit's: 10 back
    both = merged(used, spare)
    assert both is not None
    assert {lim.field: a for lim, a in both.amounts} == {"tpd": -50}
    assert merged(None, used) is used
    assert merged(None, None) is None
    assert merged(credit.correction(140), credit.correction(60)) is None  # +40 and -40
