"""How the proxy-overhead report writes its figures: durations, CPU times, workloads.

One place for the report's modules (:mod:`~loadtest.proxy_overhead.rendering` and the
comparisons beside it), so that a figure reads the same in every table of the section.
"""

from __future__ import annotations

import math


def workload(stream: bool) -> str:
    return "streaming" if stream else "non-streaming"


def ms(seconds: float, signed: bool = False) -> str:
    return f"{seconds * 1e3:{'+' if signed else ''}.2f} ms"


def us(seconds: float) -> str:
    """A CPU time; n/a where it could not be read (no ``/proc``)."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:,.0f} µs"
