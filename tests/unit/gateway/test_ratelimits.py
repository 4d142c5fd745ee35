"""OpenAI's rate-limit headers: the reset durations, and which limit a header reports."""

from __future__ import annotations

import pytest

from admission.quota import Limit, LimitState, QuotaState
from gateway.ratelimits import duration, rate_limit_headers


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (17, "17ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (61_250, "1m1.25s"),
        (3_723_000, "1h2m3s"),
        (86_400_000, "24h0m0s"),
    ],
)
def test_duration_is_openais_go_style_format(ms: int, text: str) -> None:
    assert duration(ms) == text


def _state(*limits: tuple[str, str, int, int, int]) -> QuotaState:
    return QuotaState(
        tuple(
            LimitState(Limit(field, kind, limit, 60_000, field), remaining, reset)  # type: ignore[arg-type]
            for field, kind, limit, remaining, reset in limits
        )
    )


def test_headers_report_the_binding_limit_of_each_kind() -> None:
    state = _state(
        ("rpm", "requests", 100, 40, 36_000),
        ("m:x:rpm", "requests", 10, 3, 42_000),
        ("tpm", "tokens", 1000, 900, 6_000),
        ("tpd", "tokens", 50_000, 20, 86_000_000),
    )
    assert rate_limit_headers(state) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "42s",
        "x-ratelimit-limit-tokens": "50000",
        "x-ratelimit-remaining-tokens": "20",
        "x-ratelimit-reset-tokens": "23h53m20s",
    }


def test_headers_omit_a_kind_without_limits() -> None:
    headers = rate_limit_headers(_state(("tpm", "tokens", 1000, 1000, 0)))
    assert headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "0s",
    }
