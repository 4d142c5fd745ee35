"""The Redis client every part of a gateway process shares, and a deadline for its calls.

One client per process, for the deployment ``redis.mode`` names (docs/redis.md): one server
or a Sentinel-managed primary (redis-py's ``Redis`` with a pool that blocks when all its
connections are busy: a short wait beats failing a request because a burst briefly needed
more), or a Redis Cluster (redis-py's ``RedisCluster``). Each carries a script channel for
the Lua scripts on the request path (:mod:`fairgate.resp`, :mod:`fairgate.resp_cluster`).
Calls on the request path are bounded with :func:`deadline` rather than with redis-py's
``socket_timeout``, which wraps every command in ``asyncio.wait_for`` and so creates a task per
command; ``asyncio.timeout`` costs nothing when it does not fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, Protocol, cast

from redis.asyncio import BlockingConnectionPool, Connection, Redis, RedisCluster, SSLConnection
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    CrossSlotTransactionError,
    InvalidPipelineStack,
    NoScriptError,
    RedisClusterException,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.resp import Arg, RedisAddress, RespChannel
from fairgate.resp_cluster import ClusterChannel
from fairgate.sentinel import SwitchWatch
from fairgate.settings import RedisConfig, host_port


def text(value: bytes | str) -> str:
    """A reply as text: the clients return bytes (no ``decode_responses``), scripts numbers too."""
    return value.decode() if isinstance(value, bytes) else str(value)


class GatewayRedis(Redis):
    """redis-py's client, plus a :class:`RespChannel` for the Lua scripts on the request path.

    The channel connects where the client's pool does (same URL, credentials, database, TLS;
    under Sentinel, to the primary the Sentinels name when it connects) and is closed with the
    client.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.connection_pool
        tls = issubclass(pool.connection_class, SSLConnection)
        endpoint = RedisAddress.of_pool(pool.connection_kwargs, tls)
        self._switches: SwitchWatch | None = None
        locate = None
        if isinstance(pool, SentinelConnectionPool):
            self._switches = SwitchWatch(pool, self._primary_switched)
            locate = self._locate_primary
        self.scripts: ScriptChannel = RespChannel(endpoint, locate)

    async def _locate_primary(self) -> tuple[str, int]:
        """Where the Sentinels say the primary is (and, from now on, hear if that changes)."""
        assert self._switches is not None and isinstance(
            self.connection_pool, SentinelConnectionPool
        )
        self._switches.ensure_running()
        host, port = await self.connection_pool.get_master_address()
        return str(host), int(port)

    async def _primary_switched(self) -> None:
        """Leave the old primary: every pooled connection (pub/sub too) and the channel's."""
        await self.connection_pool.disconnect()
        await self.scripts.close()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._switches is not None:
            await self._switches.close()
        await self.scripts.close()
        await super().aclose(close_connection_pool)


class GatewayCluster(RedisCluster):
    """redis-py's Redis Cluster client, plus a :class:`ClusterChannel` for the Lua scripts
    (each call to the primary owning its slot), closed with the client.

    Commands are retried by redis-py across a failover (``MOVED``, a lost node); when it gives
    up with a cluster error of its own (no node reachable, a slot not covered), that is
    redis' ``ConnectionError`` here, so callers handle one vocabulary of Redis failures.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        connection = self.get_connection_kwargs()
        tls = issubclass(connection.get("connection_class") or Connection, SSLConnection)
        self.scripts: ScriptChannel = ClusterChannel(self, RedisAddress.of_pool(connection, tls))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with cluster_errors_as_redis_errors(), _redis_py_at_work():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _GatewayClusterPipeline(self, transaction)  # type: ignore[abstract]

    async def aclose(self) -> None:
        """Close the client and its script channel. redis-py calls this itself too, in the
        middle of a command or pipeline that met ``CLUSTERDOWN`` or one ``MOVED`` too many, to
        read the slot map anew and go on: the script channel is left open then, or the
        admission calls in flight on it would fail (503) for another key's migration."""
        if not _IN_REDIS_PY.get():
            await self.scripts.close()
        await super().aclose()


#: Set while redis-py runs one of this task's commands or pipelines on a Cluster.
_IN_REDIS_PY: ContextVar[bool] = ContextVar("in_redis_py", default=False)


@contextlib.contextmanager
def _redis_py_at_work() -> Iterator[None]:
    token = _IN_REDIS_PY.set(True)
    try:
        yield
    finally:
        _IN_REDIS_PY.reset(token)


class _GatewayClusterPipeline(ClusterPipeline):
    """redis-py's Cluster pipeline, with its cluster errors as :class:`GatewayCluster`'s."""

    async def initialize(self) -> ClusterPipeline:
        with cluster_errors_as_redis_errors():
            return await super().initialize()

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        with cluster_errors_as_redis_errors(), _redis_py_at_work():
            return await super().execute(raise_on_error, allow_redirections)

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]
        with cluster_errors_as_redis_errors():
            return await super().watch(*names)


@contextlib.contextmanager
def cluster_errors_as_redis_errors() -> Iterator[None]:
    """redis-py's Cluster client raises ``RedisClusterException`` (not a ``RedisError``) when
    no node answers or a slot is not covered: an outage, which callers know as redis'
    ``ConnectionError``. Programming errors (keys of several slots in one transaction) stay."""
    try:
        yield
    except (CrossSlotTransactionError, InvalidPipelineStack):
        raise
    except RedisClusterException as exc:
        raise RedisConnectionError(f"Redis Cluster: {exc}") from exc


#: The client of a gateway process, whichever Redis deployment it uses.
RedisClient = GatewayRedis | GatewayCluster
#: What code that uses only redis-py's commands accepts (tests pass plain clients).
AnyRedis = Redis | RedisCluster
#: A pipeline of either.
AnyPipeline = Pipeline | ClusterPipeline


class ScriptChannel(Protocol):
    """Where :class:`Script` calls go: one server's channel, or a Cluster's."""

    async def execute(self, *args: Arg) -> Any: ...

    async def execute_routed(self, key: str, *args: Arg, follow_ask: bool = True) -> Any: ...

    async def close(self) -> None: ...


def connect(config: RedisConfig) -> RedisClient:
    """The client for ``config.mode``: one server, a Cluster, or the primary Sentinels name.

    Standalone and Sentinel use a blocking pool of ``config.max_connections`` connections; a
    command that finds its pooled connection dead (Redis restarted, or failed over, since it
    was last used) is sent once more on a fresh one, instead of failing a request for a
    stale socket. On a Cluster each node has up to ``max_connections`` connections.
    """
    options: dict[str, Any] = {
        "max_connections": config.max_connections,
        "socket_connect_timeout": config.timeout_s,
    }
    if config.mode == "cluster":
        return _cluster(config, options)
    retry = Retry(NoBackoff(), 1)
    if config.mode == "sentinel":
        return _sentinel(config, {**options, "retry": retry, "timeout": config.timeout_s})
    pool = BlockingConnectionPool.from_url(
        config.url, retry=retry, timeout=config.timeout_s, **options
    )
    return GatewayRedis(connection_pool=pool)


def _cluster(config: RedisConfig, options: dict[str, Any]) -> GatewayCluster:
    """A Cluster client seeded by the URL's node and ``config.nodes``."""
    kwargs = {**parse_url(config.url), **options}
    kwargs.pop("db", None)  # a Cluster has database 0 only (the settings checked the URL)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    seeds = [ClusterNode(host, port) for host, port in map(host_port, config.nodes)]
    return GatewayCluster(startup_nodes=seeds or None, **kwargs)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection, as the standalone one does."""


def _sentinel(config: RedisConfig, options: dict[str, Any]) -> GatewayRedis:
    """A client of the primary the Sentinels name ``config.sentinel_master``; the URL gives
    credentials, database and TLS (for the Sentinels too: they run beside the servers)."""
    kwargs = {**parse_url(config.url), **options}
    for where in ("host", "port", "path"):
        kwargs.pop(where, None)
    tls = kwargs.pop("connection_class", None) is SSLConnection
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": config.timeout_s,
        "socket_timeout": config.timeout_s,
        "username": config.sentinel_username,
        "password": (
            config.sentinel_password.get_secret_value() if config.sentinel_password else None
        ),
    }
    if tls:
        sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl_")})
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(
        [host_port(address) for address in config.sentinels], sentinel_kwargs=sentinel_kwargs
    )
    assert config.sentinel_master is not None  # the settings require it in this mode
    client = sentinel.master_for(
        config.sentinel_master,
        redis_class=GatewayRedis,
        connection_pool_class=_BlockingSentinelPool,
        ssl=tls,
        **kwargs,
    )
    return cast(GatewayRedis, client)


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """Bound a Redis call: past ``seconds`` it raises redis' ``TimeoutError`` (a RedisError)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise RedisTimeoutError(f"Redis did not answer within {seconds:g} s") from exc


class Script:
    """A Lua script, called by its SHA over the client's script channel.

    Calls made in one event-loop iteration leave in one write (the channel batches them), so
    under load the admissions, releases and feedback of many requests share one round trip.
    If Redis does not know the script (first use, a restart, ``SCRIPT FLUSH``, a Cluster node
    that never ran it), the call is sent again with the whole source (``EVAL``, which also
    keeps it for the next ``EVALSHA``) to the same node.

    On a Cluster a call goes to the owner of its first key's slot. ``keys_declared`` says
    whether the script touches only the keys it is given: only then may it follow a
    migration's ``ASK`` (see :mod:`fairgate.resp_cluster`).
    """

    def __init__(self, redis: RedisClient, source: str, keys_declared: bool = True) -> None:
        self._redis = redis
        self._channel = redis.scripts
        self._source = source
        self._follow_ask = keys_declared
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self) -> None:
        """Make Redis know the script before its first call (``SCRIPT LOAD``; on a Cluster, on
        every primary). A first ``EVALSHA`` that Redis answers ``NOSCRIPT`` is sent again whole,
        a round trip later: calls issued after it (another script's) would overtake it."""
        await self._redis.script_load(self._source)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        route = keys[0] if keys else ""
        channel, follow_ask = self._channel, self._follow_ask
        try:
            return await channel.execute_routed(
                route, "EVALSHA", self.sha, len(keys), *keys, *args, follow_ask=follow_ask
            )
        except NoScriptError:
            return await channel.execute_routed(
                route, "EVAL", self._source, len(keys), *keys, *args, follow_ask=follow_ask
            )
