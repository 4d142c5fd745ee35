"""The OpenAI wire format as vLLM speaks it: request validation and response bodies.

Requests are validated the way vLLM validates them, so that a client (or fairgate) sees the
same 400s from the simulator as from a real engine. Fields the simulator does not model
(``temperature``, ``top_p``, ``stop``, ``logit_bias`` ...) are accepted and ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Words that are one cl100k token each, so re-tokenizing the output gives its token count.
_WORDS = (
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as",
    " with", " on", " be", " at", " by", " this", " are", " from", " or", " an",
)  # fmt: skip


def token_text(request_id: str, index: int) -> str:
    """The text of output token ``index`` of a request: deterministic filler words."""
    return _WORDS[(len(request_id) + index) % len(_WORDS)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class GenerationRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    min_tokens: int = 0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    seed: int | None = None

    @model_validator(mode="after")
    def _check_limits(self) -> GenerationRequest:
        cap = self.output_cap
        if cap is not None and cap < 1:
            raise ValueError(f"max_tokens must be at least 1, got {cap}.")
        if self.min_tokens < 0:
            raise ValueError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."
            )
        if self.n != 1:
            raise ValueError(f"n must be 1 on the simulator, got {self.n}.")
        if self.stream_options is not None and not self.stream:
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return self

    @property
    def output_cap(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(GenerationRequest):
    prompt: str | list[int] | list[str] | list[list[int]]

    @model_validator(mode="after")
    def _single_prompt(self) -> CompletionRequest:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise ValueError("batched prompts are not supported by the simulator; send one")
            self.prompt = prompt[0]
        if self.prompt in ("", []):
            raise ValueError("prompt must not be empty")
        return self


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@dataclass(frozen=True)
class Dialect:
    """The differences between chat and text completion bodies."""

    id_prefix: str
    object: str
    chunk_object: str
    chat: bool

    def choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        """The single choice of a complete (non-streamed) response."""
        if self.chat:
            message = {"role": "assistant", "content": text, "tool_calls": []}
            return {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def delta(self, text: str | None, finish_reason: str | None, first: bool) -> dict[str, Any]:
        """The single choice of a streamed chunk; ``text=None`` for the closing chunk."""
        if not self.chat:
            return {
                "index": 0,
                "text": text or "",
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if first:
            delta = {"role": "assistant", **delta}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


CHAT = Dialect("chatcmpl-", "chat.completion", "chat.completion.chunk", chat=True)
COMPLETION = Dialect("cmpl-", "text_completion", "text_completion", chat=False)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(dialect: Dialect, response_id: str, model: str, streamed: bool) -> dict[str, Any]:
    """The fields every response body and chunk carries."""
    return {
        "id": response_id,
        "object": dialect.chunk_object if streamed else dialect.object,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
