"""The simulated engine: a scheduler, a KV cache and a clock, driven by one asyncio task.

The loop plans a step, spends the step's modelled duration on the simulated clock, applies the
step's results and hands each new token to the request's outbox. When nothing is running or
waiting it sleeps until a request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, OrderedDict

from loadtest.simulator.clock import SimClock
from loadtest.simulator.kv_cache import BlockPool
from loadtest.simulator.metrics import EngineMetrics
from loadtest.simulator.profile import EngineProfile
from loadtest.simulator.scheduler import Scheduler
from loadtest.simulator.sequence import Sequence

log = logging.getLogger(__name__)


class Engine:
    """One simulated GPU engine."""

    def __init__(
        self,
        profile: EngineProfile,
        clock: SimClock,
        metrics: EngineMetrics,
        history_size: int = 10_000,
    ) -> None:
        self.profile = profile
        self.clock = clock
        self.metrics = metrics
        self.kv = BlockPool(profile.kv_cache.num_blocks, profile.kv_cache.block_size)
        self.scheduler = Scheduler(profile.scheduler, self.kv)
        self.steps = 0
        #: Most requests ever present at once (running + waiting), overall and per tenant.
        self.peak_requests = 0
        self.peak_requests_by_tenant: dict[str, int] = {}
        self._present: Counter[str | None] = Counter()
        self._history: OrderedDict[str, Sequence] = OrderedDict()
        self._history_size = history_size
        self._ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._idle = True
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"engine:{self.profile.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(
        self,
        request_id: str,
        prompt_tokens: int,
        target_output: int,
        stop_reason: str,
        tenant: str | None = None,
    ) -> Sequence:
        """Queue a request; its tokens arrive on the returned sequence's outbox.

        ``tenant`` (the gateway's ``X-Fairgate-Tenant`` header) only labels the request, so
        that tests can see how many requests of each tenant the engine held at once.
        """
        if self._idle:
            # Anchor the clock at this arrival, so that the time the engine task takes to
            # wake up is not counted (times time_scale) as simulated time.
            arrival = self.clock.wake()
            self._idle = False
        else:
            arrival = self.clock.now()
        seq_id = (
            request_id if request_id not in self._history else f"{request_id}-{next(self._ids)}"
        )
        seq = Sequence(
            seq_id=seq_id,
            prompt_tokens=prompt_tokens,
            target_output=target_output,
            stop_reason=stop_reason,
            arrival=arrival,
            tenant=tenant,
        )
        self._arrived(seq)
        self._remember(seq)
        self.scheduler.add(seq)
        self._publish_load()
        self._wakeup.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """Stop a request (its client went away) and free its KV blocks at once."""
        if self.scheduler.abort(seq):
            seq.finished = self.clock.now()
            self.metrics.observe_end(seq, seq.finished)
            seq.outbox.put_nowait(None)
            self._left(seq)
            self._publish_load()

    def lookup(self, seq_id: str) -> Sequence | None:
        """A request by the id it was sent with or, failing that, by the client's id that
        fairgate keeps as its prefix (``<client id>.<unique suffix>``); the latest such."""
        found = self._history.get(seq_id)
        if found is None:
            prefix = seq_id + "."
            found = next(
                (s for k, s in reversed(self._history.items()) if k.startswith(prefix)), None
            )
        return found

    def state(self) -> dict[str, object]:
        """A snapshot for the debug endpoint and tests."""
        return {
            "sim_time": self.clock.now(),
            "steps": self.steps,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_used_blocks": self.kv.used_blocks,
            "kv_total_blocks": self.kv.num_blocks,
            "kv_usage": self.kv.usage,
            "peak_requests": self.peak_requests,
            "peak_requests_by_tenant": dict(self.peak_requests_by_tenant),
        }

    def _arrived(self, seq: Sequence) -> None:
        """Count a request in; it stays present (running or waiting) until it ends."""
        self._present[seq.tenant] += 1
        self.peak_requests = max(self.peak_requests, self._present.total())
        if seq.tenant is not None:
            peak = self.peak_requests_by_tenant.get(seq.tenant, 0)
            self.peak_requests_by_tenant[seq.tenant] = max(peak, self._present[seq.tenant])

    def _left(self, seq: Sequence) -> None:
        self._present[seq.tenant] -= 1

    def _remember(self, seq: Sequence) -> None:
        self._history[seq.seq_id] = seq
        while len(self._history) > self._history_size:
            oldest_id, oldest = next(iter(self._history.items()))
            if not oldest.done:
                break
            del self._history[oldest_id]

    def _publish_load(self) -> None:
        self.metrics.set_load(
            len(self.scheduler.running), len(self.scheduler.waiting), self.kv.usage
        )

    async def _run(self) -> None:
        while True:
            plan = self.scheduler.schedule(self.clock.next_step_start)
            if plan is None:
                self._idle = True
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if plan.preempted:
                self.metrics.preemptions.inc(len(plan.preempted))
            self._publish_load()
            duration = self.profile.step_time.seconds(
                plan.prefill_tokens, plan.decode_tokens, plan.context_tokens
            )
            end = await self.clock.run_step(duration)
            self.steps += 1
            for seq in self.scheduler.complete(plan, end):
                self._deliver(seq, end)
            self._publish_load()

    def _deliver(self, seq: Sequence, now: float) -> None:
        self.metrics.observe_token(seq)
        seq.outbox.put_nowait(seq.output_tokens)
        if seq.done:
            self.metrics.observe_end(seq, now)
            seq.outbox.put_nowait(None)
            self._left(seq)
