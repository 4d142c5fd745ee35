"""gateway/access_log.py: the line of a request, written by a thread of its own so that a
blocked stream never holds up the request path (it drops and counts lines instead)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from fairgate.settings import AccessLogConfig
from gateway import access_log
from gateway.access_log import AccessLog, Entry, line_of
from gateway.ending import Ending

SERVED = Ending("served", 200, None, 17, 8, queue_s=0.0012, ttft_s=0.25, itl_s=0.01, total_s=1.5)


def entry(request_id: str = "req-1", ending: Ending = SERVED) -> Entry:
    return Entry(
        1767225600.25, request_id, "acme", "chat", "gpu-0", "llama", "/v1/chat/completions",
        True, ending, "10.0.0.7",
    )  # fmt: skip


def test_a_line_has_every_field_in_milliseconds() -> None:
    assert json.loads(line_of(entry())) == {
        "time": "2026-01-01T00:00:00.250Z",
        "request_id": "req-1",
        "tenant": "acme",
        "pool": "chat",
        "backend": "gpu-0",
        "model": "llama",
        "path": "/v1/chat/completions",
        "stream": True,
        "status": 200,
        "outcome": "served",
        "reason": None,
        "queue_ms": 1.2,
        "ttft_ms": 250.0,
        "total_ms": 1500.0,
        "prompt_tokens": 17,
        "completion_tokens": 8,
        "client": "10.0.0.7",
    }


def test_lines_are_appended_to_the_file_and_flushed_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"earlier": true}\n')
    log = AccessLog(AccessLogConfig(path=path))
    log.start()
    for n in range(3):
        log.write(entry(f"req-{n}"))
    log.stop()
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("request_id") for line in lines] == [
        None,
        "req-0",
        "req-1",
        "req-2",
    ]


def test_disabled_starts_no_thread(tmp_path: Path) -> None:
    log = AccessLog(AccessLogConfig(enabled=False, path=tmp_path / "access.log"))
    log.start()
    assert not log.enabled
    assert not [t for t in threading.enumerate() if t.name == "access-log"]
    log.stop()
    assert not (tmp_path / "access.log").exists()


def test_a_blocked_stream_holds_up_the_writer_only_then_lines_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_log, "MAX_PENDING", 50)
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    monkeypatch.setattr(access_log.sys, "stderr", stream)
    log = AccessLog(AccessLogConfig())
    log.start()
    log.write(entry("x" * 70_000))  # more than a pipe holds: the writer blocks writing it
    taken = threading.Event()
    while log._pending:  # until the writer has taken it (it takes no more until it is written)
        taken.wait(0.005)
    for _ in range(200):  # the request path goes on, the writer stuck
        log.write(entry())
    assert log.dropped == 150 and len(log._pending) == 50
    received: list[bytes] = []

    def drain() -> None:  # reads the pipe to its end: unblocks the writer
        with os.fdopen(read_end, "rb") as reader:
            received.append(reader.read())

    reader = threading.Thread(target=drain)
    reader.start()
    log.stop()  # writes what is pending, then ends
    stream.close()
    reader.join()
    assert received[0].count(b"\n") == 51  # the stuck line and the 50 kept
