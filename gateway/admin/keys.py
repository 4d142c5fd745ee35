"""API keys of a tenant: make one (its secret is answered once), list them, revoke one.

Only a key's sha256 digest is stored. A revoked key, or one past its expiry, is refused on
every replica within a second (each holds the directory in memory and follows its changes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.admin.api import ADMIN, Param, as_json, json_object, validated
from gateway.admin.models import ApiKey, ApiKeyList, Deleted, KeyCreate, NewApiKey
from gateway.admin.tenants import TENANT_ID
from gateway.state import Gateway
from tenants.errors import TenantNotFound
from tenants.snapshot import utc_now

KEY_ID = Param("key_id", "path", "The key's id (key_...).")


@ADMIN.route(
    "GET",
    "/admin/v1/tenants/{tenant_id}/keys",
    summary="List a tenant's API keys",
    tag="keys",
    response=ApiKeyList,
    errors=(404,),
    params=(TENANT_ID,),
)
async def list_keys(request: web.Request, gateway: Gateway) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    snapshot = gateway.directory.snapshot
    if tenant_id not in snapshot.tenants:
        raise TenantNotFound(tenant_id)
    used = await gateway.directory.store.last_used()
    data = [
        ApiKey.of(entry, _when(used.get(entry.record.id)))
        for entry in sorted(snapshot.keys_of(tenant_id), key=lambda k: k.record.id)
    ]
    return as_json(ApiKeyList(data=data))


@ADMIN.route(
    "POST",
    "/admin/v1/tenants/{tenant_id}/keys",
    summary="Make an API key for a tenant (its secret is answered this once)",
    tag="keys",
    body=KeyCreate,
    response=NewApiKey,
    status=201,
    errors=(400, 404),
    params=(TENANT_ID,),
)
async def create_key(request: web.Request, gateway: Gateway) -> web.Response:
    asked = validated(KeyCreate, await json_object(request))
    expires_at = asked.expires_at
    if asked.expires_in_s is not None:
        expires_at = utc_now() + timedelta(seconds=asked.expires_in_s)
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)  # a time without a zone is UTC
    secret, entry = await gateway.directory.store.create_key(
        request.match_info["tenant_id"], asked.name, expires_at
    )
    await gateway.directory.refresh()
    return as_json(NewApiKey(key=secret, **ApiKey.of(entry).model_dump()), 201)


@ADMIN.route(
    "DELETE",
    "/admin/v1/tenants/{tenant_id}/keys/{key_id}",
    summary="Revoke an API key (refused on every replica within a second)",
    tag="keys",
    response=Deleted,
    errors=(404,),
    params=(TENANT_ID, KEY_ID),
)
async def revoke_key(request: web.Request, gateway: Gateway) -> web.Response:
    entry = await gateway.directory.store.revoke_key(
        request.match_info["key_id"], request.match_info["tenant_id"]
    )
    await gateway.directory.refresh()
    return as_json(Deleted(object="api_key", id=entry.record.id))


def _when(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)
