"""The one percentile every load test and benchmark reports.

Definition: the ``q``-th percentile (``q`` from 0 to 100, so p99 is ``percentile(xs, 99)``) of
``n`` sorted values is read at rank ``(n - 1) x q / 100``, interpolating linearly between the
two closest ranks when that rank is not a whole number. This is numpy's default ("linear",
Hyndman and Fan's type 7) and what matplotlib's box plots draw, so a table and a plot of the
same values agree. p0 is the smallest value and p100 the largest; with few values a high
percentile lies between the two largest rather than on the largest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated between the closest ranks.

    Raises ``ValueError`` for no values: a percentile of nothing is a bug in the caller, which
    should say what it shows instead (see :func:`percentile_or_none`).
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentile_or_none(values: Sequence[float], q: float) -> float | None:
    """:func:`percentile`, or None when there are no values (JSON null, a dash in a table)."""
    return percentile(values, q) if values else None
