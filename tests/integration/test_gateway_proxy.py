"""The gateway as a drop-in OpenAI endpoint: same answers as the engine, clear errors, no leaks.

Real parts throughout: simulated engines and gateways on loopback, a real redis-server, and the
official ``openai`` client (async, and sync in a worker thread).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from aiohttp import web

from fairgate.serving import serve
from tests.conftest import (
    RunningGateway,
    RunningSim,
    StartGateway,
    StartSim,
    gateway_config,
    redis_contents,
)

MESSAGES = [{"role": "user", "content": "Write a haiku about queues."}]


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0)


@pytest.fixture
async def gateway(start_gateway: StartGateway, sim: RunningSim, redis_url: str) -> RunningGateway:
    return await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))


def direct(sim: RunningSim) -> openai.AsyncOpenAI:
    return sim.client()


def comparable(chunk: Any) -> dict[str, Any]:
    """A response or chunk without the fields that differ per request."""
    return chunk.model_dump(exclude={"id", "created"})


# ------------------------------------------------------------------ same answers as direct


async def test_chat_answer_and_usage_identical_to_the_engine(
    gateway: RunningGateway, sim: RunningSim
) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="llama-3-8b", messages=MESSAGES, max_tokens=300
    )
    via = raw.parse()
    expected = await direct(sim).chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, max_tokens=300
    )
    assert comparable(via) == comparable(expected)
    assert via.usage.completion_tokens > 0
    assert raw.headers["x-fairgate-pool"] == "interactive"
    assert raw.headers["x-fairgate-backend"] == "interactive-0"
    # the engine got the client's id with a suffix that makes it unique
    assert via.id.startswith("chatcmpl-" + raw.headers["x-request-id"] + ".")


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_identical_to_the_engine(
    gateway: RunningGateway, sim: RunningSim, include_usage: bool
) -> None:
    async def chunks(client: openai.AsyncOpenAI) -> list[dict[str, Any]]:
        stream = await client.chat.completions.create(
            model="llama-3-8b",
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        return [comparable(c) async for c in stream]

    via, expected = await chunks(gateway.client()), await chunks(direct(sim))
    assert via == expected
    assert (via[-1]["usage"] is not None) is include_usage


async def test_stream_without_stream_options_gets_no_usage_chunk(
    gateway: RunningGateway, sim: RunningSim
) -> None:
    body = {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 5, "stream": True}

    async def events(url: str, headers: dict[str, str]) -> list[bytes]:
        async with gateway.http.post(url, json=body, headers=headers) as resp:
            raw = await resp.read()
        return [e for e in raw.split(b"\n\n") if e]

    via = await events(f"{gateway.url}/v1/chat/completions", {"Authorization": "Bearer key-a"})
    expected = await events(f"{sim.url}/v1/chat/completions", {})
    assert len(via) == len(expected) and via[-1] == b"data: [DONE]"
    assert not any(b'"usage"' in e for e in via)


async def test_sync_client_streams_and_completes(gateway: RunningGateway) -> None:
    def run() -> tuple[str, str]:
        client = gateway.sync_client()
        reply = client.completions.create(
            model="llama-3-8b",
            prompt="Once upon a time",
            max_tokens=4,
            extra_body={"ignore_eos": True},
        )
        stream = client.chat.completions.create(
            model="llama-3-8b",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return reply.choices[0].text, text

    completion, streamed = await asyncio.to_thread(run)
    assert completion == streamed  # the simulator's filler is the same for both endpoints


async def test_completions_and_embeddings(gateway: RunningGateway, sim: RunningSim) -> None:
    client = gateway.client()
    reply = await client.completions.create(
        model="llama-3-8b", prompt=[1, 2, 3], max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 3
    embedded = await client.embeddings.create(model="llama-3-8b", input=["a", "b"])
    expected = await direct(sim).embeddings.create(model="llama-3-8b", input=["a", "b"])
    assert [d.embedding for d in embedded.data] == [d.embedding for d in expected.data]


# ------------------------------------------------------------------------ models and auth


async def test_models_are_those_of_the_tenants_pools(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    chat = await start_sim()
    reasoner = await start_sim(models=["deep-thinker"])
    config = gateway_config(redis_url, {"interactive": [chat.url], "reasoning": [reasoner.url]})
    config["pools"]["reasoning"]["backends"]["reasoning-0"]["models"] = ["deep-thinker"]
    gateway = await start_gateway(config)

    assert [m.id async for m in gateway.client("key-a").models.list()] == [
        "deep-thinker",
        "llama-3-8b",
    ]
    assert [m.id async for m in gateway.client("key-b").models.list()] == ["llama-3-8b"]
    with pytest.raises(openai.NotFoundError) as refused:
        await gateway.client("key-b").chat.completions.create(
            model="deep-thinker", messages=MESSAGES
        )
    assert refused.value.code == "model_not_found"
    reply = await gateway.client("key-a").chat.completions.with_raw_response.create(
        model="deep-thinker", messages=MESSAGES, max_tokens=2
    )
    assert reply.headers["x-fairgate-pool"] == "reasoning"


async def test_unknown_or_missing_key_is_401_and_keys_are_stored_hashed(
    gateway: RunningGateway, redis_url: str
) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        await gateway.client("key-nope").chat.completions.create(
            model="llama-3-8b", messages=MESSAGES
        )
    assert refused.value.code == "invalid_api_key"
    async with gateway.http.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "llama-3-8b", "messages": MESSAGES}
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"

    contents = await redis_contents(redis_url)
    stored = [json.loads(v) for v in contents["fairgate:{adm}:dir:keys"].values()]
    assert sorted(k["tenant"] for k in stored) == ["a", "b"]
    assert all(k["sha256"].startswith("sha256:") for k in stored)
    assert "key-a" not in repr(contents)


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "bearer key-a"}, {"Authorization": "BEARER key-a"}, {"api-key": "key-a"}],
)
async def test_the_key_may_come_in_any_scheme_case_or_azure_style(
    gateway: RunningGateway, headers: dict[str, str]
) -> None:
    body = {"model": "llama-3-8b", "messages": MESSAGES}
    async with gateway.http.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as resp:
        assert resp.status == 200


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "llama-3-8b"}, "messages"),
        ({"model": "llama-3-8b", "messages": "hello"}, "messages"),
        ({"model": "llama-3-8b", "messages": []}, "messages"),
        ({"model": 42, "messages": MESSAGES}, "model"),
        ({"model": "llama-3-8b", "messages": MESSAGES, "stream": "yes"}, "stream"),
    ],
)
async def test_malformed_bodies_are_400_naming_the_parameter(
    gateway: RunningGateway, body: dict, param: str
) -> None:
    async with gateway.http.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer key-a"}
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_invalid_json_oversized_body_and_unknown_model(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str
) -> None:
    config = gateway_config(redis_url, {"interactive": [sim.url]}, server={"max_body_bytes": 4096})
    gateway = await start_gateway(config)
    async with gateway.http.post(
        f"{gateway.url}/v1/completions",
        data=b'{"model": "llama-3-8b", "prompt": "x"',
        headers={"Authorization": "Bearer key-a"},
    ) as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["error"]["message"]
    client = gateway.client()
    with pytest.raises(openai.APIStatusError) as too_big:
        await client.chat.completions.create(
            model="llama-3-8b", messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert too_big.value.status_code == 413 and too_big.value.code == "request_too_large"
    with pytest.raises(openai.NotFoundError, match="`gpt-5` does not exist"):
        await client.chat.completions.create(model="gpt-5", messages=MESSAGES)


async def test_engine_4xx_is_passed_through(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1") as refused:
        await gateway.client().chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=-1
        )
    assert refused.value.param == "max_tokens"  # the engine's own error body, unchanged


# ------------------------------------------------------------- what reaches the engine


@pytest.fixture
async def echo_engine() -> Any:
    """An engine that records each request it receives and answers a fixed completion."""
    received: list[tuple[dict[str, Any], Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        received.append((body, request.headers.copy()))
        return web.json_response(
            {
                "id": "chatcmpl-echo",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/health", health)
    runner = await serve(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", received
    await runner.cleanup()


async def test_unknown_fields_and_trace_headers_reach_the_engine_but_not_the_key(
    start_gateway: StartGateway, echo_engine: Any, redis_url: str
) -> None:
    url, received = echo_engine
    config = gateway_config(redis_url, {"interactive": [url]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["api_key"] = "engine-secret"
    gateway = await start_gateway(config)
    extras = {
        "ignore_eos": True,
        "top_k": 5,
        "chat_template_kwargs": {"enable_thinking": False},
        "some_future_field": [1, {"x": None}],
    }
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await gateway.client().chat.completions.create(
        model="llama-3-8b",
        messages=MESSAGES,
        temperature=0.3,
        extra_body=extras,
        extra_headers={"traceparent": traceparent, "X-Request-Id": "trace-me-1"},
    )
    body, headers = received[-1]
    assert {k: body[k] for k in extras} == extras
    assert body["temperature"] == 0.3 and body["messages"] == MESSAGES
    assert "stream_options" not in body  # added only to streamed requests
    assert headers["traceparent"] == traceparent
    assert headers["X-Request-Id"].startswith("trace-me-1.")
    assert headers["Authorization"] == "Bearer engine-secret"  # never the tenant's key


async def test_priority_reaches_engines_that_order_by_it(
    start_gateway: StartGateway, echo_engine: Any, redis_url: str
) -> None:
    url, received = echo_engine
    config = gateway_config(redis_url, {"interactive": [url]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["forward_priority"] = True
    config["tenants"] = {
        "a": {"api_keys": ["key-a"], "priority": 3},
        "b": {"api_keys": ["key-b"], "priority": 3, "allow_priority_header": True},
        "c": {"api_keys": ["key-c"], "priority": 0},
    }
    gateway = await start_gateway(config)
    await gateway.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES)
    assert received[-1][0]["priority"] == -3  # vLLM serves lower values first
    await gateway.client("key-b").chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, extra_headers={"X-Fairgate-Priority": "1"}
    )
    assert received[-1][0]["priority"] == -1  # the header lowered b's priority to 1
    await gateway.client("key-c").chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, extra_body={"priority": -100}
    )
    assert received[-1][0]["priority"] == 0  # the gateway's, never the client's own value


async def test_priority_is_not_sent_unless_the_backend_asks_for_it(
    start_gateway: StartGateway, echo_engine: Any, redis_url: str
) -> None:
    url, received = echo_engine
    config = gateway_config(redis_url, {"interactive": [url]})
    config["tenants"]["a"]["priority"] = 3
    gateway = await start_gateway(config)
    await gateway.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES)
    assert "priority" not in received[-1][0]
    # A client's own priority would let it jump the engine's queue: it never reaches the engine.
    await gateway.client().chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, extra_body={"priority": -100}, temperature=0.5
    )
    assert "priority" not in received[-1][0] and received[-1][0]["temperature"] == 0.5


# ------------------------------------------------------------------- disconnects, failures


async def test_client_disconnect_mid_stream_aborts_the_engine_request(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    sim = await start_sim(time_scale=1.0)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))
    body = {
        "model": "llama-3-8b",
        "messages": MESSAGES,
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    resp = await gateway.http.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer key-a", "X-Request-Id": "walks-away"},
    )
    for _ in range(3):
        await resp.content.readuntil(b"\n\n")
    resp.close()

    while (await sim.state())["running"]:
        await asyncio.sleep(0.01)
    timeline = await sim.timeline("walks-away")
    assert timeline["status"] == "aborted" and timeline["output_tokens"] < 5000
    assert await sim.metric("vllm:request_success_total", finished_reason="abort") == 1
    assert (await sim.state())["kv_used_blocks"] == 0


async def test_client_disconnect_while_waiting_for_a_full_response_aborts_too(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    sim = await start_sim(time_scale=1.0)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))
    body = {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 5000, "ignore_eos": True}
    request = asyncio.create_task(
        gateway.http.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer key-a", "X-Request-Id": "gives-up"},
        )
    )
    while not (await sim.state())["running"]:
        await asyncio.sleep(0.01)
    request.cancel()
    while (await sim.state())["running"]:
        await asyncio.sleep(0.01)
    assert (await sim.timeline("gives-up"))["status"] == "aborted"


async def test_unreachable_backend_is_retried_on_another_of_the_pool(
    gateway_factory_dead: Any, sim: RunningSim
) -> None:
    gateway = await gateway_factory_dead([sim.url])
    client = gateway.client()
    served = []
    for _ in range(4):
        raw = await client.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=2
        )
        served.append(raw.headers["x-fairgate-backend"])
    assert set(served) == {"interactive-1"}


async def test_no_reachable_backend_is_503(gateway_factory_dead: Any) -> None:
    gateway = await gateway_factory_dead([])
    with pytest.raises(openai.InternalServerError) as failed:
        await gateway.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES)
    assert failed.value.status_code == 503 and failed.value.code == "backend_unavailable"
    async with gateway.http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["backends"] == {"interactive-0": False}


@pytest.fixture
def gateway_factory_dead(start_gateway: StartGateway, redis_url: str, unused_tcp_port: int) -> Any:
    """A gateway whose pool has a dead backend first, then ``urls``."""

    async def make(urls: list[str]) -> RunningGateway:
        dead = f"http://127.0.0.1:{unused_tcp_port}"
        return await start_gateway(gateway_config(redis_url, {"interactive": [dead, *urls]}))

    return make


async def test_readiness_and_liveness(gateway: RunningGateway) -> None:
    async with gateway.http.get(f"{gateway.url}/healthz") as resp:
        assert resp.status == 200
    async with gateway.http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["redis"] is True


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_redis_down_fails_closed_or_open_as_configured(
    start_gateway: StartGateway, sim: RunningSim, unused_tcp_port: int, fail_mode: str
) -> None:
    config = gateway_config(
        f"redis://127.0.0.1:{unused_tcp_port}/0",
        {"interactive": [sim.url]},
        admission={"fail_mode": fail_mode},
    )
    no_redis = await start_gateway(config)
    async with no_redis.http.get(f"{no_redis.url}/readyz") as resp:
        assert resp.status == 503 and (await resp.json())["redis"] is False
    client = no_redis.client()  # the config file's keys still authenticate
    if fail_mode == "closed":
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES)
        assert refused.value.code == "admission_unavailable"
    else:
        reply = await client.chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=2
        )
        assert reply.usage.completion_tokens == 2


async def test_unknown_route_and_method_get_json_errors(gateway: RunningGateway) -> None:
    async with gateway.http.get(f"{gateway.url}/v1/nothing") as resp:
        assert resp.status == 404 and "error" in await resp.json()
    async with gateway.http.get(f"{gateway.url}/v1/chat/completions") as resp:
        assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_request_ids_are_unique_at_the_engine_and_single_in_the_answer(
    gateway: RunningGateway, sim: RunningSim
) -> None:
    """Two tenants sending the same X-Request-Id do not collide in the engine, and a streamed
    answer carries one X-Request-Id (the client's), not the engine's as well."""
    ids = []
    for key in ("key-a", "key-b"):
        async with gateway.http.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 3, "stream": True},
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": "same-id"},
        ) as resp:
            assert resp.headers.getall("X-Request-Id") == ["same-id"]
            first = json.loads((await resp.content.readuntil(b"\n\n")).removeprefix(b"data: "))
            await resp.read()
        ids.append(first["id"])
    assert ids[0] != ids[1]
    assert all(i.startswith("chatcmpl-same-id.") for i in ids)
