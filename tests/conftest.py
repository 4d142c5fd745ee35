"""Shared fixtures: simulated engines on loopback, started in-process on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from fairgate.serving import serve
from loadtest.simulator.profile import EngineProfile, load_profile
from loadtest.simulator.server import SIMULATOR, Simulator, create_app

REPO = Path(__file__).resolve().parent.parent
H100_PROFILE = REPO / "config" / "sim" / "h100-llama3-8b.yaml"


@dataclass
class RunningSim:
    """A simulator listening on loopback, and a client session to talk to it."""

    url: str
    sim: Simulator
    http: aiohttp.ClientSession

    async def timeline(self, request_id: str) -> dict:
        async with self.http.get(f"{self.url}/sim/requests/{request_id}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def state(self) -> dict:
        async with self.http.get(f"{self.url}/sim/state") as resp:
            return await resp.json()

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 if absent)."""
        async with self.http.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


StartSim = Callable[..., Awaitable[RunningSim]]


@pytest.fixture
def h100() -> EngineProfile:
    return load_profile(H100_PROFILE)


@pytest.fixture
async def start_sim(h100: EngineProfile) -> AsyncIterator[StartSim]:
    """Start simulators: ``await start_sim(time_scale=50, **{"scheduler.max_num_seqs": 4})``."""
    runners = []
    sessions = []

    async def start(
        time_scale: float = 50.0,
        seed: int = 0,
        models: list[str] | None = None,
        **overrides: object,
    ) -> RunningSim:
        profile = h100.with_overrides(**overrides)
        app = create_app(profile, models, time_scale=time_scale, seed=seed)
        runner = await serve(app, "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return RunningSim(f"http://{host}:{port}", app[SIMULATOR], session)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


def words(n: int) -> str:
    """A text of exactly ``n`` cl100k tokens (" hello" is one token)."""
    return " hello" * n
