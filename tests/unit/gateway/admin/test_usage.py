"""gateway/admin/usage.py: which days ``?from=&to=`` ask for, or a 400 naming the parameter."""

from __future__ import annotations

from datetime import date

import pytest

from fairgate.errors import GatewayError
from gateway.admin.usage import requested_days

TODAY = date(2026, 11, 29)


@pytest.mark.parametrize(
    ("query", "first", "last"),
    [
        ({}, TODAY, TODAY),
        ({"from": "2026-11-01"}, date(2026, 11, 1), TODAY),
        ({"to": "2026-11-20"}, date(2026, 11, 20), date(2026, 11, 20)),  # from defaults to to
        ({"from": "2026-09-01", "to": "2026-09-30"}, date(2026, 9, 1), date(2026, 9, 30)),
        ({"from": "2026-09-01"}, date(2026, 9, 1), TODAY),  # the oldest day kept, 90 days
        ({"from": "2026-11-29", "to": "2026-12-05"}, TODAY, date(2026, 12, 5)),  # days to come
    ],
)
def test_the_days_asked_for(query: dict[str, str], first: date, last: date) -> None:
    assert requested_days(query, TODAY, 90) == (first, last)


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ({"from": "2026-11-31"}, "from", "YYYY-MM-DD, not '2026-11-31'"),
        ({"from": "20261101"}, "from", "YYYY-MM-DD"),
        ({"from": "2026-11-01T00:00"}, "from", "YYYY-MM-DD"),
        ({"to": "yesterday"}, "to", "YYYY-MM-DD"),
        ({"to": ""}, "to", "YYYY-MM-DD"),
        ({"from": "2026-11-29", "to": "2026-11-28"}, "from", "is after to"),
        ({"from": "2026-08-31"}, "from", "kept for 90 days: from must be 2026-09-01 or later"),
        ({"to": "2027-03-01", "from": "2026-11-29"}, "to", "at most 90 days"),
    ],
)
def test_bad_days_are_400_naming_the_parameter(
    query: dict[str, str], param: str, message: str
) -> None:
    with pytest.raises(GatewayError) as refused:
        requested_days(query, TODAY, 90)
    assert (refused.value.status, refused.value.param) == (400, param)
    assert message in refused.value.message
