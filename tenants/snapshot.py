"""What the directory holds at one version: tenants with their versions, and keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fairgate.settings import ApiKeyRecord, Settings, TenantConfig, TenantSettings


@dataclass(frozen=True)
class TenantRecord:
    """A tenant's settings (keys apart) and the directory version of its last change."""

    id: str
    version: int
    config: TenantSettings

    def encode(self) -> str:
        config = self.config.model_dump(mode="json", exclude_defaults=True)
        return json.dumps({"version": self.version, "config": config})

    @classmethod
    def decode(cls, tenant_id: str, raw: bytes | str) -> TenantRecord:
        data = json.loads(raw)
        config = TenantSettings.model_validate(data["config"])
        return cls(tenant_id, int(data["version"]), config)


@dataclass(frozen=True)
class KeyEntry:
    """An API key of a tenant, known by its digest."""

    tenant: str
    record: ApiKeyRecord

    def expired(self, now: datetime) -> bool:
        return self.record.expires_at is not None and self.record.expires_at <= now

    def encode(self) -> str:
        return json.dumps({"tenant": self.tenant, **self.record.model_dump(mode="json")})

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyEntry:
        data: dict[str, Any] = json.loads(raw)
        tenant = data.pop("tenant")
        return cls(tenant, ApiKeyRecord.model_validate(data))


@dataclass(frozen=True)
class Snapshot:
    """The whole directory at ``version`` (0: the config file's, never written to Redis)."""

    version: int
    tenants: dict[str, TenantRecord]
    keys: dict[str, KeyEntry]  # by key id
    by_digest: dict[str, KeyEntry] = field(init=False)
    configs: dict[str, TenantSettings] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_digest", {k.record.sha256: k for k in self.keys.values()})
        object.__setattr__(self, "configs", {t: r.config for t, r in self.tenants.items()})

    @classmethod
    def of_settings(cls, settings: Settings) -> Snapshot:
        """The directory the config file declares: what seeds an empty Redis."""
        tenants = {t: TenantRecord(t, 1, c.without_keys()) for t, c in settings.tenants.items()}
        keys = {
            record.id: KeyEntry(tenant_id, record)
            for tenant_id, tenant in settings.tenants.items()
            for record in tenant.key_records()
        }
        return cls(0, tenants, keys)

    def keys_of(self, tenant: str) -> list[KeyEntry]:
        return [k for k in self.keys.values() if k.tenant == tenant]

    def with_keys(self, tenant: str) -> TenantConfig:
        """A tenant's settings with its keys, in the config file's form (digests only)."""
        records = [k.record for k in self.keys_of(tenant)]
        return TenantConfig(**dict(self.tenants[tenant].config), keys=records)


def utc_now() -> datetime:
    return datetime.now(UTC)
