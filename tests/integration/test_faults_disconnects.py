"""Fault suite, clients: storms of disconnects while queued and while streaming (issue 16).

Many clients of two tenants pile onto one small engine through one gateway; most of them hang
up, some while their request waits in the queue, some in the middle of their stream, some just
after sending it. Whatever the moment, the request leaves admission (withdrawn from the queue,
or its lease released) and the engine (aborted): once the storm is over admission holds nothing,
the engine holds nothing, and the requests that stayed were served in full.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.conftest import (
    MODEL,
    RunningGateway,
    StartGateway,
    StartSim,
    assert_settled,
    completion_tokens,
    gateway_config,
)

MESSAGES = [{"role": "user", "content": "Tell me a story."}]

pytestmark = pytest.mark.timeout(120)


async def hang_up(gateway: RunningGateway, key: str, stream: bool, after_events: int) -> None:
    """A request that the client abandons after ``after_events`` events of its stream (0: as
    soon as it is sent, likely still queued); a plain one after a random short wait."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 400, "ignore_eos": True}
    post = gateway.http.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "stream": stream},
        headers={"Authorization": f"Bearer {key}"},
    )
    if not stream:
        request = asyncio.ensure_future(post)
        await asyncio.sleep(random.uniform(0.0, 0.3))
        request.cancel()  # the connection closes: queued or running, the request is dropped
        await asyncio.gather(request, return_exceptions=True)
        return
    async with post as resp:
        assert resp.status == 200, await resp.text()
        for _ in range(after_events):
            await resp.content.readuntil(b"\n\n")
        resp.close()  # mid-stream


async def served(gateway: RunningGateway, key: str, stream: bool) -> int:
    """A request that stays to the end: how many tokens it got."""
    return await completion_tokens(gateway.client(key), 30, stream)


async def test_a_storm_of_disconnects_leaves_nothing_behind(
    start_sim: StartSim, start_gateway: StartGateway, redis_url: str
) -> None:
    random.seed(16)
    sim = await start_sim(time_scale=20.0)
    config = gateway_config(
        redis_url, {"interactive": [sim.url]}, admission={"upkeep_interval_s": 0.1}
    )
    config["pools"]["interactive"]["backends"]["interactive-0"]["max_concurrency"] = 4
    for tenant in config["tenants"].values():
        tenant.update(max_queued=200, queue_timeout_s=60)
    gateway = await start_gateway(config)

    storm = [
        hang_up(gateway, key, stream, random.choice([0, 1, 3, 10]) if stream else 0)
        for _ in range(30)
        for key, stream in (("key-a", True), ("key-b", True), ("key-a", False), ("key-b", False))
    ]
    stayed = [
        served(gateway, key, stream) for key in ("key-a", "key-b") for stream in (True, False)
    ]
    results = await asyncio.gather(*storm, *stayed, return_exceptions=True)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert results[len(storm) :] == [30] * len(stayed)
    await assert_settled(redis_url, [sim])
    assert await served(gateway, "key-a", True) == 30  # no capacity was lost
    # every stream, ended or cut off, left the watchdogs (they hold only open streams)
    assert (gateway.state.stalls.watching(), gateway.state.silent_engines.watching()) == (0, 0)
