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

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError, ResponseError
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


class BatchedScript:
    """A Lua script whose calls made in one event-loop iteration share one pipeline.

    Under load, many requests call the same scripts at once (admissions, releases, feedback);
    sending them together costs one connection checkout, one write and one read instead of one
    each. Nothing waits for a batch to fill: the batch is sent on the next loop iteration. Calls
    keep their order. The script is invoked by its SHA; if Redis does not know it (first use, a
    restart), it is loaded and only the calls that failed for that reason are sent again.
    """

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pending: list[tuple[list[object], asyncio.Future[object]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: list[str], args: list[object]) -> object:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._pending.append(([self.sha, len(keys), *keys, *args], future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._send(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[list[object], asyncio.Future[object]]]) -> None:
        try:
            results = await self._execute([command for command, _ in batch])
            unknown = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if unknown:
                await self._redis.script_load(self._source)
                retried = await self._execute([batch[i][0] for i in unknown])
                for i, result in zip(unknown, retried, strict=True):
                    results[i] = result
        except Exception as exc:  # noqa: BLE001 - every caller must hear about it
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, commands: list[list[object]]) -> list[object]:
        if len(commands) == 1:  # a pipeline of one costs more than the plain command
            try:
                return [await self._redis.evalsha(*commands[0])]
            except ResponseError as exc:  # e.g. NoScriptError: reported per call, as below
                return [exc]
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.evalsha(*command)
            return await pipe.execute(raise_on_error=False)
