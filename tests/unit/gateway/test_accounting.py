"""gateway/accounting.py: what a failure or an engine's answer counts as, in a tenant's usage
and the metrics alike."""

from __future__ import annotations

import pytest
from aiohttp import web

from admission.errors import AdmissionUnavailable, AtLimit, QueueFull, QueueTimeout
from admission.quota import QuotaExceeded, QuotaState
from backends.errors import EngineFailed, EngineTimeout
from fairgate.errors import (
    backend_unavailable,
    body_too_large,
    invalid_api_key,
    invalid_request,
    model_not_found,
    permission_denied,
)
from gateway.accounting import engine_refusal, failed, reason_of, usage_reason
from gateway.middleware import as_gateway_error
from gateway.relay import Relayed

QUOTA = QuotaExceeded("over", 3.0, QuotaState(()))


def _answered_with_quota_headers(exc: Exception) -> Exception:
    """As the handler raises an admission failure of a tenant with quotas."""
    error = as_gateway_error(exc)  # type: ignore[arg-type]
    error.__cause__ = exc
    return error


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (QUOTA, "quota"),
        (QueueFull("a"), "queue_full"),
        (QueueTimeout("a", 1.0), "queue_timeout"),
        (_answered_with_quota_headers(QueueFull("a")), "queue_full"),
        (_answered_with_quota_headers(EngineTimeout("slow")), "upstream"),
        (AtLimit("full"), "unavailable"),
        (AdmissionUnavailable("no Redis"), "unavailable"),
        (EngineFailed("broke"), "upstream"),
        (backend_unavailable("none reachable"), "upstream"),
        (invalid_request("bad"), "invalid_request"),
        (model_not_found("gpt-5"), "invalid_request"),
        (body_too_large(10), "invalid_request"),
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), "invalid_request"),
        (permission_denied("no"), "permission"),
        (invalid_api_key("who?"), "auth"),  # no tenant: counted in the metrics only
        (ConnectionResetError(), None),  # the client left
        (RuntimeError("a bug"), "internal"),
    ],
)
def test_a_failure_counts_by_its_cause(failure: Exception, reason: str | None) -> None:
    assert reason_of(failure) == reason


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (Relayed(200, completed=True), None),
        (Relayed(200, error="engine died"), "upstream"),
        (Relayed(500), "upstream"),
        (Relayed(503), "upstream"),
        (Relayed(429), "upstream"),  # the engine is overloaded, not the tenant's doing
        (Relayed(401), "upstream"),  # fairgate's key to the engine is wrong
        (Relayed(400), "invalid_request"),
        (Relayed(404), "invalid_request"),
    ],
)
def test_an_engines_answer_is_a_success_or_a_refusal(outcome: Relayed, reason: str | None) -> None:
    assert engine_refusal(outcome) == reason


@pytest.mark.parametrize(
    ("failure", "status", "outcome"),
    [
        (QueueTimeout("a", 1.0), 429, "rejected"),
        (AdmissionUnavailable("no Redis"), 503, "rejected"),
        (EngineTimeout("slow"), 504, "rejected"),
        (invalid_api_key("who?"), 401, "rejected"),
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), 413, "rejected"),
        (RuntimeError("a bug"), 500, "rejected"),
        (ConnectionResetError(), 499, "cancelled"),
    ],
)
def test_a_failure_ends_with_the_status_the_client_is_answered(
    failure: Exception, status: int, outcome: str
) -> None:
    ending = failed(failure)
    assert (ending.status, ending.outcome) == (status, outcome)
    assert ending.reason == reason_of(failure)


def test_auth_counts_in_no_usage() -> None:
    assert usage_reason("auth") is None
    assert usage_reason("quota") == "quota"
    assert usage_reason(None) is None
