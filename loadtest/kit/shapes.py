"""Request shapes drawn from a scenario's distributions, and the bodies that carry them.

Every draw comes from a ``random.Random`` seeded by a string (scenario seed, tenant, stream),
so the same scenario sends exactly the same requests in every mode and on every machine.
Prompts are built of words that are one ``cl100k_base`` token each, and outputs are fixed with
``ignore_eos: true`` (as vLLM's own benchmarks do), so the engine sees the token counts drawn.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from loadtest.kit.scenario import Shape, TokenDist
from loadtest.simulator.protocol import token_text

#: Tokens Llama-3's chat template adds around one user message (5 per message + 5 per request).
TEMPLATE_TOKENS = 10


@dataclass(frozen=True)
class RequestPlan:
    """One request to send: who sends it, its shape, and its sizes in tokens."""

    tenant: str
    shape: int
    prompt_tokens: int
    output_tokens: int
    stream: bool
    reasoning: bool
    #: what the body declares (None: no ``max_tokens``); ``exact``: the output length itself,
    #: sent with ``ignore_eos`` (the default shape)
    max_tokens: int | None = None
    exact: bool = True


def draw_tokens(dist: TokenDist, rng: random.Random) -> int:
    if dist.dist == "fixed":
        assert dist.value is not None
        return dist.value
    if dist.dist == "uniform":
        return rng.randint(dist.min, dist.max)
    assert dist.median is not None
    drawn = round(dist.median * math.exp(rng.gauss(0.0, dist.sigma)))
    return min(dist.max, max(dist.min, drawn))


def draw_plan(tenant: str, shapes: list[Shape], rng: random.Random) -> RequestPlan:
    """Pick a shape by its share, then its prompt and output lengths."""
    index = rng.choices(range(len(shapes)), weights=[s.share for s in shapes])[0]
    shape = shapes[index]
    output = draw_tokens(shape.output_tokens, rng)
    declared = shape.max_tokens
    return RequestPlan(
        tenant,
        index,
        max(TEMPLATE_TOKENS + 1, draw_tokens(shape.prompt_tokens, rng)),
        output,
        shape.stream,
        shape.reasoning,
        max_tokens=output if declared is None else None if declared == "none" else declared,
        exact=declared is None,
    )


_CYCLE = [token_text(i) for i in range(64)]
_CYCLE_CHARS = [0]
for _word in _CYCLE:
    _CYCLE_CHARS.append(_CYCLE_CHARS[-1] + len(_word))
_text = ""


def prompt_text(tokens: int) -> str:
    """A user message that the Llama-3 template turns into exactly ``tokens`` prompt tokens.

    A slice of one long text of one-token words (built once, grown on demand), so a 32k-token
    prompt costs no more than a copy.
    """
    global _text
    words = tokens - TEMPLATE_TOKENS
    cycles, rest = divmod(words, len(_CYCLE))
    chars = cycles * _CYCLE_CHARS[-1] + _CYCLE_CHARS[rest]
    if len(_text) < chars:
        _text = "".join(_CYCLE) * (cycles + 1)
    return _text[:chars]


def request_body(plan: RequestPlan, model: str) -> dict[str, object]:
    """The chat completion request of ``plan`` (OpenAI format, plus vLLM's ``ignore_eos``).

    A plan that declares its own ``max_tokens`` (or none) tells the simulator where the model
    would stop instead (``sim_output_tokens``): the gateway sees only what a client declares.
    """
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt_text(plan.prompt_tokens)}],
        "stream": plan.stream,
    }
    if plan.max_tokens is not None:
        body["max_tokens"] = plan.max_tokens
    if plan.exact:
        body["ignore_eos"] = True
    else:
        body["sim_output_tokens"] = plan.output_tokens
    if plan.stream:
        body["stream_options"] = {"include_usage": True}
    if plan.reasoning:
        body["reasoning_effort"] = "high"
    return body
