"""The soak's run: the load for its duration, the restart halfway, and what is measured.

Answers are counted by kind. Expected: ``ok``, ``cancelled`` (the client hung up on purpose),
a 429 (a queue full or waited out), and, on the restarted replica only and only from its kill
until it answers again, connections refused or cut. Anything else is unexpected. Resident
memory is read from ``/proc`` once the warm-up is over (for the restarted replica, again after
its restart) and at the end of the load. What admission holds is read once the load stopped and
every lease of the killed replica had its TTL to expire: all of it must be zero.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from redis.asyncio import Redis

from admission.live import LiveState
from fairgate.keys import AdmissionKeys
from fairgate.settings import load_settings
from loadtest.soak.stack import KEY_PREFIX, Stack, rss_mib
from loadtest.soak.workload import (
    BACKOFF_S,
    CLIENTS_PER_REPLICA,
    LEASE_TTL_S,
    WEIGHTS,
    key_of,
    plan,
    send,
)

#: Memory is first read this long into the load (and into a restarted replica's life).
WARMUP_S = 30.0
#: Which replica is restarted, and when (a share of the duration).
RESTARTED = 1
RESTART_AT = 0.5
EXPECTED = {"ok", "cancelled", "429 rate_limit_exceeded"}
#: After the load, how long admission may take to come back to empty (its leases' TTL and more).
SETTLE_S = LEASE_TTL_S + 30.0


@dataclass(frozen=True)
class Memory:
    """A replica's resident memory (MiB) after its warm-up and at the end of its life."""

    replica: str
    start_mib: float
    end_mib: float


@dataclass(frozen=True)
class Left:
    """What admission holds once everything settled: all zero when nothing leaked."""

    leases: int
    queued: int
    requests_in_flight: int
    tokens_in_flight: int
    settled_after_s: float

    @property
    def clean(self) -> bool:
        return not (self.leases or self.queued or self.requests_in_flight or self.tokens_in_flight)


@dataclass
class SoakResult:
    duration_s: float
    restart_at_s: float
    down_s: float  # from the kill until the restarted replica answered again
    answers: Counter[str] = field(default_factory=Counter)
    restart_failures: Counter[str] = field(default_factory=Counter)  # expected, in the window
    memory: list[Memory] = field(default_factory=list)
    left: Left | None = None

    @property
    def unexpected(self) -> Counter[str]:
        return Counter({k: n for k, n in self.answers.items() if k not in EXPECTED})

    @property
    def requests(self) -> int:
        return sum(self.answers.values()) + sum(self.restart_failures.values())


async def soak(stack: Stack, duration_s: float, seed: int = 16) -> SoakResult:
    """Run the load for ``duration_s``, restarting one replica halfway; the figures."""
    redis = Redis.from_url(stack.redis_url)
    started = time.monotonic()
    stop_at = started + duration_s
    result = SoakResult(duration_s, duration_s * RESTART_AT, 0.0)
    down: list[float] = []  # [killed at, answering again at], monotonic
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def client(replica: int, tenant: str, rng: random.Random) -> None:
            url, key = stack.urls[replica], key_of(tenant)
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    kind = await send(http, url, key, plan(rng))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    kind = f"connection: {type(exc).__name__}"
                during_restart = replica == RESTARTED and down and sent <= _end(down)
                if during_restart and kind.startswith(("connection", "stream error")):
                    result.restart_failures[kind] += 1
                else:
                    result.answers[kind] += 1
                if kind not in ("ok", "cancelled"):
                    await asyncio.sleep(BACKOFF_S)

        rng = random.Random(seed)
        clients = [
            asyncio.create_task(client(r, t, random.Random(rng.random())))
            for r in range(len(stack.urls))
            for t in WEIGHTS
            for _ in range(CLIENTS_PER_REPLICA)
        ]
        await asyncio.sleep(WARMUP_S)
        first = {i: rss_mib(p) for i, p in enumerate(stack.replicas)}
        await asyncio.sleep(max(0.0, started + result.restart_at_s - time.monotonic()))
        before_restart = rss_mib(stack.replicas[RESTARTED])
        down.append(time.monotonic())
        await asyncio.to_thread(stack.restart, RESTARTED)
        down.append(time.monotonic())
        result.down_s = down[1] - down[0]
        await asyncio.sleep(WARMUP_S)
        restarted_first = rss_mib(stack.replicas[RESTARTED])
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        last = {i: rss_mib(p) for i, p in enumerate(stack.replicas)}
        await asyncio.gather(*clients)
    result.memory = [
        Memory(f"replica {i}", first[i], last[i]) for i in range(len(stack.urls)) if i != RESTARTED
    ]
    result.memory += [
        Memory(f"replica {RESTARTED}, until killed", first[RESTARTED], before_restart),
        Memory(f"replica {RESTARTED}, restarted", restarted_first, last[RESTARTED]),
    ]
    result.left = await _settled(stack, redis)
    await redis.aclose()
    return result


def _end(down: list[float]) -> float:
    """The end of the restart window: a second after the replica answered again (or now)."""
    return down[1] + 1.0 if len(down) > 1 else time.monotonic()


async def _settled(stack: Stack, redis: Redis) -> Left:
    """Wait for admission to come back to empty (at most :data:`SETTLE_S`); what it holds."""
    live = LiveState(redis, load_settings(stack.config))
    keys = AdmissionKeys.of(KEY_PREFIX)
    began = time.monotonic()
    while True:
        snapshot = await live.read()
        tenants = snapshot.tenants.values()
        left = Left(
            await redis.hlen(keys.leases),
            sum(t.queued for t in tenants),
            sum(t.in_flight.requests for t in tenants),
            sum(t.in_flight.tokens for t in tenants),
            time.monotonic() - began,
        )
        if left.clean or time.monotonic() - began > SETTLE_S:
            return left
        await asyncio.sleep(0.5)
