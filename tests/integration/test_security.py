"""What a client may not do through the gateway, and TLS on both sides of it (issue 16).

Real parts: in-process gateways, a real redis-server, engines on loopback (a simulator, and an
aiohttp engine that records what it received); the official ``openai`` client. The TLS
certificate is the tests' self-signed one for ``localhost`` and ``127.0.0.1``
(``tests/unit/data``), which the clients are given as their only CA.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict

from fairgate.serving import serve
from fairgate.settings import ListenerTls
from loadtest.simulator.server import create_app
from tests.conftest import (
    MODEL,
    ServeApp,
    StartGateway,
    StartSim,
    completion_body,
    gateway_config,
)
from tests.unit.config import CERT, CERT_KEY

MESSAGES = [{"role": "user", "content": "hi"}]
TLS = {"cert_file": str(CERT), "key_file": str(CERT_KEY)}

#: Headers only the gateway may set, or that name a client's network path: sent by a hostile
#: client, none of them may reach the engine as sent. (``X-Fairgate-Pool`` from a tenant not
#: allowed to name its pool is refused with 403: tests/integration/test_classification.py.)
SPOOFED = {
    "X-Fairgate-Tenant": "b",
    "X-Fairgate-Backend": "interactive-9",
    "X-Fairgate-Priority": "100",
    "X-Fairgate-Queue-Time": "0",
    "X-Fairgate-Route": "spoofed",
    "X-Forwarded-For": "10.9.9.9",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Real-IP": "10.9.9.9",
    "Forwarded": "for=10.9.9.9",
}


@pytest.fixture
async def recording_engine(serve_app: ServeApp) -> tuple[str, list[CIMultiDict[str]]]:
    """An engine that answers every chat completion and keeps the headers it received."""
    received: list[CIMultiDict[str]] = []

    async def chat(request: web.Request) -> web.Response:
        received.append(CIMultiDict(request.headers))
        return web.json_response(completion_body("hi", 5, 1))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", _ok)
    return await serve_app(app), received


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


async def test_headers_only_the_gateway_sets_are_not_taken_from_the_client(
    recording_engine: tuple[str, list[CIMultiDict[str]]],
    start_gateway: StartGateway,
    redis_url: str,
) -> None:
    url, received = recording_engine
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [url]}))
    client = gateway.client("key-a")
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=1, extra_headers=SPOOFED
    )
    assert raw.headers["X-Fairgate-Backend"] == "interactive-0"  # the gateway's, not the client's

    (headers,) = received
    assert headers.getall("X-Fairgate-Tenant") == ["a"]  # the tenant of the key, once
    for name in SPOOFED:
        if name != "X-Fairgate-Tenant":
            assert name not in headers, (name, headers[name])
    assert "Authorization" not in headers  # the tenant's key never reaches an engine
    assert not [v for v in headers.values() if "key-a" in v]


@pytest.fixture
async def tls_sim(start_sim: StartSim) -> AsyncIterator[str]:
    """A simulated engine that serves HTTPS only, with the tests' certificate."""
    plain = await start_sim(time_scale=100.0)  # for its profile; the TLS one is served below
    app = create_app(plain.sim.profile, [MODEL], time_scale=100.0)
    runner = await serve(app, "127.0.0.1", 0, tls=ListenerTls(**TLS))
    host, port = runner.addresses[0][:2]
    yield f"https://{host}:{port}"
    await runner.cleanup()


def trusting_client(base_url: str) -> openai.AsyncOpenAI:
    """An OpenAI client whose only CA is the tests' certificate (an httpx client of its own)."""
    http = openai.DefaultAsyncHttpxClient(verify=ssl.create_default_context(cafile=str(CERT)))
    return openai.AsyncOpenAI(base_url=base_url, api_key="key-a", max_retries=0, http_client=http)


async def test_tls_on_the_listener_and_to_the_engine(
    tls_sim: str, start_gateway: StartGateway, redis_url: str
) -> None:
    """The gateway serves HTTPS (server.tls) and reaches an https:// engine that has a private
    CA (the backend's ca_file): the official client, given that CA, is served end to end."""
    config = gateway_config(redis_url, {"interactive": [tls_sim]})
    config["server"]["tls"] = TLS
    config["pools"]["interactive"]["backends"]["interactive-0"]["ca_file"] = str(CERT)
    gateway = await start_gateway(config)
    assert gateway.url.startswith("https://")

    client = trusting_client(f"{gateway.url}/v1")
    reply = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    await client.close()

    untrusting = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="key-a", max_retries=0)
    with pytest.raises(openai.APIConnectionError):  # the system's CAs do not know the cert
        await untrusting.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    await untrusting.close()
    plain = openai.AsyncOpenAI(
        base_url=gateway.url.replace("https://", "http://") + "/v1", api_key="key-a", max_retries=0
    )
    with pytest.raises(openai.APIConnectionError):  # no plain HTTP on a TLS listener
        await plain.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    await plain.close()


async def test_an_https_engine_whose_certificate_is_not_trusted_is_not_used(
    tls_sim: str, start_gateway: StartGateway, redis_url: str
) -> None:
    """Without the engine's CA, its certificate does not verify: nothing is sent to it, and
    the client gets a clean 503."""
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [tls_sim]}))
    with pytest.raises(openai.InternalServerError) as refused:
        await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert refused.value.code == "backend_unavailable"


@pytest.mark.parametrize(
    ("trusted", "client"), [([], "127.0.0.1"), (["127.0.0.0/8"], "203.0.113.9")]
)
async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    trusted: list[str],
    client: str,
    start_sim: StartSim,
    start_gateway: StartGateway,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """The access log's ``client`` is the connection's peer, unless that peer is one of
    ``server.trusted_proxies``: then the address its X-Forwarded-For names."""
    sim = await start_sim(time_scale=100.0)
    log = tmp_path / "access.log"
    config = gateway_config(
        redis_url, {"interactive": [sim.url]}, telemetry={"access_log": {"path": str(log)}}
    )
    config["server"]["trusted_proxies"] = trusted
    gateway = await start_gateway(config)
    await gateway.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=1,
        extra_headers={"X-Forwarded-For": "203.0.113.9"},
    )
    for _ in range(200):
        if log.exists() and log.read_text():
            break
        await asyncio.sleep(0.02)
    (line,) = log.read_text().splitlines()
    assert json.loads(line)["client"] == client
