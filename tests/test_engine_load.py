"""Engine load from the engines' own metrics (backends/engine_load.py).

Parsers run on real text: a /metrics capture of vLLM 0.32 (CPU build, via
../shared/tools/real-vllm, six streams running), the simulator's live /metrics, and fixtures in
the documented formats of SGLang, llama.cpp server and TGI (tests/data/README.md says where
each comes from). The scraper runs against a real simulator and small real HTTP servers;
sharing goes through a real Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from backends.backend import Backend
from backends.engine_load import (
    EngineLoad,
    LoadScraper,
    effective_budget,
    parse_llamacpp_metrics,
    parse_llamacpp_slots,
    parse_sglang_metrics,
    parse_sglang_server_info,
    parse_tgi_info,
    parse_tgi_metrics,
    parse_vllm_metrics,
    publish_engine_load,
    read_engine_loads,
)
from backends.engines import ENGINES
from fairgate.keys import AdmissionKeys
from fairgate.serving import serve
from fairgate.settings import BackendConfig
from tests.conftest import StartSim

DATA = Path(__file__).resolve().parent / "data"


def data(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------- parsers


def test_vllm_parser_on_real_vllm_metrics() -> None:
    load = parse_vllm_metrics(data("vllm-0.32-cpu-metrics.txt"), scraped_at=100.0)
    assert load == EngineLoad(
        engine="vllm",
        running=6,
        waiting=0,
        kv_cache_usage=0.0014650225857648635,
        kv_capacity_tokens=8192 * 128,  # num_gpu_blocks x block_size = kv_cache_size_tokens
        scraped_at=100.0,
    )


def test_vllm_parser_sums_data_parallel_engines() -> None:
    """vLLM with --data-parallel-size 2 reports one series per engine; they add up."""
    lines = []
    for line in data("vllm-0.32-cpu-metrics.txt").splitlines():
        lines.append(line)
        if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{")):
            lines.append(line.replace('engine="0"', 'engine="1"').rsplit(" ", 1)[0] + " 3.0")
        elif line.startswith("vllm:kv_cache_usage_perc{"):
            lines.append(line.replace('engine="0"', 'engine="1"').rsplit(" ", 1)[0] + " 0.5")
        elif line.startswith("vllm:cache_config_info{"):
            lines.append(line.replace('engine="0"', 'engine="1"'))
    load = parse_vllm_metrics("\n".join(lines) + "\n")
    assert (load.running, load.waiting) == (9, 3)
    assert load.kv_cache_usage == pytest.approx((0.0014650225857648635 + 0.5) / 2)
    assert load.kv_capacity_tokens == 2 * 8192 * 128


def test_vllm_v0_parser_sums_model_names() -> None:
    load = parse_vllm_metrics(data("vllm-v0-metrics.txt"))
    assert (load.running, load.waiting) == (15, 5)
    assert load.kv_cache_usage == pytest.approx(0.62)
    assert load.kv_capacity_tokens == 27_911 * 16


def test_vllm_before_kv_allocation_has_no_capacity() -> None:
    text = (
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="None"} 1.0\n'
    )
    load = parse_vllm_metrics(text)
    assert load.kv_capacity_tokens is None
    assert (load.running, load.waiting, load.kv_cache_usage) == (None, None, None)


def test_sglang_parsers() -> None:
    load = parse_sglang_metrics(data("sglang-metrics.txt"), scraped_at=5.0)
    assert (load.running, load.waiting, load.kv_cache_usage) == (162, 2826, 0.28)
    assert load.kv_capacity_tokens is None
    info = json.loads(data("sglang-server-info.json"))
    assert parse_sglang_server_info(info) == 442_318
    assert parse_sglang_server_info({"max_total_num_tokens": 161_721}) == 161_721
    two_ranks = {"internal_states": [{"max_total_num_tokens": 100}, {"max_total_num_tokens": 50}]}
    assert parse_sglang_server_info(two_ranks) == 150
    assert parse_sglang_server_info({"model_path": "x"}) is None


def test_llamacpp_parsers() -> None:
    load = parse_llamacpp_metrics(data("llamacpp-metrics.txt"))
    assert (load.running, load.waiting, load.kv_cache_usage) == (4, 3, 0.41162)
    slots = parse_llamacpp_slots(json.loads(data("llamacpp-slots.json")))
    assert (slots.running, slots.waiting, slots.kv_capacity_tokens) == (2, None, 4 * 4096)
    old_build = [{"id": 0, "n_ctx": 2048, "state": 1}, {"id": 1, "n_ctx": 2048, "state": 0}]
    assert parse_llamacpp_slots(old_build).running == 1


def test_tgi_parsers() -> None:
    load = parse_tgi_metrics(data("tgi-metrics.txt"))
    assert (load.running, load.waiting, load.kv_cache_usage) == (24, 7, None)
    assert parse_tgi_info(json.loads(data("tgi-info.json"))) == 368_640


def test_engine_traits_say_where_the_load_is() -> None:
    assert ENGINES["vllm"].metrics_path == "/metrics"
    assert (ENGINES["vllm"].priority_field, ENGINES["vllm"].priority_first) == ("priority", "lower")
    assert ENGINES["sglang"].server_info_path == "/get_server_info"
    assert ENGINES["llamacpp"].slots_path == "/slots"
    assert ENGINES["tgi"].server_info_path == "/info"
    for kind in ("ollama", "openai"):
        assert ENGINES[kind].metrics_path is ENGINES[kind].slots_path is None


# --------------------------------------------------------------------------------- budgets


def backend_config(**fields: Any) -> BackendConfig:
    return BackendConfig(url="http://127.0.0.1:9001", models=["m"], **fields)


def load_with(capacity: int | None) -> EngineLoad:
    return EngineLoad(engine="vllm", running=0, kv_capacity_tokens=capacity, scraped_at=0.0)


def test_engine_capacity_beats_the_derived_one() -> None:
    config = backend_config(capacity={"gpu": "h100-80gb", "model": "llama-3-8b"})
    assert effective_budget(config, None).model_dump() == {
        "max_concurrency": 1024,
        "max_inflight_tokens": 396_158,
        "concurrency_source": "derived",
        "tokens_source": "derived",
    }
    budget = effective_budget(config, load_with(467_280))
    assert (budget.max_inflight_tokens, budget.tokens_source) == (420_552, "engine")
    assert (budget.max_concurrency, budget.concurrency_source) == (1024, "derived")
    unknown = effective_budget(config, load_with(None))
    assert (unknown.max_inflight_tokens, unknown.tokens_source) == (396_158, "derived")


def test_configured_budgets_beat_the_engine() -> None:
    config = backend_config(max_inflight_tokens=100_000, max_concurrency=16)
    budget = effective_budget(config, load_with(467_280))
    assert budget.model_dump() == {
        "max_concurrency": 16,
        "max_inflight_tokens": 100_000,
        "concurrency_source": "configured",
        "tokens_source": "configured",
    }


def test_engine_capacity_replaces_defaults_with_the_default_headroom() -> None:
    budget = effective_budget(backend_config(), load_with(1_048_576))
    assert (budget.max_inflight_tokens, budget.tokens_source) == (943_718, "engine")
    assert (budget.max_concurrency, budget.concurrency_source) == (64, "default")
    with_headroom = backend_config(capacity={"gpu": "l40s", "model": "llama-3-8b", "headroom": 0.5})
    assert effective_budget(with_headroom, load_with(1000)).max_inflight_tokens == 500


# --------------------------------------------------------------------------------- scraping


async def started_backend(url: str, engine: str = "vllm") -> Backend:
    backend = Backend("b0", "p", backend_config(engine=engine).model_copy(update={"url": url}), 1.0)
    backend.base_url = url.rstrip("/")
    await backend.start()
    return backend


Serve = Callable[[dict[str, web.Response | Callable[[], web.Response]]], Awaitable[str]]


@pytest.fixture
async def fake_engine() -> AsyncIterator[Serve]:
    """Real HTTP servers on loopback answering fixed bodies per path."""
    runners = []

    async def start(routes: dict[str, Any]) -> str:
        app = web.Application()
        for path, answer in routes.items():

            async def handler(_: web.Request, answer: Any = answer) -> web.Response:
                return answer() if callable(answer) else answer

            app.router.add_get(path, handler)
        runner = await serve(app, "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_scraper_reads_a_busy_simulator(start_sim: StartSim) -> None:
    """Two requests running and three waiting in the simulator are what the scraper sees."""
    sim = await start_sim(time_scale=1.0, **{"scheduler.max_num_seqs": 2})
    body = {
        "model": "llama-3-8b",
        "prompt": "hello " * 50,
        "max_tokens": 20_000,
        "ignore_eos": True,
    }

    async def request() -> None:
        async with sim.http.post(f"{sim.url}/v1/completions", json=body) as resp:
            await resp.read()

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    backend = await started_backend(sim.url)
    try:
        for _ in range(400):
            state = await sim.state()
            if (state["running"], state["waiting"]) == (2, 3):
                break
            await asyncio.sleep(0.02)
        scraper = LoadScraper([backend], interval_s=1.0)
        load = await scraper.scrape(backend)
        after = await sim.state()
        assert load is not None and scraper.latest("b0") == load
        assert (load.engine, load.running, load.waiting) == ("vllm", 2, 3)
        assert load.kv_capacity_tokens == 29_205 * 16 == after["kv_total_blocks"] * 16
        # KV only grows while nothing finishes: scrape value between the two state reads
        assert state["kv_usage"] <= load.kv_cache_usage <= after["kv_usage"]
        assert load.kv_cache_usage > 0
        assert abs(load.scraped_at - time.time()) < 60
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.close()


async def test_scraper_shares_loads_through_redis(start_sim: StartSim, redis_url: str) -> None:
    sim = await start_sim()
    backend = await started_backend(sim.url)
    redis = Redis.from_url(redis_url)
    key = AdmissionKeys.of("fairgate").engine_load
    scraper = LoadScraper([backend], interval_s=0.05, redis=redis, key=key)
    await scraper.start()
    try:
        shared: dict[str, EngineLoad] = {}
        for _ in range(200):
            shared = await read_engine_loads(redis, key, max_age_s=10)
            if shared:
                break
            await asyncio.sleep(0.02)
        assert key == "fairgate:{adm}:engine_load"
        assert set(shared) == {"b0"}
        assert (shared["b0"].running, shared["b0"].waiting) == (0, 0)
        assert shared["b0"].kv_capacity_tokens == 467_280
        assert 0 < await redis.ttl(key) <= 2  # ten max ages of 0.15 s, rounded up
    finally:
        await scraper.stop()
        await backend.close()
        await redis.aclose()


async def test_shared_loads_go_stale_and_can_be_withdrawn(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    key = AdmissionKeys.of("fg").engine_load
    now = time.time()
    fresh = EngineLoad(engine="sglang", running=3, waiting=1, scraped_at=now - 1)
    old = EngineLoad(engine="vllm", running=9, waiting=9, scraped_at=now - 30)
    try:
        await publish_engine_load(redis, key, "fresh", fresh, ttl_s=60)
        await publish_engine_load(redis, key, "old", old, ttl_s=60)
        await redis.hset(key, "garbage", b"not json")
        assert await read_engine_loads(redis, key, max_age_s=5, now=now) == {"fresh": fresh}
        assert set(await read_engine_loads(redis, key, max_age_s=60, now=now)) == {"fresh", "old"}
        await publish_engine_load(redis, key, "fresh", None, ttl_s=60)
        assert not await redis.hexists(key, "fresh")
        assert 55 <= await redis.ttl(key) <= 60
    finally:
        await redis.aclose()


async def test_sglang_capacity_comes_from_server_info(fake_engine: Serve) -> None:
    url = await fake_engine(
        {
            "/metrics": web.Response(text=data("sglang-metrics.txt")),
            "/get_server_info": web.json_response(json.loads(data("sglang-server-info.json"))),
        }
    )
    backend = await started_backend(url, engine="sglang")
    try:
        load = await LoadScraper([backend], interval_s=1).scrape(backend)
        assert load is not None
        assert (load.running, load.waiting, load.kv_cache_usage) == (162, 2826, 0.28)
        assert load.kv_capacity_tokens == 442_318
    finally:
        await backend.close()


async def test_llamacpp_without_metrics_falls_back_to_slots(fake_engine: Serve) -> None:
    url = await fake_engine(
        {
            "/metrics": web.Response(status=501, text="metrics are disabled"),
            "/slots": web.json_response(json.loads(data("llamacpp-slots.json"))),
        }
    )
    backend = await started_backend(url, engine="llamacpp")
    try:
        load = await LoadScraper([backend], interval_s=1).scrape(backend)
        assert load is not None
        assert (load.running, load.waiting, load.kv_capacity_tokens) == (2, None, 16_384)
    finally:
        await backend.close()


async def test_failed_scrapes_leave_the_load_unknown(fake_engine: Serve) -> None:
    answers = iter([web.Response(text=data("tgi-metrics.txt")), web.Response(text="{not: [prom")])
    url = await fake_engine({"/metrics": lambda: next(answers), "/info": web.Response(status=404)})
    backend = await started_backend(url, engine="tgi")
    scraper = LoadScraper([backend], interval_s=1)
    try:
        first = await scraper.scrape(backend)
        assert first is not None and (first.running, first.waiting) == (24, 7)
        assert first.kv_capacity_tokens is None  # /info answered 404
        assert await scraper.scrape(backend) is None  # not Prometheus text
        assert scraper.latest("b0") is None and scraper.loads() == {}
    finally:
        await backend.close()
    closed = await started_backend("http://127.0.0.1:9", engine="vllm")  # nothing listens
    try:
        assert await LoadScraper([closed], interval_s=1).scrape(closed) is None
    finally:
        await closed.close()


async def test_engines_without_load_are_not_scraped() -> None:
    ollama = Backend("o", "p", backend_config(engine="ollama"), 1.0)
    hosted = Backend("h", "p", backend_config(engine="openai"), 1.0)
    scraper = LoadScraper([ollama, hosted], interval_s=1)
    await scraper.start()
    await scraper.stop()
    assert scraper.loads() == {}


def test_stale_snapshots_count_as_unknown() -> None:
    load = EngineLoad(engine="vllm", running=1, scraped_at=time.time() - 10)
    scraper = LoadScraper([], interval_s=1.0)
    scraper._latest["b0"] = load
    assert scraper.max_age_s == 3.0
    assert scraper.latest("b0") is None
    assert load.fresh(11) and not load.fresh(9)
