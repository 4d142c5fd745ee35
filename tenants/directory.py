"""The tenant directory as one replica sees it: in memory, following Redis within a second.

Auth, the per-request tenant settings (limits, pools, quotas, priority) and the admission
scripts' fail-open limits read it from memory, so a request costs no lookup. The directory
follows Redis by pub/sub (every change announces its version) and by checking the version
every ``admin.sync_interval_s`` in case a message was lost. While Redis is unreachable it
keeps what it last saw (the config file's tenants, if it never reached Redis). If Redis
comes back empty (restarted without persistence), the directory writes back what it holds,
so a restart of Redis does not undo the admin API's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from redis.exceptions import RedisError

from fairgate.pubsub import Subscription
from fairgate.redis_client import AnyRedis
from fairgate.settings import Settings, TenantSettings, hash_api_key
from fairgate.tasks import cancel_all
from tenants.snapshot import KeyEntry, Snapshot, utc_now
from tenants.store import TenantStore

log = logging.getLogger(__name__)

#: How often the last use of keys is reported to Redis (seconds).
TOUCH_EVERY_S = 10.0


class Directory:
    """Tenants and keys now, for one replica."""

    def __init__(self, redis: AnyRedis, settings: Settings) -> None:
        self.store = TenantStore(redis, settings)
        self._redis = redis
        self._interval = settings.admin.sync_interval_s
        self._snapshot = Snapshot.of_settings(settings)
        self._lowest = _lowest_priority(self._snapshot)
        self._used: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        """The version applied here (0: the config file's, Redis never reached)."""
        return self._snapshot.version

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def tenants(self) -> Mapping[str, TenantSettings]:
        return self._snapshot.configs

    def tenant(self, tenant_id: str) -> TenantSettings | None:
        return self._snapshot.configs.get(tenant_id)

    @property
    def lowest_priority(self) -> int:
        """The lowest band of any tenant: the floor of a per-request priority."""
        return self._lowest

    def key(self, secret: str) -> KeyEntry | None:
        """The live key ``secret`` is (None if unknown, revoked or expired); its use is noted."""
        entry = self._snapshot.by_digest.get(hash_api_key(secret))
        if entry is None or (entry.record.expires_at is not None and entry.expired(utc_now())):
            return None
        self._used[entry.record.id] = time.time()
        return entry

    # ------------------------------------------------------------------------- following

    async def start(self) -> None:
        """Seed Redis from the file if it holds no directory, then apply what it holds."""
        try:
            if await self.store.seed(self._snapshot):
                log.info("tenant directory seeded from the config file")
            else:
                log.info("tenant directory found in Redis: the config file's tenants are unused")
            await self.refresh()
        except RedisError as exc:
            log.warning("tenant directory not loaded from Redis (%s): using the file's", exc)
        self._tasks = [asyncio.create_task(self._follow(), name="tenant-directory")]

    async def stop(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._report_use()
        await cancel_all(self._tasks)

    async def refresh(self) -> None:
        """Apply the directory Redis holds; write ours back if Redis lost it."""
        snapshot = await self.store.load()
        if snapshot is None:
            log.warning("tenant directory missing in Redis (restarted?): writing ours back")
            await self.store.seed(self._snapshot)
            snapshot = await self.store.load()
        if snapshot is not None and snapshot.version != self._snapshot.version:
            self._apply(snapshot)

    async def changed(self) -> None:
        """Wait until the next change is applied (for tests and tools)."""
        self._changed.clear()
        await self._changed.wait()

    def _apply(self, snapshot: Snapshot) -> None:
        log.debug("tenant directory at version %d", snapshot.version)
        self._snapshot = snapshot
        self._lowest = _lowest_priority(snapshot)
        self._changed.set()

    async def _follow(self) -> None:
        """Hear changes on pub/sub; check the version every interval regardless."""
        touched = time.monotonic()
        while True:
            try:
                async with Subscription(self._redis, [self.store.keys.directory_channel]) as heard:
                    while True:
                        await heard.get(timeout=self._interval)
                        if await self.store.version() != self._snapshot.version:
                            await self.refresh()
                        if time.monotonic() - touched >= TOUCH_EVERY_S:
                            touched = time.monotonic()
                            await self._report_use()
            except (RedisError, OSError) as exc:
                log.debug("tenant directory sync interrupted: %s", exc)
                await asyncio.sleep(self._interval)

    async def _report_use(self) -> None:
        used, self._used = self._used, {}
        await self.store.touch(used)


def _lowest_priority(snapshot: Snapshot) -> int:
    return min((t.priority for t in snapshot.configs.values()), default=0)
