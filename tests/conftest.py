"""Shared fixtures: simulated engines, Redis and gateways on loopback, on free ports."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Protocol, TypeVar

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from admission.controller import Admission
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import GatewayRedis
from fairgate.serving import serve
from fairgate.settings import Settings
from gateway.app import create_app as create_gateway
from gateway.state import GATEWAY, Gateway
from loadtest.services import free_port, stop, wait_listening
from loadtest.simulator.profile import DEFAULT_PROFILE, EngineProfile, load_profile, profile_path
from loadtest.simulator.server import SIMULATOR, Simulator, create_app

REPO = Path(__file__).resolve().parent.parent
H100_PROFILE = profile_path(DEFAULT_PROFILE)
MODEL = "llama-3-8b"
STORY: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a long story."}]


async def completion_tokens(client: openai.AsyncOpenAI, max_tokens: int, stream: bool) -> int:
    """A chat completion of exactly ``max_tokens`` tokens (any error raises); the tokens made."""
    completions, exact = client.chat.completions, {"ignore_eos": True}
    if not stream:
        reply = await completions.create(
            model=MODEL, messages=STORY, max_tokens=max_tokens, extra_body=exact
        )
        assert reply.usage is not None
        return reply.usage.completion_tokens
    chunks = await completions.create(
        model=MODEL,
        messages=STORY,
        max_tokens=max_tokens,
        extra_body=exact,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage async for chunk in chunks if chunk.usage]
    assert len(usage) == 1
    return usage[0].completion_tokens


def completion_body(
    content: str = "ok", prompt_tokens: int = 1, completion_tokens: int = 1
) -> dict:
    """A whole chat completion as an engine answers it (for engines written as aiohttp apps)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


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

    async def holding(self) -> int:
        """Requests the engine holds now, running or waiting (0 once all have ended)."""
        state = await self.state()
        return int(state["running"]) + int(state["waiting"])

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


async def inflight_state(
    client: Redis, prefix: str = AdmissionKeys.of("fairgate").prefix
) -> dict[str, object]:
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


class HoldsRequests(Protocol):
    """An engine a test can ask how many requests it still holds (running or waiting)."""

    async def holding(self) -> int: ...


async def assert_settled(
    redis_url: str,
    engines: Sequence[HoldsRequests] = (),
    within_s: float = 15.0,
    key_prefix: str = "fairgate",
) -> None:
    """Admission holds nothing and no engine holds an orphaned request, within ``within_s``.

    What every fault test ends with: every in-flight counter, lease, queue entry and pending
    charge gone from Redis (leases of killed processes expire within their TTL), and every
    engine idle (a request the gateway gave up on was aborted in the engine, not left to run).
    Fails with what is left.
    """
    client = Redis.from_url(redis_url)
    prefix = AdmissionKeys.of(key_prefix).prefix
    try:
        for _ in range(int(within_s / 0.05)):
            left = await inflight_state(client, prefix)
            held = [await engine.holding() for engine in engines]
            if not left and not any(held):
                return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    assert not left, f"admission state left in Redis: {sorted(left)}"
    assert not any(held), f"requests still held by the engines: {held}"


@pytest.fixture
async def redis_url(redis_proc) -> AsyncIterator[str]:  # noqa: ANN001 - pytest-redis executor
    """A private redis-server (started once per session by pytest-redis), emptied per test.

    After the test, every admission counter, lease and queue must be back to empty: nothing
    a test did may leak capacity (leases of killed processes expire within their TTL).
    """
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    client = Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    yield url
    await assert_settled(url)


class RedisProcess:
    """A redis-server that the test can stop and start again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a stopped process cannot end on SIGTERM
            stop(self.process)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and nothing answers, as in a network
        partition; its data stays, unlike after a restart."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    redis = RedisProcess()
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[GatewayRedis]:
    """A client of the test's Redis (the gateway's own kind: redis-py plus the script channel)."""
    client = GatewayRedis.from_url(redis_url)
    yield client
    await client.aclose()


T = TypeVar("T")


async def read_until(read: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """What ``read`` gives once ``done`` holds of it (work that runs in the background, such as
    admission's script calls after a request, settles within a few seconds), or what it gave
    last: the caller's assertion then shows what was there instead."""
    for _ in range(200):
        value = await read()
        if done(value):
            return value
        await asyncio.sleep(0.02)
    return value


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


async def wait_answering(
    url: str, process: subprocess.Popen[bytes] | None = None, ssl: SSLContext | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``process`` exits first (``ssl``: the
    client context of an ``https://`` URL)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl or True)) as http:
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
    app: web.Application
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def state(self) -> Gateway:
        """The in-process gateway's state (what its requests share)."""
        return self.app[GATEWAY]

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
        idle, tls = settings.server.idle_timeout_s, settings.server.tls
        runner = await serve(app, "127.0.0.1", *ports, idle_timeout_s=idle, tls=tls)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        scheme = "http" if settings.server.tls is None else "https"
        gateways.append(
            RunningGateway(f"{scheme}://{host}:{port}", settings, aiohttp.ClientSession(), app)
        )
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
