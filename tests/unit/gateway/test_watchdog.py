"""The watchdog: what stays pending past its own limit is ended, once; nothing else is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from gateway.watchdog import Watchdog


@dataclass(eq=False)
class Operation:
    limit_s: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    expired: int = 0

    def expire(self) -> None:
        self.expired += 1
        self.ended.set()


async def test_only_what_stays_pending_past_its_own_limit_is_ended_and_once() -> None:
    watchdog = Watchdog("test", shortest_limit_s=0.1)
    short, long_, done = Operation(0.1), Operation(3600.0), Operation(0.1)
    now = time.monotonic()
    for operation in (short, long_, done):
        watchdog.began(operation, now)
    watchdog.ended(done)  # finished in time: never ended by the watchdog

    await asyncio.wait_for(short.ended.wait(), timeout=10)
    assert (short.expired, long_.expired, done.expired) == (1, 0, 0)
    assert watchdog.pending() == 1  # the long one, still within its limit
    watchdog.ended(short)  # its owner ends it late: a no-op
    watchdog.ended(long_)
    await watchdog.close()
    assert short.expired == 1


async def test_the_sweeper_runs_only_while_something_is_pending() -> None:
    watchdog = Watchdog("test", shortest_limit_s=0.1)
    first = Operation(0.1)
    watchdog.began(first, time.monotonic())
    await asyncio.wait_for(first.ended.wait(), timeout=10)
    for _ in range(200):  # the sweep that found nothing more pending ends the sweeper
        if not [t for t in asyncio.all_tasks() if t.get_name() == "test"]:
            break
        await asyncio.sleep(0.01)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "test"]

    second = Operation(0.1)  # a new pending operation starts it again
    watchdog.began(second, time.monotonic())
    await asyncio.wait_for(second.ended.wait(), timeout=10)
    assert (first.expired, second.expired) == (1, 1)
    await watchdog.close()


async def test_an_operation_that_fails_to_end_does_not_stop_the_others() -> None:
    class Broken(Operation):
        def expire(self) -> None:
            super().expire()
            raise RuntimeError("cannot close")

    watchdog = Watchdog("test", shortest_limit_s=0.1)
    broken, later = Broken(0.1), Operation(0.1)
    watchdog.began(broken, time.monotonic())
    await asyncio.wait_for(broken.ended.wait(), timeout=10)
    watchdog.began(later, time.monotonic())
    await asyncio.wait_for(later.ended.wait(), timeout=10)
    assert (broken.expired, later.expired) == (1, 1)
    await watchdog.close()
