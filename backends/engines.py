"""What fairgate knows about each kind of engine it can sit in front of.

One entry per ``engine:`` value of a backend's config: where its liveness probe is, whether it
counts prompt tokens for us, where it reports its own load and KV capacity, and whether it
takes a per-request priority. The parsers for the load endpoints are in
backends/engine_load.py; docs/engines.md is the same table for operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fairgate.settings import EngineKind


@dataclass(frozen=True)
class EngineTraits:
    """How to talk to one kind of engine beyond the OpenAI API."""

    health_path: str
    #: vLLM-style ``POST /tokenize`` taking ``messages`` or ``prompt`` and answering ``count``.
    tokenize_path: str | None = None
    #: Prometheus text with running / waiting requests and KV usage (engine_load parses it).
    metrics_path: str | None = None
    #: JSON reporting the engine's KV capacity in tokens, read once (it does not change).
    server_info_path: str | None = None
    #: JSON per-slot state, a load source when the engine runs without metrics (llama.cpp).
    slots_path: str | None = None
    #: Request-body field carrying a scheduling priority, when the engine can honour one.
    priority_field: str | None = None
    #: Which priority values the engine serves first (vLLM: lower; SGLang by default: higher).
    priority_first: Literal["lower", "higher"] | None = None


ENGINES: dict[EngineKind, EngineTraits] = {
    # vLLM: /metrics always on; KV capacity in vllm:cache_config_info; `priority` is honoured
    # with --scheduling-policy priority (lower values first).
    "vllm": EngineTraits(
        health_path="/health",
        tokenize_path="/tokenize",
        metrics_path="/metrics",
        priority_field="priority",
        priority_first="lower",
    ),
    # SGLang: /metrics with --enable-metrics; max_total_num_tokens in /get_server_info;
    # `priority` with --enable-priority-scheduling (higher first unless
    # --schedule-low-priority-values-first).
    "sglang": EngineTraits(
        health_path="/health",
        metrics_path="/metrics",
        server_info_path="/get_server_info",
        priority_field="priority",
        priority_first="higher",
    ),
    # TGI: router /metrics (queue size, batch size); max_batch_total_tokens in /info.
    "tgi": EngineTraits(health_path="/health", metrics_path="/metrics", server_info_path="/info"),
    # llama.cpp server: /metrics with --metrics, /slots unless --no-slots.
    "llamacpp": EngineTraits(health_path="/health", metrics_path="/metrics", slots_path="/slots"),
    # Ollama: /api/ps lists loaded models but nothing about queues; fairgate's own accounting.
    "ollama": EngineTraits(health_path="/api/version"),
    # Hosted OpenAI-compatible APIs expose no load at all.
    "openai": EngineTraits(health_path="/v1/models"),
}
