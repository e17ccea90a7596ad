"""Trader analytics: pure metrics over parsed portfolios, fills and position snapshots.

No I/O and no clock: "now" is a parameter. Money stays Decimal; ratios are float.

**Return** is deposit-independent: between consecutive ``portfolio`` points,
r = Δpnl / previous account value (skipped when that is ≤ 0), chained as the index Π(1 + r).
**Max drawdown** is the index's largest peak-to-trough fall; **Sharpe** the annualised mean over
standard deviation of its daily returns (None under 7 days).

**Score** (winners; higher is better) — how confidently the trader makes money, risk-adjusted::

    base  = lower 95% bound of the window's Sharpe ratio of the per-point returns r
            (SR·√k - 1.96·√(1 + SR²/2), Lo's standard error, k returns in the window)
    score = base * (1 - max_drawdown) * Wilson 95% lower bound of the round-trip win rate

(a negative base is divided by the same factor, so a worse drawdown or win record always
lowers the score). Lower bounds, not point estimates: one lucky trade or a short record cannot
rank high. Not rankable (None): fewer than ``MIN_RETURNS`` returns or ``MIN_TRIPS`` closed round
trips in the window, a market-maker or high-frequency pattern (``is_market_maker``), or a
``userRole`` other than ``user`` (vaults, agents, sub-accounts).

**Badness** (losers; higher is worse) — the loss the trader made even at the optimistic end:
badness = -(e^U - 1) with U the upper 95% bound of the window's log return (Σ log(1 + r) +
1.96·sd·√k), in [-1, 1]. Positive only when the trader lost with confidence; one unlucky trade
is not enough. It needs no fills: the minimum activity is ``MIN_RETURNS`` returns and some volume
traded; with fills known, market makers and too few round trips are excluded as for the score.
None for non-user roles.

``provisional_score`` / ``provisional_badness`` are the same without the fill-based parts
(win rate, trip count, market-maker test): the tracker uses them to pick whose fills to fetch.

**Risk level**: the highest level that max leverage, max drawdown or liquidations reach —
MEDIUM from 3x or 15%; HIGH from 10x, 30% or one liquidation; EXTREME from 25x, 60% or three.
**Style** by median holding time: scalper < 15 min <= day < 1 day <= swing < 7 days <= position.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any

from hlcopy.hl import MIN_NOTIONAL, round_size
from hlcopy.model import AccountState, Fill, Portfolio, PortfolioPeriod, UserRole
from hlcopy.record import record

DAY_MS = 86_400_000
WINDOWS: tuple[str, ...] = ("day", "week", "month", "allTime")
WINDOW_MS: Mapping[str, int | None] = {
    "day": DAY_MS,
    "week": 7 * DAY_MS,
    "month": 30 * DAY_MS,
    "allTime": None,
}
"""Window lengths, used only when the portfolio lacks the window (it then defines the start)."""

Z_95 = 1.959963984540054  # two-sided 95%: the Wilson bound of 8/10 wins is 0.490
SHARPE_MIN_DAYS = 7
SHARPE_ANNUALISATION = math.sqrt(365)  # crypto trades every day

# Minimum sample for score and badness.
MIN_RETURNS = 6  # chain-linked portfolio returns in the window (the day window has ~12)
MIN_TRIPS = 5  # closed round trips in the window
MAX_POINT_SHARPE = 10.0  # per-point mean/sd is clamped: a near-constant series is not infinite
SCORE_FACTOR_FLOOR = 0.01  # a negative base is divided by max(factor, this)
PROFIT_FACTOR_MAX = 100.0  # no losses (or a larger ratio) reports this: sorts first, JSON-safe
_LOG_FLOOR = 1e-12  # log(1 + r) of a wipe-out (r ≤ -1) is log of this, not -inf
_LOG_2 = math.log(2.0)

# Market-maker / high-frequency pattern (any one rule, given at least MM_MIN_ORDERS orders):
MM_MIN_ORDERS = 100  # fewer distinct orders in the window: too little to tell
MM_MAKER_SHARE = 0.8  # mostly maker fills: quoting, not taking a view
MM_ORDERS_PER_DAY = 2000.0  # very high order rate (span floored at MM_RATE_MIN_SPAN_MS)
MM_RATE_MIN_SPAN_MS = 3_600_000
MM_MIN_TRIPS_FOR_HOLD = 20  # with this many trips ...
MM_MAX_MEDIAN_HOLD_S = 60.0  # ... back to flat within a minute: near-zero net position
MM_HINT_MIN_TRADES = 30  # public trades seen before their maker share hints at a market maker
# ... or their rate: per day over at least ten minutes, twice the order rate above (one order
# sweeping the book is several trades), across several books (a whale's sweep is in one).
MM_HINT_TRADES_PER_DAY = 2 * MM_ORDERS_PER_DAY
MM_HINT_MIN_SPAN_MS = 600_000
MM_HINT_MIN_COINS = 5

# Risk level: the highest level any of leverage (max), drawdown and liquidations reaches.
MEDIUM_LEVERAGE, HIGH_LEVERAGE, EXTREME_LEVERAGE = 3.0, 10.0, 25.0
MEDIUM_DRAWDOWN, HIGH_DRAWDOWN, EXTREME_DRAWDOWN = 0.15, 0.30, 0.60
HIGH_LIQUIDATIONS, EXTREME_LIQUIDATIONS = 1, 3

# Style from the median holding time of closed round trips (upper bounds, exclusive).
SCALPER_MAX_HOLD_S = 15 * 60.0
DAY_MAX_HOLD_S = 24 * 3600.0
SWING_MAX_HOLD_S = 7 * 24 * 3600.0

_ZERO = Decimal(0)


class RiskLevel(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    EXTREME = "EXTREME"


class Style(StrEnum):
    SCALPER = "scalper"
    DAY = "day"
    SWING = "swing"
    POSITION = "position"


# --- portfolio -----------------------------------------------------------------------------


@record
class PortfolioStats:
    """One portfolio window: PnL, the deposit-independent index and what derives from it."""

    start_ms: int
    end_ms: int
    pnl: Decimal
    return_: float
    max_drawdown: float
    sharpe: float | None
    volume: Decimal
    account_value: Decimal | None  # the last point's
    returns: tuple[float, ...]  # the chain-linked per-point returns (skipped points excluded)
    index: tuple[tuple[int, float], ...]  # (time ms, Π(1 + r)), starting at 1.0: the chart


def portfolio_stats(period: PortfolioPeriod) -> PortfolioStats | None:
    """Metrics of one ``portfolio`` window; None when it has no points.

    Each PnL point is matched with the account value at or before its time (the exchange sends
    both histories on the same timestamps). A return below -100% (possible between sparse
    points) clamps the index at 0: the account was wiped out.
    """
    pnl_hist = sorted(period.pnl_history)
    if not pnl_hist:
        return None
    av_hist = sorted(period.account_value_history)
    returns: list[float] = []
    index: list[tuple[int, float]] = []
    idx = 1.0
    peak = 1.0
    max_dd = 0.0
    j = -1
    prev_pnl: Decimal | None = None
    prev_av: Decimal | None = None
    for t, pnl in pnl_hist:
        while j + 1 < len(av_hist) and av_hist[j + 1][0] <= t:
            j += 1
        if prev_pnl is not None and prev_av is not None and prev_av > 0:
            r = float(pnl - prev_pnl) / float(prev_av)
            returns.append(r)
            idx *= max(0.0, 1.0 + r)
            if idx > peak:
                peak = idx
            elif peak > 0:
                max_dd = max(max_dd, 1.0 - idx / peak)
        index.append((t, idx))
        prev_pnl = pnl
        prev_av = av_hist[j][1] if j >= 0 else None
    return PortfolioStats(
        start_ms=pnl_hist[0][0],
        end_ms=pnl_hist[-1][0],
        pnl=pnl_hist[-1][1] - pnl_hist[0][1],
        return_=idx - 1.0,
        max_drawdown=max_dd,
        sharpe=daily_sharpe(index),
        volume=period.vlm,
        account_value=av_hist[-1][1] if av_hist else None,
        returns=tuple(returns),
        index=tuple(index),
    )


def daily_sharpe(index: Sequence[tuple[int, float]]) -> float | None:
    """Annualised Sharpe of the index's daily returns; None under 7 days or without variance.

    The index is resampled to its last point of each UTC day; a day without a point carries
    the previous day's value (a zero return), so sparse histories are not compressed.
    """
    if len(index) < 2 or index[-1][0] - index[0][0] < SHARPE_MIN_DAYS * DAY_MS:
        return None
    closes: list[tuple[int, float]] = []
    for t, value in index:
        day = t // DAY_MS
        if closes and closes[-1][0] == day:
            closes[-1] = (day, value)
        else:
            closes.append((day, value))
    daily: list[float] = []
    for (d0, v0), (d1, v1) in itertools.pairwise(closes):
        daily.extend([0.0] * (d1 - d0 - 1))
        daily.append(v1 / v0 - 1.0 if v0 > 0 else 0.0)
    if len(daily) < 2:
        return None
    mean, sd = _mean_sd(daily)
    if sd <= 0:
        return None
    return mean / sd * SHARPE_ANNUALISATION


def account_age_days(portfolio: Portfolio, now_ms: int) -> float | None:
    """Days since the first ``allTime`` point (the account's first sample on the exchange)."""
    period = portfolio.periods.get("allTime")
    if period is None:
        return None
    times = [t for t, _ in period.account_value_history] + [t for t, _ in period.pnl_history]
    return (now_ms - min(times)) / DAY_MS if times else None


# --- round trips ---------------------------------------------------------------------------


@record
class RoundTrip:
    """A position in one coin from flat to flat (or to a flip)."""

    coin: str
    long: bool
    open_ms: int  # the first opening fill
    close_ms: int  # the fill that made it flat or flipped it
    closed_pnl: Decimal
    fees: Decimal
    fills: int
    liquidated: bool  # closed by a liquidation

    @property
    def result(self) -> Decimal:
        """Σ closedPnl - Σ fee: what the trip made."""
        return self.closed_pnl - self.fees

    @property
    def hold_s(self) -> float:
        return (self.close_ms - self.open_ms) / 1000


@dataclass(slots=True)
class _Step:
    """A position change: one fill, or both sides of a self-trade (no change)."""

    start: Decimal | None
    delta: Decimal
    time_ms: int
    fills: tuple[Fill, ...]


@dataclass(slots=True)
class _Open:
    long: bool
    open_ms: int
    pnl: Decimal
    fees: Decimal
    fills: int


def is_perp(coin: str) -> bool:
    """Perp coins (``BTC``, ``xyz:XYZ100``); spot is ``@107`` or ``PURR/USDC``."""
    return not coin.startswith("@") and "/" not in coin


def _signed(fill: Fill) -> Decimal:
    return fill.sz if fill.side == "B" else -fill.sz


def _is_liquidation(fill: Fill) -> bool:
    return fill.liquidation or (fill.dir is not None and fill.dir.startswith("Liquidated"))


def round_trips(fills: Iterable[Fill]) -> tuple[RoundTrip, ...]:
    """Closed round trips, reconstructed per coin with ``startPosition``.

    * Fills are ordered by (time, tid). Fills of one coin at the same millisecond are chained
      by ``startPosition`` (each starts where the previous ended), so order within a
      millisecond does not matter even without tids.
    * Both sides of a self-trade (same tid, or hash without tids; same start, size and price,
      opposite sides) report the same start and move nothing; their PnL and fees go to the
      open trip.
    * A flip fill closes one trip and opens the next: its closedPnl belongs to the closing
      trip, and its fee is split in proportion to the size that closed (|start|) and opened
      (|end|).
    * History that starts mid-position (first start ≠ 0) is skipped until the coin is first
      flat, or flips, so no bogus trip is made from a partial record. A fill whose start
      differs from the reconstructed position (a gap in the history) drops the open trip the
      same way. Spot fills are ignored (their start is a wallet balance).
    """
    by_coin: dict[str, list[Fill]] = {}
    for f in sorted(fills, key=lambda f: (f.time_ms, -1 if f.tid is None else f.tid)):
        if is_perp(f.coin):
            by_coin.setdefault(f.coin, []).append(f)
    trips: list[RoundTrip] = []
    for coin, coin_fills in by_coin.items():
        _coin_trips(coin, coin_fills, trips)
    trips.sort(key=lambda t: (t.close_ms, t.coin))
    return tuple(trips)


def _coin_trips(coin: str, fills: list[Fill], out: list[RoundTrip]) -> None:
    pos: Decimal | None = None  # None: unknown (before the first flat, or after a gap)
    trip: _Open | None = None
    i = 0
    while i < len(fills):
        j = i + 1
        while j < len(fills) and fills[j].time_ms == fills[i].time_ms:
            j += 1
        for step in _steps(fills[i:j], pos):
            start = step.start if step.start is not None else pos
            if start is None:
                continue
            if trip is not None and start != pos:
                trip = None  # a gap in the history: this trip's record is incomplete
            end = start + step.delta
            pnl = sum((f.closed_pnl or _ZERO for f in step.fills), _ZERO)
            fee = sum((f.fee or _ZERO for f in step.fills), _ZERO)
            n = len(step.fills)
            if start == 0:
                trip = None if end == 0 else _Open(end > 0, step.time_ms, pnl, fee, n)
            elif end == 0 or (end > 0) != (start > 0):
                close_fee = fee if end == 0 else fee * abs(start) / (abs(start) + abs(end))
                if trip is not None:
                    out.append(
                        RoundTrip(
                            coin=coin,
                            long=trip.long,
                            open_ms=trip.open_ms,
                            close_ms=step.time_ms,
                            closed_pnl=trip.pnl + pnl,
                            fees=trip.fees + close_fee,
                            fills=trip.fills + n,
                            liquidated=any(_is_liquidation(f) for f in step.fills),
                        )
                    )
                trip = None if end == 0 else _Open(end > 0, step.time_ms, _ZERO, fee - close_fee, n)
            elif trip is not None:
                trip.pnl += pnl
                trip.fees += fee
                trip.fills += n
            pos = end
        i = j


def _steps(run: list[Fill], pos: Decimal | None) -> list[_Step]:
    """One millisecond of one coin as position steps in the order that chains."""
    if len(run) == 1:
        f = run[0]
        return [_Step(f.start_position, _signed(f), f.time_ms, (f,))]
    # Pair the two sides of self-trades: they share the start and change nothing.
    steps: list[_Step] = []
    waiting: dict[tuple[Any, ...], list[int]] = {}
    for f in run:
        key = (f.start_position, f.sz, f.px, f.tid if f.tid is not None else f.hash)
        other = waiting.get((*key, "A" if f.side == "B" else "B"))
        if f.start_position is not None and other:
            s = steps[other.pop(0)]
            s.delta = _ZERO
            s.fills = (*s.fills, f)
        else:
            waiting.setdefault((*key, f.side), []).append(len(steps))
            steps.append(_Step(f.start_position, _signed(f), f.time_ms, (f,)))
    if len(steps) == 1 or any(s.start is None for s in steps):
        return steps
    # Chain: each step starts where the previous ended; no-change steps first at a position.
    remaining = list(steps)
    ordered: list[_Step] = []
    cur = pos
    while remaining:
        pick = None
        if cur is not None:
            for s in remaining:
                if s.start == cur and (pick is None or s.delta == 0):
                    pick = s
                    if s.delta == 0:
                        break
        if pick is None:  # unknown position or a dead end: start where nothing else leads
            ends = {s.start + s.delta for s in remaining if s.start is not None and s.delta}
            heads = [s for s in remaining if s.start not in ends] or remaining
            pick = next((s for s in heads if s.delta == 0), heads[0])
        remaining.remove(pick)
        ordered.append(pick)
        cur = None if pick.start is None else pick.start + pick.delta
    return ordered


# --- fills ---------------------------------------------------------------------------------


@record
class FillStats:
    """Round-trip and fill metrics over one window."""

    trade_count: int
    wins: int
    losses: int
    win_rate: float | None
    win_rate_lower: float | None
    profit_factor: float | None
    avg_win: Decimal | None
    avg_loss: Decimal | None  # negative
    max_profit_usd: Decimal | None
    max_loss_usd: Decimal | None  # negative: the worst trip's result
    median_hold_s: float | None
    fill_count: int
    order_count: int
    taker_share: float | None
    liquidations: int
    span_ms: int


def wilson_lower_bound(successes: int, n: int, z: float = Z_95) -> float:
    """Wilson score interval's lower bound of a proportion (0 for no trials or no successes,
    exactly, where the formula leaves rounding noise)."""
    if n <= 0 or successes <= 0:
        return 0.0
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def profit_factor(gross_wins: Decimal, gross_losses: Decimal) -> float | None:
    """Gross wins / gross losses (both ≥ 0). No losses: ``PROFIT_FACTOR_MAX`` if anything was
    won, None if nothing was won or lost. Capped at ``PROFIT_FACTOR_MAX``."""
    if gross_losses <= 0:
        return PROFIT_FACTOR_MAX if gross_wins > 0 else None
    return min(PROFIT_FACTOR_MAX, float(gross_wins / gross_losses))


def _in(t: int, since_ms: int | None, until_ms: int | None) -> bool:
    return (since_ms is None or t >= since_ms) and (until_ms is None or t <= until_ms)


def fill_stats(
    fills: Iterable[Fill],
    trips: Iterable[RoundTrip],
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> FillStats:
    """Metrics of trips closed, and perp fills made, within [since, until].

    A breakeven trip counts as a trade but neither a win nor a loss. Liquidations are counted
    as events: the fills of one coin at one millisecond flagged as liquidation are one.
    """
    results: list[Decimal] = []
    holds: list[float] = []
    for trip in trips:
        if _in(trip.close_ms, since_ms, until_ms):
            results.append(trip.result)
            holds.append(trip.hold_s)
    wins = [r for r in results if r > 0]
    losses = [r for r in results if r < 0]
    gross_win = sum(wins, _ZERO)
    gross_loss = -sum(losses, _ZERO)
    n_fills = n_known = n_taker = 0
    orders: set[object] = set()
    liquidations: set[tuple[str, int]] = set()
    lo = since_ms if since_ms is not None else -(2**63)
    hi = until_ms if until_ms is not None else 2**63
    first, last = hi, lo
    for f in fills:
        t = f.time_ms
        if t < lo or t > hi or not is_perp(f.coin):
            continue
        n_fills += 1
        if f.crossed is not None:
            n_known += 1
            n_taker += f.crossed
        orders.add(f.oid if f.oid is not None else (f.hash, t))
        if _is_liquidation(f):
            liquidations.add((f.coin, t))
        if t < first:
            first = t
        if t > last:
            last = t
    n = len(results)
    return FillStats(
        trade_count=n,
        wins=len(wins),
        losses=len(losses),
        win_rate=len(wins) / n if n else None,
        win_rate_lower=wilson_lower_bound(len(wins), n) if n else None,
        profit_factor=profit_factor(gross_win, gross_loss),
        avg_win=gross_win / len(wins) if wins else None,
        avg_loss=-gross_loss / len(losses) if losses else None,
        max_profit_usd=max(wins) if wins else None,
        max_loss_usd=min(losses) if losses else None,
        median_hold_s=statistics.median(holds) if holds else None,
        fill_count=n_fills,
        order_count=len(orders),
        taker_share=n_taker / n_known if n_known else None,
        liquidations=len(liquidations),
        span_ms=max(0, last - first),
    )


def is_market_maker(stats: FillStats) -> bool:
    """A market-maker or high-frequency pattern: not a trader a follower can copy.

    Given at least ``MM_MIN_ORDERS`` distinct orders: mostly maker fills, or a very high order
    rate (per day, over a span of at least an hour), or many trips that are back to flat within
    a minute (a net position near zero over time).
    """
    if stats.order_count < MM_MIN_ORDERS:
        return False
    if stats.taker_share is not None and 1.0 - stats.taker_share >= MM_MAKER_SHARE:
        return True
    days = max(stats.span_ms, MM_RATE_MIN_SPAN_MS) / DAY_MS
    if stats.order_count / days >= MM_ORDERS_PER_DAY:
        return True
    return (
        stats.trade_count >= MM_MIN_TRIPS_FOR_HOLD
        and stats.median_hold_s is not None
        and stats.median_hold_s < MM_MAX_MEDIAN_HOLD_S
    )


def looks_like_market_maker(taker: int, maker: int, *, span_ms: int = 0, coins: int = 0) -> bool:
    """A hint from the public trades alone (no fills read): mostly the resting side of enough
    trades, or enough of them at a high-frequency rate across several coins (``span_ms`` from
    the first seen to the last). The tracker spends no fills on such a trader; only its fills
    can rule it out. (The demo's market makers take 40% of their public trades, and reading
    their fills cost the scout acceptance a third of its fills weight at two minutes.)"""
    trades = taker + maker
    if trades < MM_HINT_MIN_TRADES:
        return False
    if maker >= MM_MAKER_SHARE * trades:
        return True
    per_day = trades * DAY_MS / max(span_ms, MM_HINT_MIN_SPAN_MS)
    return coins >= MM_HINT_MIN_COINS and per_day >= MM_HINT_TRADES_PER_DAY


def copyable_share(
    fills: Iterable[Fill],
    *,
    follower_equity: Decimal,
    leader_account_value: Decimal,
    sz_decimals: Mapping[str, int],
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> float | None:
    """Share of perp fills a follower could copy at scale = follower equity / leader value.

    A copied fill must round to at least one lot (down, as the copier rounds) and reach the
    $10 minimum notional, unless it closes the whole position (exempt on the exchange; it
    then needs only the copied position to be at least one lot). A coin missing from
    ``sz_decimals`` cannot be copied. None when there is no fill or no positive scale.
    """
    if follower_equity <= 0 or leader_account_value <= 0:
        return None
    scale = follower_equity / leader_account_value
    total = ok = 0
    for f in fills:
        if not is_perp(f.coin) or not _in(f.time_ms, since_ms, until_ms):
            continue
        total += 1
        decimals = sz_decimals.get(f.coin)
        if decimals is None:
            continue
        start = f.start_position
        if start is not None and start != 0 and start + _signed(f) == 0:
            ok += round_size(abs(start) * scale, decimals) > 0
        else:
            size = round_size(f.sz * scale, decimals)
            ok += size > 0 and size * f.px >= MIN_NOTIONAL
    return ok / total if total else None


# --- positions -----------------------------------------------------------------------------


@record
class PositionStats:
    snapshots: int
    avg_risk_ratio: float | None  # margin used / account value
    avg_leverage: float | None  # total notional / account value
    max_leverage: float | None


def position_stats(
    snapshots: Iterable[AccountState], since_ms: int | None = None, until_ms: int | None = None
) -> PositionStats:
    """Averages over ``clearinghouseState`` snapshots (undated ones always count); snapshots
    with a non-positive account value say nothing about leverage and are skipped."""
    n = 0
    risk = lev = 0.0
    max_lev: float | None = None
    for s in snapshots:
        if s.time_ms is not None and not _in(s.time_ms, since_ms, until_ms):
            continue
        m = s.margin_summary
        if m.account_value <= 0:
            continue
        value = float(m.account_value)
        leverage = float(m.total_ntl_pos) / value
        n += 1
        risk += float(m.total_margin_used) / value
        lev += leverage
        max_lev = leverage if max_lev is None else max(max_lev, leverage)
    return PositionStats(n, risk / n if n else None, lev / n if n else None, max_lev)


# --- derived -------------------------------------------------------------------------------


def risk_level(
    max_leverage: float | None, max_drawdown: float | None, liquidations: int | None
) -> RiskLevel | None:
    """The highest level any input reaches (thresholds: the ``*_LEVERAGE``, ``*_DRAWDOWN``
    and ``*_LIQUIDATIONS`` constants); missing inputs are ignored, None if all are."""
    if max_leverage is None and max_drawdown is None and liquidations is None:
        return None
    lev = max_leverage or 0.0
    dd = max_drawdown or 0.0
    liq = liquidations or 0
    if lev >= EXTREME_LEVERAGE or dd >= EXTREME_DRAWDOWN or liq >= EXTREME_LIQUIDATIONS:
        return RiskLevel.EXTREME
    if lev >= HIGH_LEVERAGE or dd >= HIGH_DRAWDOWN or liq >= HIGH_LIQUIDATIONS:
        return RiskLevel.HIGH
    if lev >= MEDIUM_LEVERAGE or dd >= MEDIUM_DRAWDOWN:
        return RiskLevel.MEDIUM
    return RiskLevel.LOW


def style(median_hold_s: float | None) -> Style | None:
    """Scalper under 15 min, day trader under a day, swing under a week, else position."""
    if median_hold_s is None:
        return None
    if median_hold_s < SCALPER_MAX_HOLD_S:
        return Style.SCALPER
    if median_hold_s < DAY_MAX_HOLD_S:
        return Style.DAY
    if median_hold_s < SWING_MAX_HOLD_S:
        return Style.SWING
    return Style.POSITION


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) in floats: statistics.stdev works in exact
    fractions, which is 20x slower and more exact than returns sampled from floats need."""
    n = len(xs)
    mean = math.fsum(xs) / n
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


def sharpe_lower_bound(returns: Sequence[float]) -> float | None:
    """Lower 95% bound of the window's Sharpe ratio: (SR - z·SE)·√k, SE = √((1 + SR²/2)/k)
    (Lo, 2002) with SR the per-point mean over sd, clamped to ±``MAX_POINT_SHARPE``."""
    k = len(returns)
    if k < 2:
        return None
    mean, sd = _mean_sd(returns)
    if sd > 0:
        sr = mean / sd
    else:
        sr = math.copysign(MAX_POINT_SHARPE, mean) if mean else 0.0
    sr = max(-MAX_POINT_SHARPE, min(MAX_POINT_SHARPE, sr))
    return sr * math.sqrt(k) - Z_95 * math.sqrt(1.0 + sr * sr / 2.0)


def combine_score(base: float, max_drawdown: float, win_rate_lower: float | None) -> float:
    """base * (1 - drawdown) * win-rate bound; a negative base is divided by that factor so
    that the factor always moves the score the same way."""
    factor = (1.0 - max_drawdown) * (1.0 if win_rate_lower is None else win_rate_lower)
    return base * factor if base > 0 else base / max(factor, SCORE_FACTOR_FLOOR)


def badness_of(returns: Sequence[float]) -> float | None:
    """-(e^U - 1), U the upper 95% bound of Σ log(1 + r): the loss made even optimistically.

    In [-1, 1]: U is capped at log 2, since how much a trader might have won says nothing
    more about how badly they lose. Each point's log return is clipped to ±log 2 first: a
    single wipeout (log(1 + r) near -∞) would otherwise swell the spread until the optimistic
    bound turned positive, and the traders who lost everything would look like non-losers,
    while one such point alone still does not make a loser."""
    k = len(returns)
    if k < 2:
        return None
    logs = [max(-_LOG_2, min(_LOG_2, math.log(max(1.0 + r, _LOG_FLOOR)))) for r in returns]
    upper = math.fsum(logs) + Z_95 * _mean_sd(logs)[1] * math.sqrt(k)
    return -math.expm1(min(upper, _LOG_2))


# --- the leaderboard row -------------------------------------------------------------------


@record
class TraderMetrics:
    """Everything the leaderboard needs about one trader in one window (address-free).

    Signed money: ``avg_loss`` and ``max_loss_usd`` are negative. ``excluded`` says why
    ``score``/``badness`` are None: ``no_portfolio``, ``few_returns``, ``role``, ``no_fills``,
    ``few_trades``, ``market_maker``.
    """

    window: str
    account_value: Decimal | None = None
    pnl: Decimal | None = None
    return_: float | None = None
    max_drawdown: float | None = None
    sharpe: float | None = None
    volume: Decimal | None = None
    account_age_days: float | None = None
    trade_count: int | None = None
    wins: int | None = None
    losses: int | None = None
    win_rate: float | None = None
    win_rate_lower: float | None = None
    profit_factor: float | None = None
    avg_win: Decimal | None = None
    avg_loss: Decimal | None = None
    max_profit_usd: Decimal | None = None
    max_loss_usd: Decimal | None = None
    median_hold_s: float | None = None
    fill_count: int | None = None
    taker_share: float | None = None
    liquidations: int | None = None
    avg_risk_ratio: float | None = None
    avg_leverage: float | None = None
    max_leverage: float | None = None
    risk_level: RiskLevel | None = None
    style: Style | None = None
    copyable_share: float | None = None
    market_maker: bool = False
    score: float | None = None
    badness: float | None = None
    provisional_score: float | None = None
    provisional_badness: float | None = None
    excluded: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: Decimals as strings, enums as their values, ``return_`` as ``return``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, StrEnum):
                value = value.value
            out[_KEY.get(f.name, f.name)] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraderMetrics:
        """The inverse of ``as_dict``; missing keys take their defaults, unknown keys are
        ignored (rows stored by another version still load)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = _KEY.get(f.name, f.name)
            if key in data:
                value = data[key]
                kwargs[f.name] = None if value is None else _PARSE[str(f.type)](value)
        return cls(**kwargs)


_KEY = {"return_": "return"}
_PARSE: dict[str, Any] = {
    "str": str,
    "str | None": str,
    "bool": bool,
    "int | None": int,
    "float | None": float,
    "Decimal | None": lambda v: Decimal(str(v)),
    "RiskLevel | None": RiskLevel,
    "Style | None": Style,
}


def analyze(
    portfolio: Portfolio | None,
    *,
    now_ms: int,
    windows: Iterable[str] = WINDOWS,
    fills: Sequence[Fill] | None = None,
    snapshots: Sequence[AccountState] = (),
    role: UserRole | None = None,
    follower_equity: Decimal | None = None,
    sz_decimals: Mapping[str, int] | None = None,
) -> dict[str, TraderMetrics]:
    """Metrics per window for one trader, reconstructing round trips once.

    ``fills`` None means not fetched: fill metrics, score and badness stay None (only the
    provisional ones are computed). ``copyable_share`` needs ``follower_equity`` and
    ``sz_decimals``. Everything after ``now_ms`` is ignored.
    """
    trips = round_trips(fills) if fills is not None else None
    return {
        w: _window(
            portfolio, w, now_ms, fills, trips, snapshots, role, follower_equity, sz_decimals
        )
        for w in windows
    }


def analyze_window(
    portfolio: Portfolio | None,
    *,
    window: str,
    now_ms: int,
    fills: Sequence[Fill] | None = None,
    snapshots: Sequence[AccountState] = (),
    role: UserRole | None = None,
    follower_equity: Decimal | None = None,
    sz_decimals: Mapping[str, int] | None = None,
) -> TraderMetrics:
    """``analyze`` for one window."""
    return analyze(
        portfolio,
        now_ms=now_ms,
        windows=(window,),
        fills=fills,
        snapshots=snapshots,
        role=role,
        follower_equity=follower_equity,
        sz_decimals=sz_decimals,
    )[window]


def _window(
    portfolio: Portfolio | None,
    window: str,
    now_ms: int,
    fills: Sequence[Fill] | None,
    trips: Sequence[RoundTrip] | None,
    snapshots: Sequence[AccountState],
    role: UserRole | None,
    follower_equity: Decimal | None,
    sz_decimals: Mapping[str, int] | None,
) -> TraderMetrics:
    period = portfolio.periods.get(window) if portfolio is not None else None
    ps = portfolio_stats(period) if period is not None else None
    if ps is not None:
        since: int | None = ps.start_ms
    else:
        span = WINDOW_MS.get(window)
        since = None if span is None else now_ms - span
    fs = fill_stats(fills, trips or (), since, now_ms) if fills is not None else None
    pos = position_stats(snapshots, since, now_ms)
    mm = fs is not None and is_market_maker(fs)

    base = sharpe_lower_bound(ps.returns) if ps is not None else None
    provisional_score = provisional_badness = score = badness = None
    excluded: str | None = None
    if ps is None:
        excluded = "no_portfolio"
    elif len(ps.returns) < MIN_RETURNS or base is None:
        excluded = "few_returns"
    elif role is not None and role.role != "user":
        excluded = "role"
    else:
        provisional_score = combine_score(base, ps.max_drawdown, None)
        provisional_badness = badness_of(ps.returns)
        if fs is None:
            excluded = "no_fills"
            # Losing is judged on returns alone, activity on the volume traded: a loser needs
            # no fills (with fills, the market-maker and few-trips rules below still apply).
            badness = provisional_badness if ps.volume > 0 else None
        elif mm:
            excluded = "market_maker"
        elif fs.trade_count < MIN_TRIPS:
            excluded = "few_trades"
        else:
            score = combine_score(base, ps.max_drawdown, fs.win_rate_lower)
            badness = provisional_badness

    account_value = ps.account_value if ps is not None else None
    if account_value is None and snapshots:
        latest = max(snapshots, key=lambda s: -1 if s.time_ms is None else s.time_ms)
        account_value = latest.margin_summary.account_value
    copyable = None
    if (
        fills is not None
        and follower_equity is not None
        and sz_decimals is not None
        and account_value is not None
    ):
        copyable = copyable_share(
            fills,
            follower_equity=follower_equity,
            leader_account_value=account_value,
            sz_decimals=sz_decimals,
            since_ms=since,
            until_ms=now_ms,
        )
    max_dd = ps.max_drawdown if ps is not None else None
    return TraderMetrics(
        window=window,
        account_value=account_value,
        pnl=ps.pnl if ps else None,
        return_=ps.return_ if ps else None,
        max_drawdown=max_dd,
        sharpe=ps.sharpe if ps else None,
        volume=ps.volume if ps else None,
        account_age_days=account_age_days(portfolio, now_ms) if portfolio is not None else None,
        trade_count=fs.trade_count if fs else None,
        wins=fs.wins if fs else None,
        losses=fs.losses if fs else None,
        win_rate=fs.win_rate if fs else None,
        win_rate_lower=fs.win_rate_lower if fs else None,
        profit_factor=fs.profit_factor if fs else None,
        avg_win=fs.avg_win if fs else None,
        avg_loss=fs.avg_loss if fs else None,
        max_profit_usd=fs.max_profit_usd if fs else None,
        max_loss_usd=fs.max_loss_usd if fs else None,
        median_hold_s=fs.median_hold_s if fs else None,
        fill_count=fs.fill_count if fs else None,
        taker_share=fs.taker_share if fs else None,
        liquidations=fs.liquidations if fs else None,
        avg_risk_ratio=pos.avg_risk_ratio,
        avg_leverage=pos.avg_leverage,
        max_leverage=pos.max_leverage,
        risk_level=risk_level(pos.max_leverage, max_dd, fs.liquidations if fs else None),
        style=style(fs.median_hold_s) if fs else None,
        copyable_share=copyable,
        market_maker=mm,
        score=score,
        badness=badness,
        provisional_score=provisional_score,
        provisional_badness=provisional_badness,
        excluded=excluded,
    )
