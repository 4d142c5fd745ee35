"""Shared fixtures: simulated engines, Redis and gateways on loopback, on free ports."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web
from redis.asyncio import Redis

from admission.controller import Admission
from fairgate.redis_client import GatewayRedis
from fairgate.serving import serve
from fairgate.settings import Settings
from gateway.app import create_app as create_gateway
from loadtest.simulator.profile import DEFAULT_PROFILE, EngineProfile, load_profile, profile_path
from loadtest.simulator.server import SIMULATOR, Simulator, create_app

REPO = Path(__file__).resolve().parent.parent
H100_PROFILE = profile_path(DEFAULT_PROFILE)


@dataclass
class RunningSim:
    """A simulator listening on loopback, and a client session to talk to it."""

    url: str
    sim: Simulator
    http: aiohttp.ClientSession
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def client(self) -> openai.AsyncOpenAI:
        """An async OpenAI client straight to this engine (closed with it)."""
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)
        self.clients.append(client)
        return client

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
    sims: list[RunningSim] = []

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
        sims.append(RunningSim(f"http://{host}:{port}", app[SIMULATOR], aiohttp.ClientSession()))
        return sims[-1]

    yield start
    for sim in sims:
        await _close(sim.clients, sim.http)
    for runner in runners:
        await runner.cleanup()


async def _close(clients: list[openai.AsyncOpenAI], http: aiohttp.ClientSession) -> None:
    for client in clients:
        await client.close()
    await http.close()


# ------------------------------------------------------------------------- Redis, gateway


#: Admission keys that hold requests in flight or waiting: all must be gone when traffic stops.
INFLIGHT_KEYS = (
    "tload",
    "bload",
    "lent",
    "lease",
    "req",
    "exp",
    "dl",
    "fifo",
    "granted",
    "bandlog",
    "queued",
)


async def inflight_state(client: Redis, prefix: str = "fairgate:{adm}:") -> dict[str, object]:
    """What admission still holds: in-flight counters, leases, queues (empty when idle)."""
    left: dict[str, object] = {}
    for name in INFLIGHT_KEYS:
        if await client.exists(prefix + name):
            left[name] = await client.dump(prefix + name)
    pending = [f for f in await client.hkeys(prefix + "vtc") if f.startswith(b"p:")]
    if pending:  # input charged to requests in flight: gone with the last of them
        left["vtc pending"] = pending
    async for key in client.scan_iter(match=f"{prefix}q:*"):
        left[key.decode()] = await client.zrange(key, 0, -1)
    async for key in client.scan_iter(match=f"{prefix}backlog:*"):
        left[key.decode()] = await client.zrange(key, 0, -1)
    async for key in client.scan_iter(match=f"{prefix}ant:*"):  # leases held for a next request
        left[key.decode()] = await client.zrange(key, 0, -1)
    return left


@pytest.fixture
async def redis_url(redis_proc) -> AsyncIterator[str]:  # noqa: ANN001 - pytest-redis executor
    """A private redis-server (started once per session by pytest-redis), emptied per test.

    After the test, every admission counter, lease and queue must be back to empty: nothing
    a test did may leak capacity (leases of killed processes expire within their TTL).
    """
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    client = Redis.from_url(url)
    await client.flushall()
    yield url
    for _ in range(300):
        left = await inflight_state(client)
        if not left:
            break
        await asyncio.sleep(0.05)
    await client.aclose()
    assert not left, f"admission state left in Redis after the test: {sorted(left)}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[GatewayRedis]:
    """A client of the test's Redis (the gateway's own kind: redis-py plus the script channel)."""
    client = GatewayRedis.from_url(redis_url)
    yield client
    await client.aclose()


MakeAdmission = Callable[[Settings], Awaitable[Admission]]


@pytest.fixture
async def admission_for(redis_url: str) -> AsyncIterator[MakeAdmission]:
    """Admission clients (one per simulated replica), stopped after the test."""
    started: list[tuple[Admission, GatewayRedis]] = []

    async def make(settings: Settings) -> Admission:
        client = GatewayRedis.from_url(redis_url)
        admission = Admission(client, settings)
        await admission.start()
        started.append((admission, client))
        return admission

    yield make
    for admission, client in started:
        await admission.stop()  # also releases what it holds for reuse
        await client.aclose()


async def wait_answering(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``process`` exits first."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the process for {url} exited with {process.returncode}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered 200")


async def redis_contents(url: str) -> dict[str, object]:
    """Every key of a Redis and its value, whatever its type (to inspect what is left)."""
    client = Redis.from_url(url)
    readers = {
        b"hash": client.hgetall,
        b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        b"list": lambda k: client.lrange(k, 0, -1),
        b"set": client.smembers,
        b"string": client.get,
    }
    contents = {}
    async for key in client.scan_iter():
        kind = await client.type(key)
        if kind in readers:  # "none": it expired or was removed since the scan saw it
            contents[key.decode()] = await readers[kind](key)
    await client.aclose()
    return contents


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    http: aiohttp.ClientSession
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def client(self, key: str = "key-a") -> openai.AsyncOpenAI:
        """An async OpenAI client for the tenant of ``key`` (closed with the gateway)."""
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def sync_client(self, key: str = "key-a") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)


StartGateway = Callable[..., Awaitable[RunningGateway]]


def gateway_config(redis_url: str, pools: dict[str, list[str]], **sections: object) -> dict:
    """A configuration dict: ``pools`` maps a pool name to its backends' URLs.

    Tenants ``a`` (key ``key-a``, all pools) and ``b`` (key ``key-b``, the first pool only)
    unless ``tenants=`` is given.
    """
    first = next(iter(pools))
    config: dict = {
        "redis": {"url": redis_url},
        "server": {"health_check_interval_s": 0.2, "unhealthy_backoff_s": 0.5},
        "pools": {
            name: {
                "backends": {
                    f"{name}-{i}": {"url": url, "models": ["llama-3-8b"], "connect_timeout_s": 2}
                    for i, url in enumerate(urls)
                }
            }
            for name, urls in pools.items()
        },
        "tenants": {
            "a": {"api_keys": ["key-a"]},
            "b": {"api_keys": ["key-b"], "pools": [first]},
        },
    }
    config.update(sections)
    return config


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Start gateways in-process: ``await start_gateway(gateway_config(...))``; keyword
    arguments go to ``create_app`` (``tracer_provider=``)."""
    runners = []
    gateways: list[RunningGateway] = []

    async def start(config: dict, **app_options: object) -> RunningGateway:
        settings = Settings(**config)
        admin_port = settings.server.admin_port
        ports = (0,) if admin_port is None else (0, admin_port)
        app = create_gateway(settings, **app_options)
        idle = settings.server.idle_timeout_s
        runner = await serve(app, "127.0.0.1", *ports, idle_timeout_s=idle)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        gateways.append(RunningGateway(f"http://{host}:{port}", settings, aiohttp.ClientSession()))
        return gateways[-1]

    yield start
    for gateway in gateways:
        await _close(gateway.clients, gateway.http)
    for runner in runners:
        await _cleanup(runner)


async def _cleanup(runner: web.AppRunner, timeout_s: float = 30.0) -> None:
    """Stop a gateway; a shutdown that hangs fails with what it still waits for."""
    try:
        async with asyncio.timeout(timeout_s):
            await runner.cleanup()
    except TimeoutError:
        stuck = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        stacks = "\n".join(f"{task!r}: {task.get_stack(limit=8)}" for task in stuck)
        raise AssertionError(f"the gateway did not shut down; still running:\n{stacks}") from None


ServeApp = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """Serves small aiohttp applications (stand-ins for an engine) on loopback; their URLs."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = await serve(app, "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
