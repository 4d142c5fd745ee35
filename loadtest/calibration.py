"""Calibration of the engine simulator: its figures next to the published ones it is fitted to.

``python -m loadtest.calibration [--profile PATH] [--write BENCHMARKS.md]`` (``make bench``)

Every figure is measured in simulated time. The scheduler and KV pool the HTTP simulator uses
are driven directly on a virtual clock (:func:`run_virtual`), so a 1,024-token decode that the
paced server would take seconds to play out is computed in milliseconds, and the result does
not depend on how fast this machine is. One end-to-end check then runs the real aiohttp server
and reads each request's simulated timeline back, to show that the paced server agrees.

The "expected" column is the published step-time model (base + prefill and decode terms)
evaluated in closed form, independently of the scheduler: a difference means the scheduler
batches differently from the model, or the profile has a context term, which the published
reference does not.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from estimators.tokenizer import default_tokenizer
from fairgate.serving import serve
from loadtest.report import machine, markdown_table, write_section
from loadtest.simulator.kv_cache import BlockPool
from loadtest.simulator.profile import EngineProfile, load_profile
from loadtest.simulator.scheduler import Scheduler
from loadtest.simulator.sequence import Sequence
from loadtest.simulator.server import create_app

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILE = REPO_ROOT / "config" / "sim" / "h100-llama3-8b.yaml"

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "calibration"

#: Prompts whose TTFT is measured alone: one short step, one prefill chunk, several chunks.
TTFT_PROMPTS = (100, 8_000, 28_000)
#: Decode batches: 64 x 128-token prompts fill exactly one 8,192-token step, so all decode in step.
DECODE_BATCHES = (1, 64)
DECODE_PROMPT_TOKENS = 128
DECODE_OUTPUT_TOKENS = 1_024
#: Head-of-line blocking: a short prompt arriving just after a long one.
HOL_LONG_TOKENS = 28_000
HOL_SHORT_TOKENS = 100
HOL_DELAY_S = 0.001
#: Fast enough to keep the HTTP check short, slow enough for the paced steps to be meaningful.
HTTP_TIME_SCALE = 20.0
#: One cl100k token, so ``n`` repetitions are a prompt of exactly ``n`` tokens.
ONE_TOKEN_WORD = " hello"

#: What the published sources say (BLIS fit for llama-3.1-8b on H100 with vLLM 0.8.4).
PUBLISHED_TTFT = {
    100: "≈ 7.5 ms (5.75 ms + 100 × 17.25 µs)",
    8_000: "≈ 0.15 s (one chunk; 8,192 tokens ≈ 147 ms)",
    28_000: "≈ 0.5 s (4 chunks of ≤ 8,192)",
}
PUBLISHED_THROUGHPUT = {1: "≈ 170 tok/s", 64: "≈ 10,400 tok/s (64 / (5.75 ms + 64 × 6 µs))"}
PUBLISHED_ITL = "decode step 5.8-7.3 ms (batch 1-256)"
PUBLISHED_HOL = "waits for the whole long prefill (FCFS chunked prefill)"

#: (arrival time in simulated seconds, prompt tokens, output tokens)
Arrival = tuple[float, int, int]


# ------------------------------------------------------------------------ virtual engine


def run_virtual(profile: EngineProfile, arrivals: Iterable[Arrival]) -> list[Sequence]:
    """Run ``arrivals`` through the engine's scheduler on a virtual clock; sequences in input order.

    Simulated time is the sum of the step durations, with no sleeping, and jumps over idle gaps
    to the next arrival, so the timelines equal the paced server's without its wall-clock cost.
    A request joins the queue at the first step boundary at or after its arrival, as one that
    arrives mid-step does in the engine; its ``arrival`` stays the true arrival time, so the
    wait for the step in progress counts in its TTFT.
    """
    scheduler = Scheduler(
        profile.scheduler, BlockPool(profile.kv_cache.num_blocks, profile.kv_cache.block_size)
    )
    sequences = [
        Sequence(f"virtual-{index}", prompt, output, "length", arrival)
        for index, (arrival, prompt, output) in enumerate(arrivals)
    ]
    pending = deque(sorted(sequences, key=lambda seq: seq.arrival))
    step = profile.step_time
    now = 0.0
    while pending or scheduler.has_work():
        while pending and pending[0].arrival <= now:
            scheduler.add(pending.popleft())
        plan = scheduler.schedule(now)
        if plan is None:
            if not pending:
                raise RuntimeError(
                    "queued requests can never be scheduled (bigger than the KV cache?)"
                )
            now = pending[0].arrival
            continue
        now += step.seconds(plan.prefill_tokens, plan.decode_tokens, plan.context_tokens)
        scheduler.complete(plan, now)
    return sequences


def ttft(seq: Sequence) -> float:
    """Arrival to first token, in simulated seconds."""
    if seq.first_token is None:
        raise RuntimeError(f"{seq.seq_id} never produced a token")
    return seq.first_token - seq.arrival


def latency(seq: Sequence) -> float:
    """Arrival to last token, in simulated seconds."""
    if seq.finished is None:
        raise RuntimeError(f"{seq.seq_id} never finished")
    return seq.finished - seq.arrival


def ttft_alone(profile: EngineProfile, prompt_tokens: int) -> float:
    """TTFT on an idle engine: the pure prefill cost every other TTFT is compared with."""
    (seq,) = run_virtual(profile, [(0.0, prompt_tokens, 1)])
    return ttft(seq)


@dataclass(frozen=True)
class DecodeFigures:
    """The decode rate seen by the engine as a whole and by each request."""

    throughput: float  # output tokens per second, all sequences together
    itl: float  # seconds between two tokens of one sequence


def decode_figures(profile: EngineProfile, batch: int) -> DecodeFigures:
    """Throughput and inter-token latency of ``batch`` requests decoding together.

    Measured from the first token to the last, so the prefill step does not dilute the decode
    rate. That needs every sequence to get its first token in the same step (the batch's prompts
    fit one step's token budget); otherwise prefill and decode overlap and the figure would be
    neither, so it is refused.
    """
    sequences = run_virtual(profile, [(0.0, DECODE_PROMPT_TOKENS, DECODE_OUTPUT_TOKENS)] * batch)
    first_tokens = {ttft(seq) for seq in sequences}  # all arrived at 0: times since the start
    if len(first_tokens) != 1:
        raise ValueError(f"batch {batch} does not prefill in one step; lower DECODE_PROMPT_TOKENS")
    decode_time = max(latency(seq) for seq in sequences) - first_tokens.pop()
    decoded = sum(seq.output_tokens - 1 for seq in sequences)
    return DecodeFigures(
        throughput=decoded / decode_time, itl=decode_time / (DECODE_OUTPUT_TOKENS - 1)
    )


def hol_ttft(profile: EngineProfile) -> float:
    """TTFT of a short prompt that arrives just after a long one (FCFS head-of-line blocking)."""
    _, short = run_virtual(profile, [(0.0, HOL_LONG_TOKENS, 1), (HOL_DELAY_S, HOL_SHORT_TOKENS, 1)])
    return ttft(short)


# ------------------------------------------------------------------- the published model


def expected_prefill(profile: EngineProfile, tokens: int) -> float:
    """Prefill time of ``tokens`` prompt tokens packed into full steps of the token budget.

    Closed form of the step-time model (no context term, as published): every step but the last
    computes ``max_num_batched_tokens`` tokens. It is the TTFT of a prompt alone, and also of the
    last of several prompts queued back to back, which is what head-of-line blocking costs when
    the first prompt fills the first step. Assumes ``long_prefill_token_threshold`` is off.
    """
    budget = profile.scheduler.max_num_batched_tokens
    step = profile.step_time
    full, rest = divmod(tokens, budget)
    return full * step.seconds(budget, 0, 0) + (step.seconds(rest, 0, 0) if rest else 0.0)


def expected_decode_step(profile: EngineProfile, batch: int) -> float:
    """Duration of a decode-only step of ``batch`` sequences (no context term, as published)."""
    return profile.step_time.seconds(0, batch, 0)


# ------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Unit:
    """How a figure in SI units is shown."""

    scale: float
    template: str

    def show(self, value: float) -> str:
        return self.template.format(value * self.scale)


MS = Unit(1e3, "{:,.2f} ms")
TOKENS_PER_S = Unit(1.0, "{:,.0f} tok/s")
RATIO = Unit(1.0, "{:,.1f}×")


@dataclass(frozen=True)
class Figure:
    """One measured figure, what the model predicts, and what the sources publish."""

    name: str
    measured: float
    expected: float
    unit: Unit
    published: str

    @property
    def error(self) -> float:
        return self.measured / self.expected - 1


def calibration_figures(profile: EngineProfile) -> list[Figure]:
    """Every figure of the calibration table, measured on the virtual clock."""
    figures = [
        Figure(
            f"TTFT alone, {n:,}-token prompt",
            ttft_alone(profile, n),
            expected_prefill(profile, n),
            MS,
            PUBLISHED_TTFT.get(n, "—"),
        )
        for n in TTFT_PROMPTS
    ]
    for batch in DECODE_BATCHES:
        decode = decode_figures(profile, batch)
        step = expected_decode_step(profile, batch)
        figures += [
            Figure(
                f"Decode throughput, batch {batch}",
                decode.throughput,
                batch / step,
                TOKENS_PER_S,
                PUBLISHED_THROUGHPUT.get(batch, "—"),
            ),
            Figure(f"Inter-token latency, batch {batch}", decode.itl, step, MS, PUBLISHED_ITL),
        ]
    blocked, alone = hol_ttft(profile), ttft_alone(profile, HOL_SHORT_TOKENS)
    blocked_expected = expected_prefill(profile, HOL_LONG_TOKENS + HOL_SHORT_TOKENS) - HOL_DELAY_S
    alone_expected = expected_prefill(profile, HOL_SHORT_TOKENS)
    hol = (
        f"{HOL_SHORT_TOKENS}-token prompt {HOL_DELAY_S * 1e3:g} ms after {HOL_LONG_TOKENS:,} tokens"
    )
    figures += [
        Figure(f"TTFT, {hol}", blocked, blocked_expected, MS, PUBLISHED_HOL),
        Figure("Head-of-line slowdown (blocked / alone)", blocked / alone,
               blocked_expected / alone_expected, RATIO, "—"),
    ]  # fmt: skip
    return figures


# ------------------------------------------------------------------------ over HTTP


def exact_prompt(tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens, checked: a fallback tokenizer would skew the check."""
    text = ONE_TOKEN_WORD * tokens
    counted = default_tokenizer().count(text)
    if counted != tokens:
        raise RuntimeError(
            f"{ONE_TOKEN_WORD!r} x {tokens} is {counted} tokens; is tiktoken installed?"
        )
    return text


async def http_timings(
    profile: EngineProfile, prompt_sizes: Iterable[int], time_scale: float
) -> dict[int, float]:
    """Send one-token completions to the real server, one at a time; their simulated TTFTs.

    Requests go one after the other so that each finds the engine idle, like the virtual
    "alone" runs; the ``X-Request-Id`` header names the timeline to fetch.
    """
    prompts = {n: exact_prompt(n) for n in prompt_sizes}
    runner = await serve(create_app(profile, time_scale=time_scale), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession(f"http://{host}:{port}", raise_for_status=True) as http:
            return {
                n: await _one_token_timing(http, profile.model, n, prompt)
                for n, prompt in prompts.items()
            }
    finally:
        await runner.cleanup()


async def _one_token_timing(
    http: aiohttp.ClientSession, model: str, prompt_tokens: int, prompt: str
) -> float:
    """Complete ``prompt`` with one token, then read its TTFT from its simulated timeline."""
    request_id = f"calibration-{prompt_tokens}"
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "ignore_eos": True}
    async with http.post(
        "/v1/completions", json=body, headers={"X-Request-Id": request_id}
    ) as resp:
        await resp.read()
    async with http.get(f"/sim/requests/{request_id}") as resp:
        timeline = await resp.json()
    if timeline["prompt_tokens"] != prompt_tokens:
        raise RuntimeError(
            f"the server counted {timeline['prompt_tokens']} tokens, not {prompt_tokens}"
        )
    return timeline["ttft"]


# ----------------------------------------------------------------------------- report


def percent(error: float) -> str:
    """A signed percentage; rounding noise shows as +0.00%, not -0.00%."""
    return f"{round(error, 4) + 0.0:+.2%}"


def figures_table(figures: list[Figure]) -> str:
    """The calibration table: simulator, model, their difference, and the published figure."""
    return markdown_table(
        ["Figure", "Simulator", "Expected (model)", "Error", "Published reference"],
        "lrrrl",
        [[f.name, f.unit.show(f.measured), f.unit.show(f.expected), percent(f.error), f.published]
         for f in figures],
    )  # fmt: skip


def http_table(profile: EngineProfile, timings: dict[int, float]) -> str:
    """The HTTP check: each server TTFT next to the virtual one for the same prompt."""
    rows = []
    for n, measured in timings.items():
        virtual = ttft_alone(profile, n)
        rows.append(
            [f"{n:,}", MS.show(virtual), MS.show(measured), percent(measured / virtual - 1)]
        )
    return markdown_table(
        ["Prompt tokens", "Virtual TTFT", "HTTP TTFT (simulated)", "Difference"], "rrrr", rows
    )


def reproduce_command(profile_path: Path) -> str:
    """The command that regenerates the section: ``make bench`` unless another profile was used."""
    if profile_path.resolve() == DEFAULT_PROFILE:
        return "make bench"
    return f"python -m loadtest.calibration --profile {profile_path} --write BENCHMARKS.md"


def render_section(
    profile: EngineProfile,
    profile_path: Path,
    figures: list[Figure],
    timings: dict[int, float],
    elapsed: float,
) -> str:
    """The BENCHMARKS.md section (without its delimiters)."""
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

The engine simulator (profile `{profile_path.name}`) next to the step-time model it is fitted
to, evaluated in closed form ({model}), and the published figures.

{figures_table(figures)}

Decode rows: {DECODE_PROMPT_TOKENS}-token prompts with {DECODE_OUTPUT_TOKENS:,} output tokens \
each, all arriving together, measured from the first token to the last.

End to end over HTTP: the real aiohttp server at time scale {HTTP_TIME_SCALE:g}, one
`/v1/completions` request at a time (`max_tokens: 1`, `ignore_eos: true`), each request's
timeline read back from `GET /sim/requests/{{id}}`.

{http_table(profile, timings)}

Sources of the profile:
{sources}

Reproduce with `{reproduce_command(profile_path)}`.
Machine: {machine()}; run on {today}, {elapsed:.1f} s of wall time in all.

All figures are in simulated time, so they do not depend on this machine's speed. The virtual
runs drive the simulator's own scheduler and KV pool and add up the modelled step durations
without sleeping, and the HTTP server's clock also advances by exactly the modelled duration of
each step however long Python takes to compute it; any machine reproduces the first table
exactly. The HTTP table should agree with it: the server's clock anchors on a request that
arrives at an idle engine, then advances by exactly the modelled steps."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.calibration", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--profile", type=Path, default=DEFAULT_PROFILE, metavar="PATH", help="engine profile YAML"
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help="replace (or append) FILE's calibration section"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    profile = load_profile(args.profile)
    figures = calibration_figures(profile)
    timings = asyncio.run(http_timings(profile, TTFT_PROMPTS, HTTP_TIME_SCALE))
    section = render_section(profile, args.profile, figures, timings, time.perf_counter() - started)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the calibration section of {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
