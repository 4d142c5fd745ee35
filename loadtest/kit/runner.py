"""Run a scenario in each of its modes (and at each load factor) and summarize every run.

Runs go one after the other, never at once: they share the machine's two cores, and a run's
figures should not depend on another's load. Each run's summary keeps what the report and the
plots need: per-tenant statistics, fairness per measurement window, throughput, cumulative
service over time, queue depth samples, and the TTFT of every completed request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.kit.arrivals import open_loop_rates
from loadtest.kit.capacity import capacity_rps, engine_work
from loadtest.kit.client import Record
from loadtest.kit.entitlement import capped, owed_weights
from loadtest.kit.metrics import (
    cumulative_service,
    fairness,
    request_service,
    tenant_stats,
)
from loadtest.kit.modes import Mode
from loadtest.kit.scenario import Scenario
from loadtest.kit.stack import running
from loadtest.kit.workload import Endpoints, RunResult, drive
from loadtest.stats import percentile_or_none


@dataclass
class ScenarioResult:
    """Every run of one scenario, summarized, plus how long it all took."""

    scenario: Scenario
    capacity_rps: float | None
    runs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def run(self, label: str) -> dict[str, Any] | None:
        return next((r for r in self.runs if r["label"] == label), None)


def run_scenario(
    scenario: Scenario,
    workdir: Path,
    modes: list[Mode] | None = None,
    target_url: str | None = None,
    progress: bool = True,
) -> ScenarioResult:
    """Run every mode (or only ``modes``) at every load factor; or once against ``target_url``.

    With ``target_url`` the kit starts nothing and sends every tenant there (fairgate or an
    engine you run); the tenants' ``api_key`` must then be keys that the target knows.
    """
    started = time.monotonic()
    capacity = capacity_rps(scenario) if scenario.load else None
    factors: list[float | None] = list(scenario.load.factors) if scenario.load else [None]
    result = ScenarioResult(scenario, capacity)
    for factor in factors:
        rates = open_loop_rates(scenario, factor, capacity)
        if target_url is not None:
            endpoints = Endpoints({t: [target_url.rstrip("/")] for t in scenario.tenants})
            raw = _drive(
                scenario, endpoints, _label("target", factor), "target", factor, rates, progress
            )
            result.runs.append(summarize(scenario, raw))
            continue
        for mode in modes or scenario.modes:
            with running(scenario, mode, workdir / scenario.name) as endpoints:
                label = _label(mode.name, factor)
                raw = _drive(scenario, endpoints, label, mode.name, factor, rates, progress)
            result.runs.append(summarize(scenario, raw))
    result.wall_s = time.monotonic() - started
    return result


def _label(mode: str, factor: float | None) -> str:
    return mode if factor is None else f"{mode} {factor:g}x"


def _drive(
    scenario: Scenario,
    endpoints: Endpoints,
    label: str,
    mode: str,
    factor: float | None,
    rates: dict[str, float],
    progress: bool,
) -> RunResult:
    started = time.monotonic()
    records, samples = _run_async(drive(scenario, endpoints, label, rates, progress))
    return RunResult(label, mode, factor, rates, records, samples, time.monotonic() - started)


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


#: A request sent this close to a window's end (simulated seconds) is not demand in it: a burst
#: scheduled exactly at the end may fire a hair early (timers run to the loop's resolution).
WINDOW_EDGE_S = 0.05


def active_tenants(
    records: list[Record], tenants: list[str], window: tuple[float, float]
) -> list[str]:
    """The tenants with demand in ``window`` (a request sent before its end and not finished
    before its start): the ones fairness is owed to there."""
    start, end = window
    last = end - WINDOW_EDGE_S
    return [
        t
        for t in tenants
        if any(
            r.tenant == t and r.sent < last and (r.end is None or r.end > start) for r in records
        )
    ]


def summarize(scenario: Scenario, run: RunResult) -> dict[str, Any]:
    """What the report and the plots need of one run (JSON-ready)."""
    tenants = sorted({r.tenant for r in run.records}, key=list(scenario.tenants).index)
    step = scenario.sample_interval_s
    windows = {}
    for name, window in scenario.measurement_windows().items():
        weights = owed_weights(scenario, active_tenants(run.records, tenants, window))
        if len(weights) >= 2:
            windows[name] = fairness(run.records, weights, window, scenario.service, step).__dict__
    end = scenario.duration_s + scenario.drain_s
    grid = [i * step for i in range(int(end / step) + 1)]
    ok = [r for r in run.records if r.ok]
    done = [r for r in ok if r.end is not None and r.end <= scenario.duration_s]
    return {
        "label": run.label,
        "mode": run.mode,
        "factor": run.factor,
        "rates": run.rates,
        "wall_s": round(run.wall_s, 2),
        "tenants": {
            t: tenant_stats(t, run.records, scenario.duration_s).to_json() for t in tenants
        },
        "windows": windows,
        "completed_rps": len(done) / scenario.duration_s,
        "tokens_per_s": sum(r.prompt_tokens + r.output_tokens for r in done) / scenario.duration_s,
        "engine_work_per_s": engine_work(
            scenario, [(r.prompt_tokens, r.output_tokens) for r in done]
        )
        / scenario.duration_s,
        "service_series": {
            "t": grid,
            "by_tenant": cumulative_service(run.records, tenants, grid, scenario.service),
        },
        "queue_samples": run.samples,
        "ttft": {t: [r.ttft for r in ok if r.tenant == t and r.ttft is not None] for t in tenants},
        "pools": _pools_seen(run.records),
        "shared_pool": _shared_pool_latency(scenario, run.records),
        "max_request_service": max(
            (request_service(r, scenario.service) for r in run.records), default=0.0
        ),
        "rejections": _rejections(scenario, run.records),
        "queue_timeouts": {t: scenario.tenants[t].queue_timeout_s for t in tenants},
        "quota_limits": {
            t: {
                kind: limit
                for kind in ("requests", "tokens")
                if (limit := scenario.tenants[t].quota_per_minute(kind)) is not None
            }
            for t in tenants
            if capped(scenario, t)
        },
        "quota_use": {
            name: {t: quota_use(run.records, t, window) for t in tenants if capped(scenario, t)}
            for name, window in scenario.measurement_windows().items()
        },
    }


def quota_use(records: list[Record], tenant: str, window: tuple[float, float]) -> dict[str, float]:
    """Requests and tokens (prompt + completion, as quotas count them) per simulated minute of
    ``tenant``'s requests that were sent in ``window`` and served: what its quotas let through.
    """
    start, end = window
    mine = [r for r in records if r.tenant == tenant and r.ok and start <= r.sent < end]
    minutes = (end - start) / 60.0
    return {
        "requests_per_minute": len(mine) / minutes,
        "tokens_per_minute": sum(r.prompt_tokens + r.output_tokens for r in mine) / minutes,
    }


def _shared_pool_latency(scenario: Scenario, records: list[Record]) -> dict[str, Any]:
    """TTFT and inter-token latency of the shared pool's tenants, pooled (the chat tenants)."""
    mine = [r for r in records if r.ok and scenario.pool_of(r.tenant) == scenario.shared_pool]
    ttft = [r.ttft for r in mine if r.ttft is not None and r.stream]
    itl = [gap for r in mine for gap in r.itl]
    return {
        "tenants": sorted({r.tenant for r in mine}),
        "requests": len(mine),
        "ttft_p50": percentile_or_none(ttft, 50),
        "ttft_p99": percentile_or_none(ttft, 99),
        "itl_p50": percentile_or_none(itl, 50),
        "itl_p99": percentile_or_none(itl, 99),
    }


def _rejections(scenario: Scenario, records: list[Record]) -> dict[str, int]:
    """429s, and how many came early: before half of the tenant's queue timeout."""
    rejected = [r for r in records if r.status == 429]
    early = [
        r
        for r in rejected
        if r.e2e is not None and r.e2e < 0.5 * scenario.tenants[r.tenant].queue_timeout_s
    ]
    return {"total": len(rejected), "early": len(early)}


def _pools_seen(records: list[Record]) -> dict[str, dict[str, int]]:
    """Which pool served each tenant's requests (from ``X-Fairgate-Pool``; gateway modes)."""
    seen: dict[str, dict[str, int]] = {}
    for record in records:
        if record.pool:
            counts = seen.setdefault(record.tenant, {})
            counts[record.pool] = counts.get(record.pool, 0) + 1
    return seen
