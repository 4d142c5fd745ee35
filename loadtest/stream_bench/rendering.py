"""The rendering of the slow-stream benchmark: its BENCHMARKS.md section, from a :class:`Run`.

Every figure and verdict is computed from the run; every threshold is written from the constant
the verdict checks (:mod:`loadtest.stream_bench.measurement`).
"""

from __future__ import annotations

import datetime
import math
import shlex
from collections.abc import Callable

from loadtest.report import machine, markdown_table
from loadtest.stream_bench.measurement import (
    BASELINE,
    FD_RESERVE,
    PAUSE_DELAY_S,
    PAUSE_STREAMS,
    SCALE_RAMP_S,
    SCALE_STREAMS,
    SETTLE_S,
    SOCKETS_PER_STREAM,
    TARGET_CPU_RATIO,
    TARGET_GAP_P99_RATIO,
    TARGET_RSS_RATIO,
    TARGET_STREAMS,
    TARGET_TTFB_P99_RATIO,
    Run,
    TurnResult,
    open_files,
)
from loadtest.stream_bench.stack import CONTROL, FAIRGATE, FORWARDER, MODULE
from loadtest.stream_bench.workload import LLM, SLOW, Shape

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "stream-bench"


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:,.1f} ms"


def us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:,.0f} µs"


def mib(size: float) -> str:
    return "n/a" if math.isnan(size) else f"{size / 2**20:,.1f} MiB"


def path_name(run: Run, path: str, processes: int = 1) -> str:
    """A path as the report names it; ``processes`` > 1: the copies of it sharing its port."""
    name = f"fairgate at `{run.baseline}`" if path == BASELINE else path
    if path == CONTROL:
        name = "control (the forwarder + fairgate's extra CPU)"
    if processes > 1:
        name += f", {processes} " + ("workers" if path == FAIRGATE else "processes")
    return name


def shape_text(shape: Shape) -> str:
    return (
        f"{shape.chunks} chunks {shape.min_interval_s * 1e3:,.0f}-"
        f"{shape.max_interval_s * 1e3:,.0f} ms apart"
    )


def _pauses(result: TurnResult) -> str:
    worst = result.worst_pause
    if worst is None:
        return "0"
    return f"{len(result.pauses)} (worst {ms(worst.worst)}, {worst.streams:,} streams)"


def _gc(result: TurnResult) -> str:
    if result.gc is None:
        return "—"
    gc = result.gc
    longest = "none" if not gc.collections else f"longest ≤ {ms(gc.longest_bucket)}"
    return f"{gc.collections:,} / {gc.seconds * 1e3:,.0f} ms / {gc.long} ({longest})"


def turns_table(run: Run, shape: Shape) -> str:
    """Every turn of one shape: cost, memory, latencies, pauses, errors."""
    rows = []
    for r in (r for r in run.results if r.turn.shape == shape):
        cpu = us(r.cpu_per_chunk())
        if "redis" in r.cpu:
            cpu += f" (+ Redis {us(r.cpu_per_chunk('redis'))})"
        rows.append(
            [
                f"{r.turn.streams:,}",
                path_name(run, r.turn.path, r.turn.processes),
                f"{r.chunks / r.window_s:,.0f}",
                cpu,
                f"{r.cpu_share():.0%}",
                mib(r.rss_per_1000),
                ms(r.percentile("ttfb", 50)),
                ms(r.percentile("ttfb", 99)),
                ms(r.percentile("gaps", 50)),
                ms(r.percentile("gaps", 99)),
                _pauses(r),
                _gc(r),
                str(r.errors),
            ]
        )
    headers = ["Streams", "Path", "chunks/s", "CPU/chunk", "Core", "RSS/1,000 streams",
               "TTFB p50", "TTFB p99", "Added gap p50", "Added gap p99", "Pauses",
               "GC: runs / time / ≥ 25 ms", "Errors"]  # fmt: skip
    return markdown_table(headers, "rl" + "r" * (len(headers) - 2), rows)


def _ratio(fairgate: float, forwarder: float, target: float) -> tuple[str, bool]:
    if math.isnan(fairgate) or math.isnan(forwarder) or forwarder <= 0:
        return "n/a", False
    ratio = fairgate / forwarder
    return f"{ratio:.2f}×", ratio <= target


def target_rows(run: Run, path: str, streams: int) -> list[list[str]]:
    """``path`` against the forwarder at ``streams`` open streams, one row per target."""
    forwarder, measured = run.result(FORWARDER, streams), run.result(path, streams)
    if forwarder is None or measured is None:
        return []
    rows = []
    for what, theirs, ours, target, unit in _figures(forwarder, measured):
        ratio, met = _ratio(ours, theirs, target)
        verdict = "met" if met else "**missed**"
        rows.append(
            [path_name(run, path), what, unit(theirs), unit(ours), f"≤ {target:g}×",
             f"{ratio} ({verdict})"]
        )  # fmt: skip
    return rows


def _figures(
    theirs: TurnResult, ours: TurnResult
) -> list[tuple[str, float, float, float, Callable[[float], str]]]:
    """The figures the targets are about: name, theirs, ours, the target ratio, the unit."""
    return [
        ("TTFB p99", theirs.percentile("ttfb", 99), ours.percentile("ttfb", 99),
         TARGET_TTFB_P99_RATIO, ms),
        ("added gap p99", theirs.percentile("gaps", 99), ours.percentile("gaps", 99),
         TARGET_GAP_P99_RATIO, ms),
        ("gateway CPU per chunk", theirs.cpu_per_chunk(), ours.cpu_per_chunk(),
         TARGET_CPU_RATIO, us),
        ("RSS per 1,000 streams", theirs.rss_per_1000, ours.rss_per_1000,
         TARGET_RSS_RATIO, mib),
    ]  # fmt: skip


def control_table(run: Run) -> str:
    """fairgate against the control (the forwarder spending as much CPU per chunk): what of
    fairgate's latencies its CPU does not explain. Empty if the run had no control."""
    streams = _target_streams(run)
    control, fairgate = run.result(CONTROL, streams), run.result(FAIRGATE, streams)
    if control is None or fairgate is None:
        return ""
    rows = [
        [what, unit(theirs), unit(ours), _ratio(ours, theirs, math.inf)[0]]
        for what, theirs, ours, _, unit in _figures(control, fairgate)[:3]
    ]
    told = sum(control.burns) / len(control.burns) if control.burns else math.nan
    table = markdown_table(["Figure", "Control", "fairgate", "Ratio"], "lrrr", rows)
    return (
        f"\n\nAgainst the control at {streams:,} streams, the forwarder told to spend "
        f"{us(told)} more per chunk (fairgate's extra of the turns before, less the control's own "
        f"overshoot; a figure to read, not a target):\n\n{table}"
    )


def targets_table(run: Run) -> str:
    streams = _target_streams(run)
    rows = []
    for path in (FAIRGATE, BASELINE):
        rows += target_rows(run, path, streams)
    headers = ["Path", "Figure", "Forwarder", "Path's", "Target", "Ratio"]
    return markdown_table(headers, "llrrrl", rows)


def _target_streams(run: Run) -> int:
    """The issue's number of streams if measured, else the most this run measured."""
    measured = {r.turn.streams for r in run.results if r.turn.shape == LLM}
    return TARGET_STREAMS if TARGET_STREAMS in measured else max(measured)


def reading(run: Run) -> str:
    """A plain-words summary computed from the figures."""
    streams = _target_streams(run)
    text = []
    forwarder, fairgate = run.result(FORWARDER, streams), run.result(FAIRGATE, streams)
    if forwarder is not None and fairgate is not None:
        text.append(
            f"At {streams:,} open streams fairgate paused {len(fairgate.pauses)} times "
            f"(≥ {PAUSE_STREAMS} streams delayed ≥ {ms(PAUSE_DELAY_S)} at once), the forwarder "
            f"{len(forwarder.pauses)} times; fairgate used {fairgate.cpu_share():.0%} of its "
            f"core, the forwarder {forwarder.cpu_share():.0%}."
        )
    if (before := run.result(BASELINE, streams)) is not None:
        text.append(
            f"fairgate at `{run.baseline}` (the same run, the same machine) paused "
            f"{len(before.pauses)} times, TTFB p99 {ms(before.percentile('ttfb', 99))} against "
            f"{ms(fairgate.percentile('ttfb', 99)) if fairgate else 'n/a'} now."
        )
    scale = {r.turn.path: r for r in run.results if r.turn.shape == SLOW}
    if scale:
        parts = [
            f"{path_name(run, path, r.turn.processes)}: {r.errors} errors, "
            f"{mib(r.rss_per_1000)} per 1,000 streams"
            for path, r in scale.items()
        ]
        base = run.result(FAIRGATE, streams)
        linear = ""
        held, processes = next((r.turn.streams, r.turn.processes) for r in scale.values())
        if base is not None and FAIRGATE in scale:
            linear = (
                f"; fairgate's memory per 1,000 streams at {held:,} is "
                f"{scale[FAIRGATE].rss_per_1000 / base.rss_per_1000:.2f}× its figure at "
                f"{streams:,}"
            )
        text.append(
            f"At {held:,} streams ({shape_text(SLOW)}): "
            + "; ".join(parts)
            + linear
            + "."
            + why_processes(processes)
        )
    busy = [r.machine_busy for r in run.results if not math.isnan(r.machine_busy)]
    if busy:
        text.append(
            f"The machine's CPUs were {min(busy):.0%}-{max(busy):.0%} busy in the windows "
            "(every process of the run, and whatever else the machine ran)."
        )
    clients = [r.client_cpu / r.window_s for r in run.results]
    text.append(
        f"The load generator used at most {max(clients):.0%} of a core"
        + (
            ", but where the machine's CPUs were all busy it, the upstream and Redis waited "
            "for them too: every path's latencies then measure the machine's queue as much as "
            "the path."
            if max(busy, default=0.0) > 0.9
            else "."
        )
    )
    for name, lines in run.logs.items():
        text.append(f"{name} logged {len(lines)} lines during the run.")
    return " ".join(text)


def reproduce_command(argv: list[str]) -> str:
    command = f"`{shlex.join(['python', '-m', MODULE, *argv])}`"
    return command + (
        " (what `make bench` runs)" if argv == ["--short", "--write", "BENCHMARKS.md"] else ""
    )


def render_section(run: Run, argv: list[str]) -> str:
    """The BENCHMARKS.md section (without its delimiters); ``argv`` is the command's."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    first = next(r for r in run.results if r.turn.shape == LLM)
    window_s = first.window_s / run.rounds  # each round's (the result pools them)
    pinned = (
        "the gateways pinned to CPU 0, Redis, the upstream and the load generator to CPU 1"
        if run.pinned
        else "nothing pinned (one CPU)"
    )
    baseline = (
        f" and **fairgate at `{run.baseline}`** (that revision's code, same configuration)"
        if run.baseline
        else ""
    )
    control = (
        " and the **control**, the forwarder made to spend per chunk the CPU time fairgate "
        "spent more than it (half of it when a request arrives and ends, half as chunks pass)"
        if any(r.turn.path == CONTROL for r in run.results)
        else ""
    )
    scale = (
        f"\n\nAt scale: {scale_held(run):,} streams of {shape_text(SLOW)}, each path in "
        f"turn (a stream lasts longer than the window, so none starts in it: the TTFB columns "
        f"are those of the streams started over the {SCALE_RAMP_S:g} s ramp):\n\n"
        f"{turns_table(run, SLOW)}"
        if any(r.turn.shape == SLOW for r in run.results)
        else ""
    )
    return f"""## Slow streams: thousands open at once, next to a bare forwarder

What fairgate costs and how steadily it relays when streams look like LLM traffic: each stream
is {shape_text(LLM)} (drawn per stream from its seed), then the usage chunk and `[DONE]`, from
an upstream that writes each chunk at its offset from the first. A client on raw asyncio
sockets (one keep-alive connection per stream, a new stream as soon as one ends) keeps K streams
open through the **forwarder** (the proxy-overhead benchmark's minimal aiohttp proxy), through
**fairgate** (`fairgate serve`, a private `redis-server`){baseline}{control}, path after path
at each K: the first streams start over {round(first.ramp_s, 1):g} s, a window of {window_s:g} s is
measured from {SETTLE_S:g} s after that, then the open streams run to their end. On this machine's
{run.cpus} CPUs: {pinned}.

Per turn: content chunks relayed per second; the gateway's CPU time (user + system) per chunk
(fairgate: plus its Redis's); the share of its core it used; its resident memory above what it
held idle before its first turn, per 1,000 open streams; time to first chunk; the gap each chunk's
arrival added to the upstream's (seen minus kept); **pauses**, moments when {PAUSE_STREAMS} or
more streams each had a chunk delayed by {ms(PAUSE_DELAY_S)} or more (the worst delay and how
many streams it held); fairgate's own garbage collections in the window (from its
`fairgate_gc_pause_seconds`).

{turns_table(run, LLM)}{scale}

The targets of issue 17, at {_target_streams(run):,} open streams, against the forwarder of the
same run:

{targets_table(run)}{control_table(run)}

{reading(run)}

Reproduce with {reproduce_command(argv)}.
Machine: {machine()}; fairgate at {run.code_revision}; load average {run.load_before:.2f} at
the start (other work shares this machine); run on {today}, {run.elapsed:.0f} s of wall time
in all."""


def scale_held(run: Run) -> int:
    """The streams of the run's scale turn."""
    return next((r.turn.streams for r in run.results if r.turn.shape == SLOW), SCALE_STREAMS)


def why_processes(processes: int) -> str:
    """Why the scale turn ran each path as several processes, if it did."""
    if processes <= 1:
        return ""
    return (
        f" Each path ran as {processes} processes sharing its port, all on the gateways' CPU "
        f"(the forwarder as {processes} copies, each on a `SO_REUSEPORT` socket of the port; "
        f"fairgate as `fairgate serve --workers {processes}`): this machine lets a process "
        f"open {open_files():,} files (a hard limit), and a gateway holds {SOCKETS_PER_STREAM} "
        f"sockets per stream and some {FD_RESERVE:,} more; past that, connections fail with "
        "EMFILE. Their CPU and memory are those of all of a path's processes."
    )
