"""Every request's :class:`~estimators.cost.Cost`, and learning from what engines report.

``estimate`` runs on the request path before admission: it counts the prompt (in a worker
thread when it is long, so other requests keep flowing), applies the model's correction
factor, reads the output history and caps everything by the request's limits. ``observe`` runs
after the response, off the request path: it records the true output length and compares both
estimates with the engine's usage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from estimators.calibration import Calibration
from estimators.cost import EXACT_SOURCES, Cost, PromptSource
from estimators.errors import ContextLengthExceeded
from estimators.feedback import Feedback
from estimators.history import OutputEstimate, OutputHistory
from estimators.prompt_tokens import (
    count_chat_prompt,
    count_token_input,
    text_size,
    token_ids_count,
)
from estimators.reasoning import wants_reasoning
from estimators.tokenizer import CharEstimateTokenizer, tokenizer_for
from fairgate.redis_client import RedisClient, deadline
from fairgate.settings import ModelConfig, Settings

log = logging.getLogger(__name__)

#: Asks an engine for the exact prompt count of a body (``/tokenize``); None if it cannot.
RemoteCounter = Callable[[dict[str, Any]], Awaitable[int | None]]

#: The fields an estimate sets (all of them), as its :class:`Cost`'s ``model_fields_set``: one
#: set for every Cost, where pydantic would build one per request, about 700 bytes kept for as
#: long as the request runs (issue 17). Nothing adds to it: a Cost is frozen, a copy gets its own.
_EVERY_FIELD = set(Cost.model_fields)


@dataclass
class Observation:
    """What one comparison with the engine's usage showed (for metrics)."""

    prompt_ratio: float | None = None  # estimate / actual
    output_ratio: float | None = None
    prompt_factor: float | None = None  # the model's new correction factor


def output_cap(body: dict[str, Any], prompt_tokens: int, model: ModelConfig) -> int:
    """The most output a request can produce: its ``max_tokens`` or the context remainder."""
    remainder = max(model.context_length - prompt_tokens, 0)
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, remainder) if remainder else value
    return remainder


#: How far an estimated (not exactly counted) prompt may exceed the context length before the
#: request is refused unseen: estimates of other tokenizers' counts err by a few percent.
ESTIMATE_TOLERANCE = 1.1

#: The most choices (``n``, ``best_of``) a request is estimated with; engines refuse more.
MAX_CHOICES = 128


def choices(body: dict[str, Any]) -> int:
    """How many completions the engine generates for a request: ``n``, or ``best_of`` for a
    completion that asks for more candidates than it returns. Values an engine would refuse
    (not a positive integer) count as one: the engine's 400 follows."""
    counts = [
        value
        for value in (body.get("n"), body.get("best_of"))
        if isinstance(value, int) and not isinstance(value, bool) and value > 0
    ]
    return min(max(counts, default=1), MAX_CHOICES)


class CostEstimator:
    """Estimates request costs and learns from every completed request."""

    def __init__(self, settings: Settings, redis: RedisClient) -> None:
        self._settings = settings
        self._config = settings.estimation
        self._timeout = settings.redis.timeout_s
        prefix = settings.redis.key_prefix
        self.history = OutputHistory(redis, prefix, self._config, self._timeout)
        self.calibration = Calibration(redis, prefix, self._config.refresh_s, self._timeout)
        self._feedback = Feedback(redis, self._config, self.history, self.calibration)

    async def close(self) -> None:
        """Stop the reads of histories and factors under way (the gateway is stopping)."""
        await self.history.close()
        await self.calibration.close()

    async def estimate(
        self,
        tenant: str,
        model_id: str,
        body: dict[str, Any],
        generates: bool = True,
        remote_count: RemoteCounter | None = None,
    ) -> Cost:
        """The cost of one request. ``generates`` is False for embeddings (no output)."""
        model = self._settings.model(model_id)
        counted, source = await self._count_prompt(model, body, remote_count, generates)
        factor = 1.0 if source in EXACT_SOURCES else await self._prompt_factor(model_id)
        prompt = max(round(counted * factor), 0)
        self._check_context(model_id, prompt, source)
        reasoning = generates and wants_reasoning(body, model)
        cap = output_cap(body, prompt, model) if generates else 0
        guess = await self._output(tenant, model_id, reasoning) if generates else None
        n = choices(body) if generates else 1  # each choice generates its own output
        # Built without validation: every field is computed above, of its type and range (a
        # validated model costs about as much as the rest of this method on every request).
        return Cost.model_construct(
            _EVERY_FIELD,
            prompt_tokens=prompt,
            counted_prompt_tokens=counted,
            prompt_source=source,
            expected_output=min(round(guess.p50), cap) * n if guess else 0,
            likely_output=min(round(guess.p90), cap) * n if guess else 0,
            max_output=cap * n,
            choices=n,
            reasoning=reasoning,
            input_weight=self._config.input_weight,
            output_weight=self._config.output_weight,
        )

    def _check_context(self, model_id: str, prompt: int, source: str) -> None:
        """Refuse a prompt that cannot fit the model's context before it queues or is charged.

        Only for models whose context length is configured (a default would refuse prompts
        of a larger model nobody described), and with a tolerance where the count is an
        estimate rather than the model's own tokenizer's or the engine's.
        """
        config = self._settings.models.get(model_id)
        if config is None:
            return
        exact = source in EXACT_SOURCES or source == "tokenizer"
        limit = config.context_length * (1.0 if exact else ESTIMATE_TOLERANCE)
        if prompt > limit:
            raise ContextLengthExceeded(model_id, prompt, config.context_length, exact)

    async def observe(
        self, tenant: str, model_id: str, cost: Cost, usage: dict[str, Any], completed: bool
    ) -> Observation:
        """Learn from the engine's ``usage`` of a finished request (never raises).

        Output lengths are learned only from requests that ran to their end: a stream the
        client abandoned says nothing about how long the answer would have been.
        """
        seen = Observation()
        actual_prompt = _int(usage.get("prompt_tokens"))
        prompt = None
        if actual_prompt and cost.prompt_source not in EXACT_SOURCES:
            seen.prompt_ratio = cost.prompt_tokens / actual_prompt
            prompt = (cost.counted_prompt_tokens, cost.prompt_tokens, actual_prompt)
        actual_output = _int(usage.get("completion_tokens"))
        output = None
        if actual_output and completed and cost.max_output:
            seen.output_ratio = cost.expected_output / actual_output
            # the history holds one choice's length: the mean of this request's choices
            per_choice = max(round(actual_output / cost.choices), 1)
            output = (cost.expected_output // cost.choices, per_choice)
        if prompt is None and output is None:
            return seen
        kind = "reasoning" if cost.reasoning else "chat"
        try:
            factor = await self._feedback.record(tenant, model_id, kind, prompt, output)
        except RedisError as exc:
            log.warning("could not record estimation feedback: %s", exc)
            return seen
        if prompt is not None:
            seen.prompt_factor = factor
        return seen

    async def _count_prompt(
        self,
        model: ModelConfig,
        body: dict[str, Any],
        remote_count: RemoteCounter | None,
        generates: bool,
    ) -> tuple[int, PromptSource]:
        if (ids := token_ids_count(body, "prompt" if generates else "input")) is not None:
            return ids, "token_ids"  # exact already: no tokenizer, no /tokenize call
        if remote_count is not None:
            exact = await remote_count(body)
            if exact is not None:
                return exact, "engine"
        tokenizer = tokenizer_for(model.tokenizer)
        source: PromptSource = "tokenizer" if model.tokenizer else "tiktoken"
        if isinstance(tokenizer, CharEstimateTokenizer):
            source = "estimate"

        def count() -> int:
            if isinstance(body.get("messages"), list):
                return count_chat_prompt(
                    body["messages"], tokenizer, model.template, body.get("tools")
                )
            # the endpoint's own field: a completion's prompt, an embedding's input (a stray
            # field of the other name must not replace what the engine will really read)
            return count_token_input(body.get("prompt" if generates else "input"), tokenizer)

        if text_size(body) > self._config.off_loop_chars:
            return await asyncio.to_thread(count), source
        return count(), source

    async def _prompt_factor(self, model_id: str) -> float:
        cached = self.calibration.cached_factor(model_id)
        if cached is not None:  # the common case: no Redis call, no deadline to set up
            return cached
        try:
            async with deadline(self._timeout):
                return await self.calibration.prompt_factor(model_id)
        except RedisError:
            return 1.0

    async def _output(self, tenant: str, model_id: str, reasoning: bool) -> OutputEstimate:
        kind = "reasoning" if reasoning else "chat"
        cached = self.history.cached(tenant, model_id, kind)
        if cached is not None:
            return cached
        try:
            async with deadline(self._timeout):
                return await self.history.estimate(tenant, model_id, kind)
        except RedisError:
            prior = self._config.reasoning_prior if reasoning else self._config.chat_prior
            return OutputEstimate.of_prior(prior)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
