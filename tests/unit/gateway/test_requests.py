"""gateway/requests.py: request bodies checked leniently, forwarded as sent but for usage."""

from __future__ import annotations

import json

import pytest

from fairgate.errors import GatewayError
from gateway.requests import Endpoint, parse_request

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def raw(body: object) -> bytes:
    return json.dumps(body).encode()


def refusal(endpoint: Endpoint, body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_request(endpoint, body)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    return caught.value


def test_a_plain_request_is_forwarded_as_the_clients_own_bytes() -> None:
    body = b'{"model": "m",  "messages": [{"role": "user", "content": "hi"}], "seed": 7}'
    parsed = parse_request(Endpoint.CHAT, body)
    assert (parsed.model, parsed.stream, parsed.client_wants_usage) == ("m", False, False)
    assert parsed.upstream_body() == body  # spacing and all


def test_unknown_fields_go_to_the_engine_untouched() -> None:
    body = {**CHAT, "ignore_eos": True, "chat_template_kwargs": {"x": [1]}, "priority": -3}
    parsed = parse_request(Endpoint.CHAT, raw(body))
    assert json.loads(parsed.upstream_body()) == body


def test_a_stream_asks_the_engine_for_usage_and_remembers_the_client_did_not() -> None:
    parsed = parse_request(Endpoint.CHAT, raw({**CHAT, "stream": True}))
    assert (parsed.stream, parsed.client_wants_usage, parsed.raw) == (True, False, None)
    sent = json.loads(parsed.upstream_body())
    assert sent == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


def test_a_streams_other_options_are_kept_when_usage_is_added() -> None:
    body = {**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": False}}
    sent = json.loads(parse_request(Endpoint.CHAT, raw(body)).upstream_body())
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}


def test_a_stream_that_asked_for_usage_is_forwarded_as_sent() -> None:
    body = raw({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    parsed = parse_request(Endpoint.CHAT, body)
    assert (parsed.stream, parsed.client_wants_usage) == (True, True)
    assert parsed.upstream_body() == body


def test_embeddings_never_stream() -> None:
    body = raw({"model": "e", "input": "text", "stream": True})
    parsed = parse_request(Endpoint.EMBEDDINGS, body)
    assert (parsed.stream, parsed.client_wants_usage) == (False, False)
    assert parsed.upstream_body() == body
    assert [endpoint.streams for endpoint in Endpoint] == [True, True, False]


def test_extra_fields_for_an_engine_are_merged_into_a_fresh_body() -> None:
    body = raw({**CHAT, "priority": 1})
    parsed = parse_request(Endpoint.CHAT, body)
    assert json.loads(parsed.upstream_body({"priority": 5})) == {**CHAT, "priority": 5}
    assert parsed.upstream_body() == body  # the parsed request is not changed by it


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], []])
def test_every_openai_prompt_shape_is_accepted(prompt: object) -> None:
    assert parse_request(Endpoint.COMPLETIONS, raw({"model": "m", "prompt": prompt})).model == "m"
    assert parse_request(Endpoint.EMBEDDINGS, raw({"model": "m", "input": prompt})).model == "m"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "The request body is not valid JSON: "),
        (b"\xff\xfe", "The request body is not valid JSON: "),
        (b"[1, 2]", "The request body must be a JSON object."),
        (b'"text"', "The request body must be a JSON object."),
    ],
)
def test_a_body_that_is_not_a_json_object(body: bytes, message: str) -> None:
    assert refusal(Endpoint.CHAT, body).message.startswith(message)


@pytest.mark.parametrize(
    ("endpoint", "body", "message", "param"),
    [
        (Endpoint.CHAT, {"messages": CHAT["messages"]}, "Missing required parameter: 'model'.",
         "model"),
        (Endpoint.CHAT, {"model": "m"}, "Missing required parameter: 'messages'.", "messages"),
        (Endpoint.COMPLETIONS, {"model": "m"}, "Missing required parameter: 'prompt'.", "prompt"),
        (Endpoint.EMBEDDINGS, {"model": "m"}, "Missing required parameter: 'input'.", "input"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": 7}, "Invalid type for 'prompt': expected "
         "a string, an array of strings, an array of token ids or an array of those.", "prompt"),
        (Endpoint.EMBEDDINGS, {"model": "m", "input": [1, "a"]}, "Invalid type for 'input': ",
         "input"),
    ],
)  # fmt: skip
def test_a_missing_or_misshapen_input_names_its_parameter(
    endpoint: Endpoint, body: dict[str, object], message: str, param: str
) -> None:
    error = refusal(endpoint, raw(body))
    assert error.message.startswith(message)
    assert error.param == param


@pytest.mark.parametrize(
    ("change", "path", "param"),
    [
        ({"model": ""}, "model", "model"),
        ({"model": 3}, "model", "model"),
        ({"messages": []}, "messages", "messages"),
        ({"messages": ["hi"]}, "messages.0", "messages"),
        ({"stream": "true"}, "stream", "stream"),  # strict: a string is not a boolean
        ({"stream_options": "usage"}, "stream_options", "stream_options"),
    ],
)
def test_an_invalid_value_names_where_it_is(
    change: dict[str, object], path: str, param: str
) -> None:
    error = refusal(Endpoint.CHAT, raw({**CHAT, **change}))
    assert error.message.startswith(f"Invalid value for '{path}': ")
    assert error.param == param


def test_a_sent_request_keeps_what_the_relay_reads_and_lets_go_of_its_body() -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    parsed = parse_request(Endpoint.CHAT, raw(body))
    sent = parsed.sent()
    assert (sent.endpoint, sent.model, sent.stream, sent.client_wants_usage) == (
        Endpoint.CHAT,
        "m",
        True,
        True,
    )
    assert (sent.body, sent.raw) == ({}, None)
    assert parsed.upstream_body() == raw(body)  # the request it came from is unchanged
