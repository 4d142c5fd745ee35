"""What the soak sends: three tenants of different weights, closed-loop clients on both
replicas, each request streamed or not, and some abandoned by their client on purpose."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

MODEL = "llama-3-8b"
#: tenant -> weight
WEIGHTS = {"t1": 1.0, "t2": 2.0, "t4": 4.0}
#: Closed-loop clients per tenant on each replica.
CLIENTS_PER_REPLICA = 6
#: Each engine's request budget: together far less than the clients, so requests queue.
ENGINE_CONCURRENCY = 8
ENGINES = 2
REPLICAS = 2
TIME_SCALE = 10.0
LEASE_TTL_S = 5.0
#: Share of requests streamed, and of requests their client abandons.
STREAMED = 0.6
CANCELLED = 0.1
MAX_TOKENS = (20, 300)
#: How long a client waits before its next request after an answer that is no success.
BACKOFF_S = 0.2


def key_of(tenant: str) -> str:
    return f"soak-{tenant}"


def tenants_config() -> dict[str, dict[str, Any]]:
    return {
        tenant: {
            "api_keys": [key_of(tenant)],
            "weight": weight,
            "max_queued": 1000,
            "queue_timeout_s": 60,
        }
        for tenant, weight in WEIGHTS.items()
    }


@dataclass(frozen=True)
class Plan:
    """One request as a client means to send it."""

    stream: bool
    max_tokens: int
    #: None: wait for the answer; else hang up after this many seconds (queued or running)
    #: or, for a stream, after this many events
    abandon_after: float | None


def plan(rng: random.Random) -> Plan:
    stream = rng.random() < STREAMED
    abandon = None
    if rng.random() < CANCELLED:
        abandon = float(rng.randint(1, 20)) if stream else rng.uniform(0.0, 0.5)
    return Plan(stream, rng.randint(*MAX_TOKENS), abandon)


async def send(http: aiohttp.ClientSession, url: str, key: str, request: Plan) -> str:
    """Send one request; how it ended: ``ok``, ``cancelled`` (the client hung up), an HTTP
    status with the error code of its OpenAI body, or the kind of connection failure."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": request.max_tokens,
        "ignore_eos": True,
        "stream": request.stream,
    }
    headers = {"Authorization": f"Bearer {key}"}
    post = http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    if request.abandon_after is not None and not request.stream:
        try:
            async with asyncio.timeout(request.abandon_after):
                async with post as resp:
                    await resp.read()
        except TimeoutError:
            return "cancelled"
        return "ok" if resp.status == 200 else await _error(resp)
    async with post as resp:
        if resp.status != 200:
            return await _error(resp)
        if not request.stream:
            await resp.read()
            return "ok"
        events = 0
        async for line in resp.content:
            if line.startswith(b"data: "):
                if b'"error"' in line:
                    return "stream error event"
                events += 1
                if request.abandon_after is not None and events >= request.abandon_after:
                    resp.close()
                    return "cancelled"
        return "ok"


async def _error(resp: aiohttp.ClientResponse) -> str:
    try:
        code = (await resp.json(content_type=None))["error"]["code"]
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        code = "not an OpenAI error body"
    return f"{resp.status} {code}"
