"""Before and after: fairgate as another git revision had it (``--baseline REV``) next to
fairgate now, without and with quotas, measured in the same run.

Issue 14 asks that the request path keep its figures with quotas configured (at least 2,000
requests/s from one process, under 1 ms added p50 at concurrency 1), measured in the same run
before and after. "Before" is the revision's code serving a tenant without quotas (a revision
from before quotas has no other kind); "after" is the code of now serving the tenant with
quotas; the code of now without quotas, between them, tells how much of a difference is the
code's and how much the quotas'. The ratios are after / before: above 1 for requests/s is more
served, above 1 for the added p50 is more added.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.proxy_overhead.figures import ms, us, workload
from loadtest.proxy_overhead.measurement import Cell, Result, added, side_by_side
from loadtest.proxy_overhead.workload import BASELINE
from loadtest.report import markdown_table

#: The paths compared, in the order of every triple below: before, now without quotas, after.
COMPARED = (BASELINE, "fairgate", "quotas")

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class BeforeAfter:
    """The three paths of :data:`COMPARED` at one workload and concurrency."""

    stream: bool
    concurrency: int
    rps: Triple
    added_p50: Triple  # the whole response's p50 minus direct's, seconds
    cpu: Triple  # CPU seconds per request of the gateway process and its Redis

    @property
    def throughput_ratio(self) -> float:
        return self.rps[2] / self.rps[0]

    @property
    def latency_ratio(self) -> float | None:
        """None when the revision added nothing measurable (the ratio would mean nothing)."""
        return self.added_p50[2] / self.added_p50[0] if self.added_p50[0] > 0 else None

    @property
    def cpu_ratio(self) -> float:
        return self.cpu[2] / self.cpu[0]


def before_after(results: dict[Cell, Result], concurrencies: list[int]) -> list[BeforeAfter]:
    """One comparison per workload and concurrency."""
    rows = []
    for stream, c, cells in side_by_side(concurrencies, *COMPARED):
        before, now, after = (results[cell] for cell in cells)
        rows.append(
            BeforeAfter(
                stream,
                c,
                (before.rps, now.rps, after.rps),
                (
                    added(results, cells[0], "total", 50),
                    added(results, cells[1], "total", 50),
                    added(results, cells[2], "total", 50),
                ),
                (before.cpu_per_request(), now.cpu_per_request(), after.cpu_per_request()),
            )
        )
    return rows


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def before_after_table(rows: list[BeforeAfter], revision: str) -> str:
    """Requests/s and added p50 of the three paths, each with its after / before ratio."""
    table = [
        [
            workload(row.stream),
            str(row.concurrency),
            *(f"{rps:,.0f}" for rps in row.rps),
            _ratio(row.throughput_ratio),
            *(ms(value, signed=True) for value in row.added_p50),
            _ratio(row.latency_ratio),
            " / ".join(us(cpu) for cpu in row.cpu) + f" ({_ratio(row.cpu_ratio)})",
        ]
        for row in rows
    ]
    at = f"at `{revision}`"
    return markdown_table(
        [
            "Workload",
            "Conc.",
            f"req/s {at}",
            "req/s now",
            "req/s now, quotas",
            "after / before",
            f"added p50 {at}",
            "added p50 now",
            "added p50 now, quotas",
            "after / before",
            "CPU/req before / now / after",
        ],
        "lrrrrrrrrrr",
        table,
    )


def before_after_reading(rows: list[BeforeAfter], revision: str) -> str:
    """The figures in words, computed so that they stay true on every run."""
    ratios = [row.throughput_ratio for row in rows]
    cpu = [row.cpu_ratio for row in rows]
    text = (
        f"With quotas, fairgate now serves {min(ratios):.2f}× to {max(ratios):.2f}× the "
        f"requests/s of fairgate at `{revision}` without them, at {min(cpu):.2f}× to "
        f"{max(cpu):.2f}× its CPU time per request (gateway and Redis)."
    )
    alone = [row for row in rows if row.concurrency == 1 and not row.stream]
    if alone:
        before, now, after = alone[0].added_p50
        text += (
            f" Alone (concurrency 1, non-streaming) it adds {ms(after)} at p50, "
            f"{ms(now)} without quotas, where `{revision}` added {ms(before)}."
        )
    return text


def before_after_section(
    results: dict[Cell, Result], concurrencies: list[int], revision: str
) -> str:
    """The comparison as the report shows it: a table and its reading."""
    rows = before_after(results, concurrencies)
    return f"{before_after_table(rows, revision)}\n\n{before_after_reading(rows, revision)}"
