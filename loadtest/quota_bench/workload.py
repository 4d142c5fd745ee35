"""The workload of the quota benchmark: two tenants overloading their quotas through every
replica, and the answers they get.

Every tenant has closed-loop clients on every replica: each sends its next request as soon as
the previous one is answered, and after a refusal waits :data:`BACKOFF_S` (not the
``Retry-After``, whole seconds, after which every refused client would come back at once: the
overload must not let up). Requests differ in their ``seed``, from which the simulated engine
draws the output length, so the tokens charged at admission (the likely output) are corrected to
the engine's usage at completion, as with real traffic.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

MODEL = "llama-3-8b"
CHAT_PATH = "/v1/chat/completions"
REPLICAS = 3
#: The binding limits: tenant ``rpm``'s requests and tenant ``tpm``'s tokens per minute.
REQUESTS_PER_MINUTE = 600
TOKENS_PER_MINUTE = 60_000
#: Each tenant's quotas: one binding limit, and one of the other kind far above the load.
QUOTAS: dict[str, dict[str, int]] = {
    "rpm": {"requests_per_minute": REQUESTS_PER_MINUTE, "tokens_per_minute": 10_000_000},
    "tpm": {"requests_per_minute": 60_000, "tokens_per_minute": TOKENS_PER_MINUTE},
}
#: Which limit binds each tenant: (the kind counted, the limit per minute).
BINDING: dict[str, tuple[str, int]] = {
    "rpm": ("requests", REQUESTS_PER_MINUTE),
    "tpm": ("tokens", TOKENS_PER_MINUTE),
}
KEYS = {tenant: f"key-{tenant}" for tenant in QUOTAS}
#: Clients per tenant on each replica.
CLIENTS_PER_REPLICA = 2
#: How long a refused client waits before it asks again.
BACKOFF_S = 0.05
MAX_TOKENS = 128
#: The simulated engine runs this much faster than the wall clock (quotas are wall-clock).
TIME_SCALE = 100.0


def tenants_config() -> dict[str, dict[str, Any]]:
    """The tenants section of the replicas' configuration: limits far above the load but for
    the quotas (so that nothing but a quota refuses)."""
    return {
        tenant: {
            "max_concurrency": 1024,
            "max_queued": 1024,
            "max_inflight_tokens": 100_000_000,
            "api_keys": [KEYS[tenant]],
            "quotas": quotas,
        }
        for tenant, quotas in QUOTAS.items()
    }


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it."""

    tenant: str
    replica: int
    sent: float  # seconds since the load started
    status: int  # 0: no HTTP answer (a connection error)
    tokens: int  # prompt + completion tokens by the engine's usage (0 unless answered 200)
    retry_after: str | None  # the refusal's Retry-After header
    code: str | None  # the error body's code


async def overload(
    urls: list[str],
    tenants: Mapping[str, str],
    stop: asyncio.Event,
    answers: list[Answer],
    started: float,
) -> None:
    """Overload every tenant (``tenants``: tenant -> key) through every replica until ``stop``
    is set; every answer is appended to ``answers``, sent at seconds since ``started``
    (``time.monotonic``)."""
    seeds = itertools.count()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(tenant: str, key: str, replica: int) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            while not stop.is_set():
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Tell me a story."}],
                    "max_tokens": MAX_TOKENS,
                    "seed": next(seeds),
                }
                sent = time.monotonic() - started
                answer = await _ask(session, urls[replica] + CHAT_PATH, headers, body)
                answers.append(Answer(tenant, replica, sent, *answer))
                if answer[0] != 200:
                    await asyncio.sleep(BACKOFF_S)

        await asyncio.gather(
            *(
                client(tenant, key, replica)
                for tenant, key in tenants.items()
                for replica in range(len(urls))
                for _ in range(CLIENTS_PER_REPLICA)
            )
        )


async def _ask(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[int, int, str | None, str | None]:
    """Status, tokens used, Retry-After and error code of one request."""
    try:
        async with session.post(url, json=body, headers=headers) as response:
            payload = json.loads(await response.read() or b"{}")
            retry_after = response.headers.get("Retry-After")
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, 0, None, None
    if status == 200:
        usage = payload.get("usage") or {}
        return (
            status,
            int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
            None,
            None,
        )
    error = payload.get("error") if isinstance(payload, dict) else None
    return status, 0, retry_after, (error or {}).get("code")
