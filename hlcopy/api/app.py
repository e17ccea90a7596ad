"""The aiohttp application: routes, the error and auth middlewares, JSON through orjson.

Every error leaves as ``{"error": {"code": ..., "message": ...}}`` with the right status; a 500
says nothing about internals (the traceback goes to the log). Mutating routes need
``Authorization: Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hlcopy.component import MetricFamily, Supervisor
from hlcopy.config import ApiConfig
from hlcopy.credentials import Secret

log = structlog.get_logger()

SUPERVISOR = web.AppKey("supervisor", Supervisor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CODES = {
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


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised by orjson (Decimals as strings, never floats)."""
    return web.Response(
        body=orjson.dumps(data, default=_default),
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
    body = {"error": {"code": code or _CODES.get(status, "error"), "message": message, **extra}}
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


class _Families(Collector):
    """Exposes the supervisor's metric families, read afresh at every scrape."""

    def __init__(self, source: Callable[[], Iterable[MetricFamily]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for fam in self._source():
            label_names = sorted({k for labels, _ in fam.samples for k in labels})
            metric: GaugeMetricFamily | CounterMetricFamily
            if fam.kind == "counter":
                metric = CounterMetricFamily(fam.name, fam.help, labels=label_names)
            else:
                metric = GaugeMetricFamily(fam.name, fam.help, labels=label_names)
            for labels, value in fam.samples:
                metric.add_metric([labels.get(k, "") for k in label_names], value)
            yield metric


def render_metrics(families: Callable[[], Iterable[MetricFamily]]) -> bytes:
    """The Prometheus text exposition of ``families``, written by prometheus_client itself."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into the JSON error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text or exc.reason
        if message == f"{exc.status}: {exc.reason}":
            message = exc.reason
        headers = {
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")
        }
        return error_response(exc.status, message, headers=headers)
    except Exception as exc:
        log.error("api request failed", method=request.method, path=request.path, exc_info=exc)
        return error_response(500, "internal error")


def size_middleware(max_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuse an oversize body from its Content-Length, before reading any of it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_bytes:
            raise web.HTTPRequestEntityTooLarge(
                max_size=max_bytes, actual_size=request.content_length
            )
        return await handler(request)

    return middleware


def auth_middleware(token: Secret, read_auth: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Require the bearer token on mutating routes (and on reads when ``read_auth``)."""
    expected = token.reveal().encode()
    challenge = {"WWW-Authenticate": 'Bearer realm="hlcopy"'}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        mutating = request.method not in _SAFE_METHODS
        if mutating or (read_auth and request.path != "/health"):
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise web.HTTPUnauthorized(text="missing bearer token", headers=challenge)
            # Header bytes that are not ASCII arrive as surrogates: they match no token.
            presented = value.strip().encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(presented, expected):
                raise web.HTTPUnauthorized(text="invalid bearer token", headers=challenge)
        return await handler(request)

    return middleware


async def health(request: web.Request) -> web.Response:
    ok, body = request.app[SUPERVISOR].health()
    return json_response(body, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = render_metrics(request.app[SUPERVISOR].metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[SUPERVISOR].stats())


async def reload(request: web.Request) -> web.Response:
    result = await request.app[SUPERVISOR].reload()
    if not result.ok:
        return error_response(
            400,
            "the configuration is invalid; the running one is kept",
            code="invalid_config",
            problems=result.problems,
        )
    return json_response(
        {"ok": True, "changed": result.changed, "restart_required": result.restart_required}
    )


def build_app(supervisor: Supervisor, cfg: ApiConfig, token: Secret) -> web.Application:
    """The API application for one daemon."""
    app = web.Application(
        client_max_size=cfg.max_body_bytes,
        middlewares=[
            error_middleware,
            size_middleware(cfg.max_body_bytes),
            auth_middleware(token, cfg.read_auth),
        ],
    )
    app[SUPERVISOR] = supervisor
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/stats", stats)
    app.router.add_post("/api/v1/reload", reload)
    return app
