"""The soak's BENCHMARKS.md section, from its result (every figure and verdict computed)."""

from __future__ import annotations

import datetime

from loadtest.report import machine, markdown_table, revision
from loadtest.soak.measurement import RESTART_AT, RESTARTED, WARMUP_S, SoakResult
from loadtest.soak.workload import (
    CANCELLED,
    CLIENTS_PER_REPLICA,
    ENGINE_CONCURRENCY,
    ENGINES,
    LEASE_TTL_S,
    REPLICAS,
    STREAMED,
    TIME_SCALE,
    WEIGHTS,
)

#: The section of BENCHMARKS.md this run owns (see :mod:`loadtest.report`).
SECTION = "soak"


def answers_table(result: SoakResult) -> str:
    rows = [[kind, f"{n:,}", "expected"] for kind, n in result.answers.most_common()]
    rows = [[k, n, "**unexpected**" if k in result.unexpected else v] for k, n, v in rows]
    rows += [
        [f"{kind} (restarted replica, while down)", f"{n:,}", "expected"]
        for kind, n in result.restart_failures.most_common()
    ]
    return markdown_table(["Answer", "Requests", ""], "lrl", rows)


def memory_table(result: SoakResult) -> str:
    rows = [
        [m.replica, f"{m.start_mib:.1f}", f"{m.end_mib:.1f}", f"{m.end_mib - m.start_mib:+.1f}"]
        for m in result.memory
    ]
    return markdown_table(
        ["Process", "RSS after warm-up (MiB)", "At the end", "Change"], "lrrr", rows
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds % 60 == 0 else f"{seconds:g} s"


def render(result: SoakResult, argv: list[str], elapsed_s: float) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    left = result.left
    assert left is not None
    verdict = (
        f"nothing: no lease, no queued request, no request or token in flight "
        f"(settled {left.settled_after_s:.1f} s after the load stopped)"
        if left.clean
        else f"**{left.leases} leases, {left.queued} queued, {left.requests_in_flight} "
        f"requests and {left.tokens_in_flight} tokens in flight**"
    )
    unexpected = sum(result.unexpected.values())
    command = "`" + " ".join(["python", "-m", "loadtest.soak", *argv]) + "`"
    return f"""## Soak: {_duration(result.duration_s)} at saturation, a replica restarted

{REPLICAS} `fairgate serve` replicas share one Redis and {ENGINES} simulated engines
({TIME_SCALE:g}× real time, {ENGINE_CONCURRENCY} requests at once each); {CLIENTS_PER_REPLICA}
closed-loop clients per tenant on each replica (tenants of weights
{", ".join(f"{w:g}" for w in WEIGHTS.values())}) keep far more requests coming than the engines
hold, {STREAMED:.0%} of them streamed; {CANCELLED:.0%} are abandoned by their client on purpose
(while queued, or mid-stream). At {RESTART_AT:.0%} of the run replica {RESTARTED} is SIGKILLed
and started again on its port (down {result.down_s:.1f} s; its leases expire within
`lease_ttl_s: {LEASE_TTL_S:g}`). {result.requests:,} requests in all; {unexpected} unexpected
answers.

{answers_table(result)}

Resident memory, read after {WARMUP_S:g} s of load (for the restarted replica, {WARMUP_S:g} s
after its restart) and at the end of the load:

{memory_table(result)}

Left in admission once the load stopped: {verdict}.

Reproduce with {command} (not part of `make test` or `make bench`).
Machine: {machine()}; fairgate at {revision()}; run on {today}, {elapsed_s:.0f} s of wall
time in all."""
