"""The rendering of the admission benchmark: its BENCHMARKS.md section, from :class:`Results`."""

from __future__ import annotations

import datetime

from loadtest.admission_bench.measurement import PROCESS_COUNTS, Latency, Results, Throughput
from loadtest.admission_bench.workload import (
    CHARGED_STREAMS,
    CHARGES_PER_S,
    CONCURRENCY,
    MIXES,
    QUEUEING_BUDGET,
    REUSE_GAP_S,
    STREAM_CHARGES,
    WARMUP_REQUESTS,
)
from loadtest.report import machine, markdown_table
from loadtest.stats import percentile

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "admission"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def latency_rows(latency: Latency) -> list[list[str]]:
    suffix = ", lease reused" if latency.reuse else ""
    steps = (("acquire", latency.acquire), ("release", latency.release), ("both", latency.both))
    return [
        [name + suffix, ms(percentile(values, 50)), ms(percentile(values, 99))]
        for name, values in steps
    ]


def cost_reading(results: Results) -> str:
    """What one uncontended decision costs, with and without lease reuse, from this run."""
    fresh, reused = results.latency
    return (
        f"One uncontended decision costs {ms(percentile(fresh.both, 50))} at p50, two script "
        f"calls (acquire {ms(percentile(fresh.acquire, 50))}, release "
        f"{ms(percentile(fresh.release, 50))}); with the lease reused, "
        f"{ms(percentile(reused.both, 50))}, its script call made in the background."
    )


def rate_row(rate: Throughput, duration: float) -> list[str]:
    return [
        rate.label,
        str(rate.processes),
        f"{rate.per_second:,.0f}",
        f"{rate.redis_us_each:,.0f} µs",
        f"{rate.redis_cpu_s / duration:.0%}",
        f"{rate.shard_ceiling:,.0f}",
    ]


def shard_reading(results: Results) -> str:
    """What one shard (one Redis main thread) carries, from the largest runs' CPU figures."""
    most = max(PROCESS_COUNTS)
    at_most = {r.label: r for r in results.rates if r.processes == most}
    plain, streamed = at_most[MIXES["open"].label], at_most[MIXES["stream"].label]
    reused, report = at_most[MIXES["reuse"].label], at_most[MIXES["engine"].label]
    charge_us = max(streamed.redis_us_each - plain.redis_us_each, 0.0) / STREAM_CHARGES
    return (
        f"With {most} processes, Redis' main thread spends {plain.redis_us_each:,.0f} µs per "
        f"uncontended decision (acquire and release, two script calls): one shard, whose "
        f"commands all run on that one thread, carries about {plain.shard_ceiling:,.0f} such "
        f"decisions per second; {reused.shard_ceiling:,.0f} with leases reused. Each output "
        f"charge of a running request costs about {charge_us:,.0f} µs more, an engine load "
        f"report {report.redis_us_each:,.0f} µs (docs/scaling.md turns these into engines and "
        f"requests per second)."
    )


def charge_us(rate: Throughput, plain: Throughput) -> float:
    """Redis CPU per output charge of a charging run, less the acquire and release of its
    streams' leases (priced as the uncontended decisions of the same process count)."""
    setup_us = rate.processes * CHARGED_STREAMS * plain.redis_us_each
    return max(rate.redis_cpu_s * 1e6 - setup_us, 0.0) / max(rate.done, 1)


def charges_reading(results: Results) -> str:
    """What a running stream's output charges cost the shard, one call each or per window."""
    parts = []
    for n in PROCESS_COUNTS:
        at = {r.label: r for r in results.rates if r.processes == n}
        plain = at[MIXES["open"].label]
        calls, window = at[MIXES["calls"].label], at[MIXES["window"].label]
        parts.append(
            f"{charge_us(calls, plain):,.1f} µs a call each against "
            f"{charge_us(window, plain):,.1f} µs per window with {n} process"
            + ("es" if n > 1 else "")
        )
    return (
        f"Output charges of {CHARGED_STREAMS:,} open streams per process, each charged "
        f"{CHARGES_PER_S} times a second, cost Redis' main thread (less the acquire and release "
        f"of the streams' leases) {'; '.join(parts)}: sent each in a call of its own, as the "
        "gateway's meters did before (those of one event-loop turn sharing a call of "
        "`batch.lua`), or gathered per request and sent together once per "
        "`admission.charge_interval_s` (0.25 s), as they do now (`admission/accrual.py`)."
    )


def render(results: Results) -> str:
    rows = [row for latency in results.latency for row in latency_rows(latency)]
    rate_rows = [rate_row(r, results.duration) for r in results.rates]
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    most = max(PROCESS_COUNTS)
    measured = len(results.latency[0].both)
    return f"""## Admission: cost per request and decisions per second

One request at a time through the real `Admission` client and Lua scripts on a private
redis-server ({measured:,} requests after {WARMUP_REQUESTS:,} of warm-up). "Lease reused": each
request ends well and the next starts {REUSE_GAP_S * 1e3:g} ms later, so that the finished
lease passes to the next request of its flow, whose acquire makes no Redis call (the reuse is
recorded in the background), and whose release only holds the lease for the request after it:

{markdown_table(["step", "p50", "p99"], "lrr", rows)}

Acquire/release pairs per second ({CONCURRENCY} concurrent loops per process, \
{results.duration:g} s; "queueing" has a backend budget of {QUEUEING_BUDGET} requests, so at
most {QUEUEING_BUDGET} of all the processes' loops run at once and the others wait, each granted
by another loop's release, another process's when several share the budget, through pub/sub;
"{STREAM_CHARGES} charges each": the output charged {STREAM_CHARGES} times between acquire and
release, as a one-second stream is; "engine load reports": the loops only report an engine's
load, as every replica does for every engine each second; "output charges": each process holds
{CHARGED_STREAMS:,} leases and charges each {CHARGES_PER_S} times a second, a call each or per
window, and the rate is of charges). "Redis CPU" is its main thread's
per decision, "busy" that thread's share of the run, "one core" the decisions per second its
whole core would carry at that cost:

{
        markdown_table(
            ["run", "processes", "decisions/s", "Redis CPU", "busy", "one core"],
            "lrrrrr",
            rate_rows,
        )
    }

{shard_reading(results)}

{charges_reading(results)}

Reproduce with `make bench` (or `python -m loadtest.admission_bench --write BENCHMARKS.md`).
Machine: {machine()}; {results.code_revision}; run on {today}. Its {results.cpus} CPUs are
shared by Redis and the {most} client processes of the largest runs, so those figures measure
the machine as much as Redis. {cost_reading(results)}"""
