"""When each tenant's requests arrive: open-loop schedules and closed-loop clients.

Open-loop processes (Poisson, bursts) are precomputed as a schedule of simulated times, so a
scenario's arrivals are identical in every mode whatever the system under test does. Closed
loops cannot be precomputed (the next request waits for the previous answer), but each client
draws its shapes from its own seeded stream, so the sequence of requests per client is fixed.
"""

from __future__ import annotations

import random

from loadtest.kit.scenario import Bursts, Closed, Poisson, Scenario
from loadtest.kit.shapes import RequestPlan, draw_plan


def rng_for(scenario: Scenario, *parts: object) -> random.Random:
    """A random stream named by the scenario's seed and ``parts`` (stable across runs)."""
    return random.Random(":".join(str(p) for p in (scenario.seed, *parts)))


def poisson_times(rate: float, start: float, stop: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second in [start, stop)."""
    times: list[float] = []
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= stop:
            return times
        times.append(t)


def burst_times(bursts: Bursts, start: float, stop: float) -> list[float]:
    """``size`` arrivals at each burst time, evenly over its ``spread_s``."""
    step = bursts.spread_s / bursts.size
    return [at + i * step for at in bursts.at if start <= at < stop for i in range(bursts.size)]


def zipf_shares(count: int, exponent: float) -> list[float]:
    """Shares of ranks 1..count proportional to 1 / rank^exponent (they sum to 1)."""
    raw = [1.0 / (rank**exponent) for rank in range(1, count + 1)]
    return [r / sum(raw) for r in raw]


def open_loop_rates(scenario: Scenario, factor: float | None, capacity_rps: float | None) -> dict:
    """Each Poisson tenant's rate: its own, or its Zipf share of ``factor x capacity``."""
    poisson = [n for n, t in scenario.tenants.items() if isinstance(t.arrival, Poisson)]
    if factor is None or capacity_rps is None or scenario.load is None:
        return {n: scenario.tenants[n].arrival.rate for n in poisson}  # type: ignore[union-attr]
    shares = zipf_shares(len(poisson), scenario.load.zipf_exponent)
    return {n: factor * capacity_rps * s for n, s in zip(poisson, shares, strict=True)}


def schedule(
    scenario: Scenario, tenant: str, rate: float | None = None
) -> list[tuple[float, RequestPlan]]:
    """The open-loop arrivals of ``tenant``: (simulated time, request), in time order."""
    spec = scenario.tenants[tenant]
    start, stop = spec.start_s, scenario.stop_of(tenant)
    arrival = spec.arrival
    if isinstance(arrival, Poisson):
        times = poisson_times(rate or arrival.rate or 0.0, start, stop, rng_for(scenario, tenant))
    elif isinstance(arrival, Bursts):
        times = burst_times(arrival, start, stop)
    else:
        raise ValueError(f"tenant {tenant} is closed-loop: it has no schedule")
    shapes = rng_for(scenario, tenant, "shapes")
    return [(t, draw_plan(tenant, spec.shapes, shapes)) for t in times]


def closed_loop_plans(scenario: Scenario, tenant: str, client: int) -> random.Random:
    """The random stream from which closed-loop client ``client`` of ``tenant`` draws shapes."""
    assert isinstance(scenario.tenants[tenant].arrival, Closed)
    return rng_for(scenario, tenant, "client", client)
