"""The gateway in front of a real vLLM (CPU build, tiny model), unchanged.

Runs when ``FAIRGATE_REAL_VLLM_URL`` names a running vLLM serving the model ``tiny`` (see
``../shared/tools/real-vllm/``: ``serve.sh 8100`` then ``FAIRGATE_REAL_VLLM_URL=
http://127.0.0.1:8100 make test``); skipped otherwise, since starting one takes minutes.
"""

from __future__ import annotations

import asyncio
import os

import openai
import pytest

from tests.conftest import RunningGateway, StartGateway, gateway_config

URL = os.environ.get("FAIRGATE_REAL_VLLM_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set FAIRGATE_REAL_VLLM_URL to a running vLLM")
MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def gateway(start_gateway: StartGateway, redis_url: str) -> RunningGateway:
    config = gateway_config(redis_url, {"interactive": [URL]})
    config["pools"]["interactive"]["backends"]["interactive-0"]["models"] = ["tiny"]
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


async def test_disconnect_frees_the_engine(gateway: RunningGateway) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 30000, "ignore_eos": True}
    resp = await gateway.http.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "stream": True},
        headers={"Authorization": "Bearer key-a"},
    )
    await resp.content.readuntil(b"\n\n")
    resp.close()
    for _ in range(200):  # vLLM frees a disconnected request within about 0.1 s
        async with gateway.http.get(f"{URL}/metrics") as metrics:
            text = await metrics.text()
        running = [
            line for line in text.splitlines() if line.startswith("vllm:num_requests_running")
        ]
        if running and float(running[0].rsplit(" ", 1)[1]) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("vLLM still runs the request after the client went away")
