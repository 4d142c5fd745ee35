"""The measurement of the estimation benchmark: the three runs, returning one :class:`Results`.

Every estimate goes through :class:`estimators.estimator.CostEstimator` against a private
``redis-server`` (:mod:`loadtest.services`), so Redis round trips, Lua scripts and caches are
the real ones: time per estimate, the event loop's largest stall while a long prompt is
counted, and the estimate-send-observe loop against the engine simulator over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from estimators.cost import Cost
from estimators.estimator import CostEstimator
from estimators.prompt_tokens import count_chat_prompt, text_size
from estimators.tokenizer import Tokenizer, tokenizer_for
from fairgate.redis_client import RedisClient, connect
from fairgate.serving import serve
from fairgate.settings import ChatTemplate, RedisConfig, Settings
from loadtest.estimation_bench.workload import (
    HF_MODEL,
    MODEL,
    TENANT,
    Corpus,
    HfTokenizerFile,
    ScenarioRequest,
    build_workload,
    chat_body,
    hf_tokenizer_file,
    load_corpus,
)
from loadtest.services import redis_server
from loadtest.simulator.profile import DEFAULT_PROFILE, EngineProfile, load_profile
from loadtest.simulator.server import create_app
from loadtest.stats import percentile

LOOPBACK = "127.0.0.1"

#: Prompt sizes in tiktoken tokens, and how many timed estimates each gets.
PROMPT_RUNS = {100: 400, 8_000: 80, 128_000: 6}
STALL_TOKENS = 128_000
STALL_TRIALS = 5
TICK_S = 0.001

#: Fast enough for several hundred sequential requests in seconds, still paced step by step.
TIME_SCALE = 200.0

TIKTOKEN_LABEL = "tiktoken cl100k_base"
HF_LABEL = "Hugging Face tokenizer.json"
WORKER = "`CostEstimator.estimate` (count in a worker thread)"
ON_LOOP = "the same count called on the event loop"
IDLE = "nothing else (the ticker's own jitter)"


# ---------------------------------------------------------------------------------- Redis


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[RedisClient]:
    """A client of a fresh, empty ``redis-server`` of this benchmark's own, stopped on exit.

    Its own process, so no developer's Redis is touched and no leftover key skews a figure.
    """
    with redis_server() as url:
        client = connect(RedisConfig(url=url))
        try:
            yield client
        finally:
            await client.aclose()


def bench_settings(
    prefix: str, refresh_s: float | None = None, hf_tokenizer: Path | None = None
) -> Settings:
    """Settings for one estimator. Each experiment gets its own key prefix, so that none learns
    from another's history or correction factor; ``refresh_s=None`` keeps the default."""
    estimation: dict[str, float] = {"feedback_flush_s": 0}
    if refresh_s is not None:
        estimation["refresh_s"] = refresh_s
    return Settings.model_validate(
        {
            "pools": {"bench": {"backends": {"sim": {"url": f"http://{LOOPBACK}:9",
                                                     "models": [MODEL]}}}},  # never contacted
            "redis": {"key_prefix": prefix},
            "estimation": estimation,
            # a long context: the longest prompts are timed here, not refused before they queue
            "models": (
                {HF_MODEL: {"tokenizer": str(hf_tokenizer), "context_length": 1_048_576}}
                if hf_tokenizer
                else {}
            ),
        }
    )  # fmt: skip


# --------------------------------------------------------------- 1. time per estimate


@dataclass(frozen=True)
class EstimateTiming:
    """Repeated estimates of one prompt with one tokenizer."""

    tokenizer: str
    size: int  # nominal prompt size, tiktoken tokens of the user message
    counted: int  # what the estimator counted (its tokenizer, with the template)
    off_loop: bool  # counted in a worker thread
    durations: list[float]


async def time_estimates(
    estimator: CostEstimator, model: str, body: dict[str, Any], runs: int
) -> tuple[Cost, list[float]]:
    """Durations of ``runs`` estimates of one body, after one untimed estimate that loads the
    tokenizer and fills the replica's factor and history caches (the steady state)."""
    cost = await estimator.estimate(TENANT, model, body)
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        await estimator.estimate(TENANT, model, body)
        durations.append(time.perf_counter() - started)
    return cost, durations


async def estimation_timings(
    estimator: CostEstimator, settings: Settings, corpus: Corpus, tokenizers: dict[str, str]
) -> list[EstimateTiming]:
    """Time per estimate for each prompt size and each tokenizer (label -> model id)."""
    timings = []
    for label, model in tokenizers.items():
        for size, runs in PROMPT_RUNS.items():
            body = chat_body(model, corpus.source(0, size))
            cost, durations = await time_estimates(estimator, model, body, runs)
            off_loop = text_size(body) > settings.estimation.off_loop_chars
            timings.append(
                EstimateTiming(label, size, cost.counted_prompt_tokens, off_loop, durations)
            )
    return timings


# ------------------------------------------------------------------ 2. event-loop stall


@dataclass(frozen=True)
class Stall:
    """The ticker's largest gap in each trial of some work, and how long the work took.

    The median trial is the figure; the worst is shown too, because on a shared machine one
    trial can catch another process's burst.
    """

    what: str
    tokenizer: str
    gaps: list[float]
    durations: list[float]

    @property
    def gap(self) -> float:
        return percentile(self.gaps, 50)

    @property
    def worst_gap(self) -> float:
        return max(self.gaps)

    @property
    def duration(self) -> float:
        return percentile(self.durations, 50)


async def ticker_gap_during(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Run ``work`` while a ticker sleeps :data:`TICK_S` in a loop; the ticker's largest gap
    between two ticks and the work's duration. Any other request on the replica would have
    waited as long as that gap."""
    running = True

    async def tick() -> float:
        largest, last = 0.0, time.perf_counter()
        while running:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            largest, last = max(largest, now - last), now
        return largest

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(TICK_S * 5)  # the ticker is in its loop before the work starts
    started = time.perf_counter()
    await work()
    duration = time.perf_counter() - started
    running = False
    return await ticker, duration


async def stall(what: str, tokenizer: str, work: Callable[[], Awaitable[object]]) -> Stall:
    """:data:`STALL_TRIALS` trials of ``work`` under the ticker."""
    trials = [await ticker_gap_during(work) for _ in range(STALL_TRIALS)]
    return Stall(what, tokenizer, [gap for gap, _ in trials], [seconds for _, seconds in trials])


async def count_on_loop(body: dict[str, Any], tokenizer: Tokenizer, template: ChatTemplate) -> int:
    """The estimator's count without its worker thread: the same call, inline in a coroutine."""
    return count_chat_prompt(body["messages"], tokenizer, template, body.get("tools"))


async def event_loop_stalls(
    estimator: CostEstimator, settings: Settings, corpus: Corpus, tokenizers: dict[str, str]
) -> list[Stall]:
    """Ticker gaps: idle (the ticker's own noise), during an estimate, during an on-loop count."""
    stalls = [await stall(IDLE, "—", lambda: asyncio.sleep(0.2))]
    text = corpus.source(0, STALL_TOKENS)
    for label, model in tokenizers.items():
        body = chat_body(model, text)
        config = settings.model(model)
        await estimator.estimate(TENANT, model, body)  # warm, as in the timings
        estimate = partial(estimator.estimate, TENANT, model, body)
        inline = partial(count_on_loop, body, tokenizer_for(config.tokenizer), config.template)
        stalls.append(await stall(WORKER, label, estimate))
        stalls.append(await stall(ON_LOOP, label, inline))
    return stalls


# --------------------------------------------------------------------- 3. the accuracy run


@dataclass(frozen=True)
class Sample:
    """One request of the workload: what was estimated and what the engine reported."""

    request: ScenarioRequest
    cost: Cost
    prompt_tokens: int
    output_tokens: int


async def complete(http: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, int]:
    """Send one non-streamed chat completion; the engine's ``usage``."""
    async with http.post("/v1/chat/completions", json=body) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"the simulator refused a request ({response.status}): {answer}")
    return dict(answer["usage"])


async def run_workload(
    estimator: CostEstimator, profile: EngineProfile, workload: list[ScenarioRequest]
) -> list[Sample]:
    """Estimate, send, observe: the gateway's loop, one request at a time so that each estimate
    has learned from every earlier response."""
    runner = await serve(create_app(profile, time_scale=TIME_SCALE), LOOPBACK, 0)
    try:
        host, port = runner.addresses[0][:2]
        samples = []
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            for request in workload:
                cost = await estimator.estimate(request.tenant, MODEL, request.body)
                usage = await complete(http, request.body)
                await estimator.observe(request.tenant, MODEL, cost, usage, completed=True)
                samples.append(
                    Sample(request, cost, usage["prompt_tokens"], usage["completion_tokens"])
                )
        return samples
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class PromptCheck:
    """The tiktoken estimate of one prompt next to the model tokenizer's count."""

    request: ScenarioRequest
    raw: int  # tiktoken count, factor 1 (calibration off)
    corrected: int  # times the correction factor learned so far (calibration on)
    actual: int  # the model tokenizer's count, same template


async def calibration_pass(
    estimator: CostEstimator,
    template: ChatTemplate,
    workload: list[ScenarioRequest],
    tokenizer: Tokenizer,
) -> tuple[list[PromptCheck], float]:
    """Estimate each prompt with tiktoken while ``usage.prompt_tokens`` is the Hugging Face
    tokenizer's count (with the same ``template``), as if the engine served a model with that
    tokenizer; the checks and the final correction factor."""
    checks = []
    for request in workload:
        body = request.body
        actual = count_chat_prompt(body["messages"], tokenizer, template, body.get("tools"))
        cost = await estimator.estimate(request.tenant, MODEL, body)
        usage = {"prompt_tokens": actual}  # no completion_tokens: output history untouched
        await estimator.observe(request.tenant, MODEL, cost, usage, completed=False)
        checks.append(PromptCheck(request, cost.counted_prompt_tokens, cost.prompt_tokens, actual))
    return checks, await estimator.calibration.prompt_factor(MODEL)


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Results:
    """Everything the report shows."""

    seed: int
    hf: HfTokenizerFile
    profile: EngineProfile
    timing: Settings  # the estimator of the timings and stalls (default settings)
    learning: Settings  # the estimators of the accuracy runs (refresh_s = 0)
    timings: list[EstimateTiming]
    stalls: list[Stall]
    samples: list[Sample]
    checks: list[PromptCheck]
    final_factor: float
    load_before: float  # the machine's load average when the run started
    elapsed: float  # wall seconds of the whole run


async def measure(requests: int, seed: int) -> Results:
    """Run the three measurements against one private Redis."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    corpus = load_corpus()
    profile = load_profile(DEFAULT_PROFILE)
    workload = build_workload(requests, seed, corpus)
    with tempfile.TemporaryDirectory(prefix="estimation-bench-") as workdir:
        hf = hf_tokenizer_file(Path(workdir), corpus)
        hf_tokenizer = tokenizer_for(hf.path)  # loaded now: the file may be temporary
        tokenizers = {TIKTOKEN_LABEL: MODEL, HF_LABEL: HF_MODEL}
        async with private_redis() as redis:
            timing = bench_settings("bench-timing", hf_tokenizer=hf.path)
            estimator = CostEstimator(timing, redis)
            timings = await estimation_timings(estimator, timing, corpus, tokenizers)
            stalls = await event_loop_stalls(estimator, timing, corpus, tokenizers)
            learning = bench_settings("bench-workload", refresh_s=0.0)
            samples = await run_workload(CostEstimator(learning, redis), profile, workload)
            calibrating = CostEstimator(bench_settings("bench-calibration", refresh_s=0.0), redis)
            template = learning.model(MODEL).template
            checks, factor = await calibration_pass(calibrating, template, workload, hf_tokenizer)
    elapsed = time.perf_counter() - started
    return Results(
        seed, hf, profile, timing, learning, timings, stalls, samples, checks, factor,
        load_before, elapsed,
    )  # fmt: skip
