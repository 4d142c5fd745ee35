"""Admin tokens: bearer tokens of their own, never a tenant's key.

The configured tokens are kept as sha256 digests; a presented token is hashed and compared
with every digest in constant time, so neither timing nor an early exit tells an attacker how
close a guess came.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from fairgate.errors import GatewayError, permission_denied
from fairgate.settings import hash_api_key
from tenants.directory import Directory

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fairgate-admin"'}


def require_admin(request: web.Request, digests: list[str], directory: Directory) -> None:
    """Return if the request carries an admin token; 401 otherwise (403 for a tenant's key)."""
    if not digests:
        raise GatewayError(
            401,
            "The admin API is not enabled: configure admin tokens (admin.tokens, or "
            "FAIRGATE_ADMIN__TOKENS='[\"...\"]') and send one as `Authorization: Bearer`.",
            code="admin_disabled",
            headers=dict(_CHALLENGE),
        )
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise GatewayError(
            401,
            "Send an admin token: `Authorization: Bearer ADMIN_TOKEN`.",
            code="invalid_admin_token",
            headers=dict(_CHALLENGE),
        )
    presented = hash_api_key(token.strip())
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(presented, digest)
    if not matched and directory.key(token.strip()) is not None:
        raise permission_denied("A tenant's API key cannot use the admin API.")
    if not matched:
        raise GatewayError(
            401, "Incorrect admin token.", code="invalid_admin_token", headers=dict(_CHALLENGE)
        )
