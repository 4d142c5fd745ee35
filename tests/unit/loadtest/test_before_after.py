"""loadtest/proxy_overhead/before_after.py: fairgate at a baseline revision next to fairgate
now, without and with quotas, from synthetic results (and the report with and without it)."""

from __future__ import annotations

import pytest

from loadtest.proxy_overhead import rendering
from loadtest.proxy_overhead.before_after import before_after, before_after_section
from loadtest.proxy_overhead.measurement import Cell, Result, Run, Samples
from loadtest.proxy_overhead.rendering import render_section
from loadtest.proxy_overhead.workload import BASELINE, MODES

CONCURRENCIES = [1, 16]
#: Per path: its requests' whole-response latency (ms) and the CPU ms per request of the
#: gateway and its Redis; every cell serves 100 requests in 1 s, the baseline 200.
LATENCY_MS = {
    "direct": 1.0,
    "forwarder": 1.5,
    "fairgate": 1.6,
    "quotas": 1.75,
    "fairgate+traces": 2.0,
    "fairgate×2": 1.6,
    BASELINE: 1.5,
}
CPU_MS = {"fairgate": 0.4, "quotas": 0.5, BASELINE: 0.25}


def synthetic_results(modes: tuple[str, ...]) -> dict[Cell, Result]:
    results = {}
    for stream in (False, True):
        for c in CONCURRENCIES:
            for mode in modes:
                requests = 200 if mode == BASELINE else 100
                latency = LATENCY_MS[mode] / 1e3
                cpu = CPU_MS.get(mode, 0.1) / 1e3 * requests
                samples = Samples(
                    ttfb=[latency / 2] * requests,
                    total=[latency] * requests,
                    elapsed=1.0,
                    cpu={} if mode == "direct" else {mode: cpu * 0.8, "redis": cpu * 0.2},
                )
                cell = Cell(mode, stream, c)
                results[cell] = Result(cell, samples)
    return results


def synthetic_run(baseline: str | None) -> Run:
    modes = MODES + ((BASELINE,) if baseline else ())
    return Run(
        synthetic_results(modes),
        CONCURRENCIES,
        2.0,
        1.0,
        "uvloop.Loop",
        {},
        0.5,
        "commit 0000000",
        2,
        60.0,
        baseline,
    )


def test_before_now_and_after_with_their_ratios() -> None:
    rows = before_after(synthetic_results(MODES + (BASELINE,)), CONCURRENCIES)
    assert [(row.stream, row.concurrency) for row in rows] == [
        (False, 1),
        (False, 16),
        (True, 1),
        (True, 16),
    ]
    row = rows[0]
    assert row.rps == (200, 100, 100)
    assert [round(a * 1e3, 6) for a in row.added_p50] == [0.5, 0.6, 0.75]
    assert row.throughput_ratio == 0.5
    assert row.latency_ratio is not None and round(row.latency_ratio, 6) == 1.5
    assert round(row.cpu_ratio, 6) == 2.0


def test_the_table_shows_each_figure_and_the_ratio_after_over_before() -> None:
    section = before_after_section(synthetic_results(MODES + (BASELINE,)), CONCURRENCIES, "3fa4aae")
    lines = section.splitlines()
    assert "req/s at `3fa4aae`" in lines[0] and "added p50 now, quotas" in lines[0]
    assert lines[2] == (
        "| non-streaming | 1 | 200 | 100 | 100 | 0.50× | +0.50 ms | +0.60 ms | +0.75 ms | 1.50× "
        "| 250 µs / 400 µs / 500 µs (2.00×) |"
    )
    assert sum(line.startswith("| streaming | ") for line in lines) == 2
    assert "serves 0.50× to 0.50× the requests/s of fairgate at `3fa4aae`" in section
    assert "it adds 0.75 ms at p50, 0.60 ms without quotas, where `3fa4aae` added 0.50 ms" in (
        section
    )


def test_the_report_gains_the_baseline_only_when_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rendering, "machine", lambda: "this machine")  # no uname process
    with_baseline = render_section(synthetic_run("3fa4aae"), ["--baseline", "3fa4aae"])
    assert "Before and after (issue 14" in with_baseline
    assert "| Target | fairgate at `3fa4aae` | fairgate | fairgate, quotas |" in with_baseline
    assert "| 16 | fairgate at `3fa4aae` | 200 |" in with_baseline  # a row of the cell tables
    plain = render_section(synthetic_run(None), [])
    assert "3fa4aae" not in plain and "Before and after" not in plain
    assert "| Target | fairgate | fairgate, quotas |" in plain
