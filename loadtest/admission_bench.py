"""Admission cost and throughput through one Redis.

``python -m loadtest.admission_bench [--duration S] [--write BENCHMARKS.md]``

1. **Uncontended cost**: one request at a time, ``Admission.acquire`` then ``Lease.release``
   (each one Lua script call), as a gateway does it: the latency admission adds per request;
   and the same with lease reuse (a finished lease passes to the next request of its flow: no
   script call on the request's path, one in the background).
2. **Decisions per second** from one and from three processes sharing one Redis, with budgets
   that never bind (every request granted at once; with and without lease reuse) and with
   budgets that do (requests queue, grants arrive by pub/sub from other processes' releases).

Each process runs the real ``Admission`` client (pub/sub listener and upkeep included) against
a private redis-server; the machine has 2 cores shared by Redis and the client processes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from admission.controller import Admission
from admission.ticket import Ticket
from fairgate.redis_client import connect
from fairgate.settings import Settings
from loadtest.report import machine, markdown_table, revision, write_section
from loadtest.services import redis_server

CONCURRENCY = 32
TENANTS = ("t1", "t2", "t3", "t4")


def settings_for(redis_url: str, contended: bool) -> Settings:
    """One pool; budgets that never bind, or 8 requests at a time for the contended runs."""
    budget = 8 if contended else 1_000_000
    return Settings(
        redis={"url": redis_url},
        pools={
            "p": {
                "backends": {
                    "b": {
                        "url": "http://127.0.0.1:9",
                        "models": ["m"],
                        "max_concurrency": budget,
                        "max_inflight_tokens": 10**12,
                    }
                }
            }
        },
        tenants={
            t: {"weight": i + 1, "max_concurrency": 100_000, "max_queued": 100_000}
            for i, t in enumerate(TENANTS)
        },
        admission={"upkeep_interval_s": 0.1},
    )


def ticket(tenant: str) -> Ticket:
    return Ticket(uuid.uuid4().hex, tenant, 500, 100.0, "p", "", 60.0)


async def started(redis_url: str, contended: bool) -> tuple[Admission, Redis]:
    settings = settings_for(redis_url, contended)
    redis = connect(settings.redis)
    admission = Admission(redis, settings)
    await admission.start()
    return admission, redis


async def uncontended_latency(
    redis_url: str, requests: int, reuse: bool = False
) -> dict[str, list[float]]:
    """Seconds spent in acquire and in release, one request at a time.

    With ``reuse``, each request ends well (its lease may be held for the next of its flow)
    and the next request starts half a millisecond later, as the next request of a busy
    tenant would: time for the background script call of the previous reuse to finish.
    """
    admission, redis = await started(redis_url, contended=False)
    suffix = ", lease reused" if reuse else ""
    acquire, release, both = f"acquire{suffix}", f"release{suffix}", f"both{suffix}"
    times: dict[str, list[float]] = {acquire: [], release: [], both: []}
    try:
        for i in range(requests + 200):
            t0 = time.perf_counter()
            lease = await admission.acquire(ticket(TENANTS[i % len(TENANTS)]))
            t1 = time.perf_counter()
            await lease.release(300.0, reusable=reuse)
            t2 = time.perf_counter()
            if reuse:
                await asyncio.sleep(0.0005)
            if i >= 200:  # warm-up: script loading, connection pool
                times[acquire].append(t1 - t0)
                times[release].append(t2 - t1)
                times[both].append(t2 - t0)
    finally:
        await admission.stop()
        await redis.aclose()
    return times


async def decisions(redis_url: str, contended: bool, duration: float, reuse: bool = False) -> int:
    """Acquire/release pairs completed by ``CONCURRENCY`` loops in ``duration`` seconds."""
    admission, redis = await started(redis_url, contended)
    done = 0
    stop_at = time.monotonic() + duration

    async def loop(index: int) -> None:
        nonlocal done
        tenant = TENANTS[index % len(TENANTS)]
        while time.monotonic() < stop_at:
            lease = await admission.acquire(ticket(tenant))
            await asyncio.sleep(0)  # the request "runs"
            await lease.release(300.0, reusable=reuse)
            done += 1

    try:
        await asyncio.gather(*(loop(i) for i in range(CONCURRENCY)))
    finally:
        await admission.stop()
        await redis.aclose()
    return done


def run_worker(redis_url: str, contended: bool, duration: float, reuse: bool) -> None:
    """Entry point of a worker process: prints its decision count."""
    import uvloop

    print(uvloop.run(decisions(redis_url, contended, duration, reuse)))


def in_processes(
    redis_url: str, contended: bool, duration: float, count: int, reuse: bool = False
) -> int:
    """Run ``count`` worker processes at once; their decisions added up."""
    command = [sys.executable, "-m", "loadtest.admission_bench", "--worker", redis_url]
    if contended:
        command.append("--contended")
    if reuse:
        command.append("--reuse")
    command += ["--duration", str(duration)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return sum(int(w.communicate()[0].strip()) for w in workers)


@dataclass(frozen=True)
class Throughput:
    label: str
    processes: int
    per_second: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def render(latency: dict[str, list[float]], rates: list[Throughput], duration: float) -> str:
    ms = [
        [name, f"{statistics.median(v) * 1e3:.3f} ms", f"{percentile(v, 0.99) * 1e3:.3f} ms"]
        for name, v in latency.items()
    ]
    rate_rows = [[r.label, str(r.processes), f"{r.per_second:,.0f}"] for r in rates]
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return f"""## Admission: cost per request and decisions per second

One request at a time through the real `Admission` client and Lua scripts on a private
redis-server ({len(latency["both"]):,} requests after a warm-up). "Lease reused": each request
ends well and the next starts 0.5 ms later, so that the finished lease passes to the next
request of its flow, whose acquire makes no Redis call (the reuse is recorded in the
background), and whose release only holds the lease for the request after it:

{markdown_table(["step", "p50", "p99"], "lrr", ms)}

Acquire/release pairs per second ({CONCURRENCY} concurrent loops per process, {duration:g} s;
"queueing" has a backend budget of 8 requests, so most requests wait and are granted by
another loop's release, often from another process, through pub/sub):

{markdown_table(["budgets", "processes", "decisions/s"], "lrr", rate_rows)}

Reproduce with `make bench` (or `python -m loadtest.admission_bench --write BENCHMARKS.md`).
Machine: {machine()}; {revision()}; run on {today}. The two cores are shared by Redis and the
client processes, so the three-process figures measure the machine as much as Redis: one
uncontended decision costs two script calls of well under a millisecond, or one (in the
background) when the lease is reused."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.admission_bench")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--worker", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--contended", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.contended, args.duration, args.reuse)
        return 0
    import uvloop

    with redis_server() as url:
        latency = uvloop.run(uncontended_latency(url, args.requests))
        latency |= uvloop.run(uncontended_latency(url, args.requests, reuse=True))
        runs = (
            ("never bind", False, False),
            ("never bind, lease reuse", False, True),
            ("queueing", True, False),
        )
        rates = [
            Throughput(
                label, n, in_processes(url, contended, args.duration, n, reuse) / args.duration
            )
            for label, contended, reuse in runs
            for n in (1, 3)
        ]
    section = render(latency, rates, args.duration)
    print(section)
    if args.write:
        write_section(args.write, "admission", section)
    print(
        json.dumps({r.label + f" x{r.processes}": round(r.per_second) for r in rates}),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
