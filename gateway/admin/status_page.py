"""The status page at ``/admin/``: plain HTML, CSS and JavaScript from the package (``page/``),
no build step and nothing fetched from elsewhere.

The files are public (they hold no data); the page's script asks for an admin token and reads
``/admin/v1/state`` with it. A Content-Security-Policy lets the page load only its own files and
talk only to its own origin, so even a tenant id crafted to look like markup could run nothing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from gateway.admin.api import ADMIN
from gateway.state import Gateway

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> str:
    return resources.files("gateway.admin").joinpath("page", name).read_text(encoding="utf-8")


def _serve(name: str, content_type: str) -> web.Response:
    return web.Response(
        text=_asset(name), content_type=content_type, charset="utf-8", headers=_HEADERS
    )


@ADMIN.route(
    "GET",
    "/admin/",
    summary="The status page (its script asks for an admin token)",
    tag="page",
    produces="text/html",
    public=True,
)
async def status_page(request: web.Request, gateway: Gateway) -> web.Response:
    return _serve("index.html", "text/html")


@ADMIN.route(
    "GET", "/admin/app.js", summary="The status page's script", tag="page",
    produces="text/javascript", public=True,
)  # fmt: skip
async def status_page_script(request: web.Request, gateway: Gateway) -> web.Response:
    return _serve("app.js", "text/javascript")


@ADMIN.route(
    "GET", "/admin/style.css", summary="The status page's style sheet", tag="page",
    produces="text/css", public=True,
)  # fmt: skip
async def status_page_style(request: web.Request, gateway: Gateway) -> web.Response:
    return _serve("style.css", "text/css")


def install_redirect(app: web.Application) -> None:
    """``/admin`` leads to the page (whose relative links need the trailing slash)."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/admin/")

    app.router.add_get("/admin", redirect)
