"""Routes described once: their parameters parse requests and write the OpenAPI document.

A ``Route`` names its method, path, handler, parameters and response schema. ``endpoint`` wraps
the handler so that every parameter is parsed and checked before the handler runs, and the
OpenAPI document (``api/openapi.py``) is written from the same objects: what is documented is
what is parsed. Unknown or repeated query parameters are refused, so a typo (``sortby=``) is a
400 naming the allowed ones instead of a silently ignored filter.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from aiohttp import web

from hlcopy.record import record

Args = dict[str, Any]
RouteHandler = Callable[[web.Request, Args], Awaitable[web.StreamResponse]]

ADDRESS_PATTERN = "^0x[0-9a-fA-F]{40}$"
_ADDRESS = re.compile(ADDRESS_PATTERN)
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL = re.compile(r"[+-]?([0-9]{1,30}([.][0-9]{0,18})?|[.][0-9]{1,18})")
_PREFIX = re.compile(r"(0x[0-9a-f]{0,40})?")


class ApiError(Exception):
    """A request the API refuses: leaves as the error shape with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = extra


def invalid(name: str, message: str, **extra: Any) -> ApiError:
    return ApiError(400, message, "invalid_parameter", parameter=name, **extra)


@record
class Param:
    """One query or path parameter: how it parses, and how the OpenAPI document shows it."""

    name: str
    description: str
    schema: Mapping[str, Any]
    parse: Callable[[str], Any]
    default: Any = None
    location: Literal["query", "path"] = "query"
    explode: bool = True  # False: a comma-separated list (OpenAPI style "form", explode false)

    def openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "in": self.location,
            "required": self.location == "path",
            "description": self.description,
            "schema": dict(self.schema),
        }
        if not self.explode:
            out["style"] = "form"
            out["explode"] = False
        return out


def integer(name: str, minimum: int, maximum: int, default: int, description: str) -> Param:
    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise invalid(name, f"{name} must be an integer")
        value = int(text)
        if not minimum <= value <= maximum:
            raise invalid(name, f"{name} must be between {minimum} and {maximum}")
        return value

    schema = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    return Param(name, description, schema, parse, default)


def decimal(name: str, minimum: Decimal, maximum: Decimal, description: str) -> Param:
    """A plain decimal number (no exponent); the default is the minimum."""

    def parse(text: str) -> Decimal:
        if not _DECIMAL.fullmatch(text):
            raise invalid(name, f"{name} must be a decimal number such as 1000 or 2.5")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:  # the pattern rules this out; stay safe anyway
            raise invalid(name, f"{name} must be a decimal number") from exc
        if not minimum <= value <= maximum:
            raise invalid(name, f"{name} must be between {minimum} and {maximum}")
        return value

    schema = {
        "type": "string",
        "pattern": "^" + _DECIMAL.pattern + "$",
        "default": str(minimum),
        "description": f"between {minimum} and {maximum}",
    }
    return Param(name, description, schema, parse, minimum)


def choice(name: str, values: Sequence[str], default: str | None, description: str) -> Param:
    allowed = tuple(values)

    def parse(text: str) -> str:
        if text not in allowed:
            raise invalid(
                name,
                f"unknown {name} {text[:64]!r}; allowed: {', '.join(allowed)}",
                allowed=list(allowed),
            )
        return text

    schema: dict[str, Any] = {"type": "string", "enum": list(allowed)}
    if default is not None:
        schema["default"] = default
    return Param(name, description, schema, parse, default)


def choices(name: str, values: Sequence[str], description: str) -> Param:
    """A comma-separated subset of ``values``; absent means no restriction (None)."""
    allowed = tuple(values)

    def parse(text: str) -> frozenset[str]:
        picked = text.split(",")
        bad = [v for v in picked if v not in allowed]
        if bad:
            raise invalid(
                name,
                f"unknown {name} {bad[0][:64]!r}; allowed: {', '.join(allowed)}",
                allowed=list(allowed),
            )
        return frozenset(picked)

    schema = {"type": "array", "items": {"type": "string", "enum": list(allowed)}, "minItems": 1}
    return Param(name, description, schema, parse, None, explode=False)


def address(name: str = "address", location: Literal["query", "path"] = "path") -> Param:
    """A 0x-prefixed 20-byte hex address, any case; parsed to lowercase."""

    def parse(text: str) -> str:
        if not _ADDRESS.fullmatch(text):
            raise invalid(name, f"{name} must be 0x followed by 40 hex digits")
        return text.lower()

    schema = {"type": "string", "pattern": ADDRESS_PATTERN}
    return Param(name, "A trader's address (any case).", schema, parse, None, location)


def addresses(name: str, max_items: int, description: str) -> Param:
    def parse(text: str) -> frozenset[str]:
        picked = text.split(",")
        if len(picked) > max_items:
            raise invalid(name, f"{name} takes at most {max_items} addresses")
        for a in picked:
            if not _ADDRESS.fullmatch(a):
                raise invalid(name, f"{name}: {a[:64]!r} is not 0x followed by 40 hex digits")
        return frozenset(a.lower() for a in picked)

    schema = {
        "type": "array",
        "items": {"type": "string", "pattern": ADDRESS_PATTERN},
        "minItems": 1,
        "maxItems": max_items,
    }
    return Param(name, description, schema, parse, None, explode=False)


def words(name: str, max_items: int, description: str) -> Param:
    """A comma-separated list of lowercase words (event types)."""
    word = re.compile(r"[a-z][a-z_]{0,31}")

    def parse(text: str) -> frozenset[str]:
        picked = text.split(",")
        if len(picked) > max_items or not all(word.fullmatch(w) for w in picked):
            raise invalid(
                name, f"{name} must be up to {max_items} lowercase words, comma-separated"
            )
        return frozenset(picked)

    schema = {
        "type": "array",
        "items": {"type": "string", "pattern": "^" + word.pattern + "$"},
        "minItems": 1,
        "maxItems": max_items,
    }
    return Param(name, description, schema, parse, None, explode=False)


def address_prefix(name: str, description: str) -> Param:
    def parse(text: str) -> str:
        text = text.lower()
        if not _PREFIX.fullmatch(text):
            raise invalid(name, f"{name} must be empty or 0x followed by up to 40 hex digits")
        return text

    schema = {"type": "string", "pattern": "^(0[xX][0-9a-fA-F]{0,40})?$", "default": ""}
    return Param(name, description, schema, parse, "")


@record
class Route:
    """One operation of the API, as served and as documented."""

    method: str
    path: str
    handler: RouteHandler
    summary: str
    tag: str
    params: tuple[Param, ...] = ()
    response: Mapping[str, Any] | None = None  # schema of the success body
    status: int = 200
    content_type: str = "application/json"
    errors: tuple[int, ...] = ()
    description: str = ""
    body: Mapping[str, Any] | None = None  # schema of the JSON request body, when it takes one
    public: bool = False  # never needs the token, even with api.read_auth (/health, the page)

    @property
    def path_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.location == "path")

    @property
    def query_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.location == "query")


def parse_args(request: web.Request, route: Route) -> Args:
    """Every parameter of ``route`` from ``request``, parsed; ApiError for anything wrong."""
    args: Args = {}
    for p in route.path_params:
        args[p.name] = p.parse(request.match_info[p.name])
    query = route.query_params
    try:
        given = list(request.query.items())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "the query string cannot be decoded", "invalid_parameter") from exc
    seen: set[str] = set()
    by_name = {p.name: p for p in query}
    for name, value in given:
        param = by_name.get(name)
        if param is None:
            raise invalid(
                name[:64],
                f"unknown parameter {name[:64]!r}; allowed: {', '.join(by_name) or 'none'}",
                allowed=list(by_name),
            )
        if name in seen:
            raise invalid(name, f"{name} is given more than once")
        seen.add(name)
        args[name] = param.parse(value)
    for p in query:
        args.setdefault(p.name, p.default)
    return args


def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``route``: parse, then call."""
    handler = route.handler

    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, parse_args(request, route))

    handle.__name__ = getattr(handler, "__name__", "handle")
    return handle
