"""The aiohttp application: routes, the error and auth middlewares, JSON through orjson.

Every error leaves as ``{"error": {"code": ..., "message": ...}}`` with the right status; a 500
says nothing about internals (the traceback goes to the log). Mutating routes need
``Authorization: Bearer <token>``, compared in constant time.

Routes live with their resource: the daemon's own here, the scout's in ``scout.py``, the live
feed in ``feed.py``, the OpenAPI document in ``openapi.py``; ``ROUTES`` lists them all, and both
the router and the document are built from that one list.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hlcopy.api import backtest as backtest_routes
from hlcopy.api import (
    close,
    copies,
    dashboard,
    feed,
    openapi,
    opportunities,
    performance,
    schemas,
    scout,
)
from hlcopy.api import positions as positions_routes
from hlcopy.api import risk as risk_routes
from hlcopy.api.feed import FEEDS, Feeds
from hlcopy.api.follows import FOLLOWS, Follows
from hlcopy.api.follows import ROUTES as FOLLOW_ROUTES
from hlcopy.api.params import ApiError, Args, Route, endpoint
from hlcopy.api.ports import RegistryView, TrackRequests
from hlcopy.api.responses import dumps, error_response, json_response, read_json
from hlcopy.api.scout import SCOUT, FeedSettings, Scout
from hlcopy.clock import SYSTEM, Clock
from hlcopy.component import MetricFamily, Supervisor
from hlcopy.config import ApiConfig
from hlcopy.credentials import Secret
from hlcopy.errors import StoreUnavailable
from hlcopy.events import EventBus
from hlcopy.follow.follows import FollowRegistry
from hlcopy.follow.riskkeeper import RiskKeeper
from hlcopy.scout.leaderboard import Leaderboard
from hlcopy.store import Store
from hlcopy.store.board import BoardQueries
from hlcopy.store.copies import CopyStore
from hlcopy.store.opportunities import OpportunityStore

__all__ = [
    "ROUTES",
    "build_app",
    "error_response",
    "json_response",
    "read_json",
    "render_metrics",
]

log = structlog.get_logger()

SUPERVISOR = web.AppKey("supervisor", Supervisor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.code, exc.headers, **exc.extra)
    except StoreUnavailable:  # the store monitor is bringing it back; say so, briefly
        return error_response(503, "the database is unavailable", headers={"Retry-After": "5"})
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


def _websocket_bearer(request: web.Request) -> str:
    """A browser cannot set headers on a WebSocket: it offers the token as a subprotocol,
    ``bearer.<token>`` (the feed answers with its own protocol, never echoing this one)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return ""
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        name, dot, value = offered.strip().partition(".")
        if dot and name == "bearer":
            return "Bearer " + value
    return ""


def auth_middleware(token: Secret, read_auth: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Require the bearer token on mutating routes (and on reads when ``read_auth``)."""
    expected = token.reveal().encode()
    challenge = {"WWW-Authenticate": 'Bearer realm="hlcopy"'}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        mutating = request.method not in _SAFE_METHODS
        if mutating or (read_auth and request.path not in PUBLIC_PATHS):
            given = request.headers.get("Authorization") or _websocket_bearer(request)
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise web.HTTPUnauthorized(text="missing bearer token", headers=challenge)
            # Header bytes that are not ASCII arrive as surrogates: they match no token.
            presented = value.strip().encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(presented, expected):
                raise web.HTTPUnauthorized(text="invalid bearer token", headers=challenge)
        return await handler(request)

    return middleware


async def health(request: web.Request, args: Args) -> web.Response:
    ok, body = request.app[SUPERVISOR].health()
    return json_response(body, 200 if ok else 503)


async def metrics(request: web.Request, args: Args) -> web.Response:
    body = render_metrics(request.app[SUPERVISOR].metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stats(request: web.Request, args: Args) -> web.Response:
    return json_response(request.app[SUPERVISOR].stats())


async def reload(request: web.Request, args: Args) -> web.Response:
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


_FIGURES = schemas.ref("Figures")
ROUTES: Final = (
    Route(
        "GET",
        "/health",
        health,
        "Whether every component is ready",
        "daemon",
        response=_FIGURES,
        errors=(503,),
        description="200 when every component is ready, 503 otherwise; never needs a token.",
        public=True,
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        "daemon",
        response={"type": "string"},
        content_type="text/plain",
    ),
    Route("GET", "/api/v1/stats", stats, "Figures of every component", "daemon", response=_FIGURES),
    Route(
        "POST",
        "/api/v1/reload",
        reload,
        "Re-read the TOML file (like SIGHUP)",
        "daemon",
        response=schemas.ref("ReloadResult"),
        errors=(400,),
    ),
    *scout.ROUTES,
    *risk_routes.ROUTES,
    close.ROUTE,
    *positions_routes.ROUTES,
    *FOLLOW_ROUTES,
    *copies.ROUTES,
    *opportunities.ROUTES,
    *performance.ROUTES,
    *backtest_routes.ROUTES,
    *feed.ROUTES,
    openapi.ROUTE,
    *dashboard.ROUTES,
)
PUBLIC_PATHS: Final = frozenset(r.path for r in ROUTES if r.public)


def build_app(
    supervisor: Supervisor,
    cfg: ApiConfig,
    token: Secret,
    *,
    leaderboard: Leaderboard | None = None,
    registry: RegistryView | None = None,
    tracker: TrackRequests | None = None,
    bus: EventBus | None = None,
    store: Store | None = None,
    risk: RiskKeeper | None = None,
    clock: Clock = SYSTEM,
    feed_settings: FeedSettings | None = None,
    follows: FollowRegistry | None = None,
    positions: positions_routes.PositionsView | None = None,
    performance_report: performance.PerformanceReport | None = None,
    closer: close.CloseAll | None = None,
    backtests: backtest_routes.BacktestJobs | None = None,
) -> web.Application:
    """The API application for one daemon. The scout's collaborators are optional: a route
    whose collaborator is missing answers 503."""
    app = web.Application(
        client_max_size=cfg.max_body_bytes,
        middlewares=[
            error_middleware,
            size_middleware(cfg.max_body_bytes),
            auth_middleware(token, cfg.read_auth),
        ],
    )
    app[SUPERVISOR] = supervisor
    app[SCOUT] = Scout(
        leaderboard=leaderboard,
        registry=registry,
        tracker=tracker,
        reads=None if store is None else BoardQueries(store),
        bus=bus,
        clock=clock,
        feed=feed_settings or FeedSettings(),
    )
    if risk is not None:
        app[risk_routes.RISK] = risk
    if positions is not None:
        app[positions_routes.POSITIONS] = positions
    if closer is not None:
        app[close.CLOSER] = closer
    app[FOLLOWS] = Follows(follows)
    if store is not None:
        app[copies.COPIES] = CopyStore(store)
        app[opportunities.OPPORTUNITIES] = OpportunityStore(store)
    if performance_report is not None:
        app[performance.PERFORMANCE] = performance_report
    if backtests is not None:
        app[backtest_routes.BACKTESTS] = backtests
        app.on_shutdown.append(backtests.close)
    feeds = Feeds(clock)
    app[FEEDS] = feeds
    app.on_shutdown.append(feeds.close_all)
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, endpoint(route))
        else:
            app.router.add_route(route.method, route.path, endpoint(route))
    app[openapi.OPENAPI] = dumps(openapi.document(ROUTES))
    app[dashboard.ASSETS] = dashboard.load_assets()
    return app
