"""Following a Sentinel failover as soon as the Sentinels announce it.

A client of a Sentinel-managed primary finds the primary anew whenever it connects, so a
primary that dies is left by itself: its connections fail and the next ones go where the
Sentinels point. A primary that is demoted while it stays up (``SENTINEL FAILOVER``, a
partition that heals) is different: until the Sentinels reconfigure it as a replica (their
next look at it, up to 10 s later) it still accepts every write, and connections to it never
fail -- those writes are lost when it resyncs. So each gateway process listens for the
Sentinels' ``+switch-master`` announcement and then drops every connection to the old primary
(redis-py's pool, pub/sub included, and the script channel): the next commands reach the new
one. A missed announcement costs only that window; ``READONLY`` answers end it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import RedisError

from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

#: The Sentinels' pub/sub channel announcing a new primary:
#: ``<name> <old ip> <old port> <new ip> <new port>``.
SWITCH_CHANNEL = "+switch-master"
#: How long the watch waits before trying the next Sentinel after one failed.
RETRY_S = 1.0


class SwitchWatch:
    """Hears ``+switch-master`` for one primary from the first Sentinel that answers."""

    def __init__(self, pool: SentinelConnectionPool, switched: Callable[[], Awaitable[None]]):
        self._pool = pool
        self._switched = switched
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start watching (in the running loop) unless already watching."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="sentinel-switch-watch"
            )

    async def close(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None

    async def _run(self) -> None:
        name = self._pool.service_name.encode()
        sentinels = self._pool.sentinel_manager.sentinels
        turn = 0
        while True:
            sentinel = sentinels[turn % len(sentinels)]
            turn += 1
            pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(SWITCH_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["data"].split(b" ", 1)[0] == name:
                        log.warning(
                            "Sentinel: %s has a new primary (%s)",
                            name.decode(),
                            message["data"].decode(),
                        )
                        await self._switched()
            except (RedisError, OSError) as exc:
                log.debug("listening to Sentinel for failovers interrupted: %s", exc)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
