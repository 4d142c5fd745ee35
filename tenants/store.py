"""Writing the tenant directory in Redis: seeded once from the file, then changed by the API.

Every change is one optimistic transaction: watch the directory's version, read, check (the
tenant exists, ``If-Match`` names its current version, the new settings are valid here),
then write the records, the admission scripts' view of the tenants (``cfg:tenants`` and the
bands) and the bumped version together, and announce the version on pub/sub. Two admins
changing the directory at once never interleave: one of the transactions fails its watch and
is tried again against what the other wrote.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from admission.domain import write_tenants
from fairgate.keys import AdmissionKeys
from fairgate.pubsub import publish_command
from fairgate.redis_client import AnyPipeline, AnyRedis, text
from fairgate.settings import (
    ApiKeyRecord,
    Settings,
    TenantSettings,
    describe_validation,
    hash_api_key,
)
from tenants.errors import (
    InvalidTenant,
    KeyNotFound,
    TenantExists,
    TenantNotFound,
    VersionConflict,
)
from tenants.snapshot import KeyEntry, Snapshot, TenantRecord, utc_now

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A new key's secret: this prefix and 32 random bytes, URL-safe.
SECRET_PREFIX = "fg-"


@dataclass
class Change:
    """What one transaction writes: records to set (or remove, as None)."""

    tenants: dict[str, TenantRecord | None] = field(default_factory=dict)
    keys: dict[str, KeyEntry | None] = field(default_factory=dict)


class TenantStore:
    """The directory's Redis side: load it, seed it, change it."""

    def __init__(self, redis: AnyRedis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self.keys = AdmissionKeys.of(settings.redis.key_prefix)

    # ------------------------------------------------------------------------- reading

    async def version(self) -> int | None:
        """The directory's version; None if Redis holds no directory (never seeded, or lost)."""
        raw = await self._redis.get(self.keys.directory("version"))
        return None if raw is None else int(raw)

    async def load(self) -> Snapshot | None:
        """The whole directory, or None if Redis holds none."""
        directory = self.keys.directory
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(directory("version"))
            pipe.hgetall(directory("tenants"))
            pipe.hgetall(directory("keys"))
            return _snapshot(*await pipe.execute())

    async def last_used(self) -> dict[str, float]:
        """Key id -> when it was last used (epoch seconds, as replicas last reported)."""
        raw = await self._redis.hgetall(self.keys.directory("key_used"))
        return {text(k): float(v) for k, v in raw.items()}

    async def touch(self, used: Mapping[str, float]) -> None:
        """Record when keys were last used (a replica reports every few seconds)."""
        if used:
            mapping: dict[FieldT, EncodableT] = dict(used.items())
            await self._redis.hset(self.keys.directory("key_used"), mapping=mapping)

    # ------------------------------------------------------------------------- seeding

    async def seed(self, snapshot: Snapshot) -> bool:
        """Write ``snapshot`` if Redis holds no directory; False if it holds one (which wins:
        a replica started later with an older file never overwrites the API's changes)."""

        def everything(current: Snapshot | None) -> Change:
            if current is not None:
                raise _AlreadySeeded
            return Change(dict(snapshot.tenants), dict(snapshot.keys))

        try:
            await self._commit(everything)
        except _AlreadySeeded:
            return False
        return True

    # ------------------------------------------------------------------------- tenants

    async def create_tenant(self, tenant_id: str, config: TenantSettings) -> TenantRecord:
        def create(current: Snapshot) -> tuple[Change, TenantRecord]:
            if tenant_id in current.tenants:
                raise TenantExists(tenant_id)
            record = TenantRecord(tenant_id, current.version + 1, self._valid(tenant_id, config))
            return Change({tenant_id: record}), record

        return await self._change(create)

    async def update_tenant(
        self, tenant_id: str, patch: Mapping[str, Any], if_match: int | None = None
    ) -> TenantRecord:
        """Apply a JSON merge patch (RFC 7396) to a tenant's settings."""

        def update(current: Snapshot) -> tuple[Change, TenantRecord]:
            old = self._matching(current, tenant_id, if_match)
            merged = merge_patch(old.config.model_dump(mode="json", exclude_defaults=True), patch)
            try:
                config = TenantSettings.model_validate(merged)
            except ValidationError as exc:
                raise InvalidTenant(describe_validation(exc).splitlines()) from None
            record = TenantRecord(tenant_id, current.version + 1, self._valid(tenant_id, config))
            return Change({tenant_id: record}), record

        return await self._change(update)

    async def delete_tenant(self, tenant_id: str, if_match: int | None = None) -> TenantRecord:
        """Remove a tenant and its keys: new requests are refused; what runs finishes."""

        def delete(current: Snapshot) -> tuple[Change, TenantRecord]:
            old = self._matching(current, tenant_id, if_match)
            keys: dict[str, KeyEntry | None] = {
                k.record.id: None for k in current.keys_of(tenant_id)
            }
            return Change({tenant_id: None}, dict(keys)), old

        return await self._change(delete)

    def _matching(self, current: Snapshot, tenant_id: str, if_match: int | None) -> TenantRecord:
        record = current.tenants.get(tenant_id)
        if record is None:
            raise TenantNotFound(tenant_id)
        if if_match is not None and if_match != record.version:
            raise VersionConflict(tenant_id, if_match, record.version)
        return record

    def _valid(self, tenant_id: str, config: TenantSettings) -> TenantSettings:
        """The tenant's settings, if this deployment accepts them (known pools...)."""
        problems = list(self._settings.tenant_problems(tenant_id, config))
        if problems:
            raise InvalidTenant(problems)
        return config

    # ------------------------------------------------------------------------- keys

    async def create_key(
        self, tenant_id: str, name: str = "", expires_at: datetime | None = None
    ) -> tuple[str, KeyEntry]:
        """A new key for a tenant: its secret (shown once, never stored) and its entry."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            sha256=hash_api_key(secret),
            name=name,
            prefix=secret[:8],
            created_at=utc_now(),
            expires_at=expires_at,
        )
        entry = KeyEntry(tenant_id, record)

        def create(current: Snapshot) -> tuple[Change, KeyEntry]:
            if tenant_id not in current.tenants:
                raise TenantNotFound(tenant_id)
            return Change(keys={record.id: entry}), entry

        return secret, await self._change(create)

    async def revoke_key(self, key_id: str, tenant_id: str | None = None) -> KeyEntry:
        """Remove a key (of ``tenant_id``, if given): refused on every replica within a
        second."""

        def revoke(current: Snapshot) -> tuple[Change, KeyEntry]:
            entry = current.keys.get(key_id)
            if entry is None or (tenant_id is not None and entry.tenant != tenant_id):
                raise KeyNotFound(key_id)
            return Change(keys={key_id: None}), entry

        return await self._change(revoke)

    # ------------------------------------------------------------------------- writing

    async def _change(self, apply: Callable[[Snapshot], tuple[Change, T]]) -> T:
        """Run ``apply`` against the current directory and write what it changes."""
        result: list[T] = []

        def step(current: Snapshot | None) -> Change:
            if current is None:
                raise TenantNotFound("(directory not seeded)")
            change, value = apply(current)
            result[:] = [value]
            return change

        await self._commit(step)
        return result[0]

    async def _commit(self, decide: Callable[[Snapshot | None], Change]) -> int:
        """Read, decide and write in one optimistic transaction; the new version."""
        version_key = self.keys.directory("version")
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(version_key)
                    current = await self._read_watched(pipe)
                    change = decide(current)
                    pipe.multi()
                    version = (current.version if current else 0) + 1
                    self._write(pipe, current, change, version)
                    await pipe.execute()
                except WatchError:
                    continue
            return version

    async def _read_watched(self, pipe: AnyPipeline) -> Snapshot | None:
        """The directory read on a watching pipeline (immediate commands, before MULTI)."""
        directory = self.keys.directory
        return _snapshot(
            await pipe.get(directory("version")),
            await pipe.hgetall(directory("tenants")),
            await pipe.hgetall(directory("keys")),
        )

    def _write(
        self, pipe: AnyPipeline, current: Snapshot | None, change: Change, version: int
    ) -> None:
        directory = self.keys.directory
        for tenant_id, record in change.tenants.items():
            if record is None:
                pipe.hdel(directory("tenants"), tenant_id)
            else:
                pipe.hset(directory("tenants"), tenant_id, record.encode())
        for key_id, entry in change.keys.items():
            if entry is None:
                pipe.hdel(directory("keys"), key_id)
                pipe.hdel(directory("key_used"), key_id)
            else:
                pipe.hset(directory("keys"), key_id, entry.encode())
        after = dict(current.configs) if current else {}
        for tenant_id, record in change.tenants.items():
            if record is None:
                after.pop(tenant_id, None)
            else:
                after[tenant_id] = record.config
        present = {t: r.config for t, r in change.tenants.items() if r is not None}
        write_tenants(
            pipe, self.keys, present, after.values(), self._settings.admission.priority_min_share
        )
        pipe.set(directory("version"), version)
        # in the transaction: a replica that hears of the version can read it (on a Cluster
        # a sharded message, which keeps the transaction on the directory's slot)
        pipe.execute_command(publish_command(self._redis), self.keys.directory_channel, version)


class _AlreadySeeded(Exception):
    pass


def _snapshot(
    version: bytes | str | None,
    tenants: Mapping[bytes | str, bytes | str],
    keys: Mapping[bytes | str, bytes | str],
) -> Snapshot | None:
    if version is None:
        return None
    return Snapshot(
        int(version),
        {text(t): TenantRecord.decode(text(t), raw) for t, raw in tenants.items()},
        {text(k): KeyEntry.decode(raw) for k, raw in keys.items()},
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, ``null`` removes, else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = merge_patch(merged.get(name), value)
    return merged
