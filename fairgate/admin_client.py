"""A small HTTP client of the admin REST API (``/admin/v1``), for ``fairgate admin``.

It speaks only HTTP and JSON: no gateway code is imported, so the command works against any
replica of any deployment, local or remote, and the API stays the one contract. A refused
answer becomes :class:`AdminApiError` carrying the API's own message (the OpenAI error
envelope); a server that cannot be reached becomes :class:`AdminUnreachable` naming the URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"


class AdminApiError(Exception):
    """The API refused the call: its status, message and error code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class AdminUnreachable(Exception):
    """No answer from the URL at all (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the admin API at {url}: {reason}")
        self.url = url


@dataclass(frozen=True)
class Answer:
    """A successful answer: parsed JSON (or the text of a non-JSON body) and the headers."""

    status: int
    body: Any
    headers: Mapping[str, str]


class AdminClient:
    """``async with AdminClient(url, token) as admin: await admin.call("GET", "/tenants")``;
    paths are relative to ``/admin/v1``."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """One call; a 2xx answer, or :class:`AdminApiError` / :class:`AdminUnreachable`."""
        assert self._session is not None, "use AdminClient as an async context manager"
        url = f"{self.url}/admin/v1{path}"
        try:
            async with self._session.request(
                method, url, json=body, params=query, headers=headers
            ) as response:
                text = await response.text()
                status, answer_headers = response.status, response.headers.copy()
        except aiohttp.ClientConnectorError as exc:
            raise AdminUnreachable(self.url, str(exc.os_error or exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnreachable(self.url, str(exc) or type(exc).__name__) from None
        parsed = _parsed(text, answer_headers.get("Content-Type", ""))
        if status >= 400:
            raise _refusal(f"{method} {url}", status, parsed)
        return Answer(status, parsed, answer_headers)


def _parsed(text: str, content_type: str) -> Any:
    if not content_type.startswith("application/json"):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _refusal(request: str, status: int, body: Any) -> AdminApiError:
    """The API's message where it sent the error envelope; otherwise what the status means
    (a 404 in plain text: no such operation there: an older gateway, or the admin API listens
    on another port)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return AdminApiError(status, str(error.get("message")), error.get("code"))
    if status == 404:
        return AdminApiError(
            status,
            f"HTTP 404 for {request}: no such admin operation there (an older gateway, or "
            "the admin API on another port: server.admin_port?)",
        )
    text = str(body).strip()[:200]
    return AdminApiError(status, f"HTTP {status}" + (f": {text}" if text else ""))
