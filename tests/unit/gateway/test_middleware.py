"""gateway/middleware.py: admission's refusals and the engines' failures become HTTP in one
place (``as_gateway_error``)."""

from __future__ import annotations

import pytest

from admission.errors import (
    AdmissionError,
    AdmissionUnavailable,
    AtLimit,
    QueueFull,
    QueueTimeout,
)
from backends.errors import EngineError, EngineFailed, EngineTimeout
from gateway.middleware import as_gateway_error


@pytest.mark.parametrize(
    ("failure", "status", "code", "retry_after"),
    [
        (QueueFull("acme"), 429, "rate_limit_exceeded", "1"),
        (QueueTimeout("acme", 30.0), 429, "rate_limit_exceeded", "15"),
        (QueueTimeout("acme", 0.5), 429, "rate_limit_exceeded", "1"),
        (AtLimit("Tenant 'acme' is at its concurrency limit."), 429, "rate_limit_exceeded", "1"),
        (AdmissionUnavailable("Redis is unreachable."), 503, "admission_unavailable", None),
    ],
)
def test_admission_refusals_map_to_status_code_and_retry_after(
    failure: AdmissionError, status: int, code: str, retry_after: str | None
) -> None:
    mapped = as_gateway_error(failure)
    assert (mapped.status, mapped.code, mapped.message) == (status, code, str(failure))
    assert mapped.headers.get("Retry-After") == retry_after


def test_refusal_messages_name_the_tenant() -> None:
    assert str(QueueFull("acme")) == "Too many requests of tenant 'acme' are already waiting."
    assert str(QueueTimeout("acme", 2.5)) == (
        "The request waited 2.5 s in the queue of tenant 'acme' without being admitted."
    )


def test_an_admission_error_of_no_known_kind_is_a_type_error_not_a_silent_500() -> None:
    with pytest.raises(TypeError, match="no mapping"):
        as_gateway_error(AdmissionError("new kind"))


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (EngineTimeout("slow"), 504, "backend_timeout"),
        (EngineFailed("broke"), 502, "backend_error"),
    ],
)
def test_engine_failures_map_to_gateway_errors(
    failure: EngineError, status: int, code: str
) -> None:
    mapped = as_gateway_error(failure)
    assert (mapped.status, mapped.code, mapped.message) == (status, code, str(failure))
    assert "Retry-After" not in mapped.headers
