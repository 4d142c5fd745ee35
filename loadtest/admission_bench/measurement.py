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
from redis import Redis as SyncRedis

from admission.controller import Admission
from fairgate.redis_client import RedisClient, connect
from loadtest.admission_bench.workload import (
    CHARGED_STREAMS,
    CHARGES_PER_S,
    CONCURRENCY,
    MIXES,
    RELEASED_OUTPUT,
    REUSE_GAP_S,
    TENANTS,
    WARMUP_REQUESTS,
    Mix,
    settings_for,
    ticket,
)
from loadtest.report import revision
from loadtest.services import redis_server

#: Process counts of the throughput runs (three: as many gateway processes as the scaling
#: figures assume, docs/scaling.md).
PROCESS_COUNTS = (1, 3)


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


async def decisions(redis_url: str, mix: Mix, duration: float) -> int:
    """What ``CONCURRENCY`` loops complete in ``duration`` seconds: acquire/release pairs
    (with the mix's charges between), or engine load reports."""
    admission, redis = await started(redis_url, mix.contended)
    done = 0
    stop_at = time.monotonic() + duration
    if mix.charging is not None:
        try:
            return await charges(admission, mix.charging == "window", stop_at)
        finally:
            await admission.stop()
            await redis.aclose()

    async def loop(index: int) -> None:
        nonlocal done
        tenant = TENANTS[index % len(TENANTS)]
        while time.monotonic() < stop_at:
            if mix.engine_reports:
                await admission.engine_reported("b", 0.0, 1000 + index, None, 5.0)
                done += 1
                continue
            lease = await admission.acquire(ticket(tenant))
            await asyncio.sleep(0)  # the request "runs"
            for _ in range(mix.charges):
                await lease.charge(RELEASED_OUTPUT / (mix.charges + 1))
            await lease.release(RELEASED_OUTPUT, reusable=mix.reuse)
            done += 1

    try:
        await asyncio.gather(*(loop(i) for i in range(CONCURRENCY)))
    finally:
        await admission.stop()
        await redis.aclose()
    return done


async def charges(admission: Admission, window: bool, stop_at: float) -> int:
    """Output charges of :data:`CHARGED_STREAMS` running requests, each charged
    :data:`CHARGES_PER_S` times a second, spread evenly (a few every millisecond) until
    ``stop_at``: with the window's others (``Lease.charge_soon``, the gateway's meters), or
    each sent as the gateway's meters used to, a call of its own in the background (calls of
    one event-loop turn share a script call). How many were made; then the leases end."""
    leases = [
        await admission.acquire(ticket(TENANTS[i % len(TENANTS)])) for i in range(CHARGED_STREAMS)
    ]
    each_ms = max(CHARGED_STREAMS * CHARGES_PER_S // 1000, 1)
    service = RELEASED_OUTPUT / (CHARGES_PER_S + 1)
    running: set[asyncio.Future[None]] = set()
    done = 0
    while time.monotonic() < stop_at:
        for _ in range(each_ms):
            lease = leases[done % CHARGED_STREAMS]
            done += 1
            if window:
                lease.charge_soon(service)
            else:
                sent = asyncio.ensure_future(lease.charge(service))
                running.add(sent)
                sent.add_done_callback(running.discard)
        await asyncio.sleep(0.001)
    await asyncio.gather(*running)
    for lease in leases:
        await lease.release(RELEASED_OUTPUT)
    return done


def run_worker(redis_url: str, mix: str, duration: float) -> None:
    """Entry point of a worker process: prints what its loops completed."""
    print(uvloop.run(decisions(redis_url, MIXES[mix], duration)))


def redis_cpu_s(redis_url: str) -> float:
    """CPU seconds Redis' main thread has used: the thread that runs every command and
    script, so what one shard can give is one core of it."""
    client = SyncRedis.from_url(redis_url)
    try:
        cpu = client.info("cpu")
    finally:
        client.close()
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def in_processes(redis_url: str, mix: Mix, duration: float, count: int) -> Throughput:
    """Run ``count`` worker processes at once: what they completed, and Redis' CPU for it."""
    command = [sys.executable, "-m", "loadtest.admission_bench", "--worker", redis_url]
    command += ["--mix", mix.name, "--duration", str(duration)]
    before = redis_cpu_s(redis_url)
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    done = sum(int(w.communicate()[0].strip()) for w in workers)
    return Throughput(mix.label, count, done / duration, redis_cpu_s(redis_url) - before, done)


@dataclass(frozen=True)
class Throughput:
    label: str
    processes: int
    per_second: float
    redis_cpu_s: float  # Redis main-thread CPU the run took (start-up of the workers included)
    done: int

    @property
    def redis_us_each(self) -> float:
        """Redis main-thread CPU per decision (or report), µs."""
        return self.redis_cpu_s / max(self.done, 1) * 1e6

    @property
    def shard_ceiling(self) -> float:
        """Decisions (or reports) per second that one Redis core's worth would carry."""
        return 1e6 / self.redis_us_each if self.done else 0.0


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
            in_processes(url, mix, duration, n) for mix in MIXES.values() for n in PROCESS_COUNTS
        ]
    return Results(latency, rates, duration, code_revision, os.cpu_count() or 1)
