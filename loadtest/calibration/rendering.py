"""The rendering of the simulator's calibration: its BENCHMARKS.md section, from a
:class:`~loadtest.calibration.measurement.Calibration`.

The "published" column quotes the sources the profile is fitted to (constants in
:mod:`~loadtest.calibration.measurement`); every other figure is computed by the run.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from loadtest.calibration.measurement import Calibration, Figure, HttpCheck, Kind
from loadtest.calibration.workload import (
    DECODE_OUTPUT_TOKENS,
    DECODE_PROMPT_TOKENS,
    HTTP_TIME_SCALE,
)
from loadtest.report import machine, markdown_table
from loadtest.simulator.profile import DEFAULT_PROFILE

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "calibration"

#: How each kind of figure is shown: its SI value times a scale, in a template.
UNITS: dict[Kind, tuple[float, str]] = {
    "seconds": (1e3, "{:,.2f} ms"),
    "tokens/s": (1.0, "{:,.0f} tok/s"),
    "ratio": (1.0, "{:,.1f}×"),
}


def show(value: float, kind: Kind) -> str:
    scale, template = UNITS[kind]
    return template.format(value * scale)


def percent(error: float) -> str:
    """A signed percentage; rounding noise shows as +0.00%, not -0.00%."""
    return f"{round(error, 4) + 0.0:+.2%}"


def figures_table(figures: list[Figure]) -> str:
    """The calibration table: simulator, model, their difference, and the published figure."""
    return markdown_table(
        ["Figure", "Simulator", "Expected (model)", "Error", "Published reference"],
        "lrrrl",
        [[f.name, show(f.measured, f.kind), show(f.expected, f.kind), percent(f.error),
          f.published] for f in figures],
    )  # fmt: skip


def http_table(checks: list[HttpCheck]) -> str:
    """The HTTP check: each server TTFT next to the virtual one for the same prompt."""
    rows = [
        [f"{c.prompt_tokens:,}", show(c.virtual, "seconds"), show(c.http, "seconds"),
         percent(c.difference)]
        for c in checks
    ]  # fmt: skip
    return markdown_table(
        ["Prompt tokens", "Virtual TTFT", "HTTP TTFT (simulated)", "Difference"], "rrrr", rows
    )


def agreement(run: Calibration) -> str:
    """How far the model and the HTTP server were from the virtual runs, in this run."""
    largest_error = max(abs(f.error) for f in run.figures)
    largest_http = max(abs(c.difference) for c in run.http)
    return (
        f"Here the virtual figures differ from the model by at most {largest_error:.2%} and the "
        f"HTTP TTFTs from the virtual ones by at most {largest_http:.2%}."
    )


def reproduce_command(profile: str | Path) -> str:
    """The command that regenerates the section: ``make bench`` unless another profile was used."""
    if str(profile) == DEFAULT_PROFILE:
        return "make bench"
    return f"python -m loadtest.calibration --profile {profile} --write BENCHMARKS.md"


def render_section(run: Calibration) -> str:
    """The BENCHMARKS.md section (without its delimiters)."""
    profile, source = run.profile, run.profile_source
    step, limits = profile.step_time, profile.scheduler
    model = (
        f"{step.base_ms:g} ms + {step.prefill_us_per_token:g} µs per prefill token + "
        f"{step.decode_us_per_token:g} µs per decode token, prefill in chunks of "
        f"{limits.max_num_batched_tokens:,} tokens"
    )
    if step.context_us_per_token:
        model += (
            f"; the profile's context term ({step.context_us_per_token:g} µs per resident token)"
            " is not in the published model, so it shows as error"
        )
    sources = "\n".join(f"- {source}" for source in profile.sources)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return f"""## Simulator calibration: `{profile.name}`

The engine simulator (profile `{source}`) next to the step-time model it is fitted
to, evaluated in closed form ({model}), and the published figures.

{figures_table(run.figures)}

Decode rows: {DECODE_PROMPT_TOKENS}-token prompts with {DECODE_OUTPUT_TOKENS:,} output tokens \
each, all arriving together, measured from the first token to the last.

End to end over HTTP: the real aiohttp server at time scale {HTTP_TIME_SCALE:g}, one
`/v1/completions` request at a time (`max_tokens: 1`, `ignore_eos: true`), each request's
timeline read back from `GET /sim/requests/{{id}}`.

{http_table(run.http)}

Sources of the profile:
{sources}

Reproduce with `{reproduce_command(source)}`.
Machine: {machine()}; run on {today}, {run.elapsed:.1f} s of wall time in all.

All figures are in simulated time, so they do not depend on this machine's speed. The virtual
runs drive the simulator's own scheduler and KV pool and add up the modelled step durations
without sleeping, and the HTTP server's clock also advances by exactly the modelled duration of
each step however long Python takes to compute it: the server's clock anchors on a request that
arrives at an idle engine, then advances by exactly the modelled steps. {agreement(run)}"""
