"""gateway/relay.py: the stream filter (what of an engine's stream reaches the client), engine
error bodies in the OpenAI envelope, and the usage of a whole response."""

from __future__ import annotations

import itertools
import json

import pytest

from gateway.relay import Relayed, _StreamFilter, _usage_of, engine_error_body

# ------------------------------------------------------------------------- the stream filter

USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
ROLE = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant"}}],"usage":null}'
TOKEN = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"%s"}}],"usage":null}'
FINISH = b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}'
USAGE_ONLY = b'data: {"id":"c1","choices":[],"usage":' + json.dumps(USAGE).encode() + b"}"
PING = b": ping"
END = b"data: [DONE]"


def stream_of(events: list[bytes], terminator: bytes = b"\n\n") -> bytes:
    return b"".join(event + terminator for event in events)


#: A whole chat stream: a comment, content (one token says "[DONE]" and one "choices"), usage.
EVENTS = [PING, ROLE, TOKEN % b"Hi", TOKEN % b"[DONE]", TOKEN % b'\\"choices\\":', FINISH]
EVENTS += [USAGE_ONLY, END]
CONTENT_CHUNKS = 5  # every chunk with choices, usage-only one aside


def run(reads: list[bytes], client_wants_usage: bool) -> tuple[bytes, Relayed, bytes]:
    """Feed ``reads`` to a filter: what reached the client, the outcome, the unsent tail."""
    outcome = Relayed(200)
    stream = _StreamFilter(client_wants_usage, outcome)
    sent = b"".join(stream.feed(read, 0.0) for read in reads)
    return sent, outcome, stream.tail


@pytest.mark.parametrize("terminator", [b"\n\n", b"\r\n\r\n"])
def test_a_stream_in_one_read_loses_only_the_usage_chunk_the_client_did_not_ask_for(
    terminator: bytes,
) -> None:
    sent, outcome, tail = run([stream_of(EVENTS, terminator)], client_wants_usage=False)
    assert sent == stream_of([e for e in EVENTS if e != USAGE_ONLY], terminator)
    assert (outcome.usage, outcome.chunks, outcome.completed, tail) == (
        USAGE,
        CONTENT_CHUNKS,
        True,
        b"",
    )


def test_a_client_that_asked_for_usage_gets_every_byte() -> None:
    stream = stream_of(EVENTS)
    sent, outcome, tail = run([stream], client_wants_usage=True)
    assert (sent, tail) == (stream, b"")
    assert outcome.usage == USAGE and outcome.completed
    assert outcome.chunks == CONTENT_CHUNKS + 1  # the usage chunk has a "choices" key too


@pytest.mark.parametrize("terminator", [b"\n\n", b"\r\n\r\n"])
@pytest.mark.parametrize("client_wants_usage", [False, True])
def test_a_stream_read_one_byte_at_a_time_gives_the_same_bytes(
    terminator: bytes, client_wants_usage: bool
) -> None:
    stream = stream_of(EVENTS, terminator)
    whole, whole_outcome, _ = run([stream], client_wants_usage)
    outcome = Relayed(200)
    relay = _StreamFilter(client_wants_usage, outcome)
    sent = b""
    for i in range(len(stream)):
        sent += relay.feed(stream[i : i + 1], 0.0)
        assert whole.startswith(sent)
        assert not relay.tail.endswith(terminator)  # a whole event never waits
    assert sent == whole and relay.tail == b""
    assert (outcome.usage, outcome.chunks, outcome.completed) == (
        whole_outcome.usage,
        whole_outcome.chunks,
        whole_outcome.completed,
    )


def test_a_stream_cut_in_three_anywhere_gives_the_same_bytes() -> None:
    short = [b'data: {"choices":[1]}', b'data: {"choices":[],"usage":{"n":1}}', END]
    stream = stream_of(short, b"\r\n\r\n")
    expected = stream_of([short[0], END], b"\r\n\r\n")
    for a, b in itertools.combinations(range(1, len(stream)), 2):
        sent, outcome, tail = run([stream[:a], stream[a:b], stream[b:]], False)
        assert (sent, tail, outcome.usage, outcome.chunks) == (expected, b"", {"n": 1}, 1), (a, b)


def test_nothing_is_sent_until_an_event_is_whole() -> None:
    outcome = Relayed(200)
    relay = _StreamFilter(False, outcome)
    assert relay.feed(b"data: {", 0.0) == b""
    assert relay.feed(b'"choices":[]}\n', 0.0) == b""
    assert relay.feed(b"\n: ping", 0.0) == b'data: {"choices":[]}\n\n'
    assert relay.tail == b": ping"
    assert outcome.chunks == 1


def test_comments_and_other_fields_pass_unchanged() -> None:
    events = [PING, b"event: message\nid: 7\nretry: 1000\ndata: hello", b": bye"]
    sent, outcome, _ = run([stream_of(events)], client_wants_usage=False)
    assert sent == stream_of(events)
    assert (outcome.usage, outcome.chunks, outcome.completed) == (None, 0, False)


def test_a_stream_without_done_is_not_complete_even_if_content_says_done() -> None:
    sent, outcome, _ = run([stream_of([ROLE, TOKEN % b"[DONE]", FINISH])], False)
    assert not outcome.completed
    assert outcome.chunks == 3


def test_done_without_a_space_completes_the_stream() -> None:
    _, outcome, _ = run([stream_of([ROLE, b"data:[DONE]"])], False)
    assert outcome.completed


def test_a_usage_chunk_that_also_carries_content_is_never_dropped() -> None:
    last = b'data: {"choices":[{"delta":{"content":"!"}}],"usage":{"completion_tokens":1}}'
    sent, outcome, _ = run([stream_of([ROLE, last, END])], client_wants_usage=False)
    assert sent == stream_of([ROLE, last, END])
    assert outcome.usage == {"completion_tokens": 1}


def test_usage_written_with_spaces_is_found() -> None:
    spaced = b'data: {"choices": [], "usage" : {"completion_tokens": 4}}'
    sent, outcome, _ = run([stream_of([ROLE, spaced, END])], client_wants_usage=False)
    assert outcome.usage == {"completion_tokens": 4}
    assert sent == stream_of([ROLE, END])


def test_a_later_usage_replaces_an_earlier_one() -> None:
    first = b'data: {"choices":[],"usage":{"completion_tokens":1}}'
    second = b'data: {"choices":[],"usage":{"completion_tokens":2}}'
    sent, outcome, _ = run([stream_of([first]), stream_of([second, END])], False)
    assert outcome.usage == {"completion_tokens": 2}
    assert sent == stream_of([END])


def test_an_unfinished_last_event_stays_in_the_tail() -> None:
    sent, outcome, tail = run([stream_of([ROLE]) + b"data: {partial"], False)
    assert sent == stream_of([ROLE])
    assert tail == b"data: {partial"


# ------------------------------------------------------------------------ engine error bodies


def error_of(status: int, body: bytes) -> dict[str, object]:
    value = json.loads(engine_error_body(status, body))
    assert list(value) == ["error"]
    return value["error"]


def test_vllm_errors_keep_message_code_and_param() -> None:
    body = b'{"object":"error","message":"too long","type":"BadRequestError","param":"messages","code":400}'  # noqa: E501
    assert error_of(400, body) == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": 400,
    }


@pytest.mark.parametrize(
    ("status", "body", "message", "kind"),
    [
        (422, b'{"error":"Input validation error"}', "Input validation error",
         "invalid_request_error"),  # TGI, Ollama
        (422, b'{"detail":"Field required"}', "Field required", "invalid_request_error"),
        (502, b"<html>Bad gateway</html>\n", "<html>Bad gateway</html>", "server_error"),
        (503, b"", "The engine answered 503.", "server_error"),
        (500, b"   \n", "The engine answered 500.", "server_error"),
        (500, b'{"message":""}', '{"message":""}', "server_error"),  # an empty message: the body
        (400, b'["not", "an", "object"]', '["not", "an", "object"]', "invalid_request_error"),
        (500, b"\xff\xfe broken", "\ufffd\ufffd broken", "server_error"),
    ],
)  # fmt: skip
def test_other_engine_errors_are_put_in_the_envelope(
    status: int, body: bytes, message: str, kind: str
) -> None:
    assert error_of(status, body) == {"message": message, "type": kind, "param": None, "code": None}


def test_a_code_or_param_of_an_odd_type_is_left_out() -> None:
    body = b'{"message":"no","code":{"nested":1},"param":["p"]}'
    assert error_of(400, body) == {
        "message": "no",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_very_long_plain_text_error_is_cut() -> None:
    assert error_of(500, b"x" * 10_000)["message"] == "x" * 2000


def test_an_error_already_in_the_envelope_passes_byte_for_byte() -> None:
    body = b'{"error": {"message": "no", "type": "x", "code": 7, "extra": true}}'
    assert engine_error_body(400, body) == body


# ----------------------------------------------------------------------- usage of a body


def test_usage_of_a_completion_read_from_where_it_starts() -> None:
    body = json.dumps({"id": "c", "choices": [{"text": "usage"}], "usage": USAGE}).encode()
    assert _usage_of(body) == USAGE


def test_usage_of_a_body_whose_usage_is_not_last() -> None:
    body = json.dumps({"usage": {"completion_tokens": 2}, "choices": []}).encode()
    assert _usage_of(body) == {"completion_tokens": 2}


def test_usage_of_a_body_where_usage_is_only_text() -> None:
    body = json.dumps({"choices": [{"text": 'say "usage": {"completion_tokens": 9}'}]}).encode()
    assert _usage_of(body) is None


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"usage": null}', b'{"usage": 3}'])
def test_usage_of_a_body_without_one(body: bytes) -> None:
    assert _usage_of(body) is None


def test_usage_null_chunks_pass_and_only_the_real_usage_is_taken() -> None:
    """OpenAI-style APIs send ``"usage": null`` on every chunk when usage was asked for."""
    outcome = Relayed(200)
    stream = _StreamFilter(client_wants_usage=False, outcome=outcome)
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}],"usage": null}\n\n'
    final = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    relayed = stream.feed(chunk + chunk + final + b"data: [DONE]\n\n", 0.0)
    assert relayed == chunk + chunk + b"data: [DONE]\n\n"  # the usage chunk was not asked for
    assert outcome.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert (outcome.chunks, outcome.completed) == (2, True)


def test_the_first_and_last_content_chunks_are_timed() -> None:
    """With the time of the read they arrived in (the relay reads the clock once per read)."""
    outcome = Relayed(200)
    stream = _StreamFilter(False, outcome)
    stream.feed(stream_of([PING]), 1.0)
    assert outcome.first_at is None  # a comment carries no token
    stream.feed(stream_of([ROLE, TOKEN % b"Hi"]), 2.0)
    assert (outcome.first_at, outcome.last_at) == (2.0, 2.0)
    stream.feed(stream_of([PING]), 3.0)
    assert (outcome.first_at, outcome.last_at) == (2.0, 2.0)
    stream.feed(stream_of([TOKEN % b"there"]), 4.0)
    assert (outcome.first_at, outcome.last_at) == (2.0, 4.0)
