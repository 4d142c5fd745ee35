"""The measurement of the simulator's calibration: virtual-clock runs, the model, one HTTP check.

Every figure is in simulated time. :func:`run_virtual` drives the simulator's scheduler and KV
pool directly, adding up the modelled step durations without sleeping; the closed-form model
(:func:`expected_prefill`, :func:`expected_decode_step`) is evaluated independently of the
scheduler; the HTTP check reads each request's simulated timeline back from the real server.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp

from fairgate.serving import serve
from loadtest.calibration.workload import (
    DECODE_BATCHES,
    DECODE_OUTPUT_TOKENS,
    DECODE_PROMPT_TOKENS,
    HOL_DELAY_S,
    HOL_LONG_TOKENS,
    HOL_SHORT_TOKENS,
    HTTP_TIME_SCALE,
    TTFT_PROMPTS,
    Arrival,
    exact_prompt,
)
from loadtest.simulator.kv_cache import BlockPool
from loadtest.simulator.profile import EngineProfile, load_profile
from loadtest.simulator.scheduler import Scheduler
from loadtest.simulator.sequence import Sequence
from loadtest.simulator.server import create_app

#: What the published sources say (BLIS fit for llama-3.1-8b on H100 with vLLM 0.8.4).
PUBLISHED_TTFT = {
    100: "≈ 7.5 ms (5.75 ms + 100 × 17.25 µs)",
    8_000: "≈ 0.15 s (one chunk; 8,192 tokens ≈ 147 ms)",
    28_000: "≈ 0.5 s (4 chunks of ≤ 8,192)",
}
PUBLISHED_THROUGHPUT = {1: "≈ 170 tok/s", 64: "≈ 10,400 tok/s (64 / (5.75 ms + 64 × 6 µs))"}
PUBLISHED_ITL = "decode step 5.8-7.3 ms (batch 1-256)"
PUBLISHED_HOL = "waits for the whole long prefill (FCFS chunked prefill)"


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

#: What a figure measures: a duration (seconds), a rate (tokens per second), a ratio.
Kind = Literal["seconds", "tokens/s", "ratio"]


@dataclass(frozen=True)
class Figure:
    """One measured figure, what the model predicts, and what the sources publish."""

    name: str
    measured: float
    expected: float
    kind: Kind
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
            "seconds",
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
                "tokens/s",
                PUBLISHED_THROUGHPUT.get(batch, "—"),
            ),
            Figure(
                f"Inter-token latency, batch {batch}", decode.itl, step, "seconds", PUBLISHED_ITL
            ),
        ]
    blocked, alone = hol_ttft(profile), ttft_alone(profile, HOL_SHORT_TOKENS)
    blocked_expected = expected_prefill(profile, HOL_LONG_TOKENS + HOL_SHORT_TOKENS) - HOL_DELAY_S
    alone_expected = expected_prefill(profile, HOL_SHORT_TOKENS)
    hol = (
        f"{HOL_SHORT_TOKENS}-token prompt {HOL_DELAY_S * 1e3:g} ms after {HOL_LONG_TOKENS:,} tokens"
    )
    figures += [
        Figure(f"TTFT, {hol}", blocked, blocked_expected, "seconds", PUBLISHED_HOL),
        Figure("Head-of-line slowdown (blocked / alone)", blocked / alone,
               blocked_expected / alone_expected, "ratio", "—"),
    ]  # fmt: skip
    return figures


# ------------------------------------------------------------------------ over HTTP


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


@dataclass(frozen=True)
class HttpCheck:
    """One prompt's TTFT from the paced HTTP server next to the virtual run's."""

    prompt_tokens: int
    virtual: float
    http: float

    @property
    def difference(self) -> float:
        return self.http / self.virtual - 1


@dataclass(frozen=True)
class Calibration:
    """Everything the report shows."""

    profile: EngineProfile
    profile_source: str  # the bundled profile's name or the file's path, as given
    figures: list[Figure]
    http: list[HttpCheck]
    elapsed: float  # wall seconds of the whole run


def calibrate(profile_source: str | Path) -> Calibration:
    """Every virtual figure, then the HTTP check of :data:`TTFT_PROMPTS`."""
    started = time.perf_counter()
    profile = load_profile(profile_source)
    figures = calibration_figures(profile)
    timings = asyncio.run(http_timings(profile, TTFT_PROMPTS, HTTP_TIME_SCALE))
    http = [HttpCheck(n, ttft_alone(profile, n), measured) for n, measured in timings.items()]
    elapsed = time.perf_counter() - started
    return Calibration(profile, str(profile_source), figures, http, elapsed)
