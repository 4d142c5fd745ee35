"""The rendering of the quota benchmark: its BENCHMARKS.md section, from the windows measured.

Every figure and verdict in the text is computed from the run; the tolerance is written from the
constant the verdict checks (:data:`~loadtest.quota_bench.measurement.TOLERANCE`).
"""

from __future__ import annotations

import datetime

from loadtest.quota_bench.measurement import SETTLE_S, TOLERANCE, Window
from loadtest.quota_bench.workload import (
    BACKOFF_S,
    CLIENTS_PER_REPLICA,
    MAX_TOKENS,
    QUOTAS,
    REPLICAS,
    TIME_SCALE,
)
from loadtest.report import machine, markdown_table, revision

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "quotas"


def _limits(tenant: str) -> str:
    return ", ".join(f"`{name}: {value:,}`" for name, value in QUOTAS[tenant].items())


def table(windows: list[Window]) -> str:
    rows = [
        [
            w.tenant,
            f"{w.kind} per minute ≤ {w.limit:,}",
            f"{w.seconds:g} s",
            f"{w.expected:,.0f}",
            f"{w.measured:,}",
            f"{w.per_minute:,.0f}",
            f"{w.deviation:+.2%}",
            f"{w.admitted:,} / {w.tokens:,}",
            f"{w.refused:,}",
            str(w.other),
            "held" if w.held else "**not held**",
        ]
        for w in windows
    ]
    headers = [
        "Tenant",
        "Binding quota",
        "Window",
        "Allowed",
        "Admitted",
        "Per minute",
        "Deviation",
        "Requests / tokens admitted",
        "Refused (429)",
        "Other answers",
        f"Within {TOLERANCE:.0%}",
    ]
    return markdown_table(headers, "llrrrrrrrrl", rows)


def render(windows: list[Window], argv: list[str], elapsed_s: float) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    bursts = "; ".join(f"{w.tenant} {w.burst:,} {w.kind}" for w in windows)
    tenants = "\n".join(f"- `{tenant}`: {_limits(tenant)}" for tenant in QUOTAS)
    command = "`" + " ".join(["python", "-m", "loadtest.quota_bench", *argv]) + "`"
    if argv == ["--write", "BENCHMARKS.md"]:
        command += " (what `make bench` runs)"
    return f"""## Quotas across replicas: a minute of overload

{REPLICAS} `fairgate serve` replicas share one Redis and one simulated engine (running
{TIME_SCALE:g}× faster than real time; quotas count wall-clock time). Two tenants overload
their quotas through every replica at once:

{tenants}

{CLIENTS_PER_REPLICA} closed-loop clients per tenant on each replica send their next request as
soon as the last is answered, and {BACKOFF_S * 1000:g} ms after a refusal. Requests ask for up
to {MAX_TOKENS} tokens; the engine's output lengths vary, so the estimate charged at admission
is corrected to the usage at completion. Each tenant's window starts {SETTLE_S:g} s after its
first refusal: by then the burst GCRA allows a tenant idle for a whole minute (its whole budget
at once; here {bursts} before the first refusal) is spent, and what it admits is the limit's
rate. Admitted tokens are the engine's usage (prompt + completion) of the requests sent in the
window; "other answers" are any that were neither a 200 nor a 429 with `Retry-After` and
`rate_limit_exceeded`, over the whole run.

{table(windows)}

Reproduce with {command}.
Machine: {machine()}; fairgate at {revision()}; run on {today}, {elapsed_s:.0f} s of wall
time in all."""
