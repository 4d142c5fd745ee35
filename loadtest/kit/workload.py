"""Drive one run: every tenant's arrivals against its endpoints, with a progress bar.

A run has two phases on the simulated clock: arrivals until ``duration_s`` (open-loop
schedules are replayed, closed-loop clients keep sending), then up to ``drain_s`` for the
requests still in flight; whatever is left after that is cancelled and recorded as such.
The queue sampler runs alongside throughout.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm

from fairgate.keys import AdmissionKeys
from loadtest.kit.arrivals import closed_loop_plans, schedule
from loadtest.kit.client import Record, Timebase, send
from loadtest.kit.sampler import sample_queues
from loadtest.kit.scenario import Closed, Scenario
from loadtest.kit.shapes import RequestPlan, draw_plan


@dataclass
class Endpoints:
    """Where a run sends each tenant's requests (round robin over its URLs), what it samples."""

    urls: dict[str, list[str]]
    engines: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    queued_key: str = AdmissionKeys.of("fairgate").queued


@dataclass
class RunResult:
    """The raw outcome of one run: a mode (at one load factor) of one scenario."""

    label: str
    mode: str
    factor: float | None
    rates: dict[str, float]
    records: list[Record]
    samples: list[dict[str, object]]
    wall_s: float


async def drive(
    scenario: Scenario,
    endpoints: Endpoints,
    label: str,
    rates: dict[str, float] | None = None,
    progress: bool = True,
) -> tuple[list[Record], list[dict[str, object]]]:
    """Run the scenario's tenants in ``endpoints.urls`` and return (records, queue samples)."""
    clock = Timebase(scenario.time_scale)
    records: list[Record] = []
    samples: list[dict[str, object]] = []
    in_flight: set[asyncio.Task[Record]] = set()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        cycles = {tenant: itertools.cycle(urls) for tenant, urls in endpoints.urls.items()}

        def start(plan: RequestPlan) -> asyncio.Task[Record]:
            url = next(cycles[plan.tenant])
            task = asyncio.create_task(
                send(http, url, scenario.key(plan.tenant), plan, scenario.model, clock, records)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            return task

        async def open_loop(tenant: str) -> None:
            for at, plan in schedule(scenario, tenant, (rates or {}).get(tenant)):
                await asyncio.sleep(max(0.0, clock.wall_delay(at)))
                start(plan)

        async def closed_client(tenant: str, index: int) -> None:
            spec = scenario.tenants[tenant]
            assert isinstance(spec.arrival, Closed)
            rng = closed_loop_plans(scenario, tenant, index)
            await asyncio.sleep(max(0.0, clock.wall_delay(spec.start_s)))
            while clock.now() < scenario.stop_of(tenant):
                await start(draw_plan(tenant, spec.shapes, rng))
                await asyncio.sleep(spec.arrival.think_s / scenario.time_scale)

        drivers = []
        for tenant in endpoints.urls:
            arrival = scenario.tenants[tenant].arrival
            if isinstance(arrival, Closed):
                drivers += [closed_client(tenant, i) for i in range(arrival.concurrency)]
            else:
                drivers.append(open_loop(tenant))
        tasks = [asyncio.create_task(d) for d in drivers]
        sampler = asyncio.create_task(
            sample_queues(
                clock,
                scenario.sample_interval_s,
                endpoints.engines,
                endpoints.redis_url,
                endpoints.queued_key,
                samples,
            )
        )
        bar = _Progress(scenario, label, clock, records, in_flight, enabled=progress)
        try:
            end = scenario.duration_s + scenario.drain_s
            if tasks:
                await asyncio.wait(tasks, timeout=max(0.0, clock.wall_delay(end)))
            while in_flight and clock.now() < end:
                await asyncio.wait(set(in_flight), timeout=max(0.0, clock.wall_delay(end)))
        finally:
            for task in [*tasks, *in_flight, sampler]:
                task.cancel()
            await asyncio.gather(*tasks, *in_flight, sampler, return_exceptions=True)
            bar.close()
    return records, samples


class _Progress:
    """A tqdm bar over simulated seconds, with requests done / failed / in flight."""

    def __init__(
        self,
        scenario: Scenario,
        label: str,
        clock: Timebase,
        records: list[Record],
        in_flight: set[asyncio.Task[Record]],
        enabled: bool,
    ) -> None:
        self._bar = tqdm(
            total=round(scenario.duration_s),
            desc=f"{scenario.name} {label}",
            unit="sim s",
            file=sys.stderr,
            disable=not enabled,
            leave=True,
            dynamic_ncols=True,
        )
        self._clock, self._records, self._in_flight = clock, records, in_flight
        self._duration = scenario.duration_s
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(0.5)

    def update(self) -> None:
        done = sum(1 for r in self._records if r.end is not None)
        failed = sum(1 for r in self._records if r.end is not None and not r.ok)
        self._bar.n = min(round(self._duration), int(self._clock.now()))
        self._bar.set_postfix(done=done, failed=failed, in_flight=len(self._in_flight))

    def close(self) -> None:
        self._task.cancel()
        self.update()
        self._bar.close()
