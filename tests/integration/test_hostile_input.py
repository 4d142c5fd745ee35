"""Bodies a hostile or broken client sends: each is a 4xx in the OpenAI envelope, never a 500,
and the gateway goes on serving (issue 16, "Found by a hostile client").

Real parts: an in-process gateway in front of a simulated engine, a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import zlib

import pytest
from aiohttp import web
from redis.asyncio import Redis

from tests.conftest import (
    RunningGateway,
    ServeApp,
    StartGateway,
    StartSim,
    gateway_config,
    inflight_state,
)

CHAT = "/v1/chat/completions"
HEADERS = {"Authorization": "Bearer key-a", "Content-Type": "application/json"}
HELLO = [{"role": "user", "content": "hi"}]


def chat(messages: object, **fields: object) -> bytes:
    return json.dumps(
        {"model": "llama-3-8b", "messages": messages, "max_tokens": 4, **fields}
    ).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture
async def gateway(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> RunningGateway:
    sim = await start_sim(time_scale=100.0)
    return await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))


async def post(gateway: RunningGateway, body: bytes, **headers: str) -> tuple[int, dict]:
    async with gateway.http.post(
        gateway.url + CHAT, data=body, headers={**HEADERS, **headers}
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        (
            "an array nested 10,000 levels",
            b'{"model":"llama-3-8b","messages":' + nested(10_000) + b"}",
        ),
        (
            "an object nested 10,000 levels",
            b'{"model":"m","x":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
        ),
        ("an integer of 5,000 digits", b'{"model":"llama-3-8b","max_tokens":' + b"9" * 5000 + b"}"),
        ("one inside a message", b'{"model":"llama-3-8b","messages":[{"x":' + b"9" * 5000 + b"}]}"),
        ("invalid UTF-8", b'{"model":"llama-3-8b","messages":"\xff\xfe"}'),
    ],
)
async def test_bodies_python_cannot_parse_are_400(
    gateway: RunningGateway, name: str, body: bytes
) -> None:
    status, answer = await post(gateway, body)
    assert status == 400, name
    assert answer["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in answer["error"]["message"]


@pytest.mark.parametrize("depth", [900, 960, 970, 975, 980, 985, 990])
@pytest.mark.parametrize("where", ["tool_calls", "content", "extra", "streamed"])
async def test_deep_nesting_near_the_limit_is_served_or_refused_never_a_500(
    gateway: RunningGateway, depth: int, where: str
) -> None:
    """Whatever the parser accepts, the estimate and the re-encoded body handle too."""
    inner = nested(depth)
    hello = json.dumps(HELLO[0]).encode()
    head = b'{"model":"llama-3-8b","messages":'
    bodies = {
        "tool_calls": head + b'[{"role":"assistant","tool_calls":' + inner + b"}]}",
        "content": head + b'[{"role":"user","content":[{"type":"x","y":' + inner + b"}]}]}",
        "extra": head + b"[" + hello + b'],"x":' + inner + b"}",
        "streamed": head + b"[" + hello + b'],"stream":true,"x":' + inner + b"}",
    }
    async with gateway.http.post(
        gateway.url + CHAT, data=bodies[where], headers=HEADERS
    ) as response:
        assert response.status in (200, 400), await response.text()


@pytest.mark.parametrize(
    "tool_calls",
    [
        "abc",
        5,
        [1, 2],
        [{"function": "x"}],
        {"a": 1},
        [{"function": {"name": 1, "arguments": [1]}}],
        [None],
    ],
)
async def test_tool_calls_of_any_shape_are_estimated_and_forwarded(
    gateway: RunningGateway, tool_calls: object
) -> None:
    """The engine judges their shape (the simulator accepts them); the gateway must not fail."""
    status, answer = await post(
        gateway, chat([{"role": "assistant", "tool_calls": tool_calls}, *HELLO])
    )
    assert status == 200, answer


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/completions", {"model": "llama-3-8b", "prompt": "hi", "max_tokens": 3}),
        ("/v1/embeddings", {"model": "llama-3-8b", "input": "hi"}),
    ],
)
async def test_a_stray_messages_field_of_anything_is_estimated_never_a_500(
    gateway: RunningGateway, endpoint: str, body: dict[str, object]
) -> None:
    """Found by the endpoint fuzzer: a completion or an embedding that also carries
    ``messages`` whose entries are not objects. The engine judges the field; estimating the
    request must not fail on it."""
    stray = {**body, "messages": [{"": False}, None, 7]}
    async with gateway.http.post(gateway.url + endpoint, json=stray, headers=HEADERS) as response:
        assert response.status < 500, await response.text()


@pytest.mark.parametrize("encoding", ["deflate", "gzip"])
async def test_a_body_not_encoded_as_it_says_is_400_and_an_encoded_one_is_served(
    gateway: RunningGateway, encoding: str
) -> None:
    status, answer = await post(gateway, chat(HELLO), **{"Content-Encoding": encoding})
    assert status == 400
    assert "could not be read" in answer["error"]["message"]
    status, answer = await post(
        gateway, zlib.compress(chat(HELLO)), **{"Content-Encoding": "deflate"}
    )
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"]


async def raw_exchange(gateway: RunningGateway, head: bytes) -> bytes:
    """Send ``head`` (headers and maybe part of a body) and read the gateway's answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        headers = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert b"connection: close" in headers.lower()
        return headers + await reader.readexactly(length)
    finally:
        writer.close()


def request_head(length: int) -> bytes:
    return (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_trickled_body_is_408_after_the_body_timeout_and_the_connection_closed(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> None:
    sim = await start_sim(time_scale=100.0)
    config = gateway_config(redis_url, {"interactive": [sim.url]}, server={"body_timeout_s": 0.3})
    gateway = await start_gateway(config)
    answer = await raw_exchange(gateway, request_head(100) + b'{"model":')
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer and b"did not arrive within 0.3 s" in answer


async def test_a_content_length_over_the_limit_is_413_before_the_body(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> None:
    sim = await start_sim(time_scale=100.0)
    config = gateway_config(
        redis_url, {"interactive": [sim.url]}, server={"max_body_bytes": 1000, "body_timeout_s": 60}
    )
    gateway = await start_gateway(config)
    answer = await asyncio.wait_for(raw_exchange(gateway, request_head(10**9)), timeout=30)
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer


def endless_engine(ended: asyncio.Event) -> web.Application:
    """An engine that streams 16 KiB chunks until its client (the gateway) goes away."""
    chunk = (
        b"data: "
        + json.dumps(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "x" * 16_384}}],
            }
        ).encode()
        + b"\n\n"
    )

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(chunk)
        finally:
            ended.set()  # the gateway closed the engine request

    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    return app


async def test_a_client_that_stops_reading_its_stream_is_cut_off_and_its_slot_freed(
    start_gateway: StartGateway, serve_app: ServeApp, redis_url: str
) -> None:
    """A client that reads the headers of its stream and then nothing: the gateway's writes
    fill the socket and wait; past ``client_stall_timeout_s`` the connection is closed, the
    engine request ended and the tenant's lease released (without the limit: never)."""
    ended = asyncio.Event()
    engine = await serve_app(endless_engine(ended))
    config = gateway_config(
        redis_url, {"interactive": [engine]}, server={"client_stall_timeout_s": 0.5}
    )
    gateway = await start_gateway(config)
    host, port = gateway.url.removeprefix("http://").split(":")
    body = chat(HELLO, stream=True)
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
    writer.write(request_head(len(body)) + body)
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # ... and the client reads nothing more

    await asyncio.wait_for(ended.wait(), timeout=60)
    redis = Redis.from_url(redis_url)
    for _ in range(200):
        if not await inflight_state(redis):
            break
        await asyncio.sleep(0.05)
    assert await inflight_state(redis) == {}
    await redis.aclose()
    async with gateway.http.get(gateway.url + "/metrics") as response:
        assert "fairgate_stalled_clients_closed_total 1.0" in await response.text()
    writer.close()


async def test_headers_sent_a_byte_at_a_time_are_cut_off_after_the_idle_timeout(
    start_gateway: StartGateway, start_sim: StartSim, redis_url: str
) -> None:
    """Slowloris: a connection that keeps sending, but never a whole request head, is closed
    once ``idle_timeout_s`` has passed since it opened (each byte does not restart it)."""
    sim = await start_sim(time_scale=100.0)
    config = gateway_config(redis_url, {"interactive": [sim.url]}, server={"idle_timeout_s": 0.5})
    gateway = await start_gateway(config)
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = request_head(10)

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    trickling = asyncio.ensure_future(trickle())
    closed = await asyncio.wait_for(reader.read(), timeout=20)  # EOF: the gateway closed it
    assert closed == b""
    assert not trickling.done()  # cut off while it was still sending its headers
    trickling.cancel()
    writer.close()
