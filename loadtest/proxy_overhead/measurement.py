"""The measurement of the proxy-overhead benchmark: a closed-loop load, its figures, the targets.

A closed loop of N workers in this process, each sending its next request as soon as the
previous one is done, for a fixed time per cell after a warm-up, the paths taking turns
in slices of :data:`SLICE_S`. Every figure the report shows is in the :class:`Run` this returns:
per cell, the latencies of the correct requests, the failures, the CPU time of the path's own
processes and how busy the machine's CPUs were; and the comparisons the targets are about.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
import uvloop

from loadtest.proxy_overhead.stack import Target, server_logs, start_stack
from loadtest.proxy_overhead.workload import (
    BASELINE,
    CHAT_REQUEST,
    MODES,
    STREAM_REQUEST,
    complete_answer,
)
from loadtest.report import revision
from loadtest.revisions import baseline_checkout
from loadtest.stats import percentile

CONCURRENCIES = (1, 16, 64)
DEFAULT_DURATION_S = 5.0
DEFAULT_WARMUP_S = 1.0
#: The paths of a cell take turns in slices this long (see :func:`measure_workload`).
SLICE_S = 1.0
#: fairgate's added p50 may be at most this multiple of the forwarder's.
TARGET_ADDED_P50_RATIO = 1.5
#: fairgate's requests/s must be at least this fraction of the forwarder's.
TARGET_THROUGHPUT_RATIO = 0.8
#: The full path's absolute targets: requests/s from one gateway process (non-streaming, at
#: the best concurrency measured) and added p50 at concurrency 1 (non-streaming).
TARGET_FULL_PATH_RPS = 2000.0
TARGET_ALONE_ADDED_S = 0.001

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30.0)

Metric = Literal["ttfb", "total"]

#: The latencies measured per workload (streamed or not): a whole response, or first byte and
#: end of a stream.
METRICS: dict[bool, tuple[Metric, ...]] = {False: ("total",), True: ("ttfb", "total")}

# ------------------------------------------------------------------------- CPU accounting

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; NaN where /proc is missing.

    On a machine with fewer cores than busy processes, CPU per request is what throughput
    and the queueing part of latency follow, and it is much steadier than either.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far, all CPUs; (0, 0) without /proc.

    Busy is everything but idle and waiting for I/O: the difference over a slice says how much
    of the machine was in use, by the benchmark's processes or by anything else.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0, 0
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


# ------------------------------------------------------------------------ load generator


@dataclass(frozen=True)
class Cell:
    """One measurement: a path, streamed or not, at a number of concurrent clients."""

    mode: str
    stream: bool
    concurrency: int


@dataclass
class Samples:
    """What the requests of one cell showed: latencies (s) of the correct ones, failures, cost."""

    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0  # seconds under load
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s of the path's processes
    machine_busy: int = 0  # CPU ticks the whole machine was busy under load
    machine_total: int = 0  # CPU ticks that passed under load, all CPUs


@dataclass(frozen=True)
class Result:
    """A measured cell."""

    cell: Cell
    samples: Samples

    @property
    def rps(self) -> float:
        return len(self.samples.total) / self.samples.elapsed

    @property
    def machine_busy(self) -> float:
        """The fraction of the machine's CPU time in use while this cell ran (NaN if unknown)."""
        total = self.samples.machine_total
        return self.samples.machine_busy / total if total else math.nan

    def cpu_per_request(self, process: str | None = None) -> float:
        """CPU seconds per request of one of the path's processes, or of all (NaN if unknown)."""
        spent = (
            self.samples.cpu.get(process, math.nan) if process else sum(self.samples.cpu.values())
        )
        return spent / max(len(self.samples.total), 1)

    def percentile(self, metric: Metric, q: float) -> float:
        """Percentile ``q`` (0-100, as :func:`loadtest.stats.percentile` defines it) of
        ``metric``, in seconds; NaN if no request succeeded."""
        values = getattr(self.samples, metric)
        return percentile(values, q) if values else math.nan


async def _one_request(
    session: aiohttp.ClientSession, target: Target, body: bytes, stream: bool
) -> tuple[float, float] | None:
    """Time to the first body byte and to the end of one request; None if it failed."""
    started = time.perf_counter()
    async with session.post(target.url, data=body, headers=target.headers) as response:
        first = await response.content.readany()
        ttfb = time.perf_counter() - started
        rest = await response.content.read()
        total = time.perf_counter() - started
        ok = response.status == 200 and complete_answer(first + rest, stream)
    return (ttfb, total) if ok else None


async def _worker(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    stream: bool,
    deadline: float,
    samples: Samples,
) -> None:
    """One closed-loop client: the next request leaves as soon as the previous one is done."""
    while time.perf_counter() < deadline:
        try:
            timing = await _one_request(session, target, body, stream)
        except (aiohttp.ClientError, TimeoutError):
            timing = None
        if timing is None:
            samples.errors += 1
        else:
            samples.ttfb.append(timing[0])
            samples.total.append(timing[1])


async def _load(
    session: aiohttp.ClientSession,
    target: Target,
    cell: Cell,
    duration: float,
    samples: Samples,
) -> None:
    """``cell.concurrency`` workers against ``target`` for ``duration`` s, added to ``samples``."""
    body = json.dumps(STREAM_REQUEST if cell.stream else CHAT_REQUEST).encode()
    cpu_before = {name: cpu_seconds(pid) for name, pid in target.processes.items()}
    busy_before, total_before = machine_ticks()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(
            _worker(session, target, body, cell.stream, deadline, samples)
            for _ in range(cell.concurrency)
        )
    )
    samples.elapsed += time.perf_counter() - started
    busy_after, total_after = machine_ticks()
    samples.machine_busy += busy_after - busy_before
    samples.machine_total += total_after - total_before
    for name, pid in target.processes.items():
        samples.cpu[name] = samples.cpu.get(name, 0.0) + cpu_seconds(pid) - cpu_before[name]


async def measure_workload(
    targets: list[Target], stream: bool, concurrency: int, duration: float, warmup: float
) -> list[Result]:
    """Every path at one workload and concurrency, interleaved in slices of about a second.

    Anything else this machine runs comes and goes over seconds; taking the paths in turn, a
    slice at a time, spreads such a burst over all of them instead of charging it to whichever
    path happened to be measured then. Each path is warmed up first (connections on every hop,
    the gateway's caches) and keeps its own client, so its connections stay open between slices.
    """
    cells = [Cell(target.mode, stream, concurrency) for target in targets]
    samples = [Samples() for _ in targets]
    rounds = max(1, round(duration / SLICE_S))
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), timeout=CLIENT_TIMEOUT
                )
            )
            for _ in targets
        ]
        for session, target, cell in zip(sessions, targets, cells, strict=True):
            await _load(session, target, cell, warmup, Samples())
        for _ in range(rounds):
            for session, target, cell, cell_samples in zip(
                sessions, targets, cells, samples, strict=True
            ):
                await _load(session, target, cell, duration / rounds, cell_samples)
    return [Result(cell, cell_samples) for cell, cell_samples in zip(cells, samples, strict=True)]


async def measure_all(
    targets: list[Target], concurrencies: Iterable[int], duration: float, warmup: float
) -> tuple[dict[Cell, Result], str]:
    """Every cell, with progress on stderr; also the event loop's class, for the report."""
    loop = asyncio.get_running_loop()
    loop_name = f"{type(loop).__module__}.{type(loop).__name__}"
    results: dict[Cell, Result] = {}
    for stream in (False, True):
        for concurrency in concurrencies:
            for result in await measure_workload(targets, stream, concurrency, duration, warmup):
                results[result.cell] = result
                print(
                    f"{'streaming' if stream else 'non-streaming':>13} c={concurrency:<3} "
                    f"{result.cell.mode:>9}: "
                    f"{result.rps:8,.0f} req/s  p50 "
                    f"{result.percentile('total', 50) * 1e3:.2f} ms"
                    f"  errors {result.samples.errors}",
                    file=sys.stderr,
                    flush=True,
                )
    return results, loop_name


# ---------------------------------------------------------------- the targets' comparisons


def side_by_side(
    concurrencies: Iterable[int], *modes: str
) -> Iterator[tuple[bool, int, tuple[Cell, ...]]]:
    """The cells of some paths at each workload (plain, then streamed) and concurrency: what
    every comparison of one fairgate next to others (traced, with workers, at another
    revision) reads."""
    for stream in (False, True):
        for c in concurrencies:
            yield stream, c, tuple(Cell(mode, stream, c) for mode in modes)


def added(results: dict[Cell, Result], cell: Cell, metric: Metric, q: float) -> float:
    """Percentile ``q`` of ``metric`` on ``cell``'s path minus the same percentile direct.

    A difference of percentiles, not a percentile of differences: the two runs are separate.
    """
    direct = results[Cell("direct", cell.stream, cell.concurrency)]
    return results[cell].percentile(metric, q) - direct.percentile(metric, q)


@dataclass(frozen=True)
class Headline:
    """fairgate against the forwarder for one workload, latency metric and concurrency."""

    stream: bool
    metric: Metric
    concurrency: int
    forwarder_added: float
    fairgate_added: float
    forwarder_rps: float
    fairgate_rps: float
    forwarder_cpu: float  # CPU seconds per request of the path's own processes
    fairgate_cpu: float  # fairgate and its Redis
    fairgate_redis_cpu: float  # its Redis's share

    @property
    def latency_ratio(self) -> float | None:
        """None when the forwarder adds nothing measurable (the ratio would mean nothing)."""
        return self.fairgate_added / self.forwarder_added if self.forwarder_added > 0 else None

    @property
    def throughput_ratio(self) -> float:
        return self.fairgate_rps / self.forwarder_rps

    @property
    def latency_met(self) -> bool:
        ratio = self.latency_ratio
        return self.fairgate_added <= 0 if ratio is None else ratio <= TARGET_ADDED_P50_RATIO

    @property
    def throughput_met(self) -> bool:
        return self.throughput_ratio >= TARGET_THROUGHPUT_RATIO


def headlines(results: dict[Cell, Result], concurrencies: Iterable[int]) -> list[Headline]:
    """The comparisons the targets are about, one per workload, metric and concurrency."""
    found = []
    for stream, metrics in METRICS.items():
        for metric in metrics:
            for c in concurrencies:
                forwarder, fairgate = Cell("forwarder", stream, c), Cell("fairgate", stream, c)
                found.append(
                    Headline(
                        stream,
                        metric,
                        c,
                        added(results, forwarder, metric, 50),
                        added(results, fairgate, metric, 50),
                        results[forwarder].rps,
                        results[fairgate].rps,
                        results[forwarder].cpu_per_request(),
                        results[fairgate].cpu_per_request(),
                        results[fairgate].cpu_per_request("redis"),
                    )
                )
    return found


@dataclass(frozen=True)
class QuotaCost:
    """fairgate for a tenant without quotas and for one with them, at one workload, metric and
    concurrency (the same gateway process, the same run)."""

    stream: bool
    metric: Metric
    concurrency: int
    added: tuple[float, float]  # added p50 without, with quotas
    rps: tuple[float, float]
    cpu: tuple[float, float]  # CPU seconds per request of fairgate and its Redis
    redis_cpu: tuple[float, float]  # its Redis's share

    @property
    def throughput_ratio(self) -> float:
        return self.rps[1] / self.rps[0]


def quota_costs(results: dict[Cell, Result], concurrencies: Iterable[int]) -> list[QuotaCost]:
    """What quotas add to fairgate's path, one row per workload, metric and concurrency."""
    found = []
    for stream, metrics in METRICS.items():
        for metric in metrics:
            for c in concurrencies:
                cells = (Cell("fairgate", stream, c), Cell("quotas", stream, c))
                found.append(
                    QuotaCost(
                        stream,
                        metric,
                        c,
                        (
                            added(results, cells[0], metric, 50),
                            added(results, cells[1], metric, 50),
                        ),
                        (results[cells[0]].rps, results[cells[1]].rps),
                        (results[cells[0]].cpu_per_request(), results[cells[1]].cpu_per_request()),
                        (
                            results[cells[0]].cpu_per_request("redis"),
                            results[cells[1]].cpu_per_request("redis"),
                        ),
                    )
                )
    return found


@dataclass(frozen=True)
class FullPathFigure:
    """One of fairgate's absolute targets: which figure, its value, the threshold, the verdict."""

    what: str
    value: float
    threshold: float
    met: bool


def full_path_figures(
    results: dict[Cell, Result], concurrencies: Iterable[int], mode: str = "fairgate"
) -> tuple[FullPathFigure, list[FullPathFigure]]:
    """Requests/s from one gateway process at its best concurrency (non-streaming); and the p50
    fairgate adds at concurrency 1, non-streaming and to a stream's first byte, if measured;
    for the tenant of ``mode`` (``fairgate``: without quotas, ``quotas``: with)."""
    concurrencies = list(concurrencies)
    best = max(concurrencies, key=lambda c: results[Cell(mode, False, c)].rps)
    rps = results[Cell(mode, False, best)].rps
    throughput = FullPathFigure(
        f"non-streaming, concurrency {best}", rps, TARGET_FULL_PATH_RPS, rps >= TARGET_FULL_PATH_RPS
    )
    alone = []
    if 1 in concurrencies:
        paths: tuple[tuple[bool, Metric, str], ...] = (
            (False, "total", "non-streaming"),
            (True, "ttfb", "streaming, first byte"),
        )
        for stream, metric, what in paths:
            value = added(results, Cell(mode, stream, 1), metric, 50)
            alone.append(
                FullPathFigure(what, value, TARGET_ALONE_ADDED_S, value < TARGET_ALONE_ADDED_S)
            )
    return throughput, alone


# ------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Run:
    """Everything one run measured and observed: what the report is rendered from."""

    results: dict[Cell, Result]
    concurrencies: list[int]
    duration: float  # seconds measured per cell
    warmup: float  # seconds of unmeasured load before each cell
    loop_name: str  # the load generator's event loop
    logs: dict[str, list[str]]  # what each server logged, for those that did
    load_before: float  # the machine's load average when the run started
    code_revision: str
    cpus: int
    elapsed: float  # wall seconds, start to end
    baseline: str | None = None  # the revision fairgate was also run at (``--baseline``)

    @property
    def headlines(self) -> list[Headline]:
        return headlines(self.results, self.concurrencies)

    @property
    def modes(self) -> tuple[str, ...]:
        """The paths measured, in the order they took turns."""
        return MODES + ((BASELINE,) if self.baseline else ())


def run_benchmark(
    concurrencies: list[int], duration: float, warmup: float, baseline: str | None = None
) -> Run:
    """Start every process (fairgate at the git revision ``baseline`` too, if given), measure
    every cell, stop every process, also on errors and Ctrl-C.

    What the servers logged is shown on stderr in every case: it may explain a failure.
    """
    started, load_before, code_revision = time.perf_counter(), os.getloadavg()[0], revision()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fg-overhead-")))
        checkout = baseline_checkout(baseline, workdir) if baseline else None
        targets = start_stack(stack, workdir, checkout)
        try:
            results, loop_name = uvloop.run(measure_all(targets, concurrencies, duration, warmup))
        finally:
            logs = server_logs(workdir)
            for name, lines in logs.items():
                shown = "\n".join(lines[-20:])
                print(f"{name} logged {len(lines)} lines, the last:\n{shown}", file=sys.stderr)
    return Run(
        results,
        concurrencies,
        duration,
        warmup,
        loop_name,
        logs,
        load_before,
        code_revision,
        os.cpu_count() or 1,
        time.perf_counter() - started,
        baseline,
    )
