"""``fairgate serve --workers N``: one port, N processes, a supervisor that restarts and drains.

Real processes throughout: the supervisor and its workers are ``fairgate serve`` started as an
operator would, the engine an in-process simulator, Redis the suite's own. Which worker served
a request is read from ``/metrics`` (its series carry ``worker``), from any one of them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.shared_metrics import is_shared
from tests.conftest import (
    REPO,
    RunningSim,
    StartSim,
    gateway_config,
    inflight_state,
    wait_answering,
)

pytestmark = pytest.mark.timeout(120)

MODEL = "llama-3-8b"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


class Workers:
    """A running ``fairgate serve --workers N`` and its URL."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process, self.url = process, url

    def pids(self) -> list[int]:
        """The supervisor's children now (its workers)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(pid) for pid in path.read_text().split())

    async def served(self) -> dict[str, float]:
        """Requests served per worker, as one scrape of ``/metrics`` says."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        served: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "fairgate_requests":
                for sample in family.samples:
                    if sample.labels.get("outcome") == "served":
                        worker = sample.labels["worker"]
                        served[worker] = served.get(worker, 0.0) + sample.value
        return served


@pytest.fixture
async def start_workers(
    tmp_path: Path, redis_url: str, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Callable[..., object]]:
    started: list[subprocess.Popen[bytes]] = []

    async def start(sim: RunningSim, workers: int) -> Workers:
        port = unused_tcp_port_factory()
        config = gateway_config(redis_url, {"interactive": [sim.url]})
        config["server"]["port"] = port
        config["server"]["worker_grace_s"] = 30
        path = tmp_path / "fairgate.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRGATE_")}
        env.pop("REDIS_URL", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "fairgate.cli", "--log-level", "warning", "serve"]
            + ["--config", str(path), "--workers", str(workers)],
            env=env,
            cwd=REPO,
        )
        started.append(process)
        running = Workers(process, f"http://127.0.0.1:{port}")
        await wait_answering(f"{running.url}/readyz", process)
        for _ in range(200):  # every worker up (each answers readyz once its app started)
            if len(running.pids()) == workers and len(await running.served()) == workers:
                break
            await asyncio.sleep(0.05)
        return running

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=60)


async def _complete(url: str, count: int, key: str = "key-a") -> list[int]:
    """``count`` requests at once, each on a connection of its own; their statuses."""

    async def one() -> int:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            headers = {"Authorization": f"Bearer {key}"}
            async with http.post(f"{url}/v1/chat/completions", json=BODY, headers=headers) as r:
                await r.read()
                return r.status

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _idle(redis_url: str) -> dict[str, object]:
    client = Redis.from_url(redis_url)
    try:
        for _ in range(100):
            left = await inflight_state(client)
            if not left:
                return left
            await asyncio.sleep(0.05)
        return left
    finally:
        await client.aclose()


async def test_workers_share_one_port_and_any_scrape_shows_them_all(
    start_sim: StartSim, start_workers: Callable[..., object], redis_url: str
) -> None:
    sim = await start_sim(time_scale=200)
    workers: Workers = await start_workers(sim, 2)  # type: ignore[misc]
    assert len(workers.pids()) == 2

    statuses = await _complete(workers.url, 40)

    assert statuses == [200] * 40
    # the kernel spread the 40 connections over both workers' sockets; every scrape, whichever
    # worker answers it, holds both workers' counts, which add up to what was sent
    for _ in range(3):
        served = await workers.served()
        assert set(served) == {"0", "1"}
        assert all(count > 0 for count in served.values())
        assert sum(served.values()) == 40
    async with aiohttp.ClientSession() as http, http.get(f"{workers.url}/metrics") as resp:
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["worker"]: s.value for s in families["fairgate_worker_up"].samples} == {
        "0": 1.0,
        "1": 1.0,
    }
    # the shared state (read from Redis) once, with no worker label: never summed twice
    shared = [f for name, f in families.items() if is_shared(name)]
    assert "fairgate_shared_state_up" in {f.name for f in shared}
    assert all("worker" not in s.labels for f in shared for s in f.samples)
    assert await _idle(redis_url) == {}


async def test_a_killed_worker_is_replaced_and_its_connections_wait_for_it(
    start_sim: StartSim, start_workers: Callable[..., object], redis_url: str
) -> None:
    sim = await start_sim(time_scale=200)
    workers: Workers = await start_workers(sim, 2)  # type: ignore[misc]
    before = workers.pids()

    os.kill(before[0], signal.SIGKILL)
    # sent at once, while the killed worker's successor is still starting: the connections the
    # kernel hashed to its socket wait in that socket's backlog (the supervisor holds it)
    statuses = await _complete(workers.url, 30)

    assert statuses == [200] * 30
    for _ in range(200):
        after = workers.pids()
        if len(after) == 2 and before[0] not in after:
            break
        await asyncio.sleep(0.05)
    assert len(after) == 2 and before[0] not in after and before[1] in after
    assert await _idle(redis_url) == {}


async def test_sigterm_lets_every_worker_finish_its_streams_then_exits(
    start_sim: StartSim, start_workers: Callable[..., object], redis_url: str
) -> None:
    sim = await start_sim(time_scale=1)  # ~6 ms per token: 150 tokens take about a second
    workers: Workers = await start_workers(sim, 2)  # type: ignore[misc]
    pids = workers.pids()
    body = {**BODY, "max_tokens": 150, "stream": True, "ignore_eos": True}

    async def stream() -> bytes:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            headers = {"Authorization": "Bearer key-a"}
            async with http.post(
                f"{workers.url}/v1/chat/completions", json=body, headers=headers
            ) as resp:
                assert resp.status == 200
                return await resp.read()

    streams = [asyncio.ensure_future(stream()) for _ in range(6)]
    for _ in range(400):  # all six running in the engine before the signal
        if (await sim.state())["running"] == 6:
            break
        await asyncio.sleep(0.01)
    assert (await sim.state())["running"] == 6
    workers.process.send_signal(signal.SIGTERM)
    bodies = await asyncio.gather(*streams)

    for body_bytes in bodies:
        assert body_bytes.rstrip().endswith(b"data: [DONE]")
        assert body_bytes.count(b'"content"') >= 150
    assert await asyncio.to_thread(workers.process.wait, 60) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert await _idle(redis_url) == {}
