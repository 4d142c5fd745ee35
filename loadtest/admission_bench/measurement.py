"""The measurement of the admission benchmark: per-request latency, decisions per second.

The latency runs go one request at a time through the real ``Admission`` client in this
process; the throughput runs start worker processes (``python -m loadtest.admission_bench
--worker URL``), each running :data:`~loadtest.admission_bench.workload.CONCURRENCY` loops, and
add up their counts. Everything runs against one private redis-server (:mod:`loadtest.services`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import uvloop

from admission.controller import Admission
from fairgate.redis_client import RedisClient, connect
from loadtest.admission_bench.workload import (
    CONCURRENCY,
    RELEASED_OUTPUT,
    REUSE_GAP_S,
    TENANTS,
    WARMUP_REQUESTS,
    settings_for,
    ticket,
)
from loadtest.report import revision
from loadtest.services import redis_server

#: Process counts of the throughput runs.
PROCESS_COUNTS = (1, 3)
#: The throughput runs: label, whether budgets bind (requests queue), whether leases are reused.
RUNS = (
    ("never bind", False, False),
    ("never bind, lease reuse", False, True),
    ("queueing", True, False),
)


async def started(redis_url: str, contended: bool) -> tuple[Admission, RedisClient]:
    settings = settings_for(redis_url, contended)
    redis = connect(settings.redis)
    admission = Admission(redis, settings)
    await admission.start()
    return admission, redis


@dataclass(frozen=True)
class Latency:
    """Seconds spent in acquire, in release and in both, one request at a time."""

    reuse: bool
    acquire: list[float]
    release: list[float]
    both: list[float]


async def uncontended_latency(redis_url: str, requests: int, reuse: bool = False) -> Latency:
    """Seconds spent in acquire and in release, one request at a time, after a warm-up.

    With ``reuse``, each request ends well (its lease may be held for the next of its flow)
    and the next request starts :data:`REUSE_GAP_S` later, as the next request of a busy
    tenant would: time for the background script call of the previous reuse to finish.
    """
    admission, redis = await started(redis_url, contended=False)
    latency = Latency(reuse, [], [], [])
    try:
        for i in range(requests + WARMUP_REQUESTS):
            t0 = time.perf_counter()
            lease = await admission.acquire(ticket(TENANTS[i % len(TENANTS)]))
            t1 = time.perf_counter()
            await lease.release(RELEASED_OUTPUT, reusable=reuse)
            t2 = time.perf_counter()
            if reuse:
                await asyncio.sleep(REUSE_GAP_S)
            if i >= WARMUP_REQUESTS:
                latency.acquire.append(t1 - t0)
                latency.release.append(t2 - t1)
                latency.both.append(t2 - t0)
    finally:
        await admission.stop()
        await redis.aclose()
    return latency


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
            await lease.release(RELEASED_OUTPUT, reusable=reuse)
            done += 1

    try:
        await asyncio.gather(*(loop(i) for i in range(CONCURRENCY)))
    finally:
        await admission.stop()
        await redis.aclose()
    return done


def run_worker(redis_url: str, contended: bool, duration: float, reuse: bool) -> None:
    """Entry point of a worker process: prints its decision count."""
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


@dataclass(frozen=True)
class Results:
    """Everything the report shows."""

    latency: list[Latency]  # without, then with lease reuse
    rates: list[Throughput]
    duration: float  # seconds of each throughput run
    code_revision: str
    cpus: int


def measure(requests: int, duration: float) -> Results:
    """The latency runs, then every throughput run, against one private Redis."""
    code_revision = revision()
    with redis_server() as url:
        latency = [uvloop.run(uncontended_latency(url, requests, reuse)) for reuse in (False, True)]
        rates = [
            Throughput(label, n, in_processes(url, contended, duration, n, reuse) / duration)
            for label, contended, reuse in RUNS
            for n in PROCESS_COUNTS
        ]
    return Results(latency, rates, duration, code_revision, os.cpu_count() or 1)
