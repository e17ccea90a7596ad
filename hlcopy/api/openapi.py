"""The OpenAPI 3.1 document, written from the routes themselves (``GET /api/v1/openapi.json``).

Parameters come from the same ``Param`` objects that parse requests, and a test checks that the
router and the document list the same operations, so the document cannot drift from the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web

from hlcopy import __version__
from hlcopy.api import schemas
from hlcopy.api.params import Args, Route
from hlcopy.api.responses import CODES

OPENAPI: Final = web.AppKey("openapi", bytes)

_STATUS_TEXT: Final = {
    101: "Switching to the WebSocket protocol",
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Invalid parameters (the error names the parameter, and the allowed values if few)",
    401: "Missing or wrong bearer token",
    404: "Not found",
    409: "Conflicts with the resource's state or source",
    503: "A part the route needs is not running, or still loading",
}
# Reads need the token only when [api].read_auth is set; /health never does.
_READ_SECURITY: Final[list[dict[str, list[str]]]] = [{}, {"bearer": []}]
_WRITE_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def _operation(route: Route) -> dict[str, Any]:
    success: dict[str, Any] = {"description": _STATUS_TEXT.get(route.status, "OK")}
    if route.response is not None:
        success["content"] = {route.content_type: {"schema": dict(route.response)}}
    responses: dict[str, Any] = {str(route.status): success}
    errors = set(route.errors)
    if not route.public:
        errors.add(401)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, CODES.get(status, "error")),
            "content": {"application/json": {"schema": schemas.ref("Error")}},
        }
    op: dict[str, Any] = {
        "operationId": getattr(route.handler, "__name__", route.path),
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [p.openapi() for p in route.params],
        "responses": responses,
    }
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": dict(route.body)}},
        }
    if route.description:
        op["description"] = route.description
    if route.public:
        op["security"] = []
    elif route.method in ("GET", "HEAD"):
        op["security"] = _READ_SECURITY
    else:
        op["security"] = _WRITE_SECURITY
    return op


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "hlcopy",
            "version": __version__,
            "description": "The hlcopy daemon's API: leaderboard, traders, live feed, figures. "
            "Money is an exact decimal string; times are milliseconds since the epoch. "
            'Every error is {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas.COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: web.Request, args: Args) -> web.StreamResponse:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


ROUTE: Final = Route(
    "GET",
    "/api/v1/openapi.json",
    openapi,
    "This document",
    "meta",
    response=schemas.ref("OpenApi"),
)
