"""gateway/admin/auth.py: admin tokens, never a tenant's key."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

from fairgate.errors import GatewayError
from fairgate.settings import hash_api_key
from gateway.admin.auth import require_admin
from tenants.directory import Directory
from tests.unit.config import settings

DIGESTS = [hash_api_key("first-token"), hash_api_key("second-token")]


def refusal(headers: dict[str, str], digests: list[str] = DIGESTS) -> GatewayError:
    directory = Directory(Redis.from_url("redis://127.0.0.1:1"), settings())
    with pytest.raises(GatewayError) as caught:
        require_admin(
            make_mocked_request("GET", "/admin/v1/tenants", headers=headers), digests, directory
        )
    return caught.value


@pytest.mark.parametrize("token", ["first-token", "second-token"])
def test_any_configured_token_is_accepted(token: str) -> None:
    directory = Directory(Redis.from_url("redis://127.0.0.1:1"), settings())
    request = make_mocked_request(
        "GET", "/admin/v1/tenants", headers={"Authorization": f"Bearer {token}"}
    )
    require_admin(request, DIGESTS, directory)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic Zmlyc3QtdG9rZW4="},
        {"api-key": "first-token"},
    ],
)
def test_no_bearer_token_is_401_with_a_challenge(headers: dict[str, str]) -> None:
    error = refusal(headers)
    assert (error.status, error.code) == (401, "invalid_admin_token")
    assert error.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_wrong_token_is_401_and_a_tenant_key_is_403() -> None:
    assert refusal({"Authorization": "Bearer first-tokeN"}).status == 401
    error = refusal({"Authorization": "Bearer key-t"})  # tenant t's key (tests/unit/config.py)
    assert (error.status, error.code) == (403, "permission_denied")


def test_without_tokens_configured_every_call_says_how_to_enable_the_api() -> None:
    error = refusal({"Authorization": "Bearer first-token"}, digests=[])
    assert (error.status, error.code) == (401, "admin_disabled")
    assert "FAIRGATE_ADMIN__TOKENS" in error.message
