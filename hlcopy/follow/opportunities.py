"""Counter-trade opportunities, the pure core: which position events are one, and how they went.

When a trader among the ``losers_top_n`` worst of the losers list opens a position, adds to one,
or flips (its new side), the opposite trade is an opportunity: our side is the other side, our
suggested size is ``notional_usd / price`` rounded down to the coin's lot. Its outcome at each
horizon is what that opposite position would have made by then::

    move_bps   = (p_h - p_0) / p_0 x 10,000          the market's move
    return_bps = our_sign x move_bps                  the opposite position's return
    pnl_usd    = our_sign x size x (p_h - p_0)        = -trader_sign x size x (p_h - p_0)

and it is a hit when ``pnl_usd > 0``. The summary per horizon: how many, how many resolved, hits,
the hit rate (hits / resolved) and the mean PnL and return over the resolved ones. No fees, no
funding, no slippage: a measure of the signal, not of a trade.

The shell (``opportunities_service.py``) reads the events off the bus, the ranking off the
leaderboard and the prices off the mids or the candles; everything here is plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Final, Literal

from hlcopy.keys import parse_address
from hlcopy.model import Candle, PositionEvent
from hlcopy.record import record

Side = Literal["long", "short"]
PriceSource = Literal["mid", "candle_1m", "candle_1h"]

ZERO: Final = Decimal(0)
BPS: Final = Decimal(10_000)
BPS_PLACES: Final = Decimal("0.01")
RATE_PLACES: Final = Decimal("0.0001")
USD_PLACES: Final = Decimal("0.000001")
OPENING: Final = frozenset({"open", "increase", "flip"})
EVENT_KINDS: Final = frozenset({"open", "increase", "decrease", "close", "flip", "liquidated"})
SKIP_REASONS: Final = (
    "not_opening",  # a decrease, close or liquidation
    "not_a_top_loser",  # the trader is not among the losers_top_n worst
    "no_price",  # neither the event nor the mids have a price
    "unknown_coin",  # not in the universe: no lot size
    "below_lot",  # notional_usd / price rounds down to nothing
)


@record
class Opportunity:
    """The opposite of a top loser's open or add, as first recorded."""

    trader: str
    coin: str
    kind: str  # open | increase | flip
    trader_side: Side
    our_side: Side
    trader_sz: Decimal  # what the trader opened or added
    size: Decimal  # the follower's suggested size (coin units, on the lot)
    price: Decimal  # p_0
    time_ms: int
    losers_rank: int  # 1 = the worst
    window: str

    @property
    def notional_usd(self) -> Decimal:
        return self.size * self.price


@record
class Skip:
    """A position event that is no opportunity, and why (one of ``SKIP_REASONS``)."""

    reason: str


@record
class Outcome:
    """One horizon's result: the price then and what the opposite position made."""

    horizon_s: int
    due_ms: int
    price: Decimal
    source: PriceSource
    move_bps: Decimal
    return_bps: Decimal
    pnl_usd: Decimal
    resolved_ms: int

    @property
    def hit(self) -> bool:
        return self.pnl_usd > 0


@record
class Tally:
    """Sums over one horizon's outcomes (what the store adds up in SQL, too)."""

    horizon_s: int
    count: int
    resolved: int
    hits: int
    pnl_usd: Decimal
    return_bps: Decimal


@record
class HorizonSummary:
    horizon_s: int
    count: int
    resolved: int
    hits: int
    hit_rate: Decimal | None  # hits / resolved; None before any is resolved
    mean_pnl_usd: Decimal | None
    mean_return_bps: Decimal | None

    def to_json(self) -> dict[str, Any]:
        def s(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "horizon_s": self.horizon_s,
            "count": self.count,
            "resolved": self.resolved,
            "hits": self.hits,
            "hit_rate": s(self.hit_rate),
            "mean_pnl_usd": s(self.mean_pnl_usd),
            "mean_return_bps": s(self.mean_return_bps),
        }


# -- deciding ---------------------------------------------------------------------------------


def sign(side: Side) -> int:
    return 1 if side == "long" else -1


def opposite(side: Side) -> Side:
    return "short" if side == "long" else "long"


def opened(kind: str, prev_szi: Decimal, new_szi: Decimal) -> tuple[Side, Decimal] | None:
    """The side the trader opened or added to and by how much; None for anything that only
    reduces (a decrease, close or liquidation). A flip opened all of its new size."""
    if kind not in OPENING or new_szi == 0:
        return None
    side: Side = "long" if new_szi > 0 else "short"
    if kind == "increase":
        if (prev_szi > 0) != (new_szi > 0) or abs(new_szi) <= abs(prev_szi):
            return None
        return side, abs(new_szi) - abs(prev_szi)
    return side, abs(new_szi)


def suggested_size(notional_usd: Decimal, price: Decimal, sz_decimals: int) -> Decimal:
    """``notional_usd / price``, rounded down to ``sz_decimals`` (never above the notional)."""
    if price <= 0:
        raise ValueError("price must be positive")
    lot = Decimal(1).scaleb(-sz_decimals)
    return (notional_usd / price).quantize(lot, rounding=ROUND_DOWN)


def decide(
    event: PositionEvent,
    ranks: Mapping[str, int],
    sz_decimals: int | None,
    notional_usd: Decimal,
    window: str,
    mid: Decimal | None = None,
) -> Opportunity | Skip:
    """Whether ``event`` is an opportunity, and the opportunity.

    ``ranks``: the losers list's top N (address -> 1-based rank); ``sz_decimals``: the coin's lot
    (None when the coin is unknown); ``mid``: the current mid, the price when the event has none.
    """
    side_sz = opened(event.kind, event.prev_szi, event.new_szi)
    if side_sz is None:
        return Skip("not_opening")
    rank = ranks.get(event.address)
    if rank is None:
        return Skip("not_a_top_loser")
    price = event.px if event.px is not None and event.px > 0 else mid
    if price is None or price <= 0:
        return Skip("no_price")
    if sz_decimals is None:
        return Skip("unknown_coin")
    size = suggested_size(notional_usd, price, sz_decimals)
    if size <= 0:
        return Skip("below_lot")
    side, trader_sz = side_sz
    return Opportunity(
        trader=event.address,
        coin=event.coin,
        kind=event.kind,
        trader_side=side,
        our_side=opposite(side),
        trader_sz=trader_sz,
        size=size,
        price=price,
        time_ms=event.time_ms,
        losers_rank=rank,
        window=window,
    )


def ranks_of(worst_first: Sequence[str]) -> dict[str, int]:
    """The losers list's addresses, worst first, as address -> 1-based rank."""
    return {address: i for i, address in enumerate(worst_first, 1)}


def event_from_json(data: Mapping[str, Any]) -> PositionEvent | None:
    """A position event as the tracker publishes it (``tracker.event_json``); None when it is
    not one (a malformed or foreign payload is ignored, never trusted)."""
    try:
        kind = data["kind"]
        if kind not in EVENT_KINDS:
            return None
        time_ms = data["time_ms"]
        if not isinstance(time_ms, int) or isinstance(time_ms, bool) or time_ms <= 0:
            return None
        coin = data["coin"]
        if not isinstance(coin, str) or not 0 < len(coin) <= 64:
            return None
        px_text = data.get("px")
        px = None if px_text is None else Decimal(px_text)
        event = PositionEvent(
            address=parse_address(data["address"]),
            coin=coin,
            kind=kind,
            prev_szi=Decimal(data["prev_szi"]),
            new_szi=Decimal(data["new_szi"]),
            time_ms=time_ms,
            px=px if px is not None and px.is_finite() else None,
        )
    except (KeyError, TypeError, ValueError, InvalidOperation):
        return None
    if not (event.prev_szi.is_finite() and event.new_szi.is_finite()):
        return None
    return event


# -- outcomes ---------------------------------------------------------------------------------


def outcome(
    our_side: Side,
    size: Decimal,
    p0: Decimal,
    horizon_s: int,
    due_ms: int,
    price: Decimal,
    source: PriceSource,
    resolved_ms: int,
) -> Outcome:
    """The opposite position's result at one horizon (see the module docstring)."""
    s = sign(our_side)
    move = (price - p0) / p0 * BPS
    return Outcome(
        horizon_s=horizon_s,
        due_ms=due_ms,
        price=price,
        source=source,
        move_bps=move.quantize(BPS_PLACES),
        return_bps=(s * move).quantize(BPS_PLACES),
        pnl_usd=s * size * (price - p0),
        resolved_ms=resolved_ms,
    )


def candle_price(candles: Iterable[Candle], due_ms: int, now_ms: int) -> tuple[Decimal, int] | None:
    """The price at ``due_ms`` from candles: the close of the bar that holds it, once that bar
    has closed (so at most one bar after ``due_ms``); with the bar's close time. None when no
    closed bar holds it."""
    for c in candles:
        if c.open_ms <= due_ms <= c.close_ms and c.close_ms < now_ms and c.close > 0:
            return c.close, c.close_ms
    return None


# -- the summary ------------------------------------------------------------------------------


def tally(horizons: Iterable[int], outcomes: Iterable[tuple[int, Outcome | None]]) -> list[Tally]:
    """Sums per horizon over ``(horizon_s, outcome or None while unresolved)`` pairs; every
    horizon in ``horizons`` appears, even with nothing yet."""
    acc: dict[int, list[Any]] = {h: [0, 0, 0, ZERO, ZERO] for h in horizons}
    for horizon, o in outcomes:
        row = acc.setdefault(horizon, [0, 0, 0, ZERO, ZERO])
        row[0] += 1
        if o is not None:
            row[1] += 1
            row[2] += 1 if o.hit else 0
            row[3] += o.pnl_usd
            row[4] += o.return_bps
    return [Tally(h, *acc[h]) for h in sorted(acc)]


def summarize(tallies: Iterable[Tally]) -> list[HorizonSummary]:
    """Hit rate and means per horizon, shortest horizon first."""
    out = []
    for t in sorted(tallies, key=lambda t: t.horizon_s):
        n = t.resolved
        out.append(
            HorizonSummary(
                horizon_s=t.horizon_s,
                count=t.count,
                resolved=n,
                hits=t.hits,
                hit_rate=None if n == 0 else (Decimal(t.hits) / n).quantize(RATE_PLACES),
                mean_pnl_usd=None if n == 0 else (t.pnl_usd / n).quantize(USD_PLACES),
                mean_return_bps=None if n == 0 else (t.return_bps / n).quantize(BPS_PLACES),
            )
        )
    return out
