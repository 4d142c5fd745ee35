"""fairgate/errors.py: every failure as the OpenAI error envelope, with the SDKs' statuses."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fairgate import errors
from fairgate.errors import GatewayError, error_body, error_response


def envelope(error: GatewayError) -> tuple[int, dict[str, object], str]:
    """Status, parsed body and content type of the response the gateway sends for ``error``."""
    response = error.response()
    assert response.text is not None
    return response.status, json.loads(response.text), response.content_type


def test_error_body_is_the_openai_envelope_with_every_field() -> None:
    assert error_body("no", "invalid_request_error") == {
        "error": {"message": "no", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert error_body("no", "t", 404, "model")["error"] == {
        "message": "no",
        "type": "t",
        "param": "model",
        "code": 404,
    }


def test_error_response_is_json_with_status_and_headers() -> None:
    response = error_response(418, "tea", "server_error", "teapot", headers={"X-A": "1"})
    assert (response.status, response.content_type, response.headers["X-A"]) == (
        418,
        "application/json",
        "1",
    )
    assert response.text is not None
    assert json.loads(response.text)["error"]["code"] == "teapot"


Make = Callable[[], GatewayError]


@pytest.mark.parametrize(
    ("make", "status", "kind", "code", "param"),
    [
        (lambda: errors.invalid_request("bad", "n"), 400, "invalid_request_error",
         "invalid_request", "n"),
        (lambda: errors.invalid_api_key("who"), 401, "invalid_request_error", "invalid_api_key",
         None),
        (lambda: errors.permission_denied("no", "pool"), 403, "permission_error",
         "permission_denied", "pool"),
        (lambda: errors.model_not_found("gpt-x"), 404, "invalid_request_error", "model_not_found",
         "model"),
        (lambda: errors.body_too_large(10), 413, "invalid_request_error", "request_too_large",
         None),
        (lambda: errors.rate_limited("wait", 2.0), 429, "rate_limit_error", "rate_limit_exceeded",
         None),
        (lambda: errors.backend_failed("x"), 502, "server_error", "backend_error", None),
        (lambda: errors.backend_unavailable("x"), 503, "server_error", "backend_unavailable",
         None),
        (lambda: errors.admission_unavailable("x"), 503, "server_error",
         "admission_unavailable", None),
        (lambda: errors.backend_timeout("x"), 504, "server_error", "backend_timeout", None),
    ],
)  # fmt: skip
def test_each_constructor_gives_its_status_type_code_and_param(
    make: Make, status: int, kind: str, code: str, param: str | None
) -> None:
    error = make()
    sent_status, body, content_type = envelope(error)
    assert (sent_status, content_type) == (status, "application/json")
    assert body == {"error": {"message": error.message, "type": kind, "param": param, "code": code}}


def test_messages_say_what_was_asked_for() -> None:
    assert errors.model_not_found("gpt-x").message == (
        "The model `gpt-x` does not exist or you do not have access to it."
    )
    assert errors.body_too_large(1024).message == (
        "The request body exceeds the limit of 1024 bytes."
    )


@pytest.mark.parametrize(("after_s", "header"), [(0.0, "1"), (0.4, "1"), (1.5, "2"), (15.2, "15")])
def test_rate_limited_says_when_to_retry_in_whole_seconds_at_least_one(
    after_s: float, header: str
) -> None:
    assert errors.rate_limited("wait", after_s).response().headers["Retry-After"] == header


def test_str_of_an_error_names_status_and_code() -> None:
    assert str(errors.backend_timeout("slow")) == "504 backend_timeout: slow"
    assert str(GatewayError(400, "plain")) == "400 invalid_request_error: plain"


def test_errors_do_not_share_their_headers() -> None:
    first, second = GatewayError(400, "a"), GatewayError(400, "b")
    first.headers["X"] = "1"
    assert second.headers == {}
