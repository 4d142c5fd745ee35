"""API keys: ``Authorization: Bearer <key>`` to a tenant id.

Keys are stored in Redis only as sha256 digests (``{prefix}:apikeys``, a hash from digest to
tenant id), so every replica sees a key any replica stored there. Each replica caches
answers briefly (found keys for ``auth.cache_ttl_s``, unknown ones for
``auth.negative_cache_ttl_s``, so a client retrying a bad key does not hammer Redis). The keys in
the config file are seeded into Redis at start-up (for tools that list keys) and answered from
memory, so they cost no round trip and keep working while Redis is unreachable or restarted.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fairgate.errors import invalid_api_key
from fairgate.keys import api_keys
from fairgate.redis_client import deadline
from fairgate.settings import Settings, hash_api_key

log = logging.getLogger(__name__)


class KeyStore:
    """Resolves API keys to tenant ids, through Redis and a short local cache."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._key = api_keys(settings.redis.key_prefix)
        self._ttl = settings.auth.cache_ttl_s
        self._negative_ttl = settings.auth.negative_cache_ttl_s
        self._timeout = settings.redis.timeout_s
        self._configured = {  # digest -> tenant
            digest: tenant_id
            for tenant_id, tenant in settings.tenants.items()
            for digest in tenant.key_hashes()
        }
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def seed(self) -> None:
        """Store the config file's keys in Redis (idempotent; other keys are left alone)."""
        if self._configured:
            # a fresh dict, typed as redis-py wants its mappings (their keys are invariant)
            await self._redis.hset(self._key, mapping={d: t for d, t in self._configured.items()})

    async def tenant_for(self, key: str) -> str | None:
        """The tenant id that owns ``key``, or None."""
        digest = hash_api_key(key)
        if configured := self._configured.get(digest):
            return configured  # config keys: no round trip, and they survive a Redis restart
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            async with deadline(self._timeout):
                found = await self._redis.hget(self._key, digest)
        except RedisError as exc:
            log.warning("API key lookup in Redis failed (%s); using the config file's keys", exc)
            return self._configured.get(digest)
        tenant_id = found.decode() if isinstance(found, bytes) else found
        ttl = self._ttl if tenant_id is not None else self._negative_ttl
        if len(self._cache) > 100_000:  # a flood of random keys must not grow memory forever
            self._cache.clear()
        self._cache[digest] = (tenant_id, now + ttl)
        return tenant_id


def bearer_key(request: web.Request) -> str:
    """The API key of a request, from ``Authorization: Bearer`` (or ``api-key``, Azure style)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if key := request.headers.get("api-key", "").strip():
        return key
    raise invalid_api_key(
        "You didn't provide an API key. Send it in the Authorization header: "
        "`Authorization: Bearer YOUR_KEY`."
    )


async def authenticate(request: web.Request, keys: KeyStore) -> str:
    """The tenant id of the request's key; 401 if it has none or an unknown one."""
    key = bearer_key(request)
    tenant_id = await keys.tenant_for(key)
    if tenant_id is None:
        shown = f"{key[:3]}...{key[-4:]}" if len(key) > 10 else "***"
        raise invalid_api_key(f"Incorrect API key provided: {shown}.")
    return tenant_id
