"""The rendering of the estimation benchmark: its BENCHMARKS.md section, from :class:`Results`.

Every figure and every comparison in the text ("helps", "widens") is computed from the run; the
constants it describes (prompt sizes, trials, the tick) are read from where they are defined.
"""

from __future__ import annotations

import datetime
import math
import os
import textwrap

from loadtest.estimation_bench.figures import (
    EARLY_REQUESTS,
    censoring,
    covered,
    halves,
    lognormal_median_mape,
    mape,
    median_ratio_by_shape,
    output_mapes,
    output_slices,
    stall_of,
    timing_of,
)
from loadtest.estimation_bench.measurement import (
    HF_LABEL,
    IDLE,
    ON_LOOP,
    PROMPT_RUNS,
    STALL_TOKENS,
    STALL_TRIALS,
    TICK_S,
    TIKTOKEN_LABEL,
    TIME_SCALE,
    WORKER,
    EstimateTiming,
    PromptCheck,
    Results,
    Sample,
    Stall,
)
from loadtest.estimation_bench.workload import TENANTS
from loadtest.report import machine, markdown_table
from loadtest.stats import percentile

#: The section of BENCHMARKS.md this benchmark owns (see :mod:`loadtest.report`).
SECTION = "estimation"
#: The command ``make bench`` runs, and how the report says so.
MAKE_BENCH_COMMAND = "python -m loadtest.estimation_bench --write BENCHMARKS.md"
MAKE_BENCH = " (part of `make bench`)"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def pct(fraction: float) -> str:
    return "—" if math.isnan(fraction) else f"{fraction:.1%}"


def timing_table(timings: list[EstimateTiming]) -> str:
    rows = [
        [t.tokenizer, f"≈ {t.size:,}", f"{t.counted:,}", "worker thread" if t.off_loop else "loop",
         f"{len(t.durations):,}", ms(percentile(t.durations, 50)),
         ms(percentile(t.durations, 99))]
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
    longest = max(PROMPT_RUNS)
    large = timing_of(results, TIKTOKEN_LABEL, longest)
    rate = {
        label: t.counted / percentile(t.durations, 50)
        for label in (TIKTOKEN_LABEL, HF_LABEL)
        for t in [timing_of(results, label, longest)]
    }
    slower = percentile(large.durations, 50) / percentile(small.durations, 50)
    return prose(
        f"**Reading.** *Speed*: a short chat costs {ms(percentile(small.durations, 50))} (p50)",
        f"to estimate: the count and two cached look-ups. A {longest:,}-token prompt takes",
        f"{slower:,.0f}× as long with tiktoken: the count dominates, at about",
        f"{rate[TIKTOKEN_LABEL] / 1e6:.2f} M tokens/s with tiktoken and",
        f"{rate[HF_LABEL] / 1e6:.2f} M tokens/s with this `tokenizer.json` on this machine,",
        "latency a long prompt pays once, before admission.",
    )


def stall_reading(results: Results) -> str:
    idle = stall_of(results, "—", IDLE).gap
    worker = {label: stall_of(results, label, WORKER).gap for label in (TIKTOKEN_LABEL, HF_LABEL)}
    on_loop = {label: stall_of(results, label, ON_LOOP).gap for label in worker}
    wider = worker[HF_LABEL] > worker[TIKTOKEN_LABEL]
    hf_gap = (
        "Both tokenizers release the GIL while they encode; the Hugging Face one then holds it to "
        "build the list of ids and to free its `Encoding` (a string and offsets per token), "
        "which is why its gap is the wider."
        if wider
        else "Both tokenizers release the GIL while they encode."
    )
    return prose(
        f"*Event loop*: counted in a worker thread, a {STALL_TOKENS:,}-token prompt left the",
        f"loop's largest gap at {ms(worker[TIKTOKEN_LABEL])} with tiktoken and",
        f"{ms(worker[HF_LABEL])} with the Hugging Face tokenizer, against {ms(idle)} with",
        "nothing running; called on the loop, the same count stalls every other request on the",
        f"replica for {ms(on_loop[TIKTOKEN_LABEL])} and {ms(on_loop[HF_LABEL])}. {hf_gap}",
        "The rest above the idle jitter is the worker thread, and whatever else the",
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
    early = halves(checks)[f"first {EARLY_REQUESTS}"]
    early_raw = mape((c.raw, c.actual) for c in early)
    early_corrected = mape((c.corrected, c.actual) for c in early)
    early_effect = (
        f"and already helps over the first {EARLY_REQUESTS} requests ({pct(early_corrected)}"
        f" against {pct(early_raw)}) because it is a plain mean of its"
        if early_corrected < early_raw
        else f"though not over the first {EARLY_REQUESTS} requests ({pct(early_corrected)}"
        f" against {pct(early_raw)}), while it is still a plain mean of its"
    )
    return prose(
        f"*Prompt accuracy*: against the simulator the error is {pct(simulator)} by",
        "construction (it counts with the estimator's own tokenizer and template), so that row",
        "only shows that both count the same pieces of every request (system prompts, tool",
        "definitions, tool calls and results), not that the count is right for a real model.",
        f"Against another tokenizer, tiktoken alone is off by {pct(raw)}; the correction",
        f"factor brings that to {pct(corrected)} over the last half, {early_effect}",
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
    learned = f"{percentile(uncapped, 50):,.0f} tokens" if uncapped else "—"
    capped = censoring(results.samples)
    prior_ratio = estimation.reasoning_prior.p50 / lengths.median
    reasoning: tuple[str, ...] = (
        "Reasoning estimates still carry some of their prior",
        f"({pct(reasoning_used)}, against {pct(reasoning_true)} for the true median) after",
        f"{seen_reasoning} reasoning requests, because the prior counts as",
        f"{estimation.prior_weight} samples at both levels of the blend.",
    )
    if not reasoning_used > reasoning_true:
        reasoning = (
            f"Reasoning estimates score {pct(reasoning_used)} against {pct(reasoning_true)}",
            f"for the true median after {seen_reasoning} reasoning requests (the prior counts",
            f"as {estimation.prior_weight} samples at both levels of the blend).",
        )
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
        "of the blend.",
        *reasoning,
        f"No single guess does well against a log-normal of sigma {lengths.sigma:g} (its exact",
        f"median scores {pct(lognormal_median_mape(lengths.sigma))} on uncapped draws, in",
        "expectation), and MAPE rewards guessing low, so the true-median column is the target",
        "rather than a floor: an estimate below it is lower, not better informed.",
    )


def render_section(results: Results, command: str) -> str:
    """The BENCHMARKS.md section (without its delimiters)."""
    timing, learning = results.timing.estimation, results.learning.estimation
    samples, checks = results.samples, results.checks
    lengths = results.profile.output_lengths
    prompts = [s.prompt_tokens for s in samples]
    ratio = sum(c.actual for c in checks) / sum(c.raw for c in checks)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    fewest = min(PROMPT_RUNS.values())
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
            "thread. Percentiles interpolate between the two closest runs (`loadtest/stats.py`):",
            f"with {fewest} runs, p99 lies between the two slowest. These figures depend on this",
            "machine and on what else it was running.",
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
            f"Reproduce with `{command}`{MAKE_BENCH if command == MAKE_BENCH_COMMAND else ''}.",
            f"Machine: {machine()}; load",
            f"average {results.load_before:.2f} when it started; run on {today},",
            f"{results.elapsed:.1f} s of wall time in",
            "all.",
        ),
    ]
    return "\n\n".join(blocks)
