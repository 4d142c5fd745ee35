"""Tenants: create, read, list, change (JSON merge patch) and delete, with versions.

Every tenant carries the directory version of its last change as its ``ETag``; a change sent
with ``If-Match`` applies only to that version and answers 409 otherwise, so two operators
editing the same tenant cannot overwrite each other unknowingly. A change made through one
replica is applied there before the answer, and on every other replica within a second.
"""

from __future__ import annotations

from aiohttp import web

from fairgate.errors import invalid_request
from fairgate.settings import TenantSettings
from gateway.admin.api import ADMIN, Param, as_json, json_object, validated
from gateway.admin.models import Deleted, Tenant, TenantCreate, TenantList, TenantPatch
from gateway.state import Gateway
from tenants.errors import TenantNotFound
from tenants.snapshot import TenantRecord

TENANT_ID = Param("tenant_id", "path", "The tenant's id.")
IF_MATCH = Param(
    "If-Match", "header", "Apply only to this version (the tenant's ETag); 409 otherwise.",
    required=False,
)  # fmt: skip


def _answer(record: TenantRecord, status: int = 200) -> web.Response:
    return as_json(Tenant.of(record), status, {"ETag": f'"{record.version}"'})


def if_match(request: web.Request) -> int | None:
    """The version named by ``If-Match`` (``"3"``, ``W/"3"`` or ``3``); None for ``*`` or
    none."""
    value = request.headers.get("If-Match", "").strip()
    if not value or value == "*":
        return None
    tag = value.removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise invalid_request(f'If-Match must be a tenant\'s ETag such as "3", not {value!r}.')
    return int(tag)


@ADMIN.route("GET", "/admin/v1/tenants", summary="List tenants", tag="tenants", response=TenantList)
async def list_tenants(request: web.Request, gateway: Gateway) -> web.Response:
    snapshot = gateway.directory.snapshot
    data = [Tenant.of(snapshot.tenants[t]) for t in sorted(snapshot.tenants)]
    return as_json(TenantList(data=data))


@ADMIN.route(
    "POST",
    "/admin/v1/tenants",
    summary="Create a tenant",
    tag="tenants",
    body=TenantCreate,
    response=Tenant,
    status=201,
    errors=(400, 409),
    headers=("ETag",),
)
async def create_tenant(request: web.Request, gateway: Gateway) -> web.Response:
    created = validated(TenantCreate, await json_object(request))
    settings = TenantSettings.model_validate(created.model_dump(exclude={"id"}, exclude_unset=True))
    record = await gateway.directory.store.create_tenant(created.id, settings)
    await gateway.directory.refresh()
    return _answer(record, 201)


@ADMIN.route(
    "GET",
    "/admin/v1/tenants/{tenant_id}",
    summary="Get a tenant",
    tag="tenants",
    response=Tenant,
    errors=(404,),
    params=(TENANT_ID,),
    headers=("ETag",),
)
async def get_tenant(request: web.Request, gateway: Gateway) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    record = gateway.directory.snapshot.tenants.get(tenant_id)
    if record is None:
        raise TenantNotFound(tenant_id)
    return _answer(record)


@ADMIN.route(
    "PATCH",
    "/admin/v1/tenants/{tenant_id}",
    summary="Change a tenant's settings (JSON merge patch; null resets a setting)",
    tag="tenants",
    body=TenantPatch,
    response=Tenant,
    errors=(400, 404, 409),
    params=(TENANT_ID, IF_MATCH),
    headers=("ETag",),
)
async def update_tenant(request: web.Request, gateway: Gateway) -> web.Response:
    version = if_match(request)
    patch = await json_object(request)
    validated(TenantPatch, patch)  # unknown fields and wrong types, named
    record = await gateway.directory.store.update_tenant(
        request.match_info["tenant_id"], patch, version
    )
    await gateway.directory.refresh()
    return _answer(record)


@ADMIN.route(
    "DELETE",
    "/admin/v1/tenants/{tenant_id}",
    summary="Delete a tenant and its keys (what it has in flight finishes)",
    tag="tenants",
    response=Deleted,
    errors=(400, 404, 409),  # 400: an If-Match that names no version
    params=(TENANT_ID, IF_MATCH),
)
async def delete_tenant(request: web.Request, gateway: Gateway) -> web.Response:
    version = if_match(request)
    record = await gateway.directory.store.delete_tenant(request.match_info["tenant_id"], version)
    await gateway.directory.refresh()
    return as_json(Deleted(object="tenant", id=record.id))
