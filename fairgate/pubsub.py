"""Pub/sub on every Redis deployment: classic channels on one server, sharded on a Cluster.

fairgate's channels (grants to a replica, ``contended``, directory changes) carry their
domain's hash tag (:mod:`fairgate.keys`). On Redis Cluster a classic ``PUBLISH`` is broadcast
over the cluster bus to every node, so each grant would cost every shard; sharded pub/sub
(``SPUBLISH``/``SSUBSCRIBE``, Redis 7) keeps a message within the shard that owns its
channel's slot: the admission shard, where the scripts that publish run anyway. On one server
(or a Sentinel-managed primary) the classic commands serve, on any Redis version.

Messages are hints: every listener also polls what it listens for (grants, the directory's
version), so a message lost while a subscription is re-made only delays.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub
from redis.exceptions import PubSubError, RedisError
from redis.utils import str_if_bytes

from fairgate.redis_client import AnyRedis, cluster_errors_as_redis_errors


def publish_command(redis: AnyRedis) -> str:
    """The command that publishes on ``redis`` (also what the Lua scripts call)."""
    return "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"


class Subscription:
    """Channels of one slot that a replica listens to, as ``(channel, data)`` messages.

    Use as ``async with Subscription(redis, [a, b]) as heard: await heard.get(timeout)``. A
    Redis error ends it (the caller subscribes again after a pause); so does a Cluster
    dropping the subscription because the slot moved to another shard.
    """

    def __init__(self, redis: AnyRedis, channels: list[str]) -> None:
        self._redis = redis
        self._channels = channels
        sharded = isinstance(redis, RedisCluster)  # sharded: see the unsubscriptions too
        self._pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=not sharded)

    async def __aenter__(self) -> Subscription:
        pubsub = self._pubsub
        if not isinstance(pubsub, ClusterPubSub):
            await pubsub.subscribe(*self._channels)
            return self
        assert isinstance(self._redis, RedisCluster)
        with cluster_errors_as_redis_errors():
            await self._redis.initialize()  # the slot map the subscription is routed by
            await pubsub.ssubscribe(*self._channels)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()

    async def get(self, timeout: float) -> tuple[bytes, bytes] | None:
        """The next message within ``timeout`` seconds, or None."""
        pubsub = self._pubsub
        if not isinstance(pubsub, ClusterPubSub):
            message = await pubsub.get_message(timeout=timeout)
        else:
            if not pubsub.node_pubsub_mapping:  # nothing to read from: never spin on it
                raise PubSubError("the shard subscription is gone")
            with cluster_errors_as_redis_errors():
                message = await pubsub.get_sharded_message(timeout=timeout)
            kind = str_if_bytes(message["type"]) if message is not None else None
            if kind == "sunsubscribe":
                raise PubSubError("the shard dropped the subscription (its slot moved)")
            if kind != "smessage":
                return None
        if message is None:
            return None
        channel, data = message["channel"], message["data"]
        return channel, data
