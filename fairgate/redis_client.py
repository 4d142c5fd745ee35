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
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.resp import RedisAddress, RespChannel
from fairgate.settings import RedisConfig


def text(value: bytes | str) -> str:
    """A reply as text: the clients return bytes (no ``decode_responses``), scripts numbers too."""
    return value.decode() if isinstance(value, bytes) else str(value)


class GatewayRedis(Redis):
    """redis-py's client, plus a :class:`RespChannel` for the Lua scripts on the request path.

    The channel connects where the client's pool does (same URL, credentials, database, TLS)
    and is closed with the client.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.connection_pool
        tls = issubclass(pool.connection_class, SSLConnection)
        self.scripts = RespChannel(RedisAddress.of_pool(pool.connection_kwargs, tls))

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.scripts.close()
        await super().aclose(close_connection_pool)


def connect(config: RedisConfig) -> GatewayRedis:
    """A client with a blocking pool of ``config.max_connections`` connections.

    A command that finds its pooled connection dead (Redis restarted since it was last used) is
    sent once more on a fresh connection, instead of failing a request for a stale socket.
    """
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        retry=Retry(NoBackoff(), 1),
        timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
    )
    return GatewayRedis(connection_pool=pool)


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """Bound a Redis call: past ``seconds`` it raises redis' ``TimeoutError`` (a RedisError)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise RedisTimeoutError(f"Redis did not answer within {seconds:g} s") from exc


class Script:
    """A Lua script, called by its SHA over the client's :class:`RespChannel`.

    Calls made in one event-loop iteration leave in one write (the channel batches them), so
    under load the admissions, releases and feedback of many requests share one round trip.
    If Redis does not know the script (first use, a restart, ``SCRIPT FLUSH``), it is loaded
    and the call sent again.
    """

    def __init__(self, redis: GatewayRedis, source: str) -> None:
        self._channel = redis.scripts
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self._channel.execute(*command)
        except NoScriptError:
            await self._channel.execute("SCRIPT", "LOAD", self._source)
            return await self._channel.execute(*command)
