"""tenants/usage.py: UTC days, the retention window, and a day's hash read back as rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

from tenants.usage import (
    REASON_MEANINGS,
    REASONS,
    SEP,
    Counts,
    day_of,
    days,
    expires_at,
    oldest_kept,
    rows_of,
    total,
)


def test_the_day_of_a_moment_is_its_utc_day() -> None:
    midnight = datetime(2026, 11, 30, tzinfo=UTC).timestamp()
    assert day_of(midnight - 0.001) == date(2026, 11, 29)
    assert day_of(midnight) == date(2026, 11, 30)


def test_days_include_both_ends_and_cross_months_and_years() -> None:
    assert days(date(2026, 12, 30), date(2027, 1, 2)) == [
        date(2026, 12, 30),
        date(2026, 12, 31),
        date(2027, 1, 1),
        date(2027, 1, 2),
    ]
    assert days(date(2026, 3, 1), date(2026, 3, 1)) == [date(2026, 3, 1)]
    assert days(date(2026, 3, 2), date(2026, 3, 1)) == []


def test_a_day_expires_when_it_leaves_the_retention_window() -> None:
    """Kept for ``retention`` days, today included: day D is the oldest kept on D + r - 1
    and gone at the start of D + r."""
    assert oldest_kept(date(2026, 3, 1), 90) == date(2025, 12, 2)
    assert oldest_kept(date(2026, 3, 1), 1) == date(2026, 3, 1)
    assert expires_at(date(2026, 2, 27), 3) == int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
    assert oldest_kept(date(2026, 3, 1), 3) == date(2026, 2, 27)  # the last day it is kept


def test_a_days_hash_becomes_one_row_per_model_by_model() -> None:
    stored = {
        f"zeta{SEP}requests".encode(): b"2",
        f"zeta{SEP}prompt_tokens".encode(): b"100",
        f"zeta{SEP}completion_tokens".encode(): b"40",
        f"qwen3:8b{SEP}rejected:quota".encode(): b"3",  # model ids may hold colons
        f"{SEP}rejected:invalid_request".encode(): b"1",  # refused before a model was known
        f"zeta{SEP}rejected:some_future_reason".encode(): b"9",  # a newer replica's: left out
        b"no-separator": b"5",
    }
    rows = rows_of(date(2026, 3, 1), stored)
    assert [(r.day, r.model) for r in rows] == [
        (date(2026, 3, 1), ""),
        (date(2026, 3, 1), "qwen3:8b"),
        (date(2026, 3, 1), "zeta"),
    ]
    assert rows[0].counts == Counts(rejections={**dict.fromkeys(REASONS, 0), "invalid_request": 1})
    assert rows[1].counts.rejections["quota"] == 3 and rows[1].counts.requests == 0
    assert rows[2].counts == Counts(2, 100, 40)

    summed = total(rows)
    assert (summed.requests, summed.prompt_tokens, summed.completion_tokens) == (2, 100, 40)
    assert {r: n for r, n in summed.rejections.items() if n} == {"quota": 3, "invalid_request": 1}
    assert total([]) == Counts()


def test_every_reason_is_explained() -> None:
    assert tuple(REASON_MEANINGS) == REASONS
