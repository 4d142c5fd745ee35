"""Requests estimation refuses; the gateway maps them to HTTP in one place."""

from __future__ import annotations


class EstimationError(Exception):
    """A request that cannot be served, known from its estimate before it runs."""


class ContextLengthExceeded(EstimationError):
    """The prompt alone exceeds the model's configured context length."""

    def __init__(self, model: str, prompt_tokens: int, context_length: int, exact: bool) -> None:
        counted = "" if exact else " (estimated)"
        super().__init__(
            f"This model's maximum context length is {context_length} tokens. However, your "
            f"messages resulted in {prompt_tokens} tokens{counted}. Please reduce the length "
            "of the messages."
        )
        self.model = model
