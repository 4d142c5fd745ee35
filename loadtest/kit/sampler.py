"""Queue depth over time: the gateway's queue per tenant and each engine's own queue.

The gateway's queue lives in Redis (``<prefix>:{adm}:queued``: tenant -> requests queued, kept
by the admission scripts), so it is read there, one HGETALL per sample, for the runs whose
Redis the kit started. Engines are read on their vLLM-style ``/metrics``
(``vllm:num_requests_waiting`` and ``vllm:num_requests_running``), which a real vLLM serves too.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from redis.asyncio import Redis

from fairgate.redis_client import text
from loadtest.kit.client import Timebase

ENGINE_GAUGES = {"vllm:num_requests_waiting": "waiting", "vllm:num_requests_running": "running"}


def parse_engine_metrics(text: str) -> dict[str, float]:
    """The two queue gauges from a Prometheus text page (summed over label sets)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ENGINE_GAUGES:
            key = ENGINE_GAUGES[name]
            found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def sample_queues(
    clock: Timebase,
    interval_s: float,
    engines: dict[str, str],
    redis_url: str | None,
    queued_key: str,
    samples: list[dict[str, object]],
) -> None:
    """Append one sample per ``interval_s`` simulated seconds to ``samples`` until cancelled."""
    redis = Redis.from_url(redis_url) if redis_url else None
    timeout = aiohttp.ClientTimeout(total=2.0)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not _cancel_requested():
                sample: dict[str, object] = {"t": clock.now(), "engines": {}, "gateway": {}}
                for name, url in engines.items():
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                        async with http.get(f"{url}/metrics") as resp:
                            sample["engines"][name] = parse_engine_metrics(await resp.text())  # type: ignore[index]
                if redis is not None:
                    with contextlib.suppress(Exception):
                        queued = await redis.hgetall(queued_key)
                        sample["gateway"] = {text(k): int(v) for k, v in queued.items()}
                samples.append(sample)
                await asyncio.sleep(interval_s / clock.time_scale)
    finally:
        if redis is not None:
            await redis.aclose()
    raise asyncio.CancelledError  # the cancellation a timeout turned into TimeoutError


def _cancel_requested() -> bool:
    """Whether this task was asked to stop. A cancellation that reaches a request as its own
    timeout fires ends as aiohttp's TimeoutError, which the loop suppresses; the request is
    still pending on the task, and without this check the loop would sample on, and the run
    that waits for it never end."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
