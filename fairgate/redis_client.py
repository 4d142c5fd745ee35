"""The Redis client every part of a gateway process shares, and a deadline for its calls.

One connection pool per process, blocking when all connections are busy (a short wait beats
failing a request because a burst briefly needed more connections than the pool holds).
Calls on the request path are bounded with :func:`deadline` rather than with redis-py's
``socket_timeout``, which wraps every command in ``asyncio.wait_for`` and so creates a task per
command; ``asyncio.timeout`` costs nothing when it does not fire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.settings import RedisConfig


def connect(config: RedisConfig) -> Redis:
    """A client with a blocking pool of ``config.max_connections`` connections."""
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
    )
    return Redis(connection_pool=pool)


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """Bound a Redis call: past ``seconds`` it raises redis' ``TimeoutError`` (a RedisError)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise RedisTimeoutError(f"Redis did not answer within {seconds:g} s") from exc
