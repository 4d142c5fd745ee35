"""The admin API's bodies, built on the config file's own models so a field means the same
thing in the file, in the API and in the exported YAML."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, create_model

from fairgate.settings import KeyId, Name, TenantSettings
from fairgate.strict_model import StrictModel
from tenants.snapshot import KeyEntry, TenantRecord


class TenantCreate(TenantSettings):
    """A new tenant: its id and any of its settings (the rest take their defaults)."""

    id: Name = Field(description="The tenant's id (lowercase letters, digits, - and _).")


def _patch_model() -> type[BaseModel]:
    """Every setting of a tenant, optional and nullable: a JSON merge patch (RFC 7396), where
    ``null`` puts a setting back to its default."""
    fields: dict[str, Any] = {
        name: (Optional[info.annotation], Field(None, description=info.description))  # noqa: UP045
        for name, info in TenantSettings.model_fields.items()
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        "TenantPatch",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Changes to a tenant's settings (JSON merge patch).",
        **fields,
    )


TenantPatch = _patch_model()


class Tenant(TenantSettings):
    """A tenant as the directory holds it; ``version`` is also its ``ETag``."""

    object: Literal["tenant"] = "tenant"
    id: str
    version: int = Field(description="The directory version of its last change.")

    @classmethod
    def of(cls, record: TenantRecord) -> Tenant:
        return cls(id=record.id, version=record.version, **dict(record.config))


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Tenant]


class Deleted(BaseModel):
    object: str
    id: str
    deleted: Literal[True] = True


#: The longest ``expires_in_s``: later than this is "never" (and past year 9999, no date).
_CENTURY_S = 100 * 365.25 * 86_400


class KeyCreate(StrictModel):
    """A new API key for a tenant; it expires at ``expires_at``, or ``expires_in_s`` from now,
    or never."""

    name: str = Field("", max_length=128, description="What the key is for.")
    expires_at: datetime | None = Field(None, description="When it stops working (RFC 3339).")
    expires_in_s: PositiveFloat | None = Field(
        None, le=_CENTURY_S, description="Or: seconds from now (at most a hundred years)."
    )


class ApiKey(BaseModel):
    """An API key as an operator sees it: never its secret."""

    object: Literal["api_key"] = "api_key"
    id: KeyId
    tenant: str
    name: str
    prefix: str = Field(description="The secret's first characters, to recognise it by.")
    created_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None = Field(None, description="As replicas last reported it.")

    @classmethod
    def of(cls, entry: KeyEntry, last_used_at: datetime | None = None) -> ApiKey:
        record = entry.record
        return cls(
            id=record.id,
            tenant=entry.tenant,
            name=record.name,
            prefix=record.prefix,
            created_at=record.created_at,
            expires_at=record.expires_at,
            last_used_at=last_used_at,
        )


class NewApiKey(ApiKey):
    """A key just made: ``key`` is its secret, shown this once and never again."""

    key: str


class ApiKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKey]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorBody(BaseModel):
    """The OpenAI error envelope every fairgate error uses."""

    error: ErrorDetail
