"""gateway/sse.py: finding whole events in bytes as they arrive, and reading their data lines."""

from __future__ import annotations

import json

import pytest

from gateway.sse import DONE, data_of, error_event, event_around, json_data, last_event_end

# ------------------------------------------------------------------------ last_event_end


@pytest.mark.parametrize(
    ("buffer", "end"),
    [
        (b"", -1),
        (b"data: {}", -1),
        (b"data: {}\n", -1),
        (b"data: {}\r\n\r", -1),
        (b"data: {}\n\n", 10),
        (b"data: {}\r\n\r\n", 12),
        (b"data: a\n\ndata: b\n\ndata: c", 18),  # the unfinished third is left out
        (b"data: a\r\n\r\ndata: b\n\n", 20),  # terminators of both kinds in one read
        (b"data: a\n\ndata: b\r\n\r\n", 20),
        (b": ping\n\n", 8),  # a comment is an event like any other
    ],
)
def test_last_event_end_is_just_past_the_last_terminator(buffer: bytes, end: int) -> None:
    assert last_event_end(buffer) == end


def test_last_event_end_splits_a_stream_wherever_it_is_cut() -> None:
    """Cut anywhere, the part up to the last event end is whole events and the rest is the
    start of the next one: together they are the stream, and no event is split."""
    events = [
        b'data: {"a":1}\n\n',
        b": keep-alive\n\n",
        b'data: {"b":2}\r\n\r\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    ends = {len(b"".join(events[: i + 1])) for i in range(len(events))}
    for cut in range(len(stream) + 1):
        end = last_event_end(stream[:cut])
        assert end == max((e for e in ends if e <= cut), default=-1), cut


# -------------------------------------------------------------------------- event_around

EVENTS = b'data: {"a":1}\n\n: comment\n\ndata: {"b":2}\r\n\r\ndata: [DONE]\n\n'


@pytest.mark.parametrize(
    ("needle", "event"),
    [
        (b'"a"', b'data: {"a":1}\n\n'),
        (b"comment", b": comment\n\n"),
        (b'"b"', b'data: {"b":2}\r\n\r\n'),
        (b"[DONE]", b"data: [DONE]\n\n"),
    ],
)
def test_event_around_finds_the_whole_event_holding_a_byte(needle: bytes, event: bytes) -> None:
    start, end = event_around(EVENTS, EVENTS.index(needle))
    assert EVENTS[start:end] == event


def test_event_around_at_the_first_byte_of_an_event() -> None:
    at = EVENTS.index(b"data: [DONE]")
    start, end = event_around(EVENTS, at)
    assert EVENTS[start:end] == b"data: [DONE]\n\n"


def test_event_around_an_unterminated_last_event_runs_to_the_end() -> None:
    events = b"data: a\n\ndata: b"
    start, end = event_around(events, events.index(b"b"))
    assert events[start:end] == b"data: b"


# ------------------------------------------------------------------------------- data_of


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: hello\n\n", b"hello"),
        (b"data:hello\n\n", b"hello"),  # the space after the colon is optional
        (b"data:  two spaces\n\n", b" two spaces"),  # only one space is removed
        (b"data: hello\r\n\r\n", b"hello"),
        (b"data: line 1\ndata: line 2\n\n", b"line 1\nline 2"),  # lines joined by \n
        (b"event: completion\nid: 7\ndata: x\n\n", b"x"),  # other fields ignored
        (b": just a comment\n\n", None),
        (b"event: ping\n\n", None),
        (b"data: [DONE]\n\n", DONE),
        (b"data:\n\n", b""),
    ],
)
def test_data_of_an_event(event: bytes, data: bytes | None) -> None:
    assert data_of(event) == data


@pytest.mark.parametrize(
    ("event", "value"),
    [
        (b'data: {"usage": {"total_tokens": 3}}\n\n', {"usage": {"total_tokens": 3}}),
        (b'data: {"a":\ndata: 1}\n\n', {"a": 1}),  # JSON spread over two data lines
        (b"data: [DONE]\n\n", None),
        (b"data: [1, 2]\n\n", None),  # JSON, but not an object
        (b"data: {not json\n\n", None),
        (b": comment\n\n", None),
        (b"data: \n\n", None),
    ],
)
def test_json_data_is_the_object_an_event_carries_or_none(event: bytes, value: object) -> None:
    assert json_data(event) == value


# --------------------------------------------------------------------------- error_event


def test_error_event_carries_the_openai_error_envelope() -> None:
    event = error_event("The engine stopped.")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert last_event_end(event) == len(event)  # one whole event
    assert json_data(event) == {
        "error": {
            "message": "The engine stopped.",
            "type": "server_error",
            "param": None,
            "code": "backend_error",
        }
    }


def test_error_event_with_a_message_on_several_lines_stays_one_event() -> None:
    event = error_event("line 1\n\nline 3", type_="invalid_request_error", code="bad")
    assert last_event_end(event) == len(event)
    assert json.loads(data_of(event) or b"")["error"]["message"] == "line 1\n\nline 3"
    assert json_data(event) == {
        "error": {
            "message": "line 1\n\nline 3",
            "type": "invalid_request_error",
            "param": None,
            "code": "bad",
        }
    }
