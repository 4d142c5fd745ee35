"""The access log of a running gateway: one JSON line per inference request, with its tenant,
pool, backend, status, outcome, times and tokens, and never a key, a prompt or a completion.

Real parts: a simulated engine on loopback, an in-process gateway on a real redis-server, the
official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import RunningSim, StartGateway, StartSim, gateway_config

MODEL = "llama-3-8b"
KEY = "sk-tenant-a-0123456789-SECRET"
PROMPT = "PROMPT-TEXT-xyzzy: tell nobody about the purple elephant"


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0)


async def lines_of(path: Path, count: int) -> list[dict[str, Any]]:
    """The log's lines once it holds ``count`` (the writer flushes every 50 ms)."""
    for _ in range(400):
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= count:
            break
        await asyncio.sleep(0.01)
    return [json.loads(line) for line in text.splitlines()]


async def test_one_line_per_request_with_its_facts_and_none_of_its_secrets(
    start_gateway: StartGateway, sim: RunningSim, redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    cfg = gateway_config(
        redis_url, {"chat": [sim.url]}, telemetry={"access_log": {"path": str(path)}}
    )
    cfg["tenants"]["a"]["api_keys"] = [KEY]
    gateway = await start_gateway(cfg)
    client = gateway.client(KEY)
    messages = [{"role": "user", "content": PROMPT}]
    plain = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, extra_headers={"X-Request-Id": "plain-1"}
    )
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=5,
        stream=True,
        extra_headers={"X-Request-Id": "stream-1"},
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    with pytest.raises(openai.AuthenticationError):
        await gateway.client(KEY + "-wrong").chat.completions.create(
            model=MODEL, messages=messages, extra_headers={"X-Request-Id": "nokey-1"}
        )
    async with gateway.http.get(f"{gateway.url}/v1/models") as models:  # not inference: no line
        assert models.status == 401

    lines = await lines_of(path, 3)
    assert [line["request_id"] for line in lines] == ["plain-1", "stream-1", "nokey-1"]
    first, second, refused = lines
    assert {k: first[k] for k in ("tenant", "pool", "backend", "model", "path", "stream")} == {
        "tenant": "a",
        "pool": "chat",
        "backend": "chat-0",
        "model": MODEL,
        "path": "/v1/chat/completions",
        "stream": False,
    }
    assert (first["status"], first["outcome"], first["reason"]) == (200, "served", None)
    assert first["prompt_tokens"] == plain.usage.prompt_tokens
    assert first["completion_tokens"] == plain.usage.completion_tokens == 6
    assert first["queue_ms"] >= 0 and first["total_ms"] >= first["queue_ms"]
    assert first["ttft_ms"] is None  # a plain answer arrives whole
    assert second["stream"] is True and second["completion_tokens"] == 5
    assert 0 < second["ttft_ms"] <= second["total_ms"]
    assert {k: refused[k] for k in ("tenant", "pool", "backend", "status", "outcome")} == {
        "tenant": None,
        "pool": None,
        "backend": None,
        "status": 401,
        "outcome": "rejected",
    }
    assert refused["reason"] == "auth"
    assert all(line["time"].endswith("Z") for line in lines)

    text = path.read_text()
    assert KEY not in text and "SECRET" not in text
    assert "xyzzy" not in text and "elephant" not in text
    answer = plain.choices[0].message.content or ""
    assert len(answer) > 10 and answer not in text
    assert len(streamed) > 10 and streamed not in text
