"""The access log: one JSON line per inference request, written off the event loop.

A line says when the request arrived, its id, tenant, pool, backend and model, its status and
how it ended (``served``, ``rejected`` with the reason, ``cancelled``), how long it queued, its
time to first token and in all, the tokens in and out, and the client's address (see
:mod:`gateway.client_address`). It never holds a key, a header, a
prompt or a completion: only what :class:`Entry` carries, all of it decided by the gateway
(the tenant's id, never its key; a model only once routing found a pool that serves it).

The request path appends an :class:`Entry` to a deque (about 0.1 µs; no lock, no format, no
write), and a thread of the log's own formats and writes what is pending every
``FLUSH_S``. A slow or blocked standard error (a full pipe, a stalled log collector) holds up
that thread only: the gateway keeps serving, and once ``MAX_PENDING`` lines wait, further
lines are dropped and counted (``fairgate_access_log_dropped_lines_total``) rather than
growing memory without bound.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sys
import threading
import time
from typing import IO, NamedTuple

from fairgate.settings import AccessLogConfig
from gateway.ending import Ending

log = logging.getLogger(__name__)

#: How every line begins (its first field is the time), which tells it from other logs' lines.
LINE_START = '{"time":'
#: How often the writer thread writes what is pending, and how many lines may wait.
FLUSH_S = 0.05
MAX_PENDING = 100_000


class Entry(NamedTuple):
    """One request's line, as the request path hands it over (formatted by the writer)."""

    arrived: float  # Unix time
    request_id: str
    tenant: str | None  # None: no key named one
    pool: str | None  # None: not routed
    backend: str | None  # None: never granted an engine
    model: str | None  # None: not routed
    path: str
    stream: bool
    ending: Ending
    client: str | None = None  # its address (X-Forwarded-For only from a trusted proxy)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_SECOND: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and its text


def _time(at: float) -> str:
    """``at`` in UTC as ISO 8601 with milliseconds; the date and time of a second are
    formatted once (lines of the same second are the rule)."""
    second = int(at)
    cached, text = _SECOND[0]
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SECOND[0] = (second, text)
    return f"{text}.{int((at - second) * 1000):03d}Z"


def line_of(entry: Entry) -> str:
    """The JSON line of one entry (the writer thread's work, not the request path's)."""
    ending = entry.ending
    return _ENCODE(
        {
            "time": _time(entry.arrived),
            "request_id": entry.request_id,
            "tenant": entry.tenant,
            "pool": entry.pool,
            "backend": entry.backend,
            "model": entry.model,
            "path": entry.path,
            "stream": entry.stream,
            "status": ending.status,
            "outcome": ending.outcome,
            "reason": ending.reason,
            "queue_ms": _ms(ending.queue_s),
            "ttft_ms": _ms(ending.ttft_s),
            "total_ms": _ms(ending.total_s),
            "prompt_tokens": ending.prompt_tokens,
            "completion_tokens": ending.completion_tokens,
            "client": entry.client,
        }
    )


class AccessLog:
    """One gateway's access log: :meth:`start` opens it and starts the writer thread,
    :meth:`write` hands a line over, :meth:`stop` writes what is pending and closes it."""

    def __init__(self, config: AccessLogConfig) -> None:
        self.enabled = config.enabled
        self._path = config.path
        self._pending: collections.deque[Entry] = collections.deque()
        self.dropped = 0  # lines dropped because MAX_PENDING were waiting
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: IO[str] | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        if self._path is not None:
            self._stream = self._path.open("a", encoding="utf-8")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(self, entry: Entry) -> None:
        """Hand one line to the writer (never blocks, never raises)."""
        if len(self._pending) < MAX_PENDING:
            self._pending.append(entry)
        else:
            self.dropped += 1

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is pending and close the file (a writer stuck for ``timeout_s`` on a
        blocked stream is left behind: it is a daemon thread)."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout_s)
            self._thread = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _run(self) -> None:
        while not self._stopping.wait(FLUSH_S):
            self._write_pending()
        self._write_pending()

    def _write_pending(self) -> None:
        lines = []
        pending = self._pending
        with contextlib.suppress(IndexError):
            while True:
                lines.append(line_of(pending.popleft()))
        if not lines:
            return
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stream: the lines are lost
            log.warning("access log lines not written: %s", exc)
