"""Engine load as the engines themselves report it, and the budgets that follow from it.

fairgate's own accounting (estimated tokens in flight, in Redis) is exact about what fairgate
sent but blind to what the engine is really doing: estimates err, prefix caching saves memory,
other clients may share the engine. So each backend's own metrics are scraped on an interval
(:class:`LoadScraper`) into an :class:`EngineLoad` snapshot: requests running and waiting
inside the engine, KV-cache usage, and the KV capacity the engine allocated. Dispatch uses
the snapshot to correct its choice (an engine with a waiting queue gets nothing more until
it drains), and :func:`effective_budget` lets an engine's real KV capacity replace the one
derived from its declared hardware (fairgate/kv_capacity.py).

Each engine speaks its own dialect (vLLM, SGLang, llama.cpp server, TGI); one parser per
dialect, all through prometheus_client's text parser. Ollama and hosted APIs report nothing
useful and are not scraped. A failed scrape leaves the load unknown; it never raises.

Each snapshot goes to :class:`backends.state.BackendStates`, which passes what it means to
admission in Redis (``admission/lua/engine.lua``), so that every replica dispatches by it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import BaseModel, ConfigDict, Field

from backends.backend import Backend
from backends.errors import BackendUnreachable, EngineError, GatewayOutOfFiles
from backends.transport import Answer, EngineRequest, fetch
from fairgate.settings import BackendConfig, EngineKind
from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

#: Share of an engine-reported KV capacity used as the token budget when the backend declares
#: no ``capacity.headroom`` (the same default as a declared capacity).
DEFAULT_HEADROOM = 0.9

_SCRAPE_TIMEOUT_S = 2.0


class EngineLoad(BaseModel):
    """One engine's load at one moment, as the engine reported it (None: it does not say)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineKind
    running: int | None = Field(None, description="Requests being computed (in the batch).")
    waiting: int | None = Field(None, description="Requests queued inside the engine.")
    kv_cache_usage: float | None = Field(None, ge=0, le=1, description="Share of KV in use.")
    kv_capacity_tokens: int | None = Field(None, description="Tokens the KV cache holds.")
    scraped_at: float = Field(description="Unix time of the scrape.")


# --------------------------------------------------------------------------------- parsing


def _samples(text: str) -> dict[str, list[Sample]]:
    """Every sample of a Prometheus text exposition, by sample name."""
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _sum(samples: dict[str, list[Sample]], *names: str) -> float | None:
    """The sum over label sets (several models, data-parallel ranks) of the first name found."""
    for name in names:
        values = [s.value for s in samples.get(name, ()) if not math.isnan(s.value)]
        if values:
            return sum(values)
    return None


def _mean(samples: dict[str, list[Sample]], *names: str) -> float | None:
    """The mean over label sets: a usage ratio of equally sized parts of one engine."""
    for name in names:
        values = [s.value for s in samples.get(name, ()) if not math.isnan(s.value)]
        if values:
            return min(1.0, max(0.0, sum(values) / len(values)))
    return None


def _count(value: float | None) -> int | None:
    return None if value is None else round(value)


def _vllm_kv_capacity(samples: dict[str, list[Sample]]) -> int | None:
    """Tokens of KV from ``vllm:cache_config_info`` (blocks x block size, summed over engines).

    The labels are the engine's CacheConfig; ``num_gpu_blocks`` is "None" until the KV cache
    is allocated. Newer versions also label ``kv_cache_size_tokens``.
    """
    per_engine: dict[str, int] = {}
    for sample in samples.get("vllm:cache_config_info", ()):
        labels = sample.labels
        try:
            tokens = int(labels["num_gpu_blocks"]) * int(labels["block_size"])
        except (KeyError, ValueError):
            try:
                tokens = int(labels["kv_cache_size_tokens"])
            except (KeyError, ValueError):
                continue
        per_engine[labels.get("engine", "0")] = tokens
    return sum(per_engine.values()) if per_engine else None


def parse_vllm_metrics(text: str, scraped_at: float | None = None) -> EngineLoad:
    """vLLM's /metrics (V1, and V0's ``gpu_cache_usage_perc``), summed over model names."""
    samples = _samples(text)
    return EngineLoad(
        engine="vllm",
        running=_count(_sum(samples, "vllm:num_requests_running")),
        waiting=_count(_sum(samples, "vllm:num_requests_waiting")),
        kv_cache_usage=_mean(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        kv_capacity_tokens=_vllm_kv_capacity(samples),
        scraped_at=time.time() if scraped_at is None else scraped_at,
    )


def parse_sglang_metrics(text: str, scraped_at: float | None = None) -> EngineLoad:
    """SGLang's /metrics (``--enable-metrics``); ``token_usage`` is the KV pool's used share."""
    samples = _samples(text)
    return EngineLoad(
        engine="sglang",
        running=_count(_sum(samples, "sglang:num_running_reqs")),
        waiting=_count(_sum(samples, "sglang:num_queue_reqs")),
        kv_cache_usage=_mean(samples, "sglang:token_usage"),
        kv_capacity_tokens=_count(_sum(samples, "sglang:max_total_num_tokens")),
        scraped_at=time.time() if scraped_at is None else scraped_at,
    )


def parse_sglang_server_info(info: dict[str, Any]) -> int | None:
    """KV capacity in tokens from SGLang's /get_server_info (``max_total_num_tokens``).

    Older versions put it at the top level; newer ones also (or only) in ``internal_states``,
    one entry per data-parallel rank, each with its own pool: those are summed.
    """
    if isinstance(info.get("max_total_num_tokens"), int):
        return info["max_total_num_tokens"]
    states = info.get("internal_states")
    if not isinstance(states, list):
        return None
    found = [s.get("max_total_num_tokens") for s in states if isinstance(s, dict)]
    tokens = [n for n in found if isinstance(n, int)]
    return sum(tokens) if tokens else None


def parse_llamacpp_metrics(text: str, scraped_at: float | None = None) -> EngineLoad:
    """llama.cpp server's /metrics (``--metrics``): slots processing, requests deferred.

    ``kv_cache_usage_ratio`` was dropped by later builds; it is used where present.
    """
    samples = _samples(text)
    return EngineLoad(
        engine="llamacpp",
        running=_count(_sum(samples, "llamacpp:requests_processing")),
        waiting=_count(_sum(samples, "llamacpp:requests_deferred")),
        kv_cache_usage=_mean(samples, "llamacpp:kv_cache_usage_ratio"),
        scraped_at=time.time() if scraped_at is None else scraped_at,
    )


def parse_llamacpp_slots(
    slots: list[dict[str, Any]], scraped_at: float | None = None
) -> EngineLoad:
    """llama.cpp server's /slots: busy slots, and the context of all slots as the KV capacity.

    Slots say nothing about requests waiting for a free slot, so ``waiting`` stays unknown.
    Builds before 2025 say ``state`` (1 = processing) instead of ``is_processing``.
    """
    busy = sum(1 for s in slots if s.get("is_processing", s.get("state", 0) == 1) is True)
    contexts = [s["n_ctx"] for s in slots if isinstance(s.get("n_ctx"), int)]
    return EngineLoad(
        engine="llamacpp",
        running=busy,
        kv_capacity_tokens=sum(contexts) if contexts else None,
        scraped_at=time.time() if scraped_at is None else scraped_at,
    )


def parse_tgi_metrics(text: str, scraped_at: float | None = None) -> EngineLoad:
    """TGI router's /metrics: requests in the current batch and in the router's queue."""
    samples = _samples(text)
    return EngineLoad(
        engine="tgi",
        running=_count(_sum(samples, "tgi_batch_current_size")),
        waiting=_count(_sum(samples, "tgi_queue_size")),
        scraped_at=time.time() if scraped_at is None else scraped_at,
    )


def parse_tgi_info(info: dict[str, Any]) -> int | None:
    """KV capacity from TGI's /info: ``max_batch_total_tokens``, what the batch may hold."""
    value = info.get("max_batch_total_tokens")
    return value if isinstance(value, int) else None


#: Prometheus parsers by engine kind (Ollama and hosted APIs have none).
METRICS_PARSERS: dict[EngineKind, Callable[[str, float | None], EngineLoad]] = {
    "vllm": parse_vllm_metrics,
    "sglang": parse_sglang_metrics,
    "llamacpp": parse_llamacpp_metrics,
    "tgi": parse_tgi_metrics,
}
#: Parsers of the JSON that reports KV capacity (read once per backend).
SERVER_INFO_PARSERS: dict[EngineKind, Callable[[dict[str, Any]], int | None]] = {
    "sglang": parse_sglang_server_info,
    "tgi": parse_tgi_info,
}


# --------------------------------------------------------------------------------- budgets


BudgetSource = Literal["configured", "engine", "derived", "default"]


class Budget(BaseModel):
    """The budgets admission should use for a backend, and where each one came from."""

    model_config = ConfigDict(frozen=True)

    max_concurrency: int
    max_inflight_tokens: int
    concurrency_source: BudgetSource
    tokens_source: BudgetSource


def effective_budget(config: BackendConfig, load: EngineLoad | None) -> Budget:
    """A backend's budgets: configured > engine-reported KV capacity > derived > default.

    An operator's explicit number is a decision and stays. Otherwise the KV capacity the
    engine says it allocated beats any derivation from declared hardware (it already accounts
    for the real activation peak, CUDA graphs and the exact weights), with the same headroom.
    Engines do not report their running-sequence limit, so ``max_concurrency`` never comes
    from the engine.
    """

    def source(field: str) -> BudgetSource:
        if field in config.derived_budgets:
            return "derived"
        return "configured" if field in config.model_fields_set else "default"

    tokens_source = source("max_inflight_tokens")
    tokens = config.max_inflight_tokens
    if tokens_source != "configured" and load is not None and load.kv_capacity_tokens:
        headroom = config.capacity.headroom if config.capacity else DEFAULT_HEADROOM
        tokens, tokens_source = max(1, math.floor(load.kv_capacity_tokens * headroom)), "engine"
    return Budget(
        max_concurrency=config.max_concurrency,
        max_inflight_tokens=tokens,
        concurrency_source=source("max_concurrency"),
        tokens_source=tokens_source,
    )


# --------------------------------------------------------------------------------- scraping


#: Told every snapshot (None: the load is unknown), e.g. to pass it on to admission.
LoadCallback = Callable[[Backend, "EngineLoad | None"], Awaitable[None]]


def tokens_in_use(load: EngineLoad | None) -> int | None:
    """The KV tokens the engine holds now, if it reports both usage and capacity."""
    if load is None or load.kv_cache_usage is None or not load.kv_capacity_tokens:
        return None
    return round(load.kv_cache_usage * load.kv_capacity_tokens)


class LoadScraper:
    """Scrapes each backend's own load every ``interval_s`` and tells ``on_load`` of it.

    One task per backend, so a slow engine delays only its own report. A report lapses after
    ``max_age_s`` (three intervals by default) unless a later scrape renews it.
    """

    def __init__(
        self,
        backends: Iterable[Backend],
        interval_s: float,
        on_load: LoadCallback,
        max_waiting: int | None = None,
    ) -> None:
        self._backends = [b for b in backends if _scrapable(b)]
        self._interval_s = interval_s
        self._on_load = on_load
        self._max_waiting = max_waiting
        self.max_age_s = 3 * interval_s
        self._capacity: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(b), name=f"engine-load-{b.name}") for b in self._backends
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    async def _run(self, backend: Backend) -> None:
        while True:
            load = await self.scrape(backend)
            await asyncio.sleep(self.next_delay(load))

    def saturated(self, load: EngineLoad | None) -> bool:
        """The engine queues requests inside it beyond ``max_waiting``: it should get no more."""
        return (
            self._max_waiting is not None
            and load is not None
            and load.waiting is not None
            and load.waiting > self._max_waiting
        )

    def next_delay(self, load: EngineLoad | None) -> float:
        """A saturated engine is looked at again four times as often, to see it drain soon."""
        return self._interval_s / 4 if self.saturated(load) else self._interval_s

    async def scrape(self, backend: Backend) -> EngineLoad | None:
        """Scrape one backend once and report it; on any failure its load is unknown."""
        try:
            load = await self._fetch(backend)
        except (
            BackendUnreachable,
            GatewayOutOfFiles,
            EngineError,
            ValueError,
            KeyError,
            TypeError,
        ) as exc:
            log.debug("engine load of %s unknown: %r", backend.name, exc)
            load = None
        try:
            await self._on_load(backend, load)
        except Exception:  # noqa: BLE001 - a scraper must outlive its listener's failures
            log.exception("engine load listener failed for %s", backend.name)
        return load

    async def _fetch(self, backend: Backend) -> EngineLoad | None:
        traits = backend.traits
        kind = backend.config.engine
        if backend.name not in self._capacity and traits.server_info_path:
            await self._read_capacity(backend, traits.server_info_path)
        load: EngineLoad | None = None
        if traits.metrics_path and kind in METRICS_PARSERS:
            answer = await _get(backend, traits.metrics_path)
            if answer.status == 200:
                load = METRICS_PARSERS[kind](answer.text(), None)
        if load is None and traits.slots_path:
            answer = await _get(backend, traits.slots_path)
            slots = answer.json() if answer.status == 200 else None
            if isinstance(slots, list):
                load = parse_llamacpp_slots(slots)
        if load is None:
            return None
        if load.kv_capacity_tokens is None and backend.name in self._capacity:
            load = load.model_copy(update={"kv_capacity_tokens": self._capacity[backend.name]})
        return load

    async def _read_capacity(self, backend: Backend, path: str) -> None:
        """The KV capacity a server-info endpoint reports, kept once known (it is fixed)."""
        parser = SERVER_INFO_PARSERS.get(backend.config.engine)
        if parser is None:
            return
        try:
            answer = await _get(backend, path)
            info = answer.json() if answer.status == 200 else None
        except (BackendUnreachable, EngineError, ValueError) as exc:
            log.debug("KV capacity of %s unknown: %r", backend.name, exc)
            return
        capacity = parser(info) if isinstance(info, dict) else None
        if capacity:
            self._capacity[backend.name] = capacity


def _scrapable(backend: Backend) -> bool:
    return backend.traits.metrics_path is not None or backend.traits.slots_path is not None


async def _get(backend: Backend, path: str) -> Answer:
    return await fetch(backend.transport, EngineRequest("GET", path, timeout_s=_SCRAPE_TIMEOUT_S))
