"""The gateway in front of real vLLM servers (CPU build, tiny model), unchanged.

Runs when ``FAIRGATE_REAL_VLLM_URLS`` (comma-separated; or ``FAIRGATE_REAL_VLLM_URL`` for one)
names running vLLM servers serving the model ``tiny``: ``make e2e-vllm`` starts two with
``../shared/tools/real-vllm/`` and runs this file. ``make test`` skips it, since starting an
engine takes minutes. Engines are expected with an 80 MB KV cache (40,960 tokens), as
``make e2e-vllm`` starts them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os

import aiohttp
import openai
import pytest
from redis.asyncio import Redis

from backends.engine_load import DEFAULT_HEADROOM, parse_vllm_metrics
from tests.conftest import RunningGateway, StartGateway, gateway_config, inflight_state

_GIVEN = os.environ.get("FAIRGATE_REAL_VLLM_URLS") or os.environ.get("FAIRGATE_REAL_VLLM_URL", "")
URLS = [url.strip().rstrip("/") for url in _GIVEN.split(",") if url.strip()]
pytestmark = pytest.mark.skipif(not URLS, reason="set FAIRGATE_REAL_VLLM_URLS to running vLLMs")
two_engines = pytest.mark.skipif(len(URLS) < 2, reason="needs two vLLM servers")
MESSAGES = [{"role": "user", "content": "Hello"}]
PREFIX = "fairgate:{adm}:"


@pytest.fixture
async def gateway(start_gateway: StartGateway, redis_url: str) -> RunningGateway:
    config = gateway_config(redis_url, {"interactive": URLS})
    for backend in config["pools"]["interactive"]["backends"].values():
        backend["models"] = ["tiny"]
    config["server"]["engine_load_interval_s"] = 0.2
    config["admission"] = {"engine_max_waiting": None}  # this test loads engines on purpose
    return await start_gateway(config)


async def test_chat_and_stream_through_the_gateway(gateway: RunningGateway) -> None:
    client = gateway.client()
    reply = await client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 8
    for include_usage in (True, False):
        stream = await client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": include_usage},
            extra_body={"ignore_eos": True},
        )
        chunks = [c async for c in stream]
        assert (chunks[-1].usage is not None) is include_usage
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1


async def test_engine_errors_pass_through(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await gateway.client().chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=-1
        )


async def test_usage_reconciles_the_tenants_service(
    gateway: RunningGateway, redis_url: str
) -> None:
    """The tenant is charged what vLLM reports (prompt + 2 x output), not what was estimated,
    also for a stream whose client did not ask for the usage chunk."""
    redis = Redis.from_url(redis_url)
    client = gateway.client()
    try:
        reply = await client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=7, extra_body={"ignore_eos": True}
        )
        longer = [{"role": "user", "content": "Tell me more " * 40}]
        stream = await client.chat.completions.create(
            model="tiny",
            messages=longer,
            max_tokens=11,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = [chunk async for chunk in stream]
        assert all(chunk.usage is None for chunk in chunks)
        usage = reply.usage
        engine_prompt = await _engine_prompt_tokens(
            [{"role": "user", "content": "Tell me more " * 40}]
        )
        expected = usage.prompt_tokens + 2 * 7 + engine_prompt + 2 * 11
        for _ in range(100):  # released in the background, after the response
            if not await inflight_state(redis):
                break
            await asyncio.sleep(0.05)
        assert float(await redis.hget(PREFIX + "vtc", "a")) == pytest.approx(expected)
    finally:
        await redis.aclose()


async def test_engine_metrics_are_scraped_into_budgets(
    gateway: RunningGateway, redis_url: str
) -> None:
    """vLLM's reported KV capacity becomes each backend's token budget (none is configured)."""
    expected = {}
    for url in URLS:
        async with gateway.http.get(f"{url}/metrics") as resp:
            capacity = parse_vllm_metrics(await resp.text()).kv_capacity_tokens
        assert capacity is not None, url
        expected[url] = math.floor(capacity * DEFAULT_HEADROOM)
    redis = Redis.from_url(redis_url)
    try:
        budgets: dict[str, int] = {}
        for _ in range(100):
            configs = await redis.hgetall(PREFIX + "cfg:backends")
            budgets = {k.decode(): json.loads(v)["mt"] for k, v in configs.items()}
            if sorted(budgets.values()) == sorted(expected.values()):
                break
            await asyncio.sleep(0.1)
        backends = gateway.settings.pools["interactive"].backends
        assert budgets == {name: expected[str(b.url).rstrip("/")] for name, b in backends.items()}
    finally:
        await redis.aclose()


@two_engines
async def test_an_engine_loaded_by_others_gets_less_work(
    gateway: RunningGateway, redis_url: str
) -> None:
    """Clients outside fairgate load the first engine; its KV usage, scraped from its metrics,
    steers the gateway's requests to the second (by fairgate's own books they are equal)."""
    redis = Redis.from_url(redis_url)
    outside = [asyncio.ensure_future(_long_stream(URLS[0], i)) for i in range(6)]
    try:
        for _ in range(200):
            engine = await redis.hgetall(PREFIX + "engine")
            used = [int(engine.get(f"interactive-{i}:tokens".encode(), 0)) for i in range(2)]
            if used[0] > used[1] + 1000:
                break
            await asyncio.sleep(0.1)
        assert used[0] > used[1] + 1000, used
        backends = []
        for _ in range(4):
            raw = await gateway.client().chat.completions.with_raw_response.create(
                model="tiny", messages=MESSAGES, max_tokens=4, extra_body={"ignore_eos": True}
            )
            backends.append(raw.headers["X-Fairgate-Backend"])
        assert backends == ["interactive-1"] * 4
    finally:
        for task in outside:
            task.cancel()
        await asyncio.gather(*outside, return_exceptions=True)
        await redis.aclose()


async def test_disconnect_frees_the_engine(gateway: RunningGateway) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 30000, "ignore_eos": True}
    resp = await gateway.http.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "stream": True},
        headers={"Authorization": "Bearer key-a"},
    )
    await resp.content.readuntil(b"\n\n")
    backend = resp.headers["X-Fairgate-Backend"]
    url = URLS[int(backend.rsplit("-", 1)[1])]
    assert await _running(gateway.http, url) >= 1
    resp.close()
    for _ in range(200):  # vLLM frees a disconnected request within about 0.1 s
        if await _running(gateway.http, url) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("vLLM still runs the request after the client went away")


async def _running(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as metrics:
        text = await metrics.text()
    lines = [line for line in text.splitlines() if line.startswith("vllm:num_requests_running")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def _engine_prompt_tokens(messages: list[dict[str, str]]) -> int:
    async with aiohttp.ClientSession() as http:
        body = {"model": "tiny", "messages": messages}
        async with http.post(f"{URLS[0]}/tokenize", json=body) as response:
            return int((await response.json())["count"])


async def _long_stream(url: str, index: int) -> None:
    """A long request straight to the engine (unique prompt: no prefix-cache hit)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"load {index} " + "word " * 2500}],
        "max_tokens": 20000,
        "ignore_eos": True,
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/chat/completions", json=body) as response:
            async for _ in response.content.iter_any():
                pass


async def test_weighted_shares_hold_in_front_of_a_real_engine(
    start_gateway: StartGateway, redis_url: str
) -> None:
    """Two backlogged tenants, weights 3 : 1, on one real engine that fairgate lets run 4
    requests at once. The heavy tenant asks short answers (24 tokens), the light one long ones
    (96), so serving requests in turn would give the light one most of the engine (about 0.77
    of the service); weighted fair order splits the service 3 : 1, counted from the engine's
    own usage as fairgate counts service (prompt tokens + 2 x output tokens)."""
    config = gateway_config(redis_url, {"interactive": URLS[:1]})
    backend = config["pools"]["interactive"]["backends"]["interactive-0"]
    backend |= {"models": ["tiny"], "max_concurrency": 4}
    config["tenants"] = {
        "a": {"api_keys": ["key-a"], "weight": 3},
        "b": {"api_keys": ["key-b"], "weight": 1},
    }
    config["admission"] = {"engine_max_waiting": None}  # the engine is loaded on purpose
    gateway = await start_gateway(config)
    loop = asyncio.get_running_loop()
    # service as it streams: (when, service) per chunk, the prompt's with the first
    served: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    finished = asyncio.Event()
    completed = {"a": 0, "b": 0}
    marks: list[float] = []  # when the light tenant completed its 10th and its 70th request

    async def client(tenant: str, max_tokens: int, index: int) -> None:
        api = gateway.client(f"key-{tenant}")
        for n in itertools.count():
            reply = await api.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": f"{tenant} {index} {n}"}],  # no cache hit
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            chunks, usage = [], None
            async for chunk in reply:
                if chunk.usage:
                    usage = chunk.usage
                elif chunk.choices:
                    chunks.append(loop.time())
            assert usage is not None and chunks
            each = 2 * usage.completion_tokens / len(chunks)  # a token a chunk, near enough
            served[tenant] += [(chunks[0], usage.prompt_tokens)] + [(at, each) for at in chunks]
            completed[tenant] += 1
            if tenant == "b" and completed["b"] in (10, 70):
                marks.append(loop.time())
            if len(marks) == 2:
                finished.set()
                return

    clients = [
        asyncio.ensure_future(client(tenant, max_tokens, i))
        for tenant, max_tokens in (("a", 24), ("b", 96))
        for i in range(8)
    ]
    try:
        await asyncio.wait_for(finished.wait(), 600)
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    start, end = marks  # both backlogged throughout
    service = {t: sum(s for at, s in chunks if start < at <= end) for t, chunks in served.items()}
    share = service["a"] / (service["a"] + service["b"])
    assert 0.70 <= share <= 0.80, (share, service)
