"""The scout's routes: the leaderboard, the losers, the trader registry and trader pages.

The leaderboard and the losers are served from the in-memory board, and their rendered pages
are cached per board version: a page is rendered once per refresh that changed something, and
every later request for it is a dictionary lookup. Trader pages read PostgreSQL (one row, or one
index range), never sort in SQL, and never call the exchange.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from aiohttp import web

from hlcopy.api import schemas
from hlcopy.api.params import (
    ApiError,
    Args,
    Route,
    address,
    address_prefix,
    choice,
    choices,
    decimal,
    integer,
)
from hlcopy.api.ports import RegistryView, TrackRequests, TraderReads, activity_json
from hlcopy.api.responses import dumps, json_response
from hlcopy.clock import SYSTEM, Clock
from hlcopy.events import EventBus
from hlcopy.record import record
from hlcopy.scout.analytics import WINDOWS, RiskLevel, Style
from hlcopy.scout.leaderboard import DEFAULT_WINDOW, SORT_KEYS, Filters, Leaderboard

MAX_PAGE: Final = 1000
LAST_EVENTS: Final = 20


@record
class FeedSettings:
    """The live feed's limits."""

    buffer: int = 256  # events a client may fall behind before it is cut off
    send_timeout_s: float = 5.0  # a client that takes longer to accept one message is dropped
    max_clients: int = 256


class PageCache:
    """Rendered JSON pages for one board version; a new version empties it. Bounded, so a
    client walking through every combination of parameters cannot grow it without end."""

    def __init__(self, max_pages: int = 2048) -> None:
        self.max_pages = max_pages
        self._version = -1
        self._pages: dict[Hashable, bytes] = {}
        self.hits = 0
        self.misses = 0

    def get(self, version: int, key: Hashable) -> bytes | None:
        if version != self._version:
            self._pages.clear()
            self._version = version
        body = self._pages.get(key)
        if body is None:
            self.misses += 1
        else:
            self.hits += 1
        return body

    def put(self, version: int, key: Hashable, body: bytes) -> None:
        if version != self._version:
            return
        if len(self._pages) >= self.max_pages:
            self._pages.pop(next(iter(self._pages)))  # the oldest
        self._pages[key] = body

    def stats(self) -> dict[str, Any]:
        return {"pages": len(self._pages), "hits": self.hits, "misses": self.misses}


@dataclass(slots=True)
class Scout:
    """The API's collaborators for the scout's routes (each optional: missing means 503)."""

    leaderboard: Leaderboard | None = None
    registry: RegistryView | None = None
    tracker: TrackRequests | None = None
    reads: TraderReads | None = None
    bus: EventBus | None = None
    clock: Clock = SYSTEM
    feed: FeedSettings = field(default_factory=FeedSettings)
    pages: PageCache = field(default_factory=PageCache)
    track_requests: int = 0


SCOUT: Final = web.AppKey("scout", Scout)


def unavailable(what: str) -> ApiError:
    return ApiError(503, f"{what} is not running in this daemon", "unavailable")


def _board(request: web.Request) -> Leaderboard:
    board = request.app[SCOUT].leaderboard
    if board is None:
        raise unavailable("the leaderboard")
    if board.loading or board.refreshed_ms is None:
        raise ApiError(503, "the leaderboard is loading", "loading", headers={"Retry-After": "1"})
    return board


def _page_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


# -- parameters ---------------------------------------------------------------------------------

_LIMIT_NOTE = f"Rows per page, at most {MAX_PAGE}."
WINDOW = choice("window", WINDOWS, DEFAULT_WINDOW, "The metrics window.")
SORT_BY = choice(
    "sort_by",
    SORT_KEYS,
    "score",
    "The figure to rank by. Traders without it come last (in either order), except for "
    "score: a trader without a score is not ranked by it.",
)
ORDER = choice("order", ("desc", "asc"), "desc", "desc: largest first. Ties run by address.")
OFFSET = integer("offset", 0, 10_000_000, 0, "Rows to skip.")
MIN_TRADES = integer(
    "min_trades",
    0,
    1_000_000_000,
    0,
    "Keep traders with at least this many closed round trips in the window.",
)
MIN_VOLUME = decimal(
    "min_volume_usd", Decimal(0), Decimal(10) ** 15, "Keep traders with at least this volume."
)
RISK = choices("risk_level", [r.value for r in RiskLevel], "Keep these risk levels.")
STYLE = choices("style", [s.value for s in Style], "Keep these trading styles.")


# -- handlers -----------------------------------------------------------------------------------


async def leaderboard(request: web.Request, args: Args) -> web.StreamResponse:
    board = _board(request)
    scout = request.app[SCOUT]
    key = (
        "leaderboard",
        args["window"],
        args["sort_by"],
        args["order"],
        args["min_trades"],
        args["min_volume_usd"],
        args["risk_level"],
        args["style"],
        args["limit"],
        args["offset"],
    )
    body = scout.pages.get(board.version, key)
    if body is None:
        risk, style = args["risk_level"], args["style"]
        filters = Filters(
            min_trades=args["min_trades"],
            min_volume_usd=args["min_volume_usd"],
            risk_levels=None if risk is None else frozenset(RiskLevel(r) for r in risk),
            styles=None if style is None else frozenset(Style(s) for s in style),
        )
        page = board.ranking(
            args["window"],
            args["sort_by"],
            descending=args["order"] == "desc",
            filters=filters,
            limit=args["limit"],
            offset=args["offset"],
        )
        body = dumps(
            {
                "window": args["window"],
                "sort_by": args["sort_by"],
                "order": args["order"],
                "total": page.total,
                "limit": args["limit"],
                "offset": args["offset"],
                "version": board.version,
                "as_of": board.version_ms,
                "rows": page.rows,
            }
        )
        scout.pages.put(board.version, key, body)
    return _page_response(body)


async def losers(request: web.Request, args: Args) -> web.StreamResponse:
    board = _board(request)
    scout = request.app[SCOUT]
    window = args["window"] or board.losers_window
    key = ("losers", window, args["limit"], args["offset"])
    body = scout.pages.get(board.version, key)
    if body is None:
        page = board.losers(window, limit=args["limit"], offset=args["offset"])
        body = dumps(
            {
                "window": window,
                "total": page.total,
                "limit": args["limit"],
                "offset": args["offset"],
                "version": board.version,
                "as_of": board.version_ms,
                "rows": page.rows,
            }
        )
        scout.pages.put(board.version, key, body)
    return _page_response(body)


async def traders(request: web.Request, args: Args) -> web.StreamResponse:
    registry = request.app[SCOUT].registry
    if registry is None:
        raise unavailable("discovery")
    total, page = registry.search(args["q"], args["limit"], args["offset"])
    return json_response(
        {
            "q": args["q"],
            "total": total,
            "limit": args["limit"],
            "offset": args["offset"],
            "traders": [activity_json(a) for a in page],
        }
    )


def _reads(request: web.Request) -> TraderReads:
    reads = request.app[SCOUT].reads
    if reads is None:
        raise unavailable("the store")
    return reads


async def trader(request: web.Request, args: Args) -> web.StreamResponse:
    scout = request.app[SCOUT]
    addr = args["address"]
    reads = _reads(request)
    stored = await reads.trader(addr)
    seen = scout.registry.get(addr) if scout.registry is not None else None
    if stored is None and seen is None:
        raise ApiError(404, f"{addr} has not been seen trading", "unknown_trader")
    events = await reads.events(addr, LAST_EVENTS, 0)
    board = scout.leaderboard
    ranked = board is not None and not board.loading and addr in board
    ranks = {w: board.rank(addr, w) if ranked and board else None for w in WINDOWS}
    stored = stored or {}
    return json_response(
        {
            "address": addr,
            "activity": activity_json(seen) if seen is not None else stored.get("activity"),
            "role": stored.get("role"),
            "master": stored.get("master"),
            "tracked": bool(stored.get("tracked")),
            "track_requested_ms": stored.get("track_requested_ms"),
            "account_value": stored.get("account_value"),
            "metrics": stored.get("metrics", {}),
            "metrics_at_ms": stored.get("metrics_at_ms"),
            "ranks": ranks,
            "positions": stored.get("positions", []),
            "positions_at_ms": stored.get("positions_at_ms"),
            "index_points": stored.get("index_points", {}),
            "events": events,
        }
    )


async def trader_events(request: web.Request, args: Args) -> web.StreamResponse:
    rows = await _reads(request).events(args["address"], args["limit"] + 1, args["offset"])
    return _paged(args, "events", rows)


async def trader_fills(request: web.Request, args: Args) -> web.StreamResponse:
    rows = await _reads(request).fills(args["address"], args["limit"] + 1, args["offset"])
    return _paged(args, "fills", rows)


def _paged(args: Args, name: str, rows: list[dict[str, Any]]) -> web.Response:
    limit = args["limit"]
    return json_response(
        {
            "address": args["address"],
            "limit": limit,
            "offset": args["offset"],
            "more": len(rows) > limit,
            name: rows[:limit],
        }
    )


async def track(request: web.Request, args: Args) -> web.StreamResponse:
    scout = request.app[SCOUT]
    if scout.tracker is None:
        raise unavailable("the tracker")
    scout.tracker.request_track(args["address"])
    scout.track_requests += 1
    return json_response({"address": args["address"], "track_requested": True}, 202)


_PAGED_LIMIT = integer("limit", 1, 500, 100, "Rows per page, at most 500.")
_STORED_OFFSET = integer("offset", 0, 100_000, 0, "Rows to skip (newest first).")

ROUTES: Final = (
    Route(
        "GET",
        "/api/v1/leaderboard",
        leaderboard,
        "The ranked traders",
        "scout",
        params=(
            WINDOW,
            SORT_BY,
            ORDER,
            MIN_TRADES,
            MIN_VOLUME,
            RISK,
            STYLE,
            integer("limit", 1, MAX_PAGE, 50, _LIMIT_NOTE),
            OFFSET,
        ),
        response=schemas.ref("LeaderboardPage"),
        errors=(400, 503),
        description="Served from the in-memory snapshot, refreshed every "
        "[leaderboard].refresh_interval_s. 503 while the stored state is being loaded.",
    ),
    Route(
        "GET",
        "/api/v1/losers",
        losers,
        "The traders who lost with confidence, worst first",
        "scout",
        params=(
            choice(
                "window",
                WINDOWS,
                None,
                "The metrics window; default: [leaderboard].losers_window (month).",
            ),
            integer("limit", 1, MAX_PAGE, 100, _LIMIT_NOTE),
            OFFSET,
        ),
        response=schemas.ref("LosersPage"),
        errors=(400, 503),
        description="Ranked by badness: the loss the trader made even at the optimistic end of "
        "a 95% interval. Only traders with a positive badness (minimum activity included) "
        "are listed, so a single unlucky trade does not qualify.",
    ),
    Route(
        "GET",
        "/api/v1/traders",
        traders,
        "Every address discovery has seen, by address",
        "scout",
        params=(
            integer("limit", 1, MAX_PAGE, 100, _LIMIT_NOTE),
            OFFSET,
            address_prefix("q", "An address prefix (0x...); empty matches every address."),
        ),
        response=schemas.ref("TradersPage"),
        errors=(400, 503),
    ),
    Route(
        "GET",
        "/api/v1/traders/{address}",
        trader,
        "One trader: metrics per window, positions, last events, equity index",
        "scout",
        params=(address(),),
        response=schemas.ref("Trader"),
        errors=(400, 404, 503),
    ),
    Route(
        "GET",
        "/api/v1/traders/{address}/events",
        trader_events,
        "A trader's position events, newest first",
        "scout",
        params=(address(), _PAGED_LIMIT, _STORED_OFFSET),
        response=schemas.ref("EventsPage"),
        errors=(400, 503),
    ),
    Route(
        "GET",
        "/api/v1/traders/{address}/fills",
        trader_fills,
        "A trader's stored fills, newest first",
        "scout",
        params=(address(), _PAGED_LIMIT, _STORED_OFFSET),
        response=schemas.ref("FillsPage"),
        errors=(400, 503),
    ),
    Route(
        "POST",
        "/api/v1/traders/{address}/track",
        track,
        "Raise a trader's tracking priority",
        "scout",
        params=(address(),),
        response=schemas.ref("TrackAccepted"),
        status=202,
        errors=(400, 401, 503),
        description="Returns at once: the tracker polls the trader in its own time, within "
        "the REST budget.",
    ),
)
