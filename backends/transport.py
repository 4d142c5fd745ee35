"""How the gateway talks to an engine: one small interface on each backend.

Every HTTP exchange with an engine (the forwarded request, ``/tokenize``, health probes, the
metrics, server-info and slots scrapes) is an :class:`EngineRequest` sent through the backend's
:class:`Transport`, as httpx's clients send theirs through a transport
(``httpx/_transports/base.py``). Production uses :class:`AiohttpTransport`, one
``aiohttp.ClientSession`` per backend; a test gives a backend a :class:`FakeTransport`, a
function from request to canned response, and needs no engine at all.

How talking to an engine can fail is decided here, in one place: a transport raises the
backends' own exceptions (:mod:`backends.errors`), never aiohttp's; reading a whole answer
(:func:`fetch`) maps read failures the same way. Only the relay of a forwarded response reads
its body itself, and catches :data:`READ_ERRORS` to end a stream with an error event. A
relayed stream's silence is watched by the gateway itself, not by aiohttp's per-read timer
(:func:`stop_read_timer`, :func:`end_silent`).
"""

from __future__ import annotations

import inspect
import json
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp

from backends.errors import (
    OUT_OF_FILES,
    BackendUnreachable,
    EngineFailed,
    EngineTimeout,
    GatewayOutOfFiles,
)
from fairgate.settings import BackendConfig

#: Idle keep-alive connections are dropped after 4 s, below the 5 s that uvicorn-based engines
#: (vLLM, SGLang) keep them: reusing a connection the server has just closed would fail a
#: request that was never processed.
_KEEPALIVE_S = 4.0

#: Connecting failed: refused, unreachable, DNS, or the connect timeout. Nothing was sent.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

#: Failures of the engine side while a response's body is read.
READ_ERRORS = (
    aiohttp.ClientPayloadError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One request to an engine: ``path`` is relative to the backend's URL.

    ``timeout_s`` bounds the whole exchange; None keeps the backend's own connect and read
    timeouts (a forwarded request may run for minutes while it keeps sending).
    """

    method: Literal["GET", "POST"]
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


class ByteStream(Protocol):
    """A response body as it arrives (``aiohttp.StreamReader`` is one)."""

    async def readany(self) -> bytes:
        """What has arrived since the last read, waiting for something; ``b""`` at the end."""
        ...


class EngineResponse(Protocol):
    """An engine's response with its headers read, what the relay reads
    (``aiohttp.ClientResponse`` is one). Its body is read whole (``read``) or as it arrives
    (``content``); ``release`` returns the connection, ``close`` aborts the request."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content(self) -> ByteStream: ...

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Sends a backend's requests to its engine; raises only :mod:`backends.errors`."""

    async def send(self, request: EngineRequest) -> EngineResponse:
        """The engine's response, its headers read and its body not yet.

        Raises :class:`BackendUnreachable` when no connection could be made (nothing was
        sent), :class:`EngineTimeout` or :class:`EngineFailed` once something may have been.
        """
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Answer:
    """A whole (small) answer of an engine: probes, scrapes, tokenize."""

    status: int
    body: bytes

    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        """The body as JSON (``ValueError`` if it is not)."""
        return json.loads(self.body)


async def fetch(transport: Transport, request: EngineRequest) -> Answer:
    """Send ``request`` and read its whole answer (errors as :meth:`Transport.send` raises)."""
    response = await transport.send(request)
    try:
        body = await response.read()
    except TimeoutError as exc:
        response.close()
        raise EngineTimeout(f"The engine did not answer {request.path} in time.") from exc
    except aiohttp.ClientError as exc:
        response.close()
        raise EngineFailed(f"The engine failed answering {request.path}: {exc!r}") from exc
    response.release()
    return Answer(response.status, body)


def stop_read_timer(response: EngineResponse) -> None:
    """Switch off aiohttp's ``sock_read`` timer for the rest of a response whose headers have
    arrived; its reader then watches for the engine's silence itself
    (:mod:`gateway.silent_engines`, :func:`end_silent`).

    With ``sock_read`` set, aiohttp cancels a timer and makes a new one on every read of the
    connection: per chunk of every relayed stream, an object made and one cancelled. The timer
    armed when the headers arrived stays until the next read cancels it, so an engine silent
    right after its headers still times out as before. The connection's next request sets its
    own read timeout again (``set_response_params``).
    """
    if isinstance(response, aiohttp.ClientResponse):
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None


def end_silent(response: EngineResponse, silent_s: float) -> None:
    """End a response whose engine has sent nothing for ``silent_s``: its reader raises
    ``TimeoutError``, as it does when aiohttp's read timer fires, and its connection is
    closed, which makes the engine abort the request."""
    if isinstance(response, aiohttp.ClientResponse):
        # before close(), whose own "Connection closed" is no read error
        response.content.set_exception(TimeoutError(f"The engine sent nothing for {silent_s:g} s."))
    response.close()


def engine_ssl_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts ``ca_file``'s certificates (and checks the host name)."""
    return ssl.create_default_context(cafile=str(ca_file))


class AiohttpTransport:
    """A backend's own ``aiohttp.ClientSession`` (its own connection pool), so that a slow or
    dead engine cannot starve connections to the others. Made on first use, in the loop."""

    def __init__(self, name: str, config: BackendConfig) -> None:
        self._name = name
        self._config = config
        self._base_url = str(config.url).rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        headers = {}
        if self._config.api_key is not None:
            headers["Authorization"] = f"Bearer {self._config.api_key.get_secret_value()}"
        # An engine with a private CA: its certificate verified against that CA alone
        verify = True if self._config.ca_file is None else engine_ssl_context(self._config.ca_file)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S, ssl=verify),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._config.connect_timeout_s,
                sock_read=self._config.read_timeout_s,
            ),
            headers=headers,
        )

    async def send(self, request: EngineRequest) -> aiohttp.ClientResponse:
        if self._session is None:
            self._session = self._open_session()
        options: dict[str, Any] = {}
        if request.timeout_s is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=request.timeout_s)
        try:
            return await self._session.request(
                request.method,
                self._base_url + request.path,
                data=request.body or None,
                headers=request.headers,
                **options,
            )
        except _NOT_CONNECTED as exc:
            os_error = getattr(exc, "os_error", None)
            if isinstance(os_error, OSError) and os_error.errno in OUT_OF_FILES:
                raise GatewayOutOfFiles(
                    os_error.errno,
                    f"fairgate may open no more files (connecting to {self._name}: "
                    f"{os_error.strerror}); raise its open-file limit (ulimit -n)",
                ) from exc
            raise BackendUnreachable(f"{self._name}: {exc}") from exc
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise EngineTimeout(f"The engine {self._name} did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise EngineFailed(
                f"The engine {self._name} failed: {exc.__class__.__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ------------------------------------------------------------------------------ for tests


class _Chunks:
    """A body that arrives in ``chunks``; an exception among them is raised when reached."""

    def __init__(self, chunks: Iterable[bytes | BaseException]) -> None:
        self._chunks = iter(list(chunks))

    async def readany(self) -> bytes:
        chunk = next(self._chunks, b"")
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


class FakeResponse:
    """A canned response: a body whole, or chunks (an exception among them breaks it there)."""

    def __init__(
        self,
        status: int = 200,
        body: bytes | str | dict[str, Any] | list[Any] = b"",
        headers: Mapping[str, str] | None = None,
        chunks: Iterable[bytes | BaseException] | None = None,
    ) -> None:
        self.status = status
        self.headers = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
        elif isinstance(body, dict | list):  # a JSON value
            body = json.dumps(body).encode()
            self.headers.setdefault("Content-Type", "application/json")
        self.headers.setdefault("Content-Type", "application/octet-stream")
        self.content = _Chunks([body] if chunks is None else chunks)
        self.released = self.closed = False

    @property
    def content_type(self) -> str:
        return self.headers["Content-Type"].split(";")[0].strip()

    async def read(self) -> bytes:
        body = b""
        while chunk := await self.content.readany():
            body += chunk
        return body

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


#: Answers one request: a response, or raises as a transport would (possibly asynchronously).
Handler = Callable[[EngineRequest], FakeResponse | Awaitable[FakeResponse]]


class FakeTransport:
    """A transport answered by a function instead of an engine (httpx's ``MockTransport``).

    ``requests`` keeps what was sent, for a test to look at.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[EngineRequest] = []

    async def send(self, request: EngineRequest) -> FakeResponse:
        self.requests.append(request)
        answer = self._handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def close(self) -> None:
        return None
