"""The OpenAI wire format as vLLM speaks it: request validation and response bodies.

Requests are validated the way vLLM validates them, so that a client (or fairgate) sees the
same 400s from the simulator as from a real engine. Fields the simulator does not model
(``temperature``, ``top_p``, ``stop``, ``logit_bias`` ...) are accepted and ignored.
"""

from __future__ import annotations

import base64
import math
import random
import struct
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: Words that are one cl100k token each, so re-tokenizing the output gives its token count.
_WORDS = (
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as",
    " with", " on", " be", " at", " by", " this", " are", " from", " or", " an",
)  # fmt: skip


def token_text(index: int) -> str:
    """The text of output token ``index``: deterministic filler, the same for every request."""
    return _WORDS[index % len(_WORDS)]


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
    #: The simulator's stand-in for the model deciding to stop: end after this many tokens
    #: (``stop``), unless ``max_tokens`` or the context comes first. Lets a load test declare a
    #: ``max_tokens`` far from what the request will produce, as real clients do; vLLM ignores
    #: unknown fields (with a warning), so a body carrying it is still a valid vLLM request.
    sim_output_tokens: int | None = None

    @field_validator("max_tokens", "max_completion_tokens", "sim_output_tokens")
    @classmethod
    def _at_least_one(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {value}.")
        return value

    @field_validator("min_tokens")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"min_tokens must be greater than or equal to 0, got {value}.")
        return value

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"n must be 1 on the simulator, got {value}.")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> GenerationRequest:
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


class EmbeddingRequest(BaseModel):
    """``/v1/embeddings``: one input or a batch; each is a string or token ids."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int = Field(256, ge=1, le=8192)

    @property
    def inputs(self) -> list[str | list[int]]:
        value = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]  # type: ignore[list-item]
        return list(value)  # type: ignore[arg-type]


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``: same input, same embedding."""
    rng = random.Random(text)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    """As asked: a list of floats, or base64 of little-endian float32 (the SDK default)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def describe_validation_error(exc: ValidationError) -> str:
    """Every problem, each naming its field the way vLLM does: ``... (parameter=max_tokens)``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{message} (parameter={where})" if where else message)
    return "; ".join(parts)


@dataclass(frozen=True)
class Dialect:
    """The differences between chat and text completion bodies.

    Streams follow vLLM: a chat stream opens with a chunk that carries only the assistant role
    (and empty content), each token is its own chunk, the last token's chunk carries the
    ``finish_reason``, and with ``include_usage`` a final chunk with no choices carries the usage.
    """

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

    def delta(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        """The single choice of a streamed chunk carrying one token's text."""
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {
            "index": 0,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }

    def opening(self) -> dict[str, Any] | None:
        """The choice of the chunk that opens a stream: the assistant role, for chat only."""
        if not self.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


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
