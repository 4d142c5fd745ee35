"""gateway/logs.py: malformed requests and disconnects are one INFO line, never the bytes."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from gateway.logs import SERVER_LOGGER, RoutineClientErrors


def record_of(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        SERVER_LOGGER, logging.ERROR, __file__, 1, "Error handling request from %s",
        ("127.0.0.1",), exc_info,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def info_enabled() -> None:
    logging.getLogger(SERVER_LOGGER).setLevel(logging.INFO)


@pytest.mark.parametrize(
    "error",
    [
        BadHttpMessage("Invalid header value char: b'Authorization: Bearer sk-secret-key'"),
        LineTooLong("my secret prompt" * 10, "8190"),
    ],
)
def test_a_malformed_request_is_one_info_line_without_its_bytes(error: Exception) -> None:
    record = record_of(error)
    assert RoutineClientErrors().filter(record)
    text = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert text.startswith("INFO malformed HTTP request refused with 400")
    assert "secret" not in text and "\n" not in text


def test_a_disconnect_is_one_info_line() -> None:
    record = record_of(ConnectionResetError("Cannot write to closing transport"))
    assert RoutineClientErrors().filter(record)
    assert record.levelname == "INFO" and record.exc_info is None
    assert record.getMessage() == "client disconnected mid-response"


def test_at_warning_level_they_are_not_logged_at_all() -> None:
    logging.getLogger(SERVER_LOGGER).setLevel(logging.WARNING)
    assert not RoutineClientErrors().filter(record_of(BadHttpMessage("x")))


def test_other_errors_keep_their_traceback() -> None:
    record = record_of(RuntimeError("a bug"))
    assert RoutineClientErrors().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
