"""The watchdog: a watched thing that is overdue is ended, once; nothing else is, and nothing
is asked once it is no longer watched."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.watchdog import Watchdog


@dataclass(eq=False)
class Stream:
    """Overdue once ``stuck`` is set; counts how often it was asked and ended."""

    stuck: bool = False
    asked: int = 0
    expired: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def overdue(self, now: float) -> bool:
        self.asked += 1
        return self.stuck

    def expire(self) -> None:
        self.expired += 1
        self.ended.set()


def sweepers(name: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name]


async def test_only_an_overdue_stream_is_ended_and_only_once() -> None:
    watchdog = Watchdog("test", shortest_limit_s=0.1)
    stuck, fine, gone = Stream(stuck=True), Stream(), Stream(stuck=True)
    for stream in (stuck, fine, gone):
        watchdog.watch(stream)
    watchdog.unwatch(gone)  # ended before the sweeper looked: never asked, never ended

    await asyncio.wait_for(stuck.ended.wait(), timeout=10)
    while fine.asked < stuck.asked + 2:  # two more sweeps: the expired one is not asked again
        await asyncio.sleep(0.02)
    assert (stuck.expired, fine.expired, gone.expired) == (1, 0, 0)
    assert gone.asked == 0
    assert watchdog.watching() == 1  # the one that is fine
    watchdog.unwatch(stuck)  # its owner lets go late: a no-op
    fine.stuck = True
    await asyncio.wait_for(fine.ended.wait(), timeout=10)
    assert (stuck.expired, fine.expired) == (1, 1)
    await watchdog.close()


async def test_the_sweeper_runs_only_while_something_is_watched() -> None:
    watchdog = Watchdog("test", shortest_limit_s=0.1)
    assert not sweepers("test")
    first, other = Stream(), Stream()
    watchdog.watch(first)
    watchdog.watch(other)
    assert len(sweepers("test")) == 1  # one per watchdog, however many streams
    watchdog.unwatch(first)
    first.stuck = True  # no longer watched: never ended
    watchdog.unwatch(other)
    for _ in range(200):  # the next sweep finds nothing watched and the sweeper ends
        if not sweepers("test"):
            break
        await asyncio.sleep(0.01)
    assert not sweepers("test")
    assert first.expired == 0

    second = Stream(stuck=True)  # a new stream starts it again
    watchdog.watch(second)
    await asyncio.wait_for(second.ended.wait(), timeout=10)
    assert second.expired == 1
    await watchdog.close()


async def test_a_stream_that_fails_to_end_does_not_stop_the_others() -> None:
    class Broken(Stream):
        def expire(self) -> None:
            super().expire()
            raise RuntimeError("cannot close")

    watchdog = Watchdog("test", shortest_limit_s=0.1)
    broken, later = Broken(stuck=True), Stream()
    watchdog.watch(broken)
    watchdog.watch(later)
    await asyncio.wait_for(broken.ended.wait(), timeout=10)
    later.stuck = True
    await asyncio.wait_for(later.ended.wait(), timeout=10)
    assert (broken.expired, later.expired) == (1, 1)
    await watchdog.close()
