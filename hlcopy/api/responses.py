"""JSON in and out: orjson, Decimals as strings, and the one error shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(data: Any) -> bytes:
    """JSON bytes by orjson (Decimals as strings, never floats)."""
    return orjson.dumps(data, default=_default)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised by orjson (Decimals as strings, never floats)."""
    return web.Response(
        body=dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """The one error body shape."""
    body = {"error": {"code": code or CODES.get(status, "error"), "message": message, **extra}}
    return json_response(body, status, headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; a 400 naming the problem otherwise."""
    raw = await request.read()
    if not raw:
        raise web.HTTPBadRequest(text="a JSON body is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON: {exc}") from exc
