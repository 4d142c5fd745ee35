"""The cost of a request before it runs: what admission charges, budgets and routes by."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt

PromptSource = Literal["tiktoken", "tokenizer", "engine", "token_ids", "estimate"]
#: Counts that are the engine's own: no correction applies, and nothing is learned from them.
EXACT_SOURCES: frozenset[PromptSource] = frozenset({"engine", "token_ids"})


class Cost(BaseModel):
    """Estimated tokens of one request, and the weighted service they represent.

    ``prompt_tokens`` is the corrected estimate (the raw count times the model's learned
    correction factor, or the engine's exact count). ``expected_output`` is the median of
    recent outputs of this tenant and model (p50), ``likely_output`` their p90, both capped by
    ``max_output``, the hard limit (``max_tokens`` or what is left of the context); all three
    count every one of the request's ``choices`` (``n``), which share one prompt.
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: NonNegativeInt
    counted_prompt_tokens: NonNegativeInt
    prompt_source: PromptSource
    expected_output: NonNegativeInt
    likely_output: NonNegativeInt
    max_output: NonNegativeInt
    reasoning: bool
    choices: PositiveInt = 1
    input_weight: PositiveFloat
    output_weight: PositiveFloat

    @property
    def weighted(self) -> float:
        """Service units (VTC): input weight x prompt + output weight x expected output."""
        return self.service(self.prompt_tokens, self.expected_output)

    def input_service(self, prompt_tokens: int | None = None) -> float:
        """The service of a prompt: input weight x its tokens (this request's estimate unless
        the engine's count is given). Admission charges it when the request is granted."""
        return self.input_weight * (self.prompt_tokens if prompt_tokens is None else prompt_tokens)

    def output_service(self, tokens: int) -> float:
        """The service of ``tokens`` output tokens: output weight x tokens. Charged as output
        is delivered (streamed chunks, or a plain response's expected rate)."""
        return self.output_weight * tokens

    def service(self, prompt_tokens: int, output_tokens: int) -> float:
        """The service of a whole request (VTC): input weight x prompt + output weight x
        output. What a finished request is settled at."""
        return self.input_service(prompt_tokens) + self.output_service(output_tokens)

    @property
    def inflight_tokens(self) -> int:
        """Tokens to reserve against budgets while it runs: prompt + likely (p90) output."""
        return self.prompt_tokens + self.likely_output
