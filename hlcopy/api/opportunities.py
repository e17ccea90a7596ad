"""Counter-trade opportunities: ``GET /api/v1/opportunities`` — each top loser's open or add,
the opposite trade we would have made, and how it went after each horizon; with a summary of
the hit rate per horizon over every stored opportunity that passes the filters.

Read from PostgreSQL; the collaborator is ``app[OPPORTUNITIES]``, and a daemon without it
answers 503.
"""

from __future__ import annotations

import re
from typing import Any, Final, Protocol

from aiohttp import web

from hlcopy.api.params import ApiError, Args, Param, Route, address, integer, invalid
from hlcopy.api.responses import json_response
from hlcopy.api.schemas import DEC, NDEC, nullable, obj
from hlcopy.follow.opportunities import Tally, summarize


class OpportunityReads(Protocol):
    """What the route needs of the store (``hlcopy.store.opportunities.OpportunityStore``)."""

    async def opportunities(
        self, trader: str | None, coin: str | None, limit: int
    ) -> list[dict[str, Any]]: ...

    async def tallies(self, trader: str | None, coin: str | None) -> list[Tally]: ...


OPPORTUNITIES: Final = web.AppKey("opportunities", OpportunityReads)

MAX_LIMIT: Final = 1000
COIN_PATTERN: Final = r"^[A-Za-z0-9@:/_.-]{1,64}$"
_COIN = re.compile(COIN_PATTERN)


def _coin_param() -> Param:
    def parse(text: str) -> str:
        if not _COIN.fullmatch(text):
            raise invalid("coin", "coin must be a coin name: 1-64 letters, digits, @ : / _ . -")
        return text

    schema = {"type": "string", "pattern": COIN_PATTERN, "examples": ["ETH"]}
    return Param("coin", "Only opportunities in this coin.", schema, parse, None)


def _trader_param() -> Param:
    p = address("trader", "query")
    schema = {**p.schema, "examples": ["0x" + "ab" * 20]}
    return Param(p.name, "Only this trader's opportunities (any case).", schema, p.parse, None)


async def opportunities(request: web.Request, args: Args) -> web.StreamResponse:
    reads = request.app.get(OPPORTUNITIES)
    if reads is None:
        raise ApiError(503, "opportunities are not recorded in this daemon", "unavailable")
    trader, coin, limit = args["trader"], args["coin"], args["limit"]
    rows = await reads.opportunities(trader, coin, limit)
    summary = summarize(await reads.tallies(trader, coin))
    return json_response(
        {
            "trader": trader,
            "coin": coin,
            "limit": limit,
            "summary": [s.to_json() for s in summary],
            "opportunities": rows,
        }
    )


# -- the response's schema ------------------------------------------------------------------------


_SIDE: Final = {"type": "string", "enum": ["long", "short"]}

OUTCOME: Final = obj(
    {
        "horizon_s": {"type": "integer", "minimum": 1},
        "due_ms": {"type": "integer", "description": "when this horizon falls due"},
        "price": nullable("string", description="the price then; null until resolved"),
        "source": {
            "type": ["string", "null"],
            "enum": ["mid", "candle_1m", "candle_1h", None],
            "description": "the live mid, or a candle's close when resolved late",
        },
        "move_bps": nullable("string", description="the market's move since the opportunity"),
        "return_bps": nullable("string", description="the opposite position's return"),
        "pnl_usd": nullable(
            "string", description="what the suggested opposite position made (no fees)"
        ),
        "hit": nullable("boolean", description="pnl_usd > 0"),
        "resolved_ms": nullable("integer"),
    }
)

OPPORTUNITY: Final = obj(
    {
        "id": {"type": "integer"},
        "trader": {"type": "string"},
        "coin": {"type": "string"},
        "kind": {"type": "string", "enum": ["open", "increase", "flip"]},
        "trader_side": _SIDE,
        "our_side": _SIDE,
        "trader_sz": {**DEC, "description": "what the trader opened or added"},
        "size": {**DEC, "description": "the follower's suggested size, on the coin's lot"},
        "price": DEC,
        "notional_usd": DEC,
        "time_ms": {"type": "integer"},
        "losers_rank": {"type": "integer", "minimum": 1, "description": "1 = the worst"},
        "losers_window": {"type": "string"},
        "recorded_ms": {"type": "integer"},
        "outcomes": {"type": "array", "items": OUTCOME},
    }
)

SUMMARY: Final = obj(
    {
        "horizon_s": {"type": "integer", "minimum": 1},
        "count": {"type": "integer", "minimum": 0},
        "resolved": {"type": "integer", "minimum": 0},
        "hits": {"type": "integer", "minimum": 0},
        "hit_rate": nullable("string", description="hits / resolved"),
        "mean_pnl_usd": NDEC,
        "mean_return_bps": NDEC,
    }
)

OPPORTUNITIES_PAGE: Final = obj(
    {
        "trader": nullable("string"),
        "coin": nullable("string"),
        "limit": {"type": "integer"},
        "summary": {"type": "array", "items": SUMMARY},
        "opportunities": {"type": "array", "items": OPPORTUNITY},
    }
)

ROUTES: Final = (
    Route(
        "GET",
        "/api/v1/opportunities",
        opportunities,
        "Counter-trade opportunities: the losers' opens, faded, and how that went",
        "follow",
        params=(
            _trader_param(),
            _coin_param(),
            integer("limit", 1, MAX_LIMIT, 100, f"Rows, at most {MAX_LIMIT}."),
        ),
        response=OPPORTUNITIES_PAGE,
        errors=(400, 503),
        description="When a trader among the worst of the losers list opens or adds, the "
        "opposite trade: our side, a suggested size ([opportunities] notional_usd at the price "
        "then, on the lot), the price and time; and per horizon the price later, the market's "
        "move and the opposite position's return in basis points, its PnL in USD (no fees or "
        "funding) and whether it was a hit (PnL > 0). Newest first. The summary covers every "
        "stored opportunity that passes the filters, not only this page: per horizon, how "
        "many, how many resolved, hits, the hit rate (hits / resolved) and the mean PnL and "
        "return of the resolved ones.",
    ),
)
