"""The dashboard: ``GET /`` and its few static files, shipped inside the package (``static/``).

One page, no build step, nothing from elsewhere: the page's script reads the same JSON API and
live feed as any client, and builds its DOM with ``textContent`` only. Every file leaves with a
strict Content-Security-Policy (scripts and styles from this origin only, no inline script or
style, no framing), and an ETag so a browser revalidates instead of downloading it again.

The files hold no data, so they are public like ``/health`` (``Route.public``): with
``api.read_auth`` the page loads, then asks for the token before its first read.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Final

from aiohttp import web

from hlcopy.api.params import Args, Route, RouteHandler
from hlcopy.record import record

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
# URL path -> (file in static/, content type). Only these are served: no path from a request
# ever reaches the file system.
FILES: Final = {
    "/": ("index.html", "text/html"),
    "/static/app.js": ("app.js", "text/javascript"),
    "/static/app.css": ("app.css", "text/css"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}


@record
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every dashboard file, read once from the installed package."""
    root = resources.files("hlcopy.api") / "static"
    out = {}
    for path, (name, ctype) in FILES.items():
        body = (root / name).read_bytes()
        out[path] = Asset(body, ctype, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return out


ASSETS: Final = web.AppKey("dashboard_assets", dict[str, Asset])


async def _serve(request: web.Request, path: str) -> web.StreamResponse:
    asset = request.app[ASSETS][path]
    headers = {**_SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith("text/") else None
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset=charset, headers=headers
    )


def _handler(path: str, operation_id: str) -> RouteHandler:
    async def handle(request: web.Request, args: Args) -> web.StreamResponse:
        return await _serve(request, path)

    handle.__name__ = operation_id  # the OpenAPI document's operationId
    return handle


_TEXT: Final = {"type": "string"}
ROUTES: Final = tuple(
    Route(
        "GET",
        path,
        _handler(path, "dashboard" if path == "/" else "dashboard_" + re.sub(r"\W", "_", name)),
        "The dashboard page" if path == "/" else f"The dashboard's {name}",
        "dashboard",
        response=_TEXT,
        content_type=ctype,
        public=True,
        description="Served with a strict Content-Security-Policy; needs no token (it holds "
        "no data: the page reads the API, asking for the token when it must)."
        if path == "/"
        else "",
    )
    for path, (name, ctype) in FILES.items()
)
