"""The script channel on Redis Cluster: each call goes to the primary that owns its slot.

A script's keys share one hash tag (:mod:`fairgate.keys`), so its first key names its slot.
The slot map is redis-py's (the cluster client's ``nodes_manager``): one view of the topology
per process, which redis-py's own commands keep current too. Each primary gets its own
:class:`~fairgate.resp.RespChannel`, with the cluster client's credentials and TLS.

What Redis Cluster answers while its topology changes:

- ``MOVED`` (the slot now lives elsewhere: a reshard finished, a replica took over): the map
  is corrected from the redirection and the call sent to the new owner.
- ``ASK`` (the slot is migrating and this key already left): the call is sent once to the
  importing node, preceded by ``ASKING`` -- if the script declares every key it touches.
  Scripts that derive keys from a prefix (admission's) must not run on a slot half moved:
  they would see part of their state. For them an ``ASK`` is a :class:`SlotMigrating` error,
  a ``RedisError`` like any outage, so admission follows its ``fail_mode`` until the
  migration ends (then ``MOVED`` sends it to the new owner, where all its keys are).
- ``TRYAGAIN`` (keys split by a migration): sent again shortly.
- a lost connection or ``CLUSTERDOWN`` (a primary died, no replica promoted yet): the error
  reaches the caller (its fate unknown, as on one server), and the map is read afresh before
  the next call, at most every :data:`REFRESH_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.resp import Arg, RedisAddress, RespChannel

#: Redirections one call follows before giving up (a topology changing faster than that is
#: an outage to the caller).
MAX_REDIRECTIONS = 5
#: The slot map is read again at most this often after errors that may mean a failover.
REFRESH_EVERY_S = 0.1
#: The wait before sending a call that got ``TRYAGAIN`` again.
TRY_AGAIN_S = 0.02


class SlotMigrating(RedisError):
    """A script that derives its keys was asked to follow an ``ASK``: its slot is moving."""


class ClusterChannel:
    """Pipelined script calls, each to the primary owning its key's slot."""

    def __init__(self, cluster: RedisCluster, template: RedisAddress) -> None:
        """``template``: credentials, TLS and timeouts for every node (its host is replaced)."""
        self._cluster = cluster
        self._template = template
        self._channels: dict[tuple[str, int], RespChannel] = {}
        self._slots: dict[str, int] = {}  # routing key -> slot (scripts use a few prefixes)
        self._ready = False
        self._stale = False
        self._refreshed_at = 0.0
        self._refreshing: asyncio.Future[None] | None = None

    async def execute(self, *args: Arg) -> Any:
        """A command that names no key: to any primary (the one owning slot 0)."""
        return await self.execute_routed("", *args)

    async def execute_routed(self, key: str, *args: Arg, follow_ask: bool = True) -> Any:
        """Send one command to the owner of ``key``'s slot; its reply."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = key_slot(key.encode())
        for _ in range(MAX_REDIRECTIONS):
            channel = await self._owner(slot)
            try:
                return await channel.execute(*args)
            except MovedError as moved:
                await self._cluster.nodes_manager.move_slot(moved)
            except AskError as ask:
                if not follow_ask:
                    raise SlotMigrating(
                        f"slot {slot} is migrating to {ask.host}:{ask.port}; "
                        "retry when it has moved"
                    ) from ask
                return await self._channel(ask.host, int(ask.port)).execute_asking(*args)
            except TryAgainError:
                await asyncio.sleep(TRY_AGAIN_S)
            except (RedisConnectionError, RedisTimeoutError, ClusterDownError):
                self._stale = True  # a failover, perhaps: read the map before the next call
                raise
        raise ClusterDownError(f"slot {slot}: still redirected after {MAX_REDIRECTIONS} tries")

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def _owner(self, slot: int) -> RespChannel:
        if not self._ready or self._stale:
            await self._refresh()
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException as exc:  # not covered: an outage to the caller
            self._stale = True
            raise ClusterDownError(str(exc)) from exc
        return self._channel(node.host, int(node.port))

    def _channel(self, host: str, port: int) -> RespChannel:
        channel = self._channels.get((host, port))
        if channel is None:
            address = RedisAddress(
                host=host,
                port=port,
                username=self._template.username,
                password=self._template.password,
                ssl=self._template.ssl,
                timeout_s=self._template.timeout_s,
            )
            channel = self._channels[(host, port)] = RespChannel(address)
        return channel

    async def _refresh(self) -> None:
        """Read the slot map (the first call, or after an error); one reading at a time."""
        if self._refreshing is None:
            if self._ready and time.monotonic() - self._refreshed_at < REFRESH_EVERY_S:
                return  # read a moment ago: the error is newer news than the cluster has
            self._refreshing = asyncio.ensure_future(self._read_map())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _read_map(self) -> None:
        self._stale = False
        self._refreshed_at = time.monotonic()
        try:
            if self._ready:
                await self._cluster.nodes_manager.initialize()
            else:
                await self._cluster.initialize()
                self._ready = True
        except RedisClusterException as exc:  # no node reachable, slots not covered
            self._stale = True
            raise RedisConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        except RedisError:
            self._stale = True
            raise
