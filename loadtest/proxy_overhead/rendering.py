"""The rendering of the proxy-overhead benchmark: its BENCHMARKS.md section, from a :class:`Run`.

Every figure and verdict in the text is computed from the run, and every threshold is written
from the constant the verdict checks (:mod:`loadtest.proxy_overhead.measurement`).
"""

from __future__ import annotations

import datetime
import shlex

from loadtest.proxy_overhead.before_after import before_after_section
from loadtest.proxy_overhead.figures import ms, us, workload
from loadtest.proxy_overhead.measurement import (
    METRICS,
    SLICE_S,
    TARGET_ADDED_P50_RATIO,
    TARGET_ALONE_ADDED_S,
    TARGET_FULL_PATH_RPS,
    TARGET_THROUGHPUT_RATIO,
    Cell,
    Headline,
    Metric,
    QuotaCost,
    Result,
    Run,
    added,
    full_path_figures,
    quota_costs,
)
from loadtest.proxy_overhead.stack import MODULE
from loadtest.proxy_overhead.tracing import tracing_section
from loadtest.proxy_overhead.workers import workers_section
from loadtest.proxy_overhead.workload import (
    BASELINE,
    COMPLETION_CYCLE,
    QUOTAS,
    STREAM_CHUNKS,
    WORKER_COUNT,
    WORKERS,
)
from loadtest.report import machine, markdown_table

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "proxy-overhead"
#: The percentiles the cell tables show.
SHOWN_PERCENTILES = (50, 99)
#: How the tables name each path.
PATH_NAMES = {"quotas": "fairgate, quotas", WORKERS: f"fairgate, {WORKER_COUNT} workers"}


def path_name(mode: str, baseline: str | None = None) -> str:
    """A path's name in the report; fairgate at another revision is named by it."""
    return f"fairgate at `{baseline}`" if mode == BASELINE else PATH_NAMES.get(mode, mode)


def metric_label(stream: bool, metric: Metric) -> str:
    """How a latency is named in a column: a whole response needs no name, a stream does."""
    return {"ttfb": "TTFB ", "total": "total "}[metric] if stream else ""


def cpu_cell(result: Result) -> str:
    """CPU per request of a path, with its Redis's share when it has one."""
    shown = us(result.cpu_per_request())
    if "redis" in result.samples.cpu:
        shown += f" (Redis {us(result.cpu_per_request('redis'))})"
    return shown


def cells_table(run: Run, stream: bool) -> str:
    """Every path of one workload: throughput, CPU, latencies and latency added over direct."""
    results = run.results
    headers = ["Conc.", "Path", "req/s", "CPU/req"]
    for metric in METRICS[stream]:
        label = metric_label(stream, metric)
        headers += [f"{label}p{q}" for q in SHOWN_PERCENTILES]
        headers += [f"added {label}p{q}" for q in SHOWN_PERCENTILES]
    rows = []
    for concurrency in run.concurrencies:
        for mode in run.modes:
            cell = Cell(mode, stream, concurrency)
            result = results[cell]
            cpu = "—" if mode == "direct" else cpu_cell(result)
            row = [str(concurrency), path_name(mode, run.baseline), f"{result.rps:,.0f}", cpu]
            for metric in METRICS[stream]:
                row += [ms(result.percentile(metric, q)) for q in SHOWN_PERCENTILES]
                row += (
                    ["—"] * len(SHOWN_PERCENTILES)
                    if mode == "direct"
                    else [
                        ms(added(results, cell, metric, q), signed=True) for q in SHOWN_PERCENTILES
                    ]
                )
            rows.append(row + [str(result.samples.errors)])
    headers.append("Errors")
    return markdown_table(headers, "rl" + "r" * (len(headers) - 2), rows)


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def headline_name(h: Headline) -> str:
    label = metric_label(h.stream, h.metric).strip()
    return workload(h.stream) + (f", {label}" if label else "")


def headline_table(rows: list[Headline]) -> str:
    """fairgate / forwarder: added p50 and throughput, with the verdict on each target."""
    table = []
    for h in rows:
        ratio = h.latency_ratio
        shown = "n/a" if ratio is None else f"{ratio:.2f}×"
        table.append(
            [
                headline_name(h),
                str(h.concurrency),
                ms(h.forwarder_added, signed=True),
                ms(h.fairgate_added, signed=True),
                f"{shown} ({_verdict(h.latency_met)})",
                f"{h.forwarder_rps:,.0f}",
                f"{h.fairgate_rps:,.0f}",
                f"{h.throughput_ratio:.2f} ({_verdict(h.throughput_met)})",
                f"{us(h.forwarder_cpu)} / {us(h.fairgate_cpu)} (Redis {us(h.fairgate_redis_cpu)})",
            ]
        )
    return markdown_table(
        [
            "Workload",
            "Conc.",
            "Forwarder added p50",
            "fairgate added p50",
            f"Ratio (target ≤ {TARGET_ADDED_P50_RATIO:g}×)",
            "Forwarder req/s",
            "fairgate req/s",
            f"Ratio (target ≥ {TARGET_THROUGHPUT_RATIO:g})",
            "CPU/req forwarder / fairgate",
        ],
        "lrrrrrrrr",
        table,
    )


def full_path_table(run: Run) -> str:
    """fairgate's absolute targets: requests/s from one process, added p50 when alone; for a
    tenant without quotas and for one with them (and for fairgate at the baseline revision)."""
    modes = ((BASELINE,) if run.baseline else ()) + ("fairgate", "quotas")
    figures = [full_path_figures(run.results, run.concurrencies, mode) for mode in modes]
    rows = [
        [f"requests/s, one gateway process (≥ {figures[0][0].threshold:,.0f})"]
        + [f"{f.value:,.0f} ({f.what}), {_verdict(f.met)}" for f, _ in figures]
    ]
    for index, first in enumerate(figures[0][1]):
        rows.append(
            [f"added p50 at concurrency 1, {first.what} (< {ms(first.threshold)})"]
            + [f"{ms(alone[index].value)}, {_verdict(alone[index].met)}" for _, alone in figures]
        )
    names = [path_name(mode, run.baseline) for mode in modes]
    return markdown_table(["Target", *names], "l" * (len(modes) + 1), rows)


def quota_table(rows: list[QuotaCost]) -> str:
    """What a tenant's quotas add to fairgate's path, without / with."""
    table = [
        [
            workload(q.stream)
            + (f", {label}" if (label := metric_label(q.stream, q.metric).strip()) else ""),
            str(q.concurrency),
            f"{ms(q.added[0], signed=True)} / {ms(q.added[1], signed=True)}",
            f"{ms(q.added[1] - q.added[0], signed=True)}",
            f"{q.rps[0]:,.0f} / {q.rps[1]:,.0f}",
            f"{q.throughput_ratio:.2f}",
            f"{us(q.cpu[0])} / {us(q.cpu[1])}",
            f"{us(q.redis_cpu[0])} / {us(q.redis_cpu[1])}",
        ]
        for q in rows
    ]
    return markdown_table(
        [
            "Workload",
            "Conc.",
            "Added p50 without / with",
            "Difference",
            "req/s without / with",
            "Ratio",
            "CPU/req without / with",
            "Redis's part",
        ],
        "lrrrrrrr",
        table,
    )


def machine_load(run: Run) -> str:
    """How busy the machine's CPUs were at each concurrency, all cells of it together."""
    shares = []
    for concurrency in run.concurrencies:
        cells = [r for r in run.results.values() if r.cell.concurrency == concurrency]
        busy = sum(r.samples.machine_busy for r in cells)
        total = sum(r.samples.machine_total for r in cells)
        if total:
            shares.append(f"{busy / total:.0%} at concurrency {concurrency}")
    if not shares:
        return "how busy its CPUs were is unknown here (no `/proc/stat`)"
    shares[0] = shares[0].replace(" at ", " of the time at ", 1)
    return "under load, its CPUs were busy " + ", ".join(shares)


def _log_message(line: str, limit: int = 160) -> str:
    """A log line without its date and time, shortened."""
    message = line.split(" ", 2)[-1] if line[:4].isdigit() else line
    return message if len(message) <= limit else message[: limit - 1] + "…"


def reading(run: Run, rows: list[Headline]) -> str:
    """A plain-words summary computed from the figures, so that it stays true on every run."""
    results = run.results
    alone = min((h for h in rows if not h.stream), key=lambda h: h.concurrency)
    latency_met = sum(h.latency_met for h in rows)
    throughput_rows = [h for h in rows if h.metric == "total"]  # one per measured cell
    throughput_met = sum(h.throughput_met for h in throughput_rows)
    ratios = [h.throughput_ratio for h in throughput_rows]
    errors = {mode: sum(r.samples.errors for r in results.values() if r.cell.mode == mode)
              for mode in run.modes}  # fmt: skip
    alone_ratio = alone.latency_ratio
    nothing_queues = " (nothing queues)" if alone.concurrency == 1 else ""
    text = [
        f"At concurrency {alone.concurrency}, non-streaming{nothing_queues}, a request through "
        f"fairgate takes {ms(alone.fairgate_added)} longer at p50 than direct, through the bare "
        f"forwarder {ms(alone.forwarder_added)}"
        + (f", so fairgate costs {alone_ratio:.2f}× the floor." if alone_ratio else "."),
        f"The latency target (added p50 ≤ {TARGET_ADDED_P50_RATIO:g}× the forwarder's) is met "
        f"in {latency_met} of {len(rows)} rows; the throughput target (≥ "
        f"{TARGET_THROUGHPUT_RATIO:g}× the forwarder's requests/s) in {throughput_met} of "
        f"{len(throughput_rows)} cells (fairgate/forwarder from {min(ratios):.2f} to "
        f"{max(ratios):.2f}).",
    ]
    cpu_ratios = [h.fairgate_cpu / h.forwarder_cpu for h in throughput_rows if h.forwarder_cpu > 0]
    if cpu_ratios:
        text.append(
            f"fairgate and its Redis spend {min(cpu_ratios):.1f}-{max(cpu_ratios):.1f}× the CPU "
            "time per request that the forwarder does; where every process competes for the same "
            "cores, that ratio is what sets the throughput ratio and the queueing part of the "
            "added latency."
        )
    costs = [q for q in quota_costs(results, run.concurrencies) if q.metric == "total"]
    alone_cost = min((q for q in costs if not q.stream), key=lambda q: q.concurrency)
    text.append(
        f"For a tenant with quotas, fairgate adds {ms(alone_cost.added[1])} at concurrency "
        f"{alone_cost.concurrency}, non-streaming ({ms(alone_cost.added[0])} without), and serves "
        f"{min(q.throughput_ratio for q in costs):.2f}-{max(q.throughput_ratio for q in costs):.2f}"
        "× the requests/s of a tenant without quotas."
    )
    if failed := {mode: n for mode, n in errors.items() if n}:
        counts = ", ".join(
            f"{n} through {path_name(mode, run.baseline)}" for mode, n in failed.items()
        )
        text.append(f"Requests that failed or came back incomplete: {counts}.")
    for name, lines in run.logs.items():
        text.append(
            f"{name} logged {len(lines)} lines during the run, the last: "
            f"`{_log_message(lines[-1])}`."
        )
    sizes = [len(r.samples.total) for r in results.values()]
    high = max(SHOWN_PERCENTILES)
    text.append(
        f"Each cell's p{high} rests on the slowest {100 - high:g}% of its {min(sizes):,} to "
        f"{max(sizes):,} requests, measured over {run.duration:g} s: read it as an order of "
        "magnitude."
    )
    return " ".join(text)


def before_after_part(run: Run) -> str:
    """With ``--baseline``: fairgate at that revision next to fairgate now, without and with
    quotas; nothing otherwise (the section then reads as it always has)."""
    if not run.baseline:
        return ""
    return f"""
Before and after (issue 14: the request path keeps its figures with quotas configured):
**{path_name(BASELINE, run.baseline)}** is fairgate served from that revision's code
(`git archive`, its own Redis key prefix) with the configuration of the tenant without quotas,
less any setting the revision did not know yet, taking turns with the other paths in the same
run. Before is it, after is fairgate now with quotas, and fairgate now without quotas between:

{before_after_section(run.results, run.concurrencies, run.baseline)}
"""


def reproduce_command(argv: list[str]) -> str:
    """The exact command of this run; ``make bench`` runs the default one."""
    command = f"`{shlex.join(['python', '-m', MODULE, *argv])}`"
    return command + (" (what `make bench` runs)" if argv == ["--write", "BENCHMARKS.md"] else "")


def render_section(run: Run, argv: list[str]) -> str:
    """The BENCHMARKS.md section (without its delimiters); ``argv`` is the command's."""
    results, concurrencies = run.results, run.concurrencies
    rows = run.headlines
    quotas = ", ".join(f"`{name}: {value:,}`" for name, value in QUOTAS.items())
    usages = ", ".join(str(c) for c in COMPLETION_CYCLE)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return f"""## Proxy overhead: fairgate next to a bare aiohttp forwarder

What fairgate's proxy path adds to a request, measured against an upstream that answers at once
(a prebuilt `chat.completion`, or {STREAM_CHUNKS} SSE content chunks, the usage chunk and
`[DONE]` written back to back; the usage it reports cycles through {usages} completion tokens,
so that fairgate's estimates are corrected as with a real engine), reached in the same run
**direct**, through a **forwarder** (a minimal aiohttp proxy: one shared client session, no
auth, no parsing, streams relayed with `iter_any`; the floor for any Python proxy) and through
**fairgate** (`fairgate serve`: one pool with the upstream as its backend, a private
`redis-server`) twice: as a tenant without quotas, and as one with quotas far above the load
({quotas}: checked and corrected on every request, never refusing), **fairgate, quotas**. Each
server is its own process on loopback, on uvloop, behind the same `fairgate.serving.serve`
listener. The load generator is closed loop: N clients each send the next request as soon as
the previous one ends, {run.duration:g} s per cell after a {run.warmup:g} s warm-up; the paths
of a row take turns in slices of {SLICE_S:g} s, so that whatever else the machine does is
spread over all of them. Streamed requests ask for
`stream_options.include_usage`, so every path returns the same events. TTFB is the first body
byte (the first content chunk); "added" is a path's percentile minus the same percentile
direct (percentiles interpolate between the closest ranks, `loadtest/stats.py`); CPU/req is the
CPU time (user + system) the path's own processes spent per request: the forwarder, or fairgate
plus its Redis.

**This machine has {run.cpus} CPUs, shared by the load generator, the upstream, the proxy under
test and Redis**; {machine_load(run)}. Where they are all busy, added latency is mostly waiting
for a CPU, and requests/s measures the CPU time of the whole chain per request, not the proxy's
alone. Other work on the machine adds noise (load average {run.load_before:.2f} when this run
started). Absolute figures do not transfer to other machines; the ratios between fairgate and
the forwarder, measured in the same run, are the result.

fairgate / forwarder (targets: added p50 within {TARGET_ADDED_P50_RATIO:g}× the forwarder's,
throughput within {1 - TARGET_THROUGHPUT_RATIO:.0%} of it):

{headline_table(rows)}

The full path's own targets (auth, estimate, admission, relay and release, against the instant
upstream; ≥ {TARGET_FULL_PATH_RPS:,.0f} requests/s, < {ms(TARGET_ALONE_ADDED_S)} added alone), for a
tenant without quotas and for one with them:

{full_path_table(run)}
{before_after_part(run)}
What quotas add (the same gateway process, the tenant without quotas / the one with them):

{quota_table(quota_costs(results, concurrencies))}

What tracing costs: **fairgate+traces** is the same gateway with `telemetry.traces` on, every
request recorded (a SERVER span and its `estimate`, `queue` and engine-call children) and
exported over OTLP/HTTP to a collector stand-in on the upstream that keeps nothing; next to it
fairgate with tracing off, in the same run:

{tracing_section(results, concurrencies)}

What more processes give: **fairgate, {WORKER_COUNT} workers** is the same gateway served by
`fairgate serve --workers {WORKER_COUNT}` (one port, {WORKER_COUNT} processes, each a full replica
on the same Redis), next to the single process, in the same run:

{workers_section(results, concurrencies, run.cpus)}

Non-streaming requests:

{cells_table(run, False)}

Streaming requests ({STREAM_CHUNKS} content chunks):

{cells_table(run, True)}

{reading(run, rows)}

Reproduce with {reproduce_command(argv)}.
Machine: {machine()}; load generator on `{run.loop_name}`; fairgate at {run.code_revision}; run
on {today}, {run.elapsed:.0f} s of wall time in all."""
