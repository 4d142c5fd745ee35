"""The measurement of the slow-stream benchmark: K streams held open, path after path.

A turn is one path at one number of open streams: K slots of the raw-socket client
(:mod:`~loadtest.stream_bench.client`) start their first streams over a ramp, each starting its
next as soon as one ends; after the ramp and a second to settle, a window of fixed length is
measured; then the slots stop starting streams and the open ones run to their end. The paths
take their turns one after the other at each K (the forwarder, fairgate, fairgate at a
baseline revision if asked, and the control), from the smallest K up.

The control is the forwarder made to spend, per chunk, the CPU time fairgate spent more than
the forwarder at the same K (measured in the turns before; :data:`CONTROL_PER_REQUEST` of it
when a request arrives and when it ends, the rest as each chunk passes). A proxy as costly as
fairgate and otherwise bare: its latencies are what fairgate's CPU alone would make of them on
this machine, so that fairgate's against the control's show what anything else of it (its
pauses, its waits) adds.

Over the window: the gateway's CPU time (``/proc``) per content chunk that reached the client,
its Redis's, its resident memory above what it held idle before the turn per 1,000 open
streams, the time to each stream's first chunk, the gap added between chunks (the gap the client
saw minus the gap the upstream kept), and the pauses: moments when at least
:data:`PAUSE_STREAMS` streams each had a chunk delayed by :data:`PAUSE_DELAY_S` or more. fairgate
also says how much time its garbage collector took (its own ``/metrics``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from loadtest.proxy_overhead.measurement import cpu_seconds, machine_ticks
from loadtest.proxy_overhead.stack import server_logs
from loadtest.proxy_overhead.workload import API_KEY, BURN_PATH, LOOPBACK
from loadtest.report import revision
from loadtest.revisions import baseline_checkout
from loadtest.stats import percentile
from loadtest.stream_bench.client import Load, Stream, keep_open
from loadtest.stream_bench.stack import CONTROL, FAIRGATE, FORWARDER, Target, start_stack
from loadtest.stream_bench.workload import LLM, SLOW, Shape

#: Open streams per turn: the full run, and the short one ``make bench`` runs.
STREAMS = (100, 500, 1_000, 2_000)
SHORT_STREAMS = (100, 1_000)
#: Turns of each path at each K, pooled: whatever else the machine runs comes and goes.
ROUNDS, SHORT_ROUNDS = 2, 1
#: The scale turn of the full run: many more streams, each slower (:data:`SLOW`), through as
#: many processes per path as the machine's open-file limit asks (:func:`scale_processes`).
SCALE_STREAMS = 10_000
#: Sockets a path holds per stream: one to the client, one to the upstream.
SOCKETS_PER_STREAM = 2
#: Descriptors a gateway keeps for everything else: Redis, listeners, probes, logs.
FD_RESERVE = 1_000
#: Seconds measured per turn, and over which the first streams start.
WINDOW_S, SHORT_WINDOW_S, SCALE_WINDOW_S = 30.0, 12.0, 30.0
#: At the LLM shape, one mean stream's lifetime: the first streams then end, and the next start,
#: about as steadily as they began, and the window measures K streams open at a steady rate of
#: new ones (K / lifetime). Over a shorter ramp (5 s, before session 13) every slot's streams
#: start and end in step: new streams came in waves of 400/s and troughs of 10/s at 2,000
#: streams, twice the steady rate at the crests, and the window measured those waves.
RAMP_S, SCALE_RAMP_S = LLM.mean_duration_s, 30.0
#: After the ramp, before the window: the last streams to start get their first chunks.
SETTLE_S = 1.0
#: A chunk is delayed if its gap grew by this much; a pause delayed this many streams at once.
PAUSE_DELAY_S = 0.05
PAUSE_STREAMS = 10
#: Delayed chunks no further apart than this belong to the same pause.
PAUSE_JOIN_S = 0.05
#: How often resident memory is sampled during the window.
RSS_EVERY_S = 0.5
#: The targets of issue 17, at :data:`TARGET_STREAMS` open streams: fairgate / forwarder.
TARGET_STREAMS = 2_000
TARGET_TTFB_P99_RATIO = 1.5
TARGET_GAP_P99_RATIO = 1.5
TARGET_CPU_RATIO = 1.5
TARGET_RSS_RATIO = 1.25
#: fairgate as another revision had it (the forwarder, fairgate, the control: :mod:`.stack`).
BASELINE = "baseline"
#: The share of fairgate's extra CPU the control spends per request, half when it arrives and
#: half when it ends; the rest it spends per chunk. fairgate's extra is about that much per
#: request (authentication, estimate, admission, settling, the access log) and the rest per
#: chunk (the stream filter, the watchdogs' stamps, the meter): py-spy, docs/benchmark-notes.md.
CONTROL_PER_REQUEST = 0.5
#: The most the control's own overshoot may scale what it is told, either way.
BURN_CORRECTION = 2.0

#: How long a scrape of fairgate's metrics may take (an overwhelmed gateway may not answer).
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=10.0)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pids: Iterable[int]) -> float:
    """Resident memory of processes now, in all; NaN where /proc is missing."""
    try:
        return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids) * _PAGE
    except (OSError, IndexError, ValueError):
        return math.nan


@dataclass(frozen=True)
class Turn:
    """One path at one number of open streams of one shape, through ``processes`` gateway
    processes sharing its port (one but at scale, where one may not open enough files)."""

    path: str
    streams: int
    shape: Shape
    processes: int = 1


@dataclass(frozen=True)
class Pause:
    """Chunks of many streams delayed together: how many streams, the longest delay."""

    at: float  # seconds into the window
    streams: int
    worst: float


@dataclass
class GcFigures:
    """What fairgate's collector did over the window, from its own metrics."""

    collections: int = 0
    seconds: float = 0.0
    long: int = 0  # collections of 25 ms or more
    longest_bucket: float = 0.0  # the upper bound of the largest bucket a collection fell in

    def add(self, other: GcFigures) -> None:
        self.collections += other.collections
        self.seconds += other.seconds
        self.long += other.long
        self.longest_bucket = max(self.longest_bucket, other.longest_bucket)


@dataclass
class TurnResult:
    """What one turn measured over its window."""

    turn: Turn
    ramp_s: float
    window_s: float
    chunks: int = 0  # content chunks that reached the client in the window
    streams_ended: int = 0  # streams that ended in the window
    errors: int = 0  # streams that failed or ended incomplete, connections refused
    ttfb: list[float] = field(default_factory=list)  # of the streams sent in the window
    gaps: list[float] = field(default_factory=list)  # added to each gap, ending in the window
    pauses: list[Pause] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s of each of the path's processes
    client_cpu: float = 0.0  # CPU s of this process (the load generator) in the window
    #: The gateway's resident bytes in the window (median) above those before its first turn.
    rss_added: list[float] = field(default_factory=list)  # one per round
    machine_ticks: tuple[int, int] = (0, 0)  # busy and all CPU ticks of the machine
    gc: GcFigures | None = None
    #: The control's: the extra CPU per chunk it was to spend, one per round (s)
    burns: list[float] = field(default_factory=list)
    #: What went wrong, by the start of its message (a status line, a lost connection).
    error_kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, other: TurnResult) -> None:
        """Pool another round of the same turn into this one."""
        self.window_s += other.window_s
        self.chunks += other.chunks
        self.streams_ended += other.streams_ended
        self.errors += other.errors
        self.error_kinds += other.error_kinds
        self.ttfb += other.ttfb
        self.gaps += other.gaps
        self.pauses += other.pauses
        for name, spent in other.cpu.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + spent
        self.client_cpu += other.client_cpu
        self.rss_added += other.rss_added
        self.burns += other.burns
        self.machine_ticks = (
            self.machine_ticks[0] + other.machine_ticks[0],
            self.machine_ticks[1] + other.machine_ticks[1],
        )
        if self.gc is not None and other.gc is not None:
            self.gc.add(other.gc)

    @property
    def machine_busy(self) -> float:
        """The fraction of the machine's CPU time in use in the window, by anything."""
        busy, total = self.machine_ticks
        return busy / total if total else math.nan

    def cpu_per_chunk(self, process: str = "gateway") -> float:
        return self.cpu.get(process, math.nan) / self.chunks if self.chunks else math.nan

    def cpu_share(self, process: str = "gateway") -> float:
        """The fraction of one core the process used in the window."""
        return self.cpu.get(process, math.nan) / self.window_s

    @property
    def rss_per_1000(self) -> float:
        """Resident bytes the open streams added, per 1,000 of them (the median round)."""
        if not self.rss_added:
            return math.nan
        return percentile(self.rss_added, 50) / self.turn.streams * 1000

    def percentile(self, values: str, q: float) -> float:
        found = getattr(self, values)
        return percentile(found, q) if found else math.nan

    @property
    def worst_pause(self) -> Pause | None:
        return max(self.pauses, key=lambda p: p.worst, default=None)


# ----------------------------------------------------------------------------- analysis


def analyse(
    streams: Iterable[Stream],
    shape: Shape,
    start: float,
    end: float,
    into: TurnResult,
    sent_from: float | None = None,
) -> None:
    """The figures of the streams' events that fell in the window [start, end); the time to
    first chunk of the streams sent in it, or since ``sent_from`` if given."""
    first_sent = start if sent_from is None else sent_from
    delayed: list[tuple[float, float, int]] = []  # arrival, added gap, stream
    for index, stream in enumerate(streams):
        if stream.error is not None:
            into.errors += 1
        arrivals = stream.arrivals[: shape.chunks]
        if first_sent <= stream.sent < end and arrivals:
            into.ttfb.append(arrivals[0] - stream.sent)
        if stream.arrivals and start <= stream.arrivals[-1] < end:
            into.streams_ended += 1
        if not arrivals:
            continue
        offsets = shape.offsets(stream.seed)
        into.chunks += sum(1 for at in arrivals if start <= at < end)
        for i in range(1, len(arrivals)):
            if not start <= arrivals[i] < end:
                continue
            added = (arrivals[i] - arrivals[i - 1]) - (offsets[i] - offsets[i - 1])
            into.gaps.append(added)
            if added >= PAUSE_DELAY_S:
                delayed.append((arrivals[i], added, index))
    into.pauses = pauses(delayed, start)


def pauses(delayed: list[tuple[float, float, int]], start: float) -> list[Pause]:
    """Delayed chunks grouped by when they arrived; the groups of :data:`PAUSE_STREAMS`
    streams or more."""
    found: list[Pause] = []
    group: list[tuple[float, float, int]] = []

    def close() -> None:
        streams = len({stream for _, _, stream in group})
        if streams >= PAUSE_STREAMS:
            found.append(Pause(group[0][0] - start, streams, max(a for _, a, _ in group)))

    for chunk in sorted(delayed):
        if group and chunk[0] - group[-1][0] > PAUSE_JOIN_S:
            close()
            group = []
        group.append(chunk)
    if group:
        close()
    return found


# ------------------------------------------------------------------------- fairgate's GC


async def gc_samples(http: aiohttp.ClientSession, port: int) -> dict[tuple[str, str], float]:
    """fairgate's ``fairgate_gc_pause_seconds`` samples (name, ``le``), all generations summed;
    empty if it has none (a revision from before they existed)."""
    try:
        async with http.get(
            f"http://{LOOPBACK}:{port}/metrics", timeout=SCRAPE_TIMEOUT
        ) as response:
            if response.status != 200:  # the forwarder has no metrics
                return {}
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):  # an overwhelmed gateway: no GC figures
        return {}
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "fairgate_gc_pause_seconds":
            continue
        for sample in family.samples:
            key = (sample.name, sample.labels.get("le", ""))
            found[key] = found.get(key, 0.0) + sample.value
    return found


def gc_figures(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> GcFigures | None:
    if not after:
        return None

    def grew(name: str, le: str = "") -> float:
        return after.get((name, le), 0.0) - before.get((name, le), 0.0)

    count = grew("fairgate_gc_pause_seconds_count")
    buckets = sorted(
        (float(le), grew("fairgate_gc_pause_seconds_bucket", le))
        for name, le in after
        if name == "fairgate_gc_pause_seconds_bucket" and le != "+Inf"
    )
    long = count - next((n for le, n in buckets if le >= 0.025), count)
    longest = next((le for le, n in buckets if n >= count), math.inf)
    return GcFigures(int(count), grew("fairgate_gc_pause_seconds_sum"), int(long), longest)


# -------------------------------------------------------------------------------- turns


async def run_turn(
    target: Target,
    turn: Turn,
    ramp_s: float,
    window_s: float,
    http: aiohttp.ClientSession,
    rss_idle: float,
) -> TurnResult:
    """Hold ``turn.streams`` streams open through ``target``; measure the window.

    ``rss_idle`` is the gateway's resident memory before its first turn: what it keeps of a
    turn (the allocator's arenas) it does not give back, so the memory of the streams is
    counted from there, not from just before this turn.
    """
    # the clock of the client's arrivals (time.monotonic(): uvloop's loop.time() counts whole
    # milliseconds, which TTFB at low load is a few of)
    clock = time.monotonic
    result = TurnResult(turn, ramp_s, window_s)
    began = clock()
    streams: list[Stream] = []
    load = Load(LOOPBACK, target.port, turn.shape, API_KEY, itertools.count(), streams.append)
    slots = await keep_open(load, turn.streams, ramp_s)
    try:
        await asyncio.sleep(ramp_s + SETTLE_S)
        gc_before = await gc_samples(http, target.port)
        cpu_before = {name: cpu_of(pids) for name, pids in target.processes.items()}
        client_before = time.process_time()
        busy_before, total_before = machine_ticks()
        start = clock()
        rss: list[float] = []
        while (left := start + window_s - clock()) > 0:
            rss.append(rss_bytes(target.gateways))
            await asyncio.sleep(min(RSS_EVERY_S, left))
        end = clock()
        result.client_cpu = time.process_time() - client_before
        for name, pids in target.processes.items():
            result.cpu[name] = cpu_of(pids) - cpu_before[name]
        busy_after, total_after = machine_ticks()
        result.machine_ticks = (busy_after - busy_before, total_after - total_before)
        result.rss_added = [percentile(rss, 50) - rss_idle]
        result.gc = gc_figures(gc_before, await gc_samples(http, target.port))
    except BaseException:  # an error, Ctrl-C: every stream dropped at once
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        raise
    load.stopping = True  # the open streams run to their end: nothing is cut off
    _, stuck = await asyncio.wait(slots, timeout=turn.shape.mean_duration_s * 2 + 30)
    for slot in stuck:  # a stream that never ended: an error, its connection closed
        slot.cancel()
    await asyncio.gather(*slots, return_exceptions=True)
    # streams that outlast the window are all sent before it: their first chunks since the ramp
    long = turn.shape.mean_duration_s > window_s
    analyse(streams, turn.shape, start, end, result, began if long else None)
    result.errors = max(result.errors, load.errors) + len(stuck)
    result.error_kinds = collections.Counter(
        (s.error or "")[:60].splitlines()[0] if s.error else "" for s in streams if s.error
    )
    return result


def cpu_of(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) the processes have used, in all."""
    return sum(cpu_seconds(pid) for pid in pids)


def open_files() -> int:
    """How many files a process of the run may open (after ``raise_open_files``)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scale_processes() -> int:
    """The gateway processes each path needs to hold :data:`SCALE_STREAMS` streams under this
    machine's open-file limit: one where it allows, more where it is a hard limit an
    unprivileged run cannot raise (20,000 on this project's machines, where 10,000 streams
    need 20,000 sockets and more in one process; beyond it connections fail with EMFILE)."""
    per_process = max((open_files() - FD_RESERVE) // SOCKETS_PER_STREAM, 1)
    return math.ceil(SCALE_STREAMS / per_process)


def paths_of(targets: Iterable[Target]) -> list[str]:
    """The paths the targets serve, each once, in order (a path's processes for the scale turn
    are a target of the same name)."""
    return list(dict.fromkeys(target.name for target in targets))


def turns(streams: Iterable[int], paths: list[str], rounds: int, scale: bool) -> list[Turn]:
    """Every turn in order: each K from the smallest, every path at it, ``rounds`` times, in
    reverse order every other round (whatever else the machine does then weighs on every
    path alike); then the scale turn, once (the baseline only where one process holds it:
    another revision may not know ``--workers``; not the control)."""
    ordered = [
        Turn(path, k, LLM)
        for k in sorted(streams)
        for r in range(rounds)
        for path in (paths if r % 2 == 0 else paths[::-1])
    ]
    if scale:
        processes = scale_processes()
        ordered += [
            Turn(path, SCALE_STREAMS, SLOW, processes)
            for path in paths
            if path != CONTROL and (processes == 1 or path != BASELINE)
        ]
    return ordered


async def measure_all(
    targets: list[Target], planned: list[Turn], ramps: dict[Shape, tuple[float, float]]
) -> list[TurnResult]:
    """Every turn, with progress on stderr.

    The load generator's own collector is off during a turn (and run between turns): its
    pauses would delay every stream it reads and be charged to the path measured.
    """
    by_path = {(target.name, len(target.gateways)): target for target in targets}
    idle = {key: rss_bytes(target.gateways) for key, target in by_path.items()}
    results: dict[Turn, TurnResult] = {}
    async with aiohttp.ClientSession() as http:
        for turn in planned:
            gc.collect()
            gc.disable()
            ramp_s, window_s = ramps[turn.shape]
            key = (turn.path, turn.processes)
            burn = None
            if turn.path == CONTROL:
                burn = await set_burn(http, by_path[key], turn, results)
            try:
                result = await run_turn(by_path[key], turn, ramp_s, window_s, http, idle[key])
            finally:
                gc.enable()
            if burn is not None:
                result.burns.append(burn)
            if turn in results:
                results[turn].add(result)
            else:
                results[turn] = result
            worst = result.worst_pause
            print(
                f"{turn.streams:>6} streams {turn.path:>9}: {result.chunks / window_s:7,.0f} "
                f"chunks/s, CPU/chunk {result.cpu_per_chunk() * 1e6:5.0f} µs, TTFB p99 "
                f"{result.percentile('ttfb', 99) * 1e3:6.1f} ms, gap p99 "
                f"{result.percentile('gaps', 99) * 1e3:6.1f} ms, {len(result.pauses)} pauses"
                + (f" (worst {worst.worst * 1e3:.0f} ms)" if worst else "")
                + f", errors {result.errors}",
                file=sys.stderr,
                flush=True,
            )
    return list(results.values())


async def set_burn(
    http: aiohttp.ClientSession, control: Target, turn: Turn, results: dict[Turn, TurnResult]
) -> float:
    """Tell the control to spend the CPU per chunk fairgate spent more than the forwarder at
    ``turn``'s K so far (none if either has not run yet); what it was told, per chunk.

    Where the control has run at this K, what it was told is scaled by what it was told
    before over what that added to the forwarder's CPU per chunk: its busy loop overshoots,
    and it reads a chunk more per stream than fairgate counts (the usage and ``[DONE]``).
    """
    forwarder = results.get(Turn(FORWARDER, turn.streams, turn.shape))
    fairgate = results.get(Turn(FAIRGATE, turn.streams, turn.shape))
    before = results.get(turn)
    extra = 0.0
    if forwarder is not None and fairgate is not None:
        extra = _positive(fairgate.cpu_per_chunk() - forwarder.cpu_per_chunk())
        if before is not None and before.burns:
            added = _positive(before.cpu_per_chunk() - forwarder.cpu_per_chunk())
            if added > 0:
                asked = sum(before.burns) / len(before.burns)
                extra *= min(max(asked / added, 1 / BURN_CORRECTION), BURN_CORRECTION)
    per_request = extra * turn.shape.chunks * CONTROL_PER_REQUEST
    asked_us = {
        "start_us": per_request / 2 * 1e6,
        "chunk_us": extra * (1 - CONTROL_PER_REQUEST) * 1e6,
        "end_us": per_request / 2 * 1e6,
    }
    async with http.post(f"http://{LOOPBACK}:{control.port}{BURN_PATH}", json=asked_us) as answer:
        answer.raise_for_status()
    return extra


def _positive(seconds: float) -> float:
    """``seconds`` if a positive number, else 0 (a figure missing or negative)."""
    return seconds if seconds > 0 else 0.0


# ------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Run:
    """Everything one run measured: what the report is rendered from."""

    results: list[TurnResult]
    rounds: int
    short: bool
    baseline: str | None  # the revision fairgate was also run at
    pinned: bool
    logs: dict[str, list[str]]
    load_before: float
    code_revision: str
    cpus: int
    elapsed: float

    def result(self, path: str, streams: int, shape: Shape = LLM) -> TurnResult | None:
        return next(
            (
                r
                for r in self.results
                if (r.turn.path, r.turn.streams, r.turn.shape) == (path, streams, shape)
            ),
            None,
        )


def run_benchmark(
    streams: list[int],
    rounds: int,
    short: bool,
    scale: bool,
    baseline: str | None,
    pinned: bool,
    control: bool = True,
) -> Run:
    """Start every process, run every turn, stop every process (also on errors and Ctrl-C)."""
    started, load_before, code_revision = time.perf_counter(), os.getloadavg()[0], revision()
    ramps = {
        LLM: (RAMP_S, SHORT_WINDOW_S if short else WINDOW_S),
        SLOW: (SCALE_RAMP_S, SCALE_WINDOW_S),
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fg-streams-")))
        checkout = baseline_checkout(baseline, workdir) if baseline else None
        targets, _ = start_stack(
            stack, workdir, checkout, pinned, scale_processes() if scale else 1, control
        )
        planned = turns(streams, paths_of(targets), rounds, scale)
        try:
            results = uvloop.run(measure_all(targets, planned, ramps))
        finally:
            logs = server_logs(workdir)
    return Run(
        results,
        rounds,
        short,
        baseline,
        pinned and (os.cpu_count() or 1) > 1,
        logs,
        load_before,
        code_revision,
        os.cpu_count() or 1,
        time.perf_counter() - started,
    )
