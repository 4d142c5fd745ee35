"""``GET /admin/v1/config``: the running configuration as YAML, in the config file's format.

Tenants and keys come from the directory (as the admin API left them), keys as digests with
their ids, names and expiry; everything else is this replica's settings. Secrets in clear
(admin tokens, backends' upstream keys) are never written: admin tokens appear as digests,
upstream keys not at all (give them by environment).
"""

from __future__ import annotations

from typing import Any

import yaml
from aiohttp import web

from fairgate.settings import Settings
from gateway.admin.api import ADMIN
from gateway.state import Gateway

_HEADER = """\
# fairgate configuration exported from the tenant directory at version {version}.
# Secrets in clear are left out: admin tokens appear as digests, backends' upstream api_key
# not at all (set them with FAIRGATE_* environment variables).
"""


@ADMIN.route(
    "GET",
    "/admin/v1/config",
    summary="Export the running configuration as YAML (the config file's format)",
    tag="config",
    response=Settings,  # what the YAML holds: a config file
    produces="application/yaml",
)
async def export_config(request: web.Request, gateway: Gateway) -> web.Response:
    snapshot = gateway.directory.snapshot
    settings = gateway.settings
    data: dict[str, Any] = settings.model_dump(
        mode="json", exclude_defaults=True, exclude={"tenants", "admin"}
    )
    for pool in data.get("pools", {}).values():
        for backend in pool.get("backends", {}).values():
            backend.pop("api_key", None)
    admin = settings.admin.model_dump(mode="json", exclude_defaults=True, exclude={"tokens"})
    admin["token_hashes"] = settings.admin.token_digests()
    data["admin"] = {k: v for k, v in admin.items() if v}
    data["tenants"] = {
        tenant_id: snapshot.with_keys(tenant_id).model_dump(mode="json", exclude_defaults=True)
        for tenant_id in sorted(snapshot.tenants)
    }
    text = _HEADER.format(version=snapshot.version) + yaml.safe_dump(
        {k: v for k, v in data.items() if v != {}}, sort_keys=False
    )
    return web.Response(text=text, content_type="application/yaml")
