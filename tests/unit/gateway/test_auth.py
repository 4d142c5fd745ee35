"""gateway/auth.py: where a request's key is read from, and which tenant it names (from the
tenant directory a replica holds in memory: no Redis is needed to answer)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

from fairgate.errors import GatewayError
from fairgate.settings import hash_api_key
from gateway.auth import authenticate, bearer_key
from tenants.directory import Directory
from tests.unit.config import settings

# ------------------------------------------------------------------- where the key is read


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-1"},
        {"Authorization": "bearer sk-1"},  # the scheme is case-insensitive
        {"Authorization": "BEARER sk-1 "},
        {"authorization": "Bearer  sk-1"},
        {"api-key": "sk-1"},  # Azure OpenAI style
        {"Api-Key": " sk-1 "},
        {"Authorization": "Basic dXNlcjpwdw==", "api-key": "sk-1"},  # not a bearer: api-key
        {"Authorization": "Bearer ", "api-key": "sk-1"},
        {"Authorization": "Bearer sk-1", "api-key": "sk-2"},  # Authorization wins
    ],
)
def test_the_key_is_read_from_authorization_bearer_or_api_key(headers: dict[str, str]) -> None:
    assert (
        bearer_key(make_mocked_request("POST", "/v1/chat/completions", headers=headers)) == "sk-1"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "sk-1"},  # no scheme
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"api-key": "  "},
    ],
)
def test_a_request_without_a_key_is_401_saying_how_to_send_one(headers: dict[str, str]) -> None:
    with pytest.raises(GatewayError) as caught:
        bearer_key(make_mocked_request("POST", "/v1/chat/completions", headers=headers))
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert "Authorization: Bearer YOUR_KEY" in caught.value.message


# ------------------------------------------------------------------ keys to tenants


def directory(**tenants: dict[str, Any]) -> Directory:
    """A directory of the file's tenants, as a replica holds it before reaching Redis."""
    redis = Redis.from_url("redis://127.0.0.1:1")  # never used: nothing is started
    return Directory(redis, settings(tenants=tenants))


def request_with(key: str) -> web.Request:
    return make_mocked_request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})


def test_a_known_key_names_its_tenant_and_its_settings() -> None:
    found = authenticate(request_with("sk-a"), directory(a={"api_keys": ["sk-a"], "weight": 3}))
    assert found[0] == "a" and found[1].weight == 3


@pytest.mark.parametrize("key", ["sk-unknown-1234", "short"])
def test_an_unknown_key_is_401_showing_only_its_ends(key: str) -> None:
    with pytest.raises(GatewayError) as caught:
        authenticate(request_with(key), directory(a={"api_keys": ["sk-a"]}))
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert key not in caught.value.message or len(key) <= 10 and "***" in caught.value.message


def test_a_key_given_by_digest_works_and_an_expired_one_is_refused() -> None:
    past = datetime(2020, 1, 1, tzinfo=UTC)
    keys = [
        {"id": "key_live0001", "sha256": hash_api_key("sk-live")},
        {"id": "key_dead0001", "sha256": hash_api_key("sk-dead"), "expires_at": past},
    ]
    tenants = directory(a={"keys": keys})
    assert authenticate(request_with("sk-live"), tenants)[0] == "a"
    with pytest.raises(GatewayError) as caught:
        authenticate(request_with("sk-dead"), tenants)
    assert caught.value.status == 401


def test_keys_are_held_only_as_digests() -> None:
    held = directory(a={"api_keys": ["sk-secret-value"]}).snapshot
    assert "sk-secret-value" not in repr(held)
    assert list(held.by_digest) == [hash_api_key("sk-secret-value")]
