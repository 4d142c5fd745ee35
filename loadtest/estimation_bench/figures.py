"""The figures of the estimation benchmark's report, computed from its :class:`Results`.

Accuracy is a mean absolute percentage error (MAPE) over slices of the workload: the first
requests (history nearly empty), all, and the last half (history warm).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from estimators.cost import Cost
from fairgate.settings import Settings
from loadtest.estimation_bench.measurement import (
    EstimateTiming,
    PromptCheck,
    Results,
    Sample,
    Stall,
)
from loadtest.simulator.profile import EngineProfile
from loadtest.stats import percentile

#: The first requests of a run, when the output history is still nearly empty.
EARLY_REQUESTS = 25


def mape(pairs: Iterable[tuple[float, float]]) -> float:
    """Mean absolute percentage error of (estimate, actual) pairs, as a fraction."""
    errors = [abs(estimate - actual) / actual for estimate, actual in pairs]
    return sum(errors) / len(errors) if errors else math.nan


def lognormal_median_mape(sigma: float) -> float:
    """The MAPE of always guessing the exact median of a log-normal of ``sigma``.

    With ``X = m e^(sigma Z)``, ``|m - X| / X = |e^(-sigma Z) - 1|``, whose mean is
    ``e^(sigma^2 / 2) (2 Phi(sigma) - 1) = e^(sigma^2 / 2) erf(sigma / sqrt 2)``: the floor no
    single guess per request beats by much on uncapped draws.
    """
    return math.exp(sigma**2 / 2) * math.erf(sigma / math.sqrt(2))


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
        percentile([s.output_tokens for s in chat], 50),
        percentile(uncapped, 50) if uncapped else math.nan,
    )


def median_ratio_by_shape(checks: list[PromptCheck]) -> dict[str, float]:
    """Median of (model tokenizer / tiktoken) per request shape: how uneven the ratio is."""
    ratios: dict[str, list[float]] = {}
    for check in checks:
        ratios.setdefault(check.request.shape, []).append(check.actual / check.raw)
    return {shape: percentile(values, 50) for shape, values in ratios.items()}


def timing_of(results: Results, tokenizer: str, size: int) -> EstimateTiming:
    return next(t for t in results.timings if t.tokenizer == tokenizer and t.size == size)


def stall_of(results: Results, tokenizer: str, what: str) -> Stall:
    return next(s for s in results.stalls if s.tokenizer == tokenizer and s.what == what)
