"""Simulated time for the engine simulator.

While the engine is busy, simulated time advances by exactly the modelled step durations, no
matter how long Python takes to compute a step; so what is measured on this clock (TTFT, queue
time, throughput) is what the profile predicts, on any machine. While the engine is idle, the
clock follows the wall clock times ``time_scale``, so arrivals keep their real spacing.

The wall clock is paced to the simulated one: a step of ``d`` simulated seconds takes
``d / time_scale`` wall seconds, so clients see tokens arrive at the simulated rate (faster than
real time for ``time_scale > 1``, which is how tests run quickly).
"""

from __future__ import annotations

import asyncio
import time

#: A step that overruns its wall deadline by more than this resets the pacing instead of
#: sending the following steps at once to catch up.
_MAX_LAG_S = 0.05


class SimClock:
    """Engine time in simulated seconds since the simulator started."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._sim = 0.0  # simulated time at the anchor
        self._wall = time.monotonic()  # wall time at the anchor
        self._step_end: float | None = None  # while a step runs, the simulated time it ends

    def now(self) -> float:
        """The current simulated time. Inside a step it never passes the step's end."""
        current = self._sim + (time.monotonic() - self._wall) * self.time_scale
        return current if self._step_end is None else min(current, self._step_end)

    @property
    def next_step_start(self) -> float:
        """When the next step begins: the end of the last one, or the arrival that woke us."""
        return self._sim

    def wake(self) -> float:
        """Re-anchor at the present after an idle period; returns the simulated time of now.

        The next step starts exactly then: no simulated time is lost or added while the
        engine's task is being scheduled by the event loop.
        """
        self._sim = self.now()
        self._wall = time.monotonic()
        return self._sim

    async def run_step(self, duration: float) -> float:
        """Spend ``duration`` simulated seconds; returns the simulated time the step ended."""
        end = self._sim + duration
        wall_deadline = self._wall + duration / self.time_scale
        self._step_end = end
        delay = wall_deadline - time.monotonic()
        await asyncio.sleep(delay if delay > 0 else 0)
        lag = time.monotonic() - wall_deadline
        self._sim, self._wall = end, wall_deadline if lag < _MAX_LAG_S else time.monotonic()
        self._step_end = None
        return end
