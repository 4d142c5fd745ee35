"""gateway/auth.py: where a request's key is read from, and the key store's local cache.

The store talks to Redis through redis-py, here to the test's RESP server; time is a clock the
test moves (the cache reads ``time.monotonic`` through the module), so expiry needs no sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

import gateway.auth
from fairgate.errors import GatewayError
from fairgate.settings import Settings, hash_api_key
from gateway.auth import KeyStore, authenticate, bearer_key
from tests.unit.config import settings
from tests.unit.fake_redis import SILENCE, Error, FakeRedis

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


# ----------------------------------------------------------------------------- the cache


class Clock:
    """``time.monotonic`` for the auth module, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(gateway.auth, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
async def redis(fake_redis: FakeRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(fake_redis.url())
    yield client
    await client.aclose()


@pytest.fixture
def config() -> Settings:
    """Found keys cached 5 s, unknown ones 1 s; Redis calls bounded at 0.1 s."""
    return settings(
        redis={"key_prefix": "fg", "timeout_s": 0.1},
        auth={"cache_ttl_s": 5.0, "negative_cache_ttl_s": 1.0},
    )


STORED = b"fg:apikeys"


def store(fake: FakeRedis, key: str, tenant: str) -> None:
    """A key some replica stored in Redis (as its digest), not in the config file."""
    fake.hashes.setdefault(STORED, {})[hash_api_key(key).encode()] = tenant.encode()


def revoke(fake: FakeRedis, key: str) -> None:
    del fake.hashes[STORED][hash_api_key(key).encode()]


def lookups(fake: FakeRedis) -> int:
    return fake.names().count("HGET")


async def test_seed_stores_the_config_files_keys_as_digests(
    config: Settings, fake_redis: FakeRedis, redis: Redis
) -> None:
    await KeyStore(redis, config).seed()
    assert fake_redis.hashes[STORED] == {
        hash_api_key("key-t").encode(): b"t",
        hash_api_key("key-u").encode(): b"u",
    }


async def test_seed_without_configured_keys_writes_nothing(
    fake_redis: FakeRedis, redis: Redis
) -> None:
    no_keys = settings(tenants={"t": {}})
    await KeyStore(redis, no_keys).seed()
    assert "HSET" not in fake_redis.names()


async def test_config_keys_cost_no_round_trip_and_outlive_redis(
    config: Settings, fake_redis: FakeRedis, redis: Redis
) -> None:
    keys = KeyStore(redis, config)
    assert await keys.tenant_for("key-t") == "t"
    await fake_redis.stop()
    assert await keys.tenant_for("key-u") == "u"
    assert lookups(fake_redis) == 0


async def test_a_stored_key_is_looked_up_once_then_answered_from_the_cache(
    config: Settings, fake_redis: FakeRedis, redis: Redis, clock: Clock
) -> None:
    store(fake_redis, "sk-stored", "t")
    keys = KeyStore(redis, config)
    assert await keys.tenant_for("sk-stored") == "t"
    clock.now += 4.9
    assert await keys.tenant_for("sk-stored") == "t"
    assert lookups(fake_redis) == 1
    assert fake_redis.commands[-1] == [b"HGET", STORED, hash_api_key("sk-stored").encode()]


async def test_a_cached_key_is_looked_up_again_once_its_ttl_is_over(
    config: Settings, fake_redis: FakeRedis, redis: Redis, clock: Clock
) -> None:
    store(fake_redis, "sk-stored", "t")
    keys = KeyStore(redis, config)
    assert await keys.tenant_for("sk-stored") == "t"
    clock.now += 5.0
    assert await keys.tenant_for("sk-stored") == "t"
    assert lookups(fake_redis) == 2


async def test_a_revoked_key_works_until_its_cache_entry_expires_then_is_refused(
    config: Settings, fake_redis: FakeRedis, redis: Redis, clock: Clock
) -> None:
    store(fake_redis, "sk-stored", "t")
    keys = KeyStore(redis, config)
    assert await keys.tenant_for("sk-stored") == "t"
    revoke(fake_redis, "sk-stored")
    clock.now += 4.0
    assert await keys.tenant_for("sk-stored") == "t"  # at most cache_ttl_s of grace
    clock.now += 1.0
    assert await keys.tenant_for("sk-stored") is None
    assert lookups(fake_redis) == 2


async def test_an_unknown_key_is_remembered_as_unknown_for_the_negative_ttl(
    config: Settings, fake_redis: FakeRedis, redis: Redis, clock: Clock
) -> None:
    keys = KeyStore(redis, config)
    assert await keys.tenant_for("sk-new") is None
    store(fake_redis, "sk-new", "u")  # stored by another replica just after
    clock.now += 0.9
    assert await keys.tenant_for("sk-new") is None  # a client retrying costs no round trip
    assert lookups(fake_redis) == 1
    clock.now += 0.1
    assert await keys.tenant_for("sk-new") == "u"
    assert lookups(fake_redis) == 2


@pytest.mark.parametrize(
    "failure",
    [lambda command: Error("ERR server is loading"), lambda command: SILENCE],
    ids=["error reply", "no answer"],
)
async def test_a_failed_lookup_refuses_the_key_without_caching_the_refusal(
    config: Settings, fake_redis: FakeRedis, redis: Redis, failure: object
) -> None:
    store(fake_redis, "sk-stored", "t")
    fake_redis.answers[b"HGET"] = failure  # type: ignore[assignment]
    keys = KeyStore(redis, config)
    assert await keys.tenant_for("sk-stored") is None
    assert await keys.tenant_for("key-t") == "t"  # config keys still work
    del fake_redis.answers[b"HGET"]
    assert await keys.tenant_for("sk-stored") == "t"  # Redis answers again: asked again


async def test_answers_are_cached_per_store(
    config: Settings, fake_redis: FakeRedis, redis: Redis
) -> None:
    store(fake_redis, "sk-stored", "t")
    assert await KeyStore(redis, config).tenant_for("sk-stored") == "t"
    assert await KeyStore(redis, config).tenant_for("sk-stored") == "t"
    assert lookups(fake_redis) == 2


# --------------------------------------------------------------------------- authenticate


async def test_authenticate_returns_the_tenant_of_the_key(config: Settings, redis: Redis) -> None:
    request = make_mocked_request("POST", "/", headers={"api-key": "key-u"})
    assert await authenticate(request, KeyStore(redis, config)) == "u"


@pytest.mark.parametrize(
    ("key", "shown"), [("sk-unknown-0123456789", "sk-...6789"), ("short-key", "***")]
)
async def test_an_unknown_key_is_401_naming_the_key_only_in_part(
    config: Settings, redis: Redis, key: str, shown: str
) -> None:
    request = make_mocked_request("POST", "/", headers={"Authorization": f"Bearer {key}"})
    with pytest.raises(GatewayError) as caught:
        await authenticate(request, KeyStore(redis, config))
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert caught.value.message == f"Incorrect API key provided: {shown}."
    assert key not in caught.value.message
