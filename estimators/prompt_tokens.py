"""Prompt tokens of a request: message contents plus the model's chat-template overhead.

A chat template wraps every message in role markers (Llama 3:
``<|start_header_id|>user<|end_header_id|>\\n\\n ... <|eot_id|>``) and the prompt in a begin
token and the header that opens the assistant's reply. Engines count those tokens, so an
estimate that counts only the text is short by a few tokens per message;
:class:`~fairgate.settings.ChatTemplate` holds that overhead per model family.

Non-text parts cannot be tokenized here. Images are charged a fixed number of tokens
(``tokens_per_image``, by default 576: one 336-pixel tile of a LLaVA-style vision encoder; real
models range from about 64 to several thousand), audio per part likewise; any other part is
charged as its JSON text. None of them makes counting fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from estimators.tokenizer import Tokenizer
from fairgate.settings import CHAT_TEMPLATES, ChatTemplate

LLAMA3 = CHAT_TEMPLATES["llama3"]


def count_chat_prompt(
    messages: Iterable[Any],
    tokenizer: Tokenizer,
    template: ChatTemplate = LLAMA3,
    tools: list[Any] | None = None,
) -> int:
    """Prompt tokens an engine will report for these messages (and tool definitions).

    A chat request's messages are objects (the gateway checks them); a stray ``messages``
    field on another endpoint may hold anything, and an entry that is not an object is
    charged as its JSON text, as a tool call of another shape is."""
    total = template.tokens_per_request
    for message in messages:
        total += template.tokens_per_message
        if not isinstance(message, dict):
            total += tokenizer.count(json.dumps(message, separators=(",", ":")))
            continue
        if message.get("name"):
            total += template.tokens_per_name
        for piece in _message_pieces(message, template):
            total += piece if isinstance(piece, int) else tokenizer.count(piece)
    if tools:
        total += tokenizer.count(json.dumps(tools, separators=(",", ":")))
    return total


def count_token_input(value: object, tokenizer: Tokenizer) -> int:
    """Tokens of a ``prompt`` or ``input``: a string, token ids, or a list of either."""
    if isinstance(value, str):
        return tokenizer.count(value)
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return len(value)
        return sum(count_token_input(item, tokenizer) for item in value)
    return 0


def token_ids_count(body: dict[str, Any], field: str = "prompt") -> int | None:
    """The exact length of a prompt (``field``: ``prompt``, or ``input`` for an embedding)
    given as token ids (a list of them, or a batch of such lists); None for a prompt with any
    text in it."""
    value = body.get(field) if "messages" not in body else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return len(value)
    if all(isinstance(row, list) and row for row in value):
        counts = [token_ids_count({field: row}, field) for row in value]
        return None if None in counts else sum(c for c in counts if c is not None)
    return None


def text_size(body: dict[str, Any]) -> int:
    """Characters of text a request's prompt holds (decides whether to tokenize off the loop)."""
    size = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
        if isinstance(message, dict) and message.get("tool_calls"):
            size += len(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        size += len(json.dumps(body["tools"]))
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += sum(len(v) for v in value if isinstance(v, str))
    return size


def _message_pieces(message: dict[str, Any], template: ChatTemplate) -> Iterator[str | int]:
    """Text to tokenize, or a fixed token count, for each part of one message."""
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            yield _part_piece(part, template)
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else [calls] if calls else ():
        yield _call_piece(call)


def _call_piece(call: Any) -> str:
    """The text of one tool call: its function's name and arguments. A call of another shape
    (the engine will refuse it) is counted by its JSON, so it is still charged."""
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict):
        return str(function.get("name", "")) + str(function.get("arguments", ""))
    return json.dumps(call, separators=(",", ":"))


def _part_piece(part: Any, template: ChatTemplate) -> str | int:
    if not isinstance(part, dict):
        return str(part)
    kind = part.get("type")
    if kind in {"text", "input_text"}:
        return str(part.get("text", ""))
    if kind in {"image_url", "input_image", "image"}:
        return template.tokens_per_image
    if kind in {"input_audio", "audio_url"}:
        return template.tokens_per_audio
    return json.dumps(part, separators=(",", ":"))
