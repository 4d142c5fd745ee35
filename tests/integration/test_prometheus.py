"""A real Prometheus server scrapes a running gateway under load, and every query of the
Grafana dashboard (config/grafana/fairgate.json) returns data through its HTTP API: the names,
labels, types and PromQL the dashboard and docs/metrics.md rely on hold for Prometheus itself.

Real parts: Debian's ``prometheus`` (2.x) as a process on loopback (skipped when it is not
installed; .ci/run installs it), a simulated engine, an in-process gateway on a real
redis-server, the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from loadtest.services import free_port
from tests.conftest import RunningGateway, StartGateway, StartSim, gateway_config
from tests.integration.dashboard import Query, queries

PROMETHEUS = shutil.which("prometheus")
MODEL = "llama-3-8b"
MESSAGES = [{"role": "user", "content": "Write a haiku about queues."}]

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus is not installed (apt-get install prometheus): the test that runs the "
    "dashboard's queries on a real Prometheus server needs it",
)


async def _load(gateway: RunningGateway, stop: asyncio.Event) -> None:
    """Plain and streamed requests of two tenants, and refusals: no key, and ``c`` over its
    quota."""
    a, b = gateway.client("key-a"), gateway.client("key-b")
    nobody, limited = gateway.client("nobody"), gateway.client("key-c")

    async def streamed(client: openai.AsyncOpenAI) -> None:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8, stream=True
        )
        async for _ in stream:
            pass

    while not stop.is_set():
        await a.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        await streamed(a)
        await streamed(b)
        for refused in (nobody, limited):  # 401; c's requests_per_minute is spent
            try:
                await refused.chat.completions.create(model=MODEL, messages=MESSAGES)
            except (openai.AuthenticationError, openai.RateLimitError):
                pass
        await asyncio.sleep(0.05)


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A Prometheus on loopback (its URL), scraping what the test writes into its file_sd
    targets file (the path)."""
    targets = tmp_path / "targets.yaml"
    targets.write_text("[]\n")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "fairgate",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    process = subprocess.Popen(  # noqa: S603 - the test's own arguments
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _until_ready(url, process, tmp_path / "prometheus.log")
        yield url, targets
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def _until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{log.read_text()[-3000:]}")
            try:
                async with http.get(f"{url}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"prometheus never became ready:\n{log.read_text()[-3000:]}")


async def _query(http: aiohttp.ClientSession, url: str, promql: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        body = await response.json()
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _has_data(result: list[dict[str, Any]]) -> bool:
    """Some series with a number (histogram_quantile is NaN over a window without one)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


async def test_the_dashboards_queries_return_data_from_a_real_prometheus(
    start_sim: StartSim,
    start_gateway: StartGateway,
    redis_url: str,
    prometheus: tuple[str, Path],
) -> None:
    url, targets = prometheus
    sim = await start_sim(time_scale=100.0)
    config = gateway_config(redis_url, {"chat": [sim.url]})
    config["tenants"]["c"] = {"api_keys": ["key-c"], "quotas": {"requests_per_minute": 1}}
    gateway = await start_gateway(config)
    targets.write_text(yaml.safe_dump([{"targets": [gateway.url.removeprefix("http://")]}]))
    stop = asyncio.Event()
    load = asyncio.create_task(_load(gateway, stop))
    missing: list[Query] = list(queries())
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(120):  # until every query has data (a scrape a second)
                missing = [q for q in missing if not _has_data(await _query(http, url, q.promql))]
                if not missing:
                    break
                await asyncio.sleep(0.5)
            up = await _query(http, url, 'up{job="fairgate"}')
    finally:
        stop.set()
        await load
    assert [series["value"][1] for series in up] == ["1"]
    assert [f"{q.panel}: {q.promql}" for q in missing] == []
