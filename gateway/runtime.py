"""The interpreter under the gateway: its cyclic garbage collector and its event loop's lag.

A gateway holds thousands of streams open, each waiting for its next chunk; anything that stops
the event loop delays all of them at once. The usual culprit is CPython's cyclic collector: a
full (generation-2) collection walks every container object the process holds, for as long as
that takes, and it ran often when each request left a reference cycle behind (issue 17: pauses
of up to 391 ms at 2,000 streams). The request path is now kept free of cycles (a test counts
them); what this module adds:

- after start-up, :func:`gc.freeze` moves everything built so far (settings, scripts, routes,
  tokenizers, imported modules) out of the collector's view, so that a full collection walks
  only what requests created since (``server.gc_freeze``);
- a pacer for the collector (``server.gc_young_interval_s``, ``server.gc_full_growth``):
  CPython starts a young collection when allocations of container objects outnumber frees by
  its threshold. A gateway relaying thousands of streams frees about as much as it allocates,
  so the counter stays low while the young generation fills with every open stream's objects;
  when a collection finally runs it walks all of them at once (a young collection of 210,000
  objects, 50-70 ms, at 2,000 streams), and the full collections that follow walk every live
  object (100-200 ms). The pacer collects the young generations every 0.25 s instead, each
  collection walking only what was made since the last and is still alive (5-10 ms there),
  and runs a full collection when the heap has doubled since the last
  (``gc_full_growth``; more, up to ``gc_full_growth_max``, after full collections that found
  next to nothing: :class:`FullCollections`) rather than on CPython's count of objects
  promoted, which at that churn grows without the heap growing and calls for one every few
  seconds. Where the young collections keep finding no garbage (a request path without
  reference cycles), ticks freeze the young generations instead, which walks nothing, and
  every few ticks one still collects as a probe (``server.gc_probe_every``,
  :class:`YoungTicks`);
- the generation-0 threshold (``server.gc_young_threshold``), for bursts between two ticks;
- what operators need to see it: ``fairgate_gc_pause_seconds`` (per generation, from
  :data:`gc.callbacks`), ``fairgate_gc_collected_objects_total`` and
  ``fairgate_event_loop_lag_seconds`` (how late a small monitor task wakes up: any pause, the
  collector's or a slow handler's, shows there).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from fairgate.settings import ServerConfig
from fairgate.tasks import cancel_all

#: How often the lag monitor asks to be woken: often enough to see a pause of this length,
#: rarely enough to cost nothing (ten wake-ups a second).
LAG_INTERVAL_S = 0.1
#: From a millisecond (a loop that keeps up) to seconds (one that is stuck).
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GENERATIONS = ("0", "1", "2")
#: A promotion count CPython never reaches: its own trigger for full collections, off.
NEVER = 2**30


class Runtime:
    """The collector's settings, its pauses and the event loop's lag, for one gateway process.

    :data:`gc.callbacks` is process-wide: a test process running several gateways counts each
    collection in each of them (one process, one collector).
    """

    def __init__(self, config: ServerConfig, registry: CollectorRegistry) -> None:
        self._config = config
        self.gc_pause = Histogram(
            "fairgate_gc_pause_seconds",
            "How long each cyclic garbage collection held the process, by generation.",
            ["generation"],
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self.gc_collected = Counter(
            "fairgate_gc_collected_objects",
            "Objects the cyclic garbage collector freed (reference cycles), by generation.",
            ["generation"],
            registry=registry,
        )
        self.loop_lag = Histogram(
            "fairgate_event_loop_lag_seconds",
            f"How much later than asked a task sleeping {LAG_INTERVAL_S:g} s woke up: the "
            "time every stream's next chunk waited for the event loop.",
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self._pauses = [self.gc_pause.labels(g) for g in GENERATIONS]
        self._collected = [self.gc_collected.labels(g) for g in GENERATIONS]
        self._started_at = 0.0
        self._threshold = gc.get_threshold()
        self._tasks: list[asyncio.Task[None]] = []
        self._full = FullCollections(config.gc_full_growth, config.gc_full_growth_max)

    def start(self) -> None:
        """Once the application is built: settle the collector, freeze, watch the loop."""
        self._threshold = gc.get_threshold()
        if self._config.gc_young_threshold is not None:
            _, older, oldest = self._threshold
            gc.set_threshold(self._config.gc_young_threshold, older, oldest)
        before = sys.getallocatedblocks()
        if self._config.gc_freeze:
            gc.collect()  # what start-up left unreachable is freed, not frozen for good
            gc.freeze()
            self._full.collected(before, sys.getallocatedblocks())
        else:
            self._full.settled = before
        gc.callbacks.append(self._on_gc)
        self._tasks = [asyncio.create_task(self._watch_loop(), name="event-loop-lag")]
        if self._config.gc_young_interval_s > 0:
            young, older, _ = gc.get_threshold()
            gc.set_threshold(young, older, NEVER)  # full collections: the pacer's clock alone
            self._tasks.append(asyncio.create_task(self._pace(), name="gc-pacer"))

    async def stop(self) -> None:
        """Stop watching; the collector's thresholds back as they were (what was frozen stays
        so: it is the process's for as long as it runs)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.set_threshold(*self._threshold)
        await cancel_all(self._tasks)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """Time each collection: called by the interpreter before and after it."""
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        generation = info["generation"]
        self._pauses[generation].observe(time.perf_counter() - self._started_at)
        if collected := info["collected"]:
            self._collected[generation].inc(collected)

    async def _watch_loop(self) -> None:
        """Sleep :data:`LAG_INTERVAL_S` over and over; record how late each wake-up was."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + LAG_INTERVAL_S
            await asyncio.sleep(LAG_INTERVAL_S)
            self.loop_lag.observe(max(0.0, loop.time() - asked))

    async def _pace(self) -> None:
        """Collect the young generations every ``gc_young_interval_s``, and everything once
        the heap has grown enough since the last full collection (:class:`FullCollections`).

        A young collection here is of generations 0 and 1 together: what was made since the
        last tick and is still alive is walked once and moved to the oldest generation, where
        only a full collection walks it again (two young generations, as CPython's own triggers
        keep them, would walk a stream's objects twice and pause longer for it). The heap is
        measured in the allocator's blocks in use (``sys.getallocatedblocks``: tens of
        microseconds), so a full collection runs when something accumulates, cyclic garbage
        included, and not while thousands of streams come and go at a steady level.
        """
        young_s, full = self._config.gc_young_interval_s, self._full
        ticks = YoungTicks(self._config.gc_probe_every)
        froze = False  # whether a tick froze objects since the last full collection
        while True:
            await asyncio.sleep(young_s)
            if not gc.isenabled():  # switched off (gc.disable): no automatic collection at all
                continue
            if full.due(before := sys.getallocatedblocks()):
                _collect_everything(thaw=froze)
                froze = False
                ticks.found(None)
                full.collected(before, sys.getallocatedblocks())
            elif ticks.collects():
                ticks.found(gc.collect(1))
            else:
                gc.freeze()  # out of view, walked by nothing: no pause
                froze = True


#: A full collection that freed less than this share of the heap's blocks found next to no
#: garbage: the growth that called for it was the process's live objects.
UNPRODUCTIVE_SHARE = 0.01


@dataclass(slots=True)
class FullCollections:
    """When the pacer runs a full collection: once the heap (the allocator's blocks in use)
    has grown by ``growth`` since the last one.

    A full collection walks every object the process holds (at 2,000 open streams about
    330,000, 250-330 ms here) and is worth it only for the reference cycles it frees. One that
    frees next to nothing (:data:`UNPRODUCTIVE_SHARE`) shows that the growth was live objects,
    more streams open, and the next waits for twice as much growth, up to ``most``; one that
    frees garbage brings the growth back to ``least``, so a path that leaks cycles is collected
    at every doubling of its heap. The start-up collection counts as the first: a gateway that
    starts clean does not walk its whole heap the moment its load doubles it (issue 17:
    a 280 ms full collection that freed 0 objects at 2,000 streams, the heap twice the idle
    one's).
    """

    least: float
    most: float
    growth: float = 0.0  # the growth allowed now (least until a collection has said more)
    settled: int = 0  # the heap's blocks after the last full collection

    def __post_init__(self) -> None:
        self.growth = self.least

    def due(self, blocks: int) -> bool:
        """Whether a heap of ``blocks`` calls for a full collection."""
        return blocks > self.settled * (1 + self.growth)

    def collected(self, before: int, after: int) -> None:
        """A full collection took the heap from ``before`` blocks to ``after``."""
        if before - after < before * UNPRODUCTIVE_SHARE:
            self.growth = min(self.growth * 2, self.most)
        else:
            self.growth = self.least
        self.settled = after


#: Young collections in a row that found no garbage before ticks freeze instead.
QUIET_COLLECTIONS = 4


@dataclass(slots=True)
class YoungTicks:
    """Whether a tick of the pacer collects the young generations or freezes them.

    A young collection walks every young object alive; at thousands of open streams those are
    mostly each stream's pending read (a future, two coroutines and the like, made anew for
    every chunk), walked four times a second and found alive. Where the request path makes
    no reference cycles, that walk finds nothing. After :data:`QUIET_COLLECTIONS` such
    collections in a row, ticks freeze instead (``gc.freeze`` moves the young generations to
    the permanent one: no walk at all), and every ``probe_every``-th tick still collects, as
    a probe of what the last tick's worth of requests left: any garbage found brings back a
    collection every tick. A full collection thaws and walks everything, the frozen garbage
    included. ``probe_every`` 0: every tick collects.
    """

    probe_every: int
    quiet: int = 0  # collections in a row that found no garbage
    ticks: int = 0  # ticks since the collections went quiet

    def collects(self) -> bool:
        """Whether this tick collects (else it freezes)."""
        if not self.probe_every or self.quiet < QUIET_COLLECTIONS:
            return True
        self.ticks += 1
        return self.ticks % self.probe_every == 0

    def found(self, garbage: int | None) -> None:
        """What a collection found: unreachable objects, or None after a full collection
        (which starts the count of quiet young collections again)."""
        if garbage == 0:
            self.quiet += 1
        else:
            self.quiet = self.ticks = 0


def _collect_everything(thaw: bool) -> None:
    """A full collection; with ``thaw``, of what ticks froze too (and what start-up froze:
    ``gc.unfreeze`` gives all of it back), frozen again once collected."""
    if thaw:
        gc.unfreeze()
    gc.collect()
    if thaw:
        gc.freeze()
