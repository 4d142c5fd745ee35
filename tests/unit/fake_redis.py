"""A Redis stand-in for unit tests: a RESP2 server on loopback, written here, in process.

It understands the few commands the code under test sends (the connection handshake, hashes,
scripts, ``ECHO``), records every command of every connection, and lets a test change how it
answers one command: an error reply, no answer at all (a server that stops answering), or the
connection closed without an answer (a server that dies mid-call). Requests are parsed with
``hiredis.Reader`` (a RESP command is an array of bulk strings, which it reads like a reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis


class Status(str):
    """A simple-string reply (``+OK``)."""


class Error(str):
    """An error reply (``-ERR ...``)."""


class Raw(bytes):
    """Bytes sent as they are, in place of a reply (a server that speaks nonsense)."""


class _Silence:
    """No reply, ever: the connection stays open and everything behind it waits."""


class _Hangup:
    """The connection is closed instead of answering."""


SILENCE = _Silence()
HANGUP = _Hangup()

Reply = bytes | str | int | None | list[Any] | dict[str, Any] | _Silence | _Hangup
#: Answers one command (its arguments, name first, as bytes); may wait before answering.
Answer = Callable[[list[bytes]], Reply | Awaitable[Reply]]

OK = Status("OK")


def encode(reply: Reply, resp3: bool = False) -> bytes:
    """A reply in RESP2 (or RESP3, after ``HELLO 3``: nulls and maps differ)."""
    if isinstance(reply, Raw):
        return bytes(reply)
    if isinstance(reply, Status):
        return b"+" + reply.encode() + b"\r\n"
    if isinstance(reply, Error):
        return b"-" + reply.encode() + b"\r\n"
    if isinstance(reply, bool | int):
        return b":%d\r\n" % reply
    if reply is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    if isinstance(reply, str):
        reply = reply.encode()
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode(item, resp3) for item in reply)
    if isinstance(reply, dict):
        pairs = [encode(part, resp3) for item in reply.items() for part in item]
        return (b"%%%d\r\n" % len(reply) if resp3 else b"*%d\r\n" % len(pairs)) + b"".join(pairs)
    raise TypeError(f"not a reply: {reply!r}")


@dataclass
class FakeRedis:
    """The server: ``async with FakeRedis() as fake`` listens on a free port of 127.0.0.1.

    ``password`` (and ``username``) make it demand ``AUTH`` as Redis does; ``answers`` maps an
    upper-case command name to a function that answers it instead of the built-in behaviour.
    """

    tls: ssl.SSLContext | None = None
    unix_path: str | None = None  # listen on this Unix socket instead of a loopback port
    username: str | None = None
    password: str | None = None
    answers: dict[bytes, Answer] = field(default_factory=dict)
    hashes: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    scripts: dict[bytes, bytes] = field(default_factory=dict)  # sha1 -> source
    #: Every command received, per connection, in order of arrival.
    connections: list[list[list[bytes]]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> FakeRedis:
        if self.unix_path is not None:
            self._server = await asyncio.start_unix_server(
                self._serve, self.unix_path, ssl=self.tls
            )
            return self
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and drop every connection (a server that is gone)."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def url(self, scheme: str = "redis", auth: str = "", db: int = 0, query: str = "") -> str:
        """A URL for this server: ``auth`` is ``user:password@`` or ``:password@``."""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    @property
    def commands(self) -> list[list[bytes]]:
        """Every command of every connection, connection by connection."""
        return [command for connection in self.connections for command in connection]

    @property
    def open_connections(self) -> int:
        """Connections still open (the client has not closed them, nor the server)."""
        return len(self._handlers)

    def names(self) -> list[str]:
        """The names of every command received (``"SCRIPT LOAD"`` for subcommands)."""
        return [_name(command) for command in self.commands]

    def _accepts(self, credentials: list[bytes]) -> bool:
        user, password = credentials if len(credentials) == 2 else (b"default", credentials[0])
        return password.decode() == self.password and user.decode() == (self.username or "default")

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds (what the server received is how tests synchronise)."""
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.001)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one connection's commands in order; they are recorded as they arrive, even
        while an earlier one is still being answered (so tests can see what is in flight)."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        received: list[list[bytes]] = []
        self.connections.append(received)
        arrived: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        reading = asyncio.ensure_future(_read(reader, received, arrived))
        session = _Session(authenticated=self.password is None)
        try:
            while (command := await arrived.get()) is not None:
                if not session.authenticated and command[0].upper() not in (b"AUTH", b"HELLO"):
                    reply: Reply = Error("NOAUTH Authentication required.")
                else:
                    reply = await self._answer(command, session)
                if isinstance(reply, _Hangup):
                    return
                if isinstance(reply, _Silence):
                    await asyncio.Event().wait()  # until the connection is dropped
                writer.write(encode(reply, session.protocol == 3))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            reading.cancel()
            self._handlers.discard(task)

    async def _answer(self, command: list[bytes], session: _Session) -> Reply:
        name = command[0].upper()
        if (answer := self.answers.get(name)) is not None:
            reply = answer(command)
            return await reply if isinstance(reply, Awaitable) else reply
        return self._builtin(name, command[1:], session)

    def _builtin(self, name: bytes, args: list[bytes], session: _Session) -> Reply:
        if name == b"PING":
            return Status("PONG")
        if name == b"ECHO":
            return args[0]
        if name == b"AUTH" or (name == b"HELLO" and b"AUTH" in (a.upper() for a in args)):
            credentials = args[args.index(b"AUTH") + 1 :] if name == b"HELLO" else args
            if not self._accepts(credentials):
                return Error("WRONGPASS invalid username-password pair or user is disabled.")
            session.authenticated = True
        if name == b"AUTH":
            return OK
        if name == b"HELLO":
            session.protocol = int(args[0]) if args else 2
            return {"server": "fake", "version": "7.2.0", "proto": session.protocol}
        if name in (b"SELECT", b"CLIENT"):
            return OK
        if name == b"HGET":
            return self.hashes.get(args[0], {}).get(args[1])
        if name == b"HSET":
            fields = self.hashes.setdefault(args[0], {})
            added = 0
            for key, value in zip(args[1::2], args[2::2], strict=True):
                added += key not in fields
                fields[key] = value
            return added
        if name == b"SCRIPT" and args[0].upper() == b"LOAD":
            sha = hashlib.sha1(args[1]).hexdigest().encode()
            self.scripts[sha] = args[1]
            return sha
        if name == b"EVAL":  # runs the script and keeps it, as Redis does
            self.scripts[hashlib.sha1(args[0]).hexdigest().encode()] = args[0]
            count = int(args[1])
            return [args[2 : 2 + count], args[2 + count :]]
        if name == b"EVALSHA":
            if args[0] not in self.scripts:
                return Error("NOSCRIPT No matching script. Please use EVAL.")
            count = int(args[1])
            return [args[2 : 2 + count], args[2 + count :]]  # the script's KEYS and ARGV
        return Error(f"ERR unknown command '{name.decode()}'")


async def _read(
    reader: asyncio.StreamReader,
    received: list[list[bytes]],
    arrived: asyncio.Queue[list[bytes] | None],
) -> None:
    """Parse commands off the connection, record them and queue them to be answered."""
    parser = hiredis.Reader()
    try:
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                received.append(command)
                arrived.put_nowait(command)
    except ConnectionError:
        pass
    arrived.put_nowait(None)


@dataclass
class _Session:
    """One connection's state: authenticated yet, and which protocol it speaks."""

    authenticated: bool
    protocol: int = 2


def _name(command: list[bytes]) -> str:
    name = command[0].decode().upper()
    if name in ("SCRIPT", "CLIENT") and len(command) > 1:
        return f"{name} {command[1].decode().upper()}"
    return name
