"""API keys: ``Authorization: Bearer <key>`` to a tenant.

Keys live in the tenant directory (:mod:`tenants`) as sha256 digests, and every replica holds
the directory in memory: a request's key costs no round trip, keeps working while Redis is
unreachable, and a key revoked or expired through the admin API is refused on every replica
within a second.
"""

from __future__ import annotations

from aiohttp import web

from fairgate.errors import invalid_api_key
from fairgate.settings import TenantSettings
from tenants.directory import Directory


def bearer_key(request: web.Request) -> str:
    """The bearer token of a request, from ``Authorization: Bearer`` (or ``api-key``, Azure
    style)."""
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


def shown(secret: str) -> str:
    """A secret as an error message may show it: its ends only."""
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) > 10 else "***"


def authenticate(request: web.Request, directory: Directory) -> tuple[str, TenantSettings]:
    """The tenant of the request's key; 401 if it has none, or one that is unknown, revoked,
    expired, or whose tenant was removed."""
    key = bearer_key(request)
    entry = directory.key(key)
    if entry is None:
        raise invalid_api_key(f"Incorrect API key provided: {shown(key)}.")
    tenant = directory.tenant(entry.tenant)
    if tenant is None:
        raise invalid_api_key("The API key belongs to no active tenant.")
    return entry.tenant, tenant
