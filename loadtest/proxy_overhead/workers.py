"""What a second worker process gives: ``fairgate serve --workers 2`` next to one process,
measured in the same run.

The two gateways have the same configuration (each its own admission domain in the same
Redis); the second runs two worker processes on one port (:mod:`fairgate.workers`), so the
kernel spreads the load generator's connections over them. At concurrency 1 there is one
connection, hence one busy worker. The CPU time per request counted for the workers is both
workers' (and their supervisor's, which idles) plus Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.proxy_overhead.measurement import Cell, Result, added, side_by_side
from loadtest.proxy_overhead.workload import WORKER_COUNT, WORKERS
from loadtest.report import markdown_table


@dataclass(frozen=True)
class WorkerGain:
    """One gateway process and ``WORKER_COUNT`` of them, for one workload and concurrency."""

    stream: bool
    concurrency: int
    one_rps: float
    many_rps: float
    one_added_p50: float  # the whole response's p50 minus direct's, seconds
    many_added_p50: float
    one_cpu: float  # CPU seconds per request of the gateway process(es) and Redis
    many_cpu: float

    @property
    def throughput_ratio(self) -> float:
        return self.many_rps / self.one_rps


def worker_gains(results: dict[Cell, Result], concurrencies: list[int]) -> list[WorkerGain]:
    """One comparison per workload and concurrency."""
    gains = []
    for stream, c, (one, many) in side_by_side(concurrencies, "fairgate", WORKERS):
        gains.append(
            WorkerGain(
                stream,
                c,
                results[one].rps,
                results[many].rps,
                added(results, one, "total", 50),
                added(results, many, "total", 50),
                results[one].cpu_per_request(),
                results[many].cpu_per_request(),
            )
        )
    return gains


def workers_table(gains: list[WorkerGain]) -> str:
    rows = [
        [
            "streaming" if gain.stream else "non-streaming",
            str(gain.concurrency),
            f"{gain.one_rps:,.0f}",
            f"{gain.many_rps:,.0f}",
            f"{gain.throughput_ratio:.2f}",
            f"{gain.one_added_p50 * 1e3:+.2f} ms / {gain.many_added_p50 * 1e3:+.2f} ms",
            f"{gain.one_cpu * 1e6:,.0f} µs / {gain.many_cpu * 1e6:,.0f} µs",
        ]
        for gain in gains
    ]
    return markdown_table(
        [
            "Workload",
            "Conc.",
            "req/s, 1 process",
            f"req/s, {WORKER_COUNT} workers",
            "Ratio",
            "added p50, 1 / workers",
            "CPU/req, 1 / workers",
        ],
        "lrrrrrr",
        rows,
    )


def workers_reading(gains: list[WorkerGain], cpus: int) -> str:
    """The figures in words, computed so that they stay true on every run."""
    loaded = [gain for gain in gains if gain.concurrency > 1]
    if not loaded:
        return ""
    best = max(loaded, key=lambda gain: gain.many_rps)
    ratios = [gain.throughput_ratio for gain in loaded]
    return (
        f"Under load (concurrency above 1), {WORKER_COUNT} workers serve {min(ratios):.2f}× to "
        f"{max(ratios):.2f}× the requests/s of one process, at most {best.many_rps:,.0f} "
        f"({'streaming' if best.stream else 'non-streaming'}, concurrency {best.concurrency}). "
        f"On this {cpus}-CPU machine the load generator, the upstream and Redis use the same "
        f"CPUs, so a second worker can only take what they leave: on a host where the gateway "
        f"has cores of its own, each worker adds about one process's requests/s until Redis "
        f"(one core) binds ([scaling.md](docs/scaling.md))."
    )


def workers_section(results: dict[Cell, Result], concurrencies: list[int], cpus: int) -> str:
    """The comparison as the report shows it: a table and its reading."""
    gains = worker_gains(results, concurrencies)
    return f"{workers_table(gains)}\n\n{workers_reading(gains, cpus)}"
