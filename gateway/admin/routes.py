"""Installing the admin API and the status page on the gateway's application."""

from __future__ import annotations

from aiohttp import web

# Each module declares its operations on ADMIN when imported.
from gateway.admin import (  # noqa: F401
    config_export,
    keys,
    live,
    openapi,
    status_page,
    tenants,
    usage,
)
from gateway.admin.api import ADMIN


def install(app: web.Application) -> None:
    ADMIN.install(app)
    status_page.install_redirect(app)
