"""What tracing costs on the full path: fairgate tracing every request, next to fairgate with
tracing off, measured in the same run.

The two gateways differ only in ``telemetry.traces``: the traced one records every request
(sample ratio 1: a span per request and its three steps) and exports the spans over OTLP/HTTP
to the upstream, which answers as a collector that keeps nothing. Export runs in batches on
the SDK's thread inside the gateway process, so the CPU time per request counted here includes
building, encoding and sending the spans.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.proxy_overhead.figures import ms, us, workload
from loadtest.proxy_overhead.measurement import Cell, Result, added, side_by_side
from loadtest.proxy_overhead.workload import TRACED
from loadtest.report import markdown_table


@dataclass(frozen=True)
class TracingCost:
    """fairgate with tracing off and on, for one workload and concurrency."""

    stream: bool
    concurrency: int
    off_rps: float
    on_rps: float
    off_added_p50: float  # the whole response's p50 minus direct's, seconds
    on_added_p50: float
    off_cpu: float  # CPU seconds per request of the gateway process (without Redis)
    on_cpu: float

    @property
    def throughput_ratio(self) -> float:
        return self.on_rps / self.off_rps

    @property
    def added_p50(self) -> float:
        """What tracing adds to the p50 (seconds; noise can make it negative)."""
        return self.on_added_p50 - self.off_added_p50

    @property
    def added_cpu(self) -> float:
        return self.on_cpu - self.off_cpu


def tracing_costs(results: dict[Cell, Result], concurrencies: list[int]) -> list[TracingCost]:
    """One comparison per workload and concurrency."""
    costs = []
    for stream, c, (off, on) in side_by_side(concurrencies, "fairgate", TRACED):
        costs.append(
            TracingCost(
                stream,
                c,
                results[off].rps,
                results[on].rps,
                added(results, off, "total", 50),
                added(results, on, "total", 50),
                results[off].cpu_per_request("fairgate"),
                results[on].cpu_per_request(TRACED),
            )
        )
    return costs


def tracing_table(costs: list[TracingCost]) -> str:
    rows = [
        [
            workload(cost.stream),
            str(cost.concurrency),
            f"{cost.off_rps:,.0f}",
            f"{cost.on_rps:,.0f}",
            f"{cost.throughput_ratio:.2f}",
            ms(cost.off_added_p50, signed=True),
            ms(cost.on_added_p50, signed=True),
            f"{us(cost.off_cpu)} / {us(cost.on_cpu)}",
        ]
        for cost in costs
    ]
    return markdown_table(
        [
            "Workload",
            "Conc.",
            "req/s off",
            "req/s traced",
            "Ratio",
            "added p50 off",
            "added p50 traced",
            "gateway CPU/req off / traced",
        ],
        "lrrrrrrr",
        rows,
    )


def tracing_reading(costs: list[TracingCost]) -> str:
    """The figures in words, computed so that they stay true on every run."""
    ratios = [cost.throughput_ratio for cost in costs]
    cpu = [cost.added_cpu for cost in costs]
    text = (
        f"Tracing every request keeps {min(ratios):.0%} to {max(ratios):.0%} of the requests/s "
        f"of the same gateway untraced and costs the gateway process {us(min(cpu))} to "
        f"{us(max(cpu))} more CPU time per request."
    )
    alone = [cost for cost in costs if cost.concurrency == 1 and not cost.stream]
    if alone:
        added_alone = ms(alone[0].added_p50, signed=True)
        text += f" Alone (concurrency 1, non-streaming) it adds {added_alone} at p50."
    return text + " Off (the default), the handlers run unwrapped: no span is made."


def tracing_section(results: dict[Cell, Result], concurrencies: list[int]) -> str:
    """The comparison as the report shows it: a table and its reading."""
    costs = tracing_costs(results, concurrencies)
    return f"{tracing_table(costs)}\n\n{tracing_reading(costs)}"
