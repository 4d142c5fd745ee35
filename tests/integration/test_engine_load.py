"""Engine load from the engines' own metrics (backends/engine_load.py).

Parsers run on real text: a /metrics capture of vLLM 0.32 (CPU build, via
../shared/tools/real-vllm, six streams running), the simulator's live /metrics, and fixtures in
the documented formats of SGLang, llama.cpp server and TGI (tests/integration/data/README.md
says where each comes from). The scraper runs against a real simulator, small real HTTP servers and,
where only what it makes of an answer matters, a fake transport.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

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
)
from backends.engines import ENGINES
from backends.transport import EngineRequest, FakeResponse, FakeTransport
from fairgate.settings import BackendConfig
from tests.conftest import ServeApp, StartSim

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


def started_backend(url: str, engine: str = "vllm") -> Backend:
    return Backend("b0", backend_config(engine=engine).model_copy(update={"url": url}))


class Reports(list[tuple[str, EngineLoad | None]]):
    """What a scraper reported, in order."""

    async def __call__(self, backend: Backend, load: EngineLoad | None) -> None:
        self.append((backend.name, load))


Serve = Callable[[dict[str, web.Response | Callable[[], web.Response]]], Awaitable[str]]


@pytest.fixture
def fake_engine(serve_app: ServeApp) -> Serve:
    """Real HTTP servers on loopback answering fixed bodies per path."""

    async def start(routes: dict[str, Any]) -> str:
        app = web.Application()
        for path, answer in routes.items():

            async def handler(_: web.Request, answer: Any = answer) -> web.Response:
                return answer() if callable(answer) else answer

            app.router.add_get(path, handler)
        return await serve_app(app)

    return start


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
    backend = started_backend(sim.url)
    try:
        for _ in range(400):
            state = await sim.state()
            if (state["running"], state["waiting"]) == (2, 3):
                break
            await asyncio.sleep(0.02)
        reports = Reports()
        load = await LoadScraper([backend], 1.0, reports).scrape(backend)
        after = await sim.state()
        assert load is not None and reports == [("b0", load)]
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


async def test_sglang_capacity_comes_from_server_info(fake_engine: Serve) -> None:
    url = await fake_engine(
        {
            "/metrics": web.Response(text=data("sglang-metrics.txt")),
            "/get_server_info": web.json_response(json.loads(data("sglang-server-info.json"))),
        }
    )
    backend = started_backend(url, engine="sglang")
    try:
        load = await LoadScraper([backend], 1, Reports()).scrape(backend)
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
    backend = started_backend(url, engine="llamacpp")
    try:
        load = await LoadScraper([backend], 1, Reports()).scrape(backend)
        assert load is not None
        assert (load.running, load.waiting, load.kv_capacity_tokens) == (2, None, 16_384)
    finally:
        await backend.close()


async def test_failed_scrapes_leave_the_load_unknown(fake_engine: Serve) -> None:
    answers = iter([web.Response(text=data("tgi-metrics.txt")), web.Response(text="{not: [prom")])
    url = await fake_engine({"/metrics": lambda: next(answers), "/info": web.Response(status=404)})
    backend = started_backend(url, engine="tgi")
    reports = Reports()
    scraper = LoadScraper([backend], 1, reports)
    try:
        first = await scraper.scrape(backend)
        assert first is not None and (first.running, first.waiting) == (24, 7)
        assert first.kv_capacity_tokens is None  # /info answered 404
        assert await scraper.scrape(backend) is None  # not Prometheus text
        assert reports == [("b0", first), ("b0", None)]  # an unknown load is reported too
    finally:
        await backend.close()
    closed = started_backend("http://127.0.0.1:9", engine="vllm")  # nothing listens
    try:
        assert await LoadScraper([closed], 1, reports).scrape(closed) is None
        assert reports[-1] == ("b0", None)
    finally:
        await closed.close()


async def test_engines_without_load_are_not_scraped() -> None:
    metrics = FakeResponse(body=data("vllm-0.32-cpu-metrics.txt"))
    vllm = Backend("v", backend_config(), FakeTransport(lambda _: metrics))
    ollama = Backend("o", backend_config(engine="ollama"), FakeTransport(_never))
    hosted = Backend("h", backend_config(engine="openai"), FakeTransport(_never))
    reports = Reports()
    scraper = LoadScraper([vllm, ollama, hosted], 1, reports)
    await scraper.start()
    for _ in range(100):
        if reports:
            break
        await asyncio.sleep(0.01)
    await scraper.stop()
    assert [name for name, _ in reports] == ["v"]


async def test_a_failing_listener_does_not_stop_the_scrapes() -> None:
    async def broken(backend: Backend, load: EngineLoad | None) -> None:
        raise RuntimeError("listener bug")

    metrics = FakeResponse(body=data("vllm-0.32-cpu-metrics.txt"))
    backend = Backend("b0", backend_config(), FakeTransport(lambda _: metrics))
    load = await LoadScraper([backend], 1, broken).scrape(backend)
    assert load is not None and load.kv_capacity_tokens == 8192 * 128


def _never(request: EngineRequest) -> FakeResponse:
    raise AssertionError(f"{request.path} was asked of an engine that reports no load")


def test_saturated_engines_are_looked_at_more_often() -> None:
    scraper = LoadScraper([], 1.0, Reports(), max_waiting=0)
    waiting = EngineLoad(engine="vllm", running=4, waiting=1, scraped_at=0.0)
    idle = waiting.model_copy(update={"waiting": 0})
    assert scraper.saturated(waiting) and not scraper.saturated(idle)
    assert not scraper.saturated(None)  # an unknown load holds nothing
    assert (scraper.next_delay(waiting), scraper.next_delay(idle)) == (0.25, 1.0)
    assert scraper.max_age_s == 3.0
    assert not LoadScraper([], 1.0, Reports(), max_waiting=None).saturated(waiting)
