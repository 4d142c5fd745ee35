"""What fairgate knows about each kind of engine it can sit in front of.

One entry per ``engine:`` value of a backend's config: where its liveness probe is, and
whether it counts prompt tokens for us.
Engine-aware dispatch adds the metrics endpoint, tokenize endpoint and priority field here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairgate.settings import EngineKind


@dataclass(frozen=True)
class EngineTraits:
    """How to talk to one kind of engine beyond the OpenAI API."""

    health_path: str
    #: vLLM-style ``POST /tokenize`` taking ``messages`` or ``prompt`` and answering ``count``.
    tokenize_path: str | None = None


ENGINES: dict[EngineKind, EngineTraits] = {
    "vllm": EngineTraits(health_path="/health", tokenize_path="/tokenize"),
    "sglang": EngineTraits(health_path="/health"),
    "tgi": EngineTraits(health_path="/health"),
    "llamacpp": EngineTraits(health_path="/health"),
    "ollama": EngineTraits(health_path="/api/version"),
    "openai": EngineTraits(health_path="/v1/models"),
}
