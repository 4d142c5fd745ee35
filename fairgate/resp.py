"""A lean, pipelined Redis connection for the commands on every request's path.

redis-py spends about 100 µs of Python on each command it sends (a connection checkout from the
pool, encoding each argument, a parser object per reply): more than Redis itself spends running
one of the admission scripts, and those run several times per request. So the script calls go
through this channel instead:

- one connection per client, shared by every caller (Redis answers a connection's commands in
  the order it received them, so replies are matched to callers by position);
- commands packed by ``hiredis.pack_command`` and replies parsed by ``hiredis.Reader``, both C;
- everything sent in one event-loop iteration goes out in one write, so under load many
  requests' scripts share one system call on each side.

Nothing else is reimplemented: the connection's address, credentials, database and TLS come
from the redis-py client the channel belongs to, and errors are redis-py's exception types, so
callers handle one vocabulary. Everything that is not on the hot path (pub/sub, admin reads,
tests) keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Arguments hiredis can pack (and Redis understands).
Arg = str | bytes | int | float


@dataclass(frozen=True)
class RedisAddress:
    """Where and how to connect: taken from a redis-py connection pool's settings."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a Unix socket, instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None
    #: Bounds connecting, and how long Redis may leave commands unanswered before the
    #: connection is declared dead (fairgate sets the pool's connect timeout to
    #: ``redis.timeout_s``, so both come from there).
    timeout_s: float = 2.0

    @classmethod
    def of_pool(cls, kwargs: Mapping[str, Any], tls: bool) -> RedisAddress:
        """The endpoint of a redis-py ``ConnectionPool`` (its ``connection_kwargs``)."""
        return cls(
            host=kwargs.get("host") or "127.0.0.1",
            port=int(kwargs.get("port") or 6379),
            path=kwargs.get("path"),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl=_tls_context(kwargs) if tls else None,
            timeout_s=float(kwargs.get("socket_connect_timeout") or 2.0),
        )


def _tls_context(kwargs: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS settings redis-py's ``SSLConnection`` would use (``rediss://`` URLs)."""
    context = ssl.create_default_context(
        cafile=kwargs.get("ssl_ca_certs"), capath=kwargs.get("ssl_ca_path")
    )
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(
            kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"), kwargs.get("ssl_password")
        )
    required = kwargs.get("ssl_cert_reqs", "required")
    if required in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = bool(kwargs.get("ssl_check_hostname", True))
    return context


def _pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP (hiredis's stub types the argument as a one-element tuple)."""
    return hiredis.pack_command(args)  # type: ignore[arg-type]


#: Error replies whose code says more than "the command failed": redis-py's exception for
#: each, built from the message after the code (as redis-py's parser builds them).
_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "NOPERM": AuthenticationError,
    "MOVED": MovedError,  # Cluster: the slot lives elsewhere now
    "ASK": AskError,  # Cluster: the slot is migrating, this key already left
    "TRYAGAIN": TryAgainError,  # Cluster: a multi-key call during a migration
    "CLUSTERDOWN": ClusterDownError,
    "READONLY": ReadOnlyError,  # a replica: the primary we knew was demoted
    "LOADING": BusyLoadingError,
}


def reply_error(reply: hiredis.ReplyError) -> RedisError:
    """redis-py's exception for an error reply (the callers' vocabulary); also for one inside
    an array reply (a batch's, :mod:`admission.batching`)."""
    message = str(reply)
    code, _, rest = message.partition(" ")
    kind = _ERRORS.get(code)
    if kind is None:
        return ResponseError(message)
    if kind in (MovedError, AskError):  # "<slot> <host>:<port>", parsed by the exception
        return kind(rest)
    return kind(message)


class _Connection(asyncio.Protocol):
    """One Redis connection: writes batched per loop iteration, replies matched in order.

    Deadlines cost nothing per command: a watchdog runs only while commands are outstanding
    and declares the connection dead when Redis has answered none of them for ``timeout_s``
    (every caller then gets redis-py's ``TimeoutError``). Replies come in order, so the oldest
    command waiting that long means all of them are stuck.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self._timeout_s = timeout_s
        self._progress_at = 0.0  # when Redis last answered, or commands started waiting
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outgoing: list[bytes] = []
        self.lost: BaseException | None = None

    @property
    def open(self) -> bool:
        return self._transport is not None and self.lost is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (or its error)."""
        future = self.loop.create_future()
        if self.lost is not None:
            future.set_exception(RedisConnectionError(f"Redis connection lost: {self.lost}"))
            return future
        if not self._waiting:
            self._progress_at = self.loop.time()
            if self._watchdog is None:
                self._watchdog = self.loop.call_later(self._timeout_s, self._watch)
        self._waiting.append(future)
        self._outgoing.append(packed)
        if len(self._outgoing) == 1:
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        if self._transport is None or self._transport.is_closing() or not self._outgoing:
            return
        data = b"".join(self._outgoing) if len(self._outgoing) > 1 else self._outgoing[0]
        self._outgoing.clear()
        self._transport.write(data)

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting or self.lost is not None:
            return
        silent_for = self.loop.time() - self._progress_at
        if silent_for >= self._timeout_s:
            self.close(RedisTimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))
        else:
            self._watchdog = self.loop.call_later(self._timeout_s - silent_for, self._watch)

    def data_received(self, data: bytes) -> None:
        self._progress_at = self.loop.time()
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                self._resolve(reply)
        except hiredis.ProtocolError as exc:  # the stream cannot be trusted any more
            self.close(exc)

    def _resolve(self, reply: Any) -> None:
        future = self._waiting.popleft()
        if future.done():  # its caller gave up (a deadline); the reply is not needed
            return
        if isinstance(reply, hiredis.ReplyError):
            future.set_exception(reply_error(reply))
        else:
            future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or EOFError("closed by the server"))

    def close(self, reason: BaseException) -> None:
        self._fail(reason)
        if self._transport is not None:
            self._transport.close()

    def _fail(self, reason: BaseException) -> None:
        """Every caller still waiting hears that its command's fate is unknown."""
        if self.lost is None:
            self.lost = reason
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(_lost(reason))


#: Finds the server to connect to when (re)connecting: the primary the Sentinels name now.
Locate = Callable[[], Awaitable[tuple[str, int]]]


class RespChannel:
    """Pipelined commands over one lazily (re)connected connection to ``endpoint``.

    A lost connection fails the commands in flight with redis-py's ``ConnectionError`` (the
    callers' fail mode decides what that means) and the next command connects again: to
    ``endpoint``, or where ``locate`` says (Sentinel: the primary after a failover). A
    ``READONLY`` reply means the server was demoted to a replica while connected: the
    connection is dropped, so the next command goes to the primary found anew.
    """

    def __init__(self, endpoint: RedisAddress, locate: Locate | None = None) -> None:
        self.endpoint = endpoint
        self._locate = locate
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply (bytes, int, list, as hiredis parses it)."""
        connection = self._connection
        if connection is None or not connection.open or connection.loop is not _loop():
            connection = await self._connect()
        try:
            return await connection.send(_pack(args))
        except ReadOnlyError as exc:
            raise _demoted(connection, exc) from exc

    async def execute_routed(self, key: str, *args: Arg, follow_ask: bool = True) -> Any:
        """As :meth:`execute`: one server owns every key (the Cluster channel's interface)."""
        return await self.execute(*args)

    async def execute_asking(self, *args: Arg) -> Any:
        """Send ``ASKING`` and then one command, back to back on one connection (Redis
        Cluster: the command may then touch a slot this node is importing)."""
        connection = self._connection
        if connection is None or not connection.open or connection.loop is not _loop():
            connection = await self._connect()
        asking = connection.send(_pack(("ASKING",)))
        _, reply = await asyncio.gather(asking, connection.send(_pack(args)))
        return reply

    async def close(self) -> None:
        """Close the connection; commands still in flight fail."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(RedisConnectionError("channel closed"))

    async def _connect(self) -> _Connection:
        """One connection attempt at a time; concurrent callers share its outcome."""
        if self._connecting is None or self._connecting.get_loop() is not _loop():
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            connection = await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
        return connection

    async def _open(self) -> _Connection:
        loop = _loop()
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(endpoint.timeout_s):
                if self._locate is not None:
                    host, port = await self._locate()
                    endpoint = dataclasses.replace(endpoint, host=host, port=port)

                def protocol() -> _Connection:
                    return _Connection(loop, endpoint.timeout_s)

                if endpoint.path:
                    _, connection = await loop.create_unix_connection(
                        protocol, endpoint.path, ssl=endpoint.ssl
                    )
                else:
                    _, connection = await loop.create_connection(
                        protocol, endpoint.host, endpoint.port, ssl=endpoint.ssl
                    )
                await self._handshake(connection)
        except (OSError, TimeoutError) as exc:
            where = endpoint.path or f"{endpoint.host}:{endpoint.port}"
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
        old, self._connection = self._connection, connection
        if old is not None and old is not connection:
            old.close(RedisConnectionError("replaced"))
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        """Authenticate and select the database, as redis-py does on a new connection."""
        replies = []
        if self.endpoint.password is not None:
            credentials: tuple[Arg, ...] = (self.endpoint.password,)
            if self.endpoint.username:
                credentials = (self.endpoint.username, self.endpoint.password)
            replies.append(connection.send(_pack(("AUTH", *credentials))))
        if self.endpoint.db:
            replies.append(connection.send(_pack(("SELECT", self.endpoint.db))))
        try:
            await asyncio.gather(*replies)
        except BaseException:
            connection.close(RedisConnectionError("handshake failed"))
            raise


def _demoted(connection: _Connection, exc: ReadOnlyError) -> RedisConnectionError:
    """The server turned replica: every command on its connection fails, the next connects
    afresh (to the new primary, if the channel locates it)."""
    reason = RedisConnectionError(f"Redis is a replica now (failover?): {exc}")
    connection.close(reason)
    return reason


def _lost(reason: BaseException) -> RedisError:
    """What a caller whose command was in flight hears: a timeout, or a lost connection."""
    if isinstance(reason, RedisTimeoutError):
        return RedisTimeoutError(str(reason))
    return RedisConnectionError(f"Redis connection lost: {reason}")


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
