"""Does a request ask the model to reason? Such requests often produce 10-100x more output.

The signals, in the shapes clients send them:

- OpenAI: ``reasoning_effort`` (``"none"`` turns it off), or ``reasoning: {"effort": ...}``;
- OpenRouter and others: ``reasoning: {"enabled": false}`` turns it off;
- Anthropic-style ``thinking: {"type": "enabled" | "disabled"}``;
- vLLM / SGLang chat templates (Qwen3, DeepSeek, Granite...):
  ``chat_template_kwargs: {"enable_thinking": bool}`` or ``{"thinking": bool}``;
- a model marked ``reasoning: true`` in the config reasons unless the request turns it off.
"""

from __future__ import annotations

from typing import Any

from fairgate.settings import ModelConfig

_OFF_EFFORTS = {"none", "off", "disabled"}


def wants_reasoning(body: dict[str, Any], model: ModelConfig) -> bool:
    """True when the request will produce reasoning output."""
    explicit = _explicit(body)
    return model.reasoning if explicit is None else explicit


def _explicit(body: dict[str, Any]) -> bool | None:
    """What the request itself says, or None if it says nothing."""
    template_kwargs = body.get("chat_template_kwargs")
    if isinstance(template_kwargs, dict):
        for key in ("enable_thinking", "thinking"):
            if isinstance(template_kwargs.get(key), bool):
                return template_kwargs[key]
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        return effort.lower() not in _OFF_EFFORTS
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        if isinstance(reasoning.get("enabled"), bool):
            return reasoning["enabled"]
        effort = reasoning.get("effort")
        return not (isinstance(effort, str) and effort.lower() in _OFF_EFFORTS)
    if isinstance(reasoning, bool):
        return reasoning
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        return thinking.get("type") != "disabled"
    return None
