"""A scenario's report: JSON results, a Markdown section (for BENCHMARKS.md) and PNG plots.

The Markdown section names itself ``loadtest-<scenario>`` and is written through
:func:`loadtest.report.write_section`, so each scenario's figures can be refreshed alone.
Latencies are shown in simulated time (see :mod:`loadtest.kit.scenario`).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from loadtest.kit.plots import queue_plot, service_plot, ttft_plot
from loadtest.kit.runner import ScenarioResult
from loadtest.kit.targets import evaluate
from loadtest.report import machine, markdown_table, revision, write_section


def write_json(result: ScenarioResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "scenario": result.scenario.model_dump(mode="json", exclude={"short"}),
        "capacity_rps": result.capacity_rps,
        "wall_s": round(result.wall_s, 1),
        "machine": machine(),
        "revision": revision(),
        "targets": [c.__dict__ for c in evaluate(result.scenario.targets, result.runs)],
        "runs": result.runs,
    }
    path.write_text(json.dumps(_rounded(payload), default=str), encoding="utf-8")


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals (tenths of a millisecond), so result files stay small."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def write_plots(result: ScenarioResult, out_dir: Path) -> list[Path]:
    """The three PNGs of a scenario; returns their paths."""
    scenario = result.scenario
    paths = [out_dir / f"{scenario.name}-{kind}.png" for kind in ("ttft", "service", "queue")]
    weights = {t: spec.weight for t, spec in scenario.tenants.items()}
    ttft_plot(scenario.title, result.runs, paths[0])
    service_plot(scenario.title, result.runs, weights, paths[1])
    queue_plot(scenario.title, result.runs, paths[2])
    return paths


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def render(result: ScenarioResult, plots: list[Path], relative_to: Path, command: str) -> str:
    """The Markdown section of one scenario."""
    scenario = result.scenario
    tenant_rows = [
        [
            run["label"], t["tenant"], str(t["sent"]), str(t["ok"]), str(t["rejected"]),
            str(t["failed"] + t["cancelled"]), _ms(t["ttft_p50"]), _ms(t["ttft_p99"]),
            _ms(t["itl_p99"]), _ms(t["e2e_p99"]), f"{t['completed_rps']:.2f}",
        ]
        for run in result.runs
        for t in run["tenants"].values()
    ]  # fmt: skip
    tenants = markdown_table(
        ["run", "tenant", "sent", "ok", "429", "other", "TTFT p50", "TTFT p99", "ITL p99",
         "e2e p99", "done/s"],
        "llrrrrrrrrr",
        tenant_rows,
    )  # fmt: skip
    checks = evaluate(scenario.targets, result.runs)
    target_table = markdown_table(
        ["target", "run", "figure", "verdict"],
        "llll",
        [[c.target, c.run, c.figure, c.verdict] for c in checks],
    )
    images = "\n".join(f"![{p.stem}]({os.path.relpath(p, relative_to.parent)})" for p in plots)
    capacity = (
        f" Capacity of the shared pool for this mix: {result.capacity_rps:.2f} requests per "
        "simulated second (closed form, `loadtest/kit/capacity.py`)."
        if result.capacity_rps
        else ""
    )
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    modes = ", ".join(f"`{m}`" for m in scenario.modes)
    first_paragraph = scenario.description.strip().split("\n\n")[0] if scenario.description else ""
    return f"""## Load test: {scenario.title}

{first_paragraph}Scenario `{scenario.name}` (seed {scenario.seed}), {scenario.duration_s:g}
simulated seconds of arrivals, modes {modes}, engine simulator at time scale
{scenario.time_scale:g}.{capacity} Latencies are in simulated time (client wall time x time
scale); "plain" requests (not streamed) count their whole answer as TTFT.

{tenants}

{target_table}

{images}

Reproduce with `{command}` (`make bench` runs the short versions of all scenarios).
Machine: {machine()}; {revision()}; run on {today}, {result.wall_s:.0f} s of wall time."""


def write_reports(
    result: ScenarioResult, out_dir: Path, benchmarks: Path | None, command: str
) -> str:
    """JSON and PNGs into ``out_dir``; the Markdown section into ``benchmarks`` if given."""
    write_json(result, out_dir / f"{result.scenario.name}.json")
    plots = write_plots(result, out_dir)
    report = out_dir / f"{result.scenario.name}.md"
    # image links are relative to the file they are written into
    report.write_text(render(result, plots, report, command) + "\n", encoding="utf-8")
    section = render(result, plots, benchmarks or report, command)
    if benchmarks is not None:
        write_section(benchmarks, f"loadtest-{result.scenario.name}", section)
    return section
