"""Trader analytics on real recorded responses and hand-built cases.

Expected values on the fixtures are computed here by other routes (exact fractions, calendar
dates, millisecond groups walked backwards from the flat end) than the module's.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hlcopy.hl.parse import parse_account_state, parse_fill, parse_portfolio
from hlcopy.model import (
    AccountState,
    Fill,
    MarginSummary,
    Portfolio,
    PortfolioPeriod,
    Side,
    UserRole,
)
from hlcopy.scout import analytics as an
from hlcopy.scout.analytics import RiskLevel, RoundTrip, Style, TraderMetrics

D = Decimal
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hyperliquid"
DAY = 86_400_000
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _raw(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())["response"]


RAW_PORTFOLIO = dict(_raw("info_portfolio.json"))
RAW_FILLS: list[dict[str, Any]] = _raw("info_user_fills.json")
RAW_STATE = _raw("info_clearinghouse_state.json")
PORTFOLIO = parse_portfolio(_raw("info_portfolio.json"))
FILLS = [parse_fill(f) for f in RAW_FILLS]


# --- builders ------------------------------------------------------------------------------


def fill(
    coin: str,
    side: Side,
    sz: str,
    start: str | None,
    t: int,
    *,
    tid: int | None = None,
    pnl: str = "0",
    fee: str = "0",
    px: str = "1",
    crossed: bool | None = True,
    liquidation: bool = False,
    oid: int | None = None,
    hash_: str | None = None,
) -> Fill:
    return Fill(
        coin=coin,
        px=D(px),
        sz=D(sz),
        side=side,
        time_ms=t,
        start_position=None if start is None else D(start),
        dir=None,
        closed_pnl=D(pnl),
        hash=hash_,
        oid=oid if oid is not None else (tid if tid is not None else t),
        tid=tid,
        crossed=crossed,
        fee=D(fee),
        liquidation=liquidation,
    )


def period(points: list[tuple[int, str, str]], vlm: str = "0") -> PortfolioPeriod:
    """From (time, account value, pnl) points."""
    return PortfolioPeriod(
        account_value_history=tuple((t, D(av)) for t, av, _ in points),
        pnl_history=tuple((t, D(p)) for t, _, p in points),
        vlm=D(vlm),
    )


def series(start_value: float, returns: list[float], step_ms: int, t0: int = T0) -> PortfolioPeriod:
    """A period whose chain-linked returns are ``returns`` (no deposits)."""
    pts = [(t0, repr(start_value), "0")]
    value, pnl = start_value, 0.0
    for i, r in enumerate(returns, 1):
        pnl += value * r
        value += value * r
        pts.append((t0 + i * step_ms, repr(value), repr(pnl)))
    return period(pts)


def snapshot(value: str, margin: str, ntl: str, t: int | None = None) -> AccountState:
    summary = MarginSummary(D(value), D(margin), D(ntl), D(0))
    return AccountState((), summary, None, None, None, t)


def trip(result: str, hold_s: float = 60.0, close_ms: int = T0) -> RoundTrip:
    return RoundTrip(
        "BTC", True, close_ms - int(hold_s * 1000), close_ms, D(result), D(0), 2, False
    )


# --- portfolio -----------------------------------------------------------------------------


def _exact(raw: dict[str, Any]) -> tuple[list[Fraction], list[Fraction]]:
    """Returns and index by exact fractions; points paired by timestamp through a dict."""
    av = {t: Fraction(v) for t, v in raw["accountValueHistory"]}
    pnl = sorted((t, Fraction(v)) for t, v in raw["pnlHistory"])
    returns, index = [], [Fraction(1)]
    for (t0, p0), (_, p1) in pairwise(pnl):
        if av[t0] > 0:
            returns.append((p1 - p0) / av[t0])
            index.append(max(Fraction(0), index[-1] * (1 + returns[-1])))
        else:
            index.append(index[-1])
    return returns, index


@pytest.mark.parametrize("window", ["day", "week", "month", "allTime", "perpMonth"])
def test_portfolio_fixture_matches_exact_arithmetic(window: str) -> None:
    raw = RAW_PORTFOLIO[window]
    returns, index = _exact(raw)
    # Drawdown by brute force over every (peak, later trough) pair.
    drawdown = max(
        (
            1 - index[j] / index[i]
            for i in range(len(index))
            for j in range(i, len(index))
            if index[i] > 0
        ),
        default=Fraction(0),
    )
    stats = an.portfolio_stats(PORTFOLIO.periods[window])
    assert stats is not None
    assert stats.pnl == D(raw["pnlHistory"][-1][1]) - D(raw["pnlHistory"][0][1])
    assert stats.volume == D(raw["vlm"])
    assert stats.account_value == D(raw["accountValueHistory"][-1][1])
    assert stats.returns == pytest.approx([float(r) for r in returns], rel=1e-12, abs=1e-15)
    assert stats.return_ == pytest.approx(float(index[-1] - 1), rel=1e-9, abs=1e-12)
    assert stats.max_drawdown == pytest.approx(float(drawdown), rel=1e-9, abs=1e-12)
    assert [v for _, v in stats.index] == pytest.approx([float(v) for v in index], rel=1e-9)
    assert [t for t, _ in stats.index] == [t for t, _ in raw["pnlHistory"]]


def test_portfolio_fixture_alltime_wipe_out_clamps_at_zero() -> None:
    """The real allTime history has a step losing more than the previous account value
    (deposits landed between two sparse points): the index stops at 0, it never goes negative."""
    stats = an.portfolio_stats(PORTFOLIO.periods["allTime"])
    assert stats is not None
    assert min(stats.returns) < -1
    assert stats.return_ == -1.0
    assert stats.max_drawdown == 1.0
    assert min(v for _, v in stats.index) == 0.0


def _calendar_sharpe(index: list[tuple[int, float]]) -> float | None:
    """Daily closes by calendar date, missing dates carried forward, statistics module."""
    closes: dict[Any, float] = {}
    for t, v in index:
        closes[datetime.fromtimestamp(t / 1000, UTC).date()] = v
    first, last = min(closes), max(closes)
    if (index[-1][0] - index[0][0]) < 7 * DAY:
        return None
    values, day, carry = [], first, closes[first]
    while day <= last:
        carry = closes.get(day, carry)
        values.append(carry)
        day += timedelta(days=1)
    daily = [b / a - 1 if a else 0.0 for a, b in pairwise(values)]
    return statistics.mean(daily) / statistics.stdev(daily) * math.sqrt(365)


@pytest.mark.parametrize("window", ["day", "week", "month", "allTime"])
def test_sharpe_fixture_matches_calendar_resampling(window: str) -> None:
    _, index = _exact(RAW_PORTFOLIO[window])
    times = [t for t, _ in RAW_PORTFOLIO[window]["pnlHistory"]]
    expected = _calendar_sharpe(list(zip(times, [float(v) for v in index], strict=True)))
    stats = an.portfolio_stats(PORTFOLIO.periods[window])
    assert stats is not None
    if window == "day":
        assert expected is None
        assert stats.sharpe is None
    else:
        assert expected is not None
        assert stats.sharpe == pytest.approx(expected, rel=1e-9)


def test_non_positive_account_value_skips_the_return() -> None:
    p = period([(T0, "0", "0"), (T0 + 1, "100", "10"), (T0 + 2, "-5", "20"), (T0 + 3, "50", "25")])
    stats = an.portfolio_stats(p)
    assert stats is not None
    # 0 -> 10: previous value 0, skipped; 10 -> 20 over 100: +10%; 20 -> 25 over -5: skipped.
    assert stats.returns == (0.1,)
    assert stats.return_ == pytest.approx(0.1)
    assert [v for _, v in stats.index] == pytest.approx([1.0, 1.0, 1.1, 1.1])
    assert stats.pnl == D(25)


def test_return_is_deposit_independent() -> None:
    """A deposit moves the account value, not the PnL: no return, and the next gain is
    measured on the larger base."""
    p = period(
        [(T0, "100", "0"), (T0 + 1, "110", "10"), (T0 + 2, "1110", "10"), (T0 + 3, "1221", "121")]
    )
    stats = an.portfolio_stats(p)
    assert stats is not None
    assert stats.returns == pytest.approx((0.1, 0.0, 0.1))
    assert stats.return_ == pytest.approx(1.1 * 1.1 - 1)


def test_drawdown_is_the_largest_peak_to_trough_fall() -> None:
    p = series(100.0, [0.2, -0.25, 0.2222222222222222, -0.4545454545454546, 0.5], DAY)
    # index: 1, 1.2, 0.9, 1.1, 0.6, 0.9: the fall from 1.2 to 0.6
    stats = an.portfolio_stats(p)
    assert stats is not None
    assert stats.max_drawdown == pytest.approx(0.5)
    assert stats.return_ == pytest.approx(-0.1)


def test_empty_period_has_no_stats() -> None:
    assert an.portfolio_stats(PortfolioPeriod((), (), D(0))) is None


def test_sharpe_needs_seven_days() -> None:
    returns = [0.01, -0.005, 0.02, 0.0, 0.01, -0.01, 0.005]
    seven = an.portfolio_stats(series(1000.0, returns, DAY, t0=T0 - T0 % DAY + DAY // 2))
    six = an.portfolio_stats(series(1000.0, returns[:6], DAY, t0=T0 - T0 % DAY + DAY // 2))
    assert seven is not None
    assert six is not None
    assert six.sharpe is None
    expected = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(365)
    assert seven.sharpe == pytest.approx(expected, rel=1e-9)


def test_sharpe_uses_the_last_point_of_each_day_and_carries_missing_days() -> None:
    noon = T0 - T0 % DAY + DAY // 2
    # Day 0 ends at 1.0; day 1 has two points (only the last counts); days 2-3 have none.
    pts = [(noon, "100", "0"), (noon + DAY, "150", "50"), (noon + DAY + 1, "110", "10")]
    pts += [(noon + 4 * DAY, "121", "21"), (noon + 7 * DAY, "108.9", "8.9")]
    stats = an.portfolio_stats(period(pts))
    assert stats is not None
    daily = [0.1, 0.0, 0.0, 0.1, 0.0, 0.0, -0.1]
    expected = statistics.mean(daily) / statistics.stdev(daily) * math.sqrt(365)
    assert stats.sharpe == pytest.approx(expected, rel=1e-9)


def test_sharpe_without_variance_is_none() -> None:
    stats = an.portfolio_stats(series(100.0, [0.0] * 10, DAY))
    assert stats is not None
    assert stats.sharpe is None


def test_account_age_from_first_all_time_point() -> None:
    now = 1_755_863_121_304
    first = RAW_PORTFOLIO["allTime"]["accountValueHistory"][0][0]
    assert an.account_age_days(PORTFOLIO, now) == pytest.approx((now - first) / DAY)
    assert an.account_age_days(Portfolio({}), now) is None


# --- round trips ---------------------------------------------------------------------------


def _group_trips(raw: list[dict[str, Any]]) -> list[tuple[str, bool, int, int, float]]:
    """Trips at millisecond granularity: per coin, net each millisecond's fills, walk the
    position backwards from the flat end (every coin of this recording ends flat), and cut
    where the position reaches 0 or changes sign. Float arithmetic, no startPosition."""
    by_coin: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for f in raw:
        by_coin[f["coin"]][f["time"]].append(f)
    trips = []
    for coin, groups in by_coin.items():
        times = sorted(groups)
        net = {
            t: sum(float(f["sz"]) * (1 if f["side"] == "B" else -1) for f in groups[t])
            for t in times
        }
        after, pos = {}, 0.0
        for t in reversed(times):
            after[t] = pos
            pos -= net[t]
        open_: tuple[bool, int, float] | None = None
        for t in times:
            a = after[t] if abs(after[t]) > 1e-9 else 0.0
            b = after[t] - net[t] if abs(after[t] - net[t]) > 1e-9 else 0.0
            pnl = sum(float(f["closedPnl"]) for f in groups[t])
            if b == 0:
                open_ = None if a == 0 else (a > 0, t, pnl)
            elif a == 0 or (a > 0) != (b > 0):
                if open_ is not None:
                    trips.append((coin, open_[0], open_[1], t, open_[2] + pnl))
                open_ = None if a == 0 else (a > 0, t, 0.0)
            elif open_ is not None:
                open_ = (open_[0], open_[1], open_[2] + pnl)
    return sorted(trips, key=lambda x: (x[3], x[0]))


def _merge_within_ms(trips: tuple[RoundTrip, ...]) -> list[tuple[str, bool, int, int, float]]:
    """Millisecond view of fill-level trips: a trip opened and closed within one millisecond
    (a double flip) is invisible there, so it and the next trip join the one before."""
    by_coin: dict[str, list[RoundTrip]] = defaultdict(list)
    for t in trips:
        by_coin[t.coin].append(t)
    out: list[tuple[str, bool, int, int, float]] = []
    for coin, coin_trips in by_coin.items():
        rows: list[list[Any]] = []
        join_next = False
        for t in sorted(coin_trips, key=lambda t: (t.close_ms, t.open_ms)):
            if rows and (join_next or t.open_ms == t.close_ms):
                rows[-1][3] = t.close_ms
                rows[-1][4] += float(t.result)
                join_next = t.open_ms == t.close_ms
            else:
                rows.append([coin, t.long, t.open_ms, t.close_ms, float(t.result)])
        out += [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    return sorted(out, key=lambda x: (x[3], x[0]))


def test_round_trips_fixture_match_millisecond_view() -> None:
    assert {f["fee"] for f in RAW_FILLS} == {"0.0"}  # results are Σ closedPnl here
    trips = an.round_trips(FILLS)
    expected = _group_trips(RAW_FILLS)
    got = _merge_within_ms(trips)
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expected], abs=1e-9)
    assert len(expected) == 15
    assert len(trips) == 17  # one double flip inside a millisecond makes two more


def test_round_trips_fixture_double_flip_within_one_millisecond() -> None:
    """SUI at 1683245658969, by hand: from -129.1 a self-trade (92.2), a flip to +19.5,
    a self-trade (1346.2) and a flip to -2183.0: short closed, a long opened and closed,
    a new short opened, all in the same millisecond."""
    t = 1683245658969
    sui = [x for x in an.round_trips(FILLS) if x.coin == "SUI" and t in (x.open_ms, x.close_ms)]
    assert [(x.long, x.open_ms, x.close_ms) for x in sui] == [
        (False, 1683245646265, t),
        (True, t, t),
        (False, t, 1683245694615),
    ]
    # the long trip's PnL is the closing side of the self-trade at 1.325 (0.000195); the
    # closing short got its self-trade's 0.019362 and the flip's -0.009037
    assert sui[1].result == D("0.000195")
    assert sui[1].fills == 4
    earlier = [f for f in RAW_FILLS if f["coin"] == "SUI" and 1683245646265 < f["time"] < t]
    assert sui[0].result == D("0.019362") + D("-0.009037") + sum(
        (D(f["closedPnl"]) for f in earlier), D(0)
    )


def test_round_trips_fixture_are_independent_of_input_order() -> None:
    assert an.round_trips(list(reversed(FILLS))) == an.round_trips(FILLS)


def test_round_trip_result_is_pnl_minus_fees() -> None:
    fills = [
        fill("ETH", "B", "2", "0", T0, tid=1, fee="0.5"),
        fill("ETH", "B", "1", "2", T0 + 1000, tid=2, fee="0.25"),
        fill("ETH", "A", "3", "3", T0 + 5000, tid=3, pnl="12", fee="0.75"),
    ]
    (t,) = an.round_trips(fills)
    assert (t.coin, t.long, t.open_ms, t.close_ms, t.fills) == ("ETH", True, T0, T0 + 5000, 3)
    assert t.closed_pnl == D(12)
    assert t.fees == D("1.5")
    assert t.result == D("10.5")
    assert t.hold_s == 5.0


def test_flip_fill_closes_one_trip_and_opens_the_next_splitting_its_fee() -> None:
    fills = [
        fill("BTC", "B", "2", "0", T0, tid=1, fee="0.2"),
        # sell 5 from +2: closes 2, opens 3 short; fee 1.0 splits 0.4 / 0.6
        fill("BTC", "A", "5", "2", T0 + 10, tid=2, pnl="4", fee="1.0"),
        fill("BTC", "B", "3", "-3", T0 + 20, tid=3, pnl="-1", fee="0.3"),
    ]
    long_, short = an.round_trips(fills)
    assert long_.long
    assert not short.long
    assert long_.fees == D("0.6")  # 0.2 + 0.4
    assert long_.closed_pnl == D(4)  # the flip's closedPnl belongs to the closing trip
    assert short.open_ms == T0 + 10
    assert short.fees == D("0.9")  # 0.6 + 0.3
    assert short.closed_pnl == D(-1)
    assert long_.fees + short.fees == D("1.5")  # nothing lost or created by the split


def test_history_starting_mid_position_makes_no_bogus_trip() -> None:
    fills = [
        fill("SOL", "A", "1", "3", T0, tid=1, pnl="5"),  # we never saw this position open
        fill("SOL", "A", "2", "2", T0 + 10, tid=2, pnl="7"),  # flat: from here on we know
        fill("SOL", "A", "1", "0", T0 + 20, tid=3),
        fill("SOL", "B", "1", "-1", T0 + 30, tid=4, pnl="-2"),
    ]
    (t,) = an.round_trips(fills)
    assert (t.long, t.open_ms, t.close_ms, t.result) == (False, T0 + 20, T0 + 30, D(-2))


def test_history_starting_mid_position_then_flip_opens_a_real_trip() -> None:
    fills = [
        fill("SOL", "A", "4", "1", T0, tid=1, pnl="9", fee="0.4"),  # +1 -> -3: flip
        fill("SOL", "B", "3", "-3", T0 + 10, tid=2, pnl="1", fee="0.1"),
    ]
    (t,) = an.round_trips(fills)
    assert (t.long, t.open_ms, t.closed_pnl) == (False, T0, D(1))
    assert t.fees == D("0.3") + D("0.1")  # the opening 3/4 of the flip's fee


def test_gap_in_history_drops_the_open_trip() -> None:
    fills = [
        fill("ARB", "B", "5", "0", T0, tid=1),
        fill("ARB", "A", "8", "8", T0 + 10, tid=2, pnl="3"),  # starts at 8, not 5: fills missing
        fill("ARB", "B", "1", "0", T0 + 20, tid=3),
        fill("ARB", "A", "1", "1", T0 + 30, tid=4, pnl="1"),
    ]
    (t,) = an.round_trips(fills)
    assert (t.open_ms, t.result) == (T0 + 20, D(1))


def test_same_millisecond_without_tids_is_ordered_by_start_position() -> None:
    """Without tids, fills of one millisecond come in any order; startPosition chains them."""
    ordered = [
        fill("OP", "B", "2", "0", T0, pnl="0"),
        fill("OP", "B", "3", "2", T0),
        fill("OP", "A", "5", "5", T0 + 1, pnl="2"),
        fill("OP", "A", "1", "0", T0 + 1),
        fill("OP", "B", "1", "-1", T0 + 2, pnl="-1"),
    ]
    expected = an.round_trips(ordered)
    assert [(t.long, t.open_ms, t.close_ms, t.result) for t in expected] == [
        (True, T0, T0 + 1, D(2)),
        (False, T0 + 1, T0 + 2, D(-1)),
    ]
    shuffled = [ordered[1], ordered[0], ordered[3], ordered[2], ordered[4]]
    assert an.round_trips(shuffled) == expected


def test_self_trade_moves_nothing_and_its_pnl_stays_in_the_trip() -> None:
    fills = [
        fill("AVAX", "B", "10", "0", T0, tid=1),
        # both sides of one trade report start 10: the position is unchanged
        fill("AVAX", "A", "4", "10", T0 + 5, tid=2, pnl="0.5", fee="0.01"),
        fill("AVAX", "B", "4", "10", T0 + 5, tid=2, fee="0.01"),
        fill("AVAX", "A", "10", "10", T0 + 9, tid=3, pnl="2"),
    ]
    (t,) = an.round_trips(fills)
    assert (t.open_ms, t.close_ms, t.fills) == (T0, T0 + 9, 4)
    assert t.result == D("2.48")


def test_liquidation_closes_a_trip_and_counts_once_per_event() -> None:
    fills = [
        fill("ETH", "B", "10", "0", T0, tid=1),
        fill("ETH", "A", "4", "10", T0 + 50, tid=2, pnl="-40", liquidation=True, crossed=False),
        fill("ETH", "A", "6", "6", T0 + 50, tid=3, pnl="-60", liquidation=True, crossed=False),
        fill("ETH", "B", "1", "0", T0 + 60, tid=4),
        fill("ETH", "A", "1", "1", T0 + 70, tid=5, pnl="1"),
    ]
    trips = an.round_trips(fills)
    assert [(t.liquidated, t.result) for t in trips] == [(True, D(-100)), (False, D(1))]
    stats = an.fill_stats(fills, trips)
    assert stats.liquidations == 1
    assert stats.fill_count == 5
    assert stats.taker_share == pytest.approx(3 / 5)


def test_liquidation_recognised_by_dir_alone() -> None:
    f = Fill("ETH", D(1), D(1), "A", T0, D(1), "Liquidated Isolated Long", D(-5), None, 1, 1,
             False, D(0))  # fmt: skip
    assert an.fill_stats([f], ()).liquidations == 1


def test_spot_fills_are_ignored() -> None:
    fills = [fill("@107", "B", "5", "0", T0, tid=1), fill("@107", "A", "5", "5", T0 + 1, tid=2)]
    assert an.round_trips(fills) == ()
    assert an.fill_stats(fills, ()).fill_count == 0


# --- fill metrics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wins", "n", "expected"),
    [(8, 10, 0.4902), (10, 10, 0.7225), (1, 1, 0.2065), (0, 10, 0.0), (50, 100, 0.4038)],
)
def test_wilson_lower_bound_known_values(wins: int, n: int, expected: float) -> None:
    assert an.wilson_lower_bound(wins, n) == pytest.approx(expected, abs=5e-5)


def test_wilson_lower_bound_of_nothing_is_zero() -> None:
    assert an.wilson_lower_bound(0, 0) == 0.0


def test_profit_factor_rules() -> None:
    assert an.profit_factor(D(30), D(15)) == 2.0
    assert an.profit_factor(D(30), D(0)) == an.PROFIT_FACTOR_MAX  # no losses
    assert an.profit_factor(D(0), D(0)) is None  # nothing won or lost
    assert an.profit_factor(D(0), D(5)) == 0.0
    assert an.profit_factor(D(10**6), D(1)) == an.PROFIT_FACTOR_MAX


def test_fill_stats_over_trips() -> None:
    trips = [
        trip("10", 60),
        trip("30", 120),
        trip("-5", 600),
        trip("-15", 30),
        trip("0", 90),  # breakeven: a trade, neither a win nor a loss
    ]
    s = an.fill_stats((), trips)
    assert (s.trade_count, s.wins, s.losses) == (5, 2, 2)
    assert s.win_rate == 0.4
    assert s.win_rate_lower == pytest.approx(an.wilson_lower_bound(2, 5))
    assert s.profit_factor == 2.0
    assert (s.avg_win, s.avg_loss) == (D(20), D(-10))
    assert (s.max_profit_usd, s.max_loss_usd) == (D(30), D(-15))
    assert s.median_hold_s == 90.0


def test_fill_stats_without_trips() -> None:
    s = an.fill_stats((), ())
    assert s.trade_count == 0
    assert s.win_rate is None
    assert s.win_rate_lower is None
    assert s.profit_factor is None
    assert s.median_hold_s is None
    assert s.taker_share is None


def test_fill_stats_window_counts_trips_by_close_time() -> None:
    trips = [trip("1", close_ms=T0), trip("2", close_ms=T0 + 100), trip("-3", close_ms=T0 + 200)]
    s = an.fill_stats((), trips, since_ms=T0 + 50, until_ms=T0 + 150)
    assert (s.trade_count, s.wins, s.max_profit_usd) == (1, 1, D(2))


def test_fill_stats_fixture() -> None:
    s = an.fill_stats(FILLS, an.round_trips(FILLS))
    assert s.fill_count == len(RAW_FILLS)
    assert s.taker_share == sum(f["crossed"] for f in RAW_FILLS) / len(RAW_FILLS)
    assert s.order_count == len({f["oid"] for f in RAW_FILLS})
    assert s.span_ms == max(f["time"] for f in RAW_FILLS) - min(f["time"] for f in RAW_FILLS)
    assert s.liquidations == 0
    results = sorted(float(t.result) for t in an.round_trips(FILLS))
    assert s.wins == sum(r > 0 for r in results)
    assert float(s.max_loss_usd or 0) == pytest.approx(results[0])
    assert float(s.max_profit_usd or 0) == pytest.approx(results[-1])


# --- market makers -------------------------------------------------------------------------


def test_fixture_trader_is_high_frequency() -> None:
    """424 orders in 5.5 minutes: ~10,000 a day over the one-hour floor."""
    assert an.is_market_maker(an.fill_stats(FILLS, an.round_trips(FILLS)))


def _maker_fills(n: int, maker_share: float, step_ms: int) -> list[Fill]:
    out = []
    pos = 0
    for i in range(n):
        side: Side = "B" if i % 2 == 0 else "A"
        out.append(
            fill("BTC", side, "1", str(pos), T0 + i * step_ms, tid=i, crossed=i >= n * maker_share)
        )
        pos += 1 if side == "B" else -1
    return out


def test_mostly_maker_fills_is_a_market_maker() -> None:
    fills = _maker_fills(200, 0.9, 10 * 60_000)  # 200 orders over ~33 hours, 90% maker
    s = an.fill_stats(fills, an.round_trips(fills))
    assert s.order_count == 200
    assert an.is_market_maker(s)


def test_few_orders_never_look_like_a_market_maker() -> None:
    fills = _maker_fills(50, 1.0, 1000)
    assert not an.is_market_maker(an.fill_stats(fills, an.round_trips(fills)))


def test_back_to_flat_within_a_minute_is_a_market_maker() -> None:
    fills = _maker_fills(200, 0.0, 10 * 60_000)  # all taker, but every trip lasts 10 minutes
    s = an.fill_stats(fills, an.round_trips(fills))
    assert not an.is_market_maker(s)
    fast = [
        fill("BTC", f.side, "1", str(f.start_position), T0 + (i // 2) * 600_000 + (i % 2) * 20_000,
             tid=i)
        for i, f in enumerate(fills)
    ]  # fmt: skip
    s = an.fill_stats(fast, an.round_trips(fast))
    assert s.median_hold_s == 20.0
    assert an.is_market_maker(s)


def test_a_directional_taker_is_not_a_market_maker() -> None:
    fills = _maker_fills(200, 0.5, 30 * 60_000)
    assert not an.is_market_maker(an.fill_stats(fills, an.round_trips(fills)))


# --- copyable share ------------------------------------------------------------------------


def _copyable(fills: list[Fill], equity: str = "1000", leader: str = "100000") -> float | None:
    return an.copyable_share(
        fills,
        follower_equity=D(equity),
        leader_account_value=D(leader),
        sz_decimals={"BTC": 3, "DOGE": 0},
    )


def test_copyable_share_at_the_ten_dollar_edge() -> None:
    # scale 0.01: 1000 DOGE at $1.00 copies as 10 DOGE = $10.00 (allowed); at $0.999 not
    assert _copyable([fill("DOGE", "B", "1000", "0", T0, px="1.00")]) == 1.0
    assert _copyable([fill("DOGE", "B", "1000", "0", T0, px="0.999")]) == 0.0
    # 1099 DOGE copies as 10.99 -> 10 lots (rounded down): $9.99 at 0.999
    assert _copyable([fill("DOGE", "B", "1099", "0", T0, px="0.999")]) == 0.0


def test_copyable_share_full_close_is_exempt_from_the_minimum() -> None:
    # closing the whole 500 DOGE position: copied 5 DOGE = $5, exempt
    assert _copyable([fill("DOGE", "A", "500", "500", T0, px="1")]) == 1.0
    # the same size as a partial close is not exempt
    assert _copyable([fill("DOGE", "A", "500", "800", T0, px="1")]) == 0.0
    # a full close whose copied position rounds to zero lots has nothing to close
    assert _copyable([fill("DOGE", "A", "50", "50", T0, px="1")]) == 0.0


def test_copyable_share_lot_rounding_to_zero() -> None:
    # 0.04 BTC at 100000 is $4000: copied 0.0004 BTC rounds to 0.000 lots with 3 decimals
    assert _copyable([fill("BTC", "B", "0.04", "0", T0, px="100000")]) == 0.0
    assert _copyable([fill("BTC", "B", "0.1", "0", T0, px="100000")]) == 1.0  # 0.001 = $100


def test_copyable_share_mixes_and_unknown_coins() -> None:
    fills = [
        fill("DOGE", "B", "2000", "0", T0, px="1"),
        fill("DOGE", "B", "10", "2000", T0 + 1, px="1"),
        fill("ETH", "B", "100", "0", T0 + 2, px="3000"),  # no sz_decimals: cannot copy
        fill("DOGE", "A", "2010", "2010", T0 + 3, px="1"),
    ]
    assert _copyable(fills) == 0.5


def test_copyable_share_needs_a_positive_scale_and_fills() -> None:
    assert _copyable([fill("DOGE", "B", "1000", "0", T0)], equity="0") is None
    assert _copyable([fill("DOGE", "B", "1000", "0", T0)], leader="-1") is None
    assert _copyable([]) is None


# --- positions -----------------------------------------------------------------------------


def test_position_stats_fixture() -> None:
    m = RAW_STATE["marginSummary"]
    value = float(m["accountValue"])
    s = an.position_stats([parse_account_state(RAW_STATE)])
    assert s.snapshots == 1
    assert s.avg_risk_ratio == pytest.approx(float(m["totalMarginUsed"]) / value)
    assert s.avg_leverage == pytest.approx(float(m["totalNtlPos"]) / value)
    assert s.max_leverage == s.avg_leverage


def test_position_stats_average_max_and_window() -> None:
    snaps = [
        snapshot("1000", "100", "2000", T0),
        snapshot("1000", "300", "6000", T0 + 10),
        snapshot("0", "0", "0", T0 + 20),  # nothing to divide by: skipped
        snapshot("500", "50", "500", T0 + 30),
        snapshot("1000", "900", "9000", T0 + 40),  # after until: out of the window
    ]
    s = an.position_stats(snaps, since_ms=T0, until_ms=T0 + 30)
    assert s.snapshots == 3
    assert s.avg_leverage == pytest.approx((2 + 6 + 1) / 3)
    assert s.max_leverage == pytest.approx(6.0)
    assert s.avg_risk_ratio == pytest.approx((0.1 + 0.3 + 0.1) / 3)
    assert an.position_stats([]) == an.PositionStats(0, None, None, None)


# --- derived -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lev", "dd", "liq", "level"),
    [
        (None, None, None, None),
        (1.0, 0.05, 0, RiskLevel.LOW),
        (2.99, 0.1499, 0, RiskLevel.LOW),
        (3.0, 0.0, 0, RiskLevel.MEDIUM),
        (0.0, 0.15, None, RiskLevel.MEDIUM),
        (10.0, 0.0, 0, RiskLevel.HIGH),
        (1.0, 0.30, 0, RiskLevel.HIGH),
        (1.0, 0.0, 1, RiskLevel.HIGH),
        (25.0, 0.0, 0, RiskLevel.EXTREME),
        (None, 0.60, None, RiskLevel.EXTREME),
        (1.0, 0.0, 3, RiskLevel.EXTREME),
    ],
)
def test_risk_level_thresholds(
    lev: float | None, dd: float | None, liq: int | None, level: RiskLevel | None
) -> None:
    assert an.risk_level(lev, dd, liq) == level


@pytest.mark.parametrize(
    ("hold_s", "expected"),
    [
        (None, None),
        (0.0, Style.SCALPER),
        (899.9, Style.SCALPER),
        (900.0, Style.DAY),
        (86_399.0, Style.DAY),
        (86_400.0, Style.SWING),
        (7 * 86_400.0, Style.POSITION),
    ],
)
def test_style_thresholds(hold_s: float | None, expected: Style | None) -> None:
    assert an.style(hold_s) == expected


# --- score and badness ---------------------------------------------------------------------


def _trader(
    returns: list[float],
    trip_results: list[str],
    *,
    step_ms: int = 3_600_000,
    maker: bool = False,
    role: UserRole | None = None,
) -> TraderMetrics:
    """A trader whose 'month' window has ``returns`` and closed trips with these results."""
    p = series(10_000.0, returns, step_ms)
    now = T0 + len(returns) * step_ms
    spacing = (now - T0) // (len(trip_results) + 1)
    fills: list[Fill] = []
    for i, result in enumerate(trip_results):
        t = T0 + (i + 1) * spacing
        fills.append(fill("BTC", "B", "1", "0", t, tid=2 * i, crossed=not maker))
        fills.append(fill("BTC", "A", "1", "1", t + spacing // 2, tid=2 * i + 1, pnl=result))
    return an.analyze_window(
        Portfolio({"month": p}), window="month", now_ms=now, fills=fills, role=role
    )


STEADY = [0.004, -0.002, 0.005, 0.001, 0.003, -0.001, 0.004, 0.002, 0.0, 0.003] * 3
WINS = ["10", "12", "-5", "8", "15", "-4", "9", "11", "7", "-3", "6", "10"]


def test_consistent_winner_scores_positive() -> None:
    m = _trader(STEADY, WINS)
    assert m.excluded is None
    assert m.score is not None
    assert m.score > 0
    assert m.badness is not None
    assert m.badness < 0  # not a loser
    assert m.trade_count == 12
    assert m.win_rate_lower == pytest.approx(an.wilson_lower_bound(9, 12))
    base = an.sharpe_lower_bound(STEADY)
    assert base is not None
    assert m.max_drawdown is not None
    assert m.score == pytest.approx(base * (1 - m.max_drawdown) * an.wilson_lower_bound(9, 12))
    assert m.provisional_score == pytest.approx(base * (1 - m.max_drawdown))


def test_one_lucky_trade_does_not_rank() -> None:
    """All the gain in one jump: the Sharpe lower bound is negative, and with one trip the
    trader is not rankable at all."""
    lucky = [0.0] * 29 + [0.5]
    one = _trader(lucky, ["5000"])
    assert one.score is None
    assert one.excluded == "few_trades"
    assert one.provisional_score is not None
    assert one.provisional_score < 0
    steady = _trader(STEADY, WINS)
    assert steady.provisional_score is not None
    assert steady.provisional_score > one.provisional_score
    many = _trader(lucky, ["5000", "1", "-1", "1", "-1"])
    assert many.score is not None
    assert many.score < 0


def test_one_unlucky_trade_is_no_loser() -> None:
    unlucky = [0.0] * 29 + [-0.5]
    one = _trader(unlucky, ["-5000"])
    assert one.badness is None
    assert one.excluded == "few_trades"
    assert one.provisional_badness is not None
    assert one.provisional_badness < 0  # not confidently losing
    five = _trader(unlucky, ["-5000", "1", "-1", "1", "-1"])
    assert five.badness is not None
    assert five.badness < 0


def test_consistent_loser_has_positive_badness_and_ranks_below_the_unlucky() -> None:
    loser = _trader([-r for r in STEADY], ["-10", "-12", "5", "-8", "-15", "4"])
    unlucky = _trader([0.0] * 29 + [-0.5], ["-5000", "1", "-1", "1", "-1"])
    assert loser.badness is not None
    assert unlucky.badness is not None
    assert loser.badness > 0
    assert loser.badness > unlucky.badness
    assert loser.score is not None
    assert loser.score < 0


def test_badness_is_bounded() -> None:
    assert an.badness_of([5.0, -0.5, 3.0]) == pytest.approx(-1.0)
    # Each point counts at most as a halving (log 2): three wipeouts in a row are 1 - 1/8.
    assert an.badness_of([-1.5, -1.5, -1.5]) == pytest.approx(0.875)
    assert -1.0 <= (an.badness_of([-1.0] * 40) or 0.0) <= 1.0
    assert an.badness_of([0.1]) is None


def test_market_maker_pattern_is_not_rankable() -> None:
    m = _trader(STEADY, WINS * 10, maker=True)  # 240 fills, half maker
    assert not m.market_maker
    mm = _trader(STEADY, WINS * 10, step_ms=36_000)  # 240 orders in ~20 minutes: HFT
    assert mm.market_maker
    assert mm.excluded == "market_maker"
    assert mm.score is None
    assert mm.badness is None
    assert mm.provisional_score is not None  # the portfolio alone cannot tell


def test_vaults_agents_and_sub_accounts_are_not_rankable() -> None:
    for role in ("vault", "agent", "subAccount", "missing"):
        m = _trader(STEADY, WINS, role=UserRole(role))
        assert m.score is None
        assert m.badness is None
        assert m.provisional_score is None
        assert m.excluded == "role"
    assert _trader(STEADY, WINS, role=UserRole("user")).score is not None


def test_too_few_returns_is_not_rankable() -> None:
    m = _trader(STEADY[:5], WINS)
    assert m.excluded == "few_returns"
    assert m.score is None
    assert m.provisional_score is None


def test_without_fills_only_provisional_scores() -> None:
    p = series(10_000.0, STEADY, 3_600_000)
    m = an.analyze_window(Portfolio({"month": p}), window="month", now_ms=T0 + 30 * 3_600_000)
    assert m.excluded == "no_fills"
    assert m.score is None
    assert m.trade_count is None
    assert m.provisional_score is not None
    assert m.provisional_badness is not None


def test_drawdown_discounts_the_score() -> None:
    assert an.combine_score(2.0, 0.5, 0.6) == pytest.approx(0.6)
    assert an.combine_score(2.0, 0.0, None) == 2.0
    # a negative base is divided by the factor: a worse factor makes it worse
    assert an.combine_score(-1.0, 0.5, 0.5) == pytest.approx(-4.0)
    assert an.combine_score(-1.0, 1.0, 0.5) == pytest.approx(-100.0)


def test_sharpe_lower_bound_values() -> None:
    r = [0.01, 0.02, 0.0, 0.01, 0.03, -0.01]
    sr = statistics.mean(r) / statistics.stdev(r)
    expected = sr * math.sqrt(6) - an.Z_95 * math.sqrt(1 + sr * sr / 2)
    assert an.sharpe_lower_bound(r) == pytest.approx(expected)
    assert an.sharpe_lower_bound([0.01]) is None
    clamped = an.MAX_POINT_SHARPE
    assert an.sharpe_lower_bound([0.01] * 4) == pytest.approx(
        clamped * 2 - an.Z_95 * math.sqrt(1 + clamped**2 / 2)
    )


# --- the whole row -------------------------------------------------------------------------


def test_analyze_windows_select_trips_fills_and_snapshots() -> None:
    now = T0 + 40 * DAY
    month_pts = [
        (now - 30 * DAY + i * DAY // 2, repr(1000.0 + i), repr(float(i))) for i in range(61)
    ]
    day_pts = month_pts[-3:]
    portfolio = Portfolio({"month": period(month_pts, "5000"), "day": period(day_pts, "100")})
    fills = []
    for i, t in enumerate([now - 20 * DAY, now - 5 * DAY, now - DAY // 2]):
        fills.append(fill("BTC", "B", "1", "0", t, tid=2 * i, px="20000"))
        fills.append(fill("BTC", "A", "1", "1", t + 60_000, tid=2 * i + 1, pnl="5", px="20000"))
    fills.append(fill("BTC", "B", "1", "0", now + 1000, tid=99))  # after now: ignored
    snaps = [snapshot("1000", "100", "3000", now - 20 * DAY), snapshot("1000", "50", "500", now)]
    rows = an.analyze(
        portfolio,
        now_ms=now,
        fills=fills,
        snapshots=snaps,
        follower_equity=D(1000),
        sz_decimals={"BTC": 3},
    )
    assert set(rows) == set(an.WINDOWS)
    month, day, week, all_time = rows["month"], rows["day"], rows["week"], rows["allTime"]
    assert (month.trade_count, month.fill_count) == (3, 6)
    assert (day.trade_count, day.fill_count) == (1, 2)
    assert month.avg_leverage == pytest.approx(1.75)
    assert month.max_leverage == pytest.approx(3.0)
    assert day.avg_leverage == pytest.approx(0.5)
    assert month.volume == D(5000)
    assert month.pnl == D(60)
    assert month.style == Style.SCALPER
    assert month.median_hold_s == 60.0
    assert month.copyable_share == 1.0  # scale 1000 / 1060: 0.943 BTC, far above $10
    assert month.risk_level == RiskLevel.MEDIUM  # max leverage 3
    # no portfolio for week: the window falls back to 7 days before now
    assert week.excluded == "no_portfolio"
    assert week.trade_count == 2
    assert week.account_value == D(1000)  # from the latest snapshot
    assert all_time.trade_count == 3
    assert all_time.account_age_days is None


def test_as_dict_round_trip_with_every_field_set() -> None:
    m = TraderMetrics(
        window="month",
        account_value=D("1234.5"),
        pnl=D("-10.25"),
        return_=0.1,
        max_drawdown=0.2,
        sharpe=1.5,
        volume=D("100000.0"),
        account_age_days=400.5,
        trade_count=12,
        wins=8,
        losses=4,
        win_rate=0.666,
        win_rate_lower=0.39,
        profit_factor=2.5,
        avg_win=D("12.5"),
        avg_loss=D("-4.0"),
        max_profit_usd=D("30"),
        max_loss_usd=D("-9.5"),
        median_hold_s=3600.0,
        fill_count=40,
        taker_share=0.55,
        liquidations=1,
        avg_risk_ratio=0.3,
        avg_leverage=4.0,
        max_leverage=8.0,
        risk_level=RiskLevel.HIGH,
        style=Style.DAY,
        copyable_share=0.9,
        market_maker=True,
        score=1.25,
        badness=-0.5,
        provisional_score=2.0,
        provisional_badness=-0.4,
        excluded="market_maker",
    )
    d = m.as_dict()
    assert d["return"] == 0.1
    assert "return_" not in d
    assert d["account_value"] == "1234.5"
    assert d["risk_level"] == "HIGH"
    assert d["style"] == "day"
    text = json.dumps(d)  # JSON-ready as it is
    back = TraderMetrics.from_dict(json.loads(text))
    assert back == m
    assert all(v is not None for v in d.values())


def test_from_dict_tolerates_missing_and_unknown_keys() -> None:
    m = TraderMetrics.from_dict({"window": "day", "score": 1, "new_metric": 3})
    assert m == TraderMetrics(window="day", score=1.0)
    assert isinstance(m.score, float)


def test_analyze_fixture_rows_serialise() -> None:
    rows = an.analyze(
        PORTFOLIO,
        now_ms=1_755_863_121_304,
        fills=FILLS,
        snapshots=[parse_account_state(RAW_STATE)],
        role=UserRole("vault"),
    )
    for row in rows.values():
        assert TraderMetrics.from_dict(json.loads(json.dumps(row.as_dict()))) == row
        assert row.excluded == "role"
        assert row.score is None


def test_a_steady_slide_to_zero_is_a_confident_loser_despite_a_final_wipeout() -> None:
    # A month of hourly points losing a little each time, then the last of it at once.
    slide = [-0.02] * 200 + [-1.0]
    bad = an.badness_of(slide)
    assert bad is not None
    assert bad > 0.9


def test_one_wipeout_point_among_flat_ones_does_not_make_a_loser() -> None:
    bad = an.badness_of([0.0] * 44 + [-1.0])
    assert bad is not None
    assert bad <= 0


def test_a_loser_is_judged_without_fills_when_it_traded_at_all() -> None:
    losing = [-0.01] * 40
    p = series(10_000.0, losing, 3_600_000)
    now = T0 + len(losing) * 3_600_000
    traded = PortfolioPeriod(p.account_value_history, p.pnl_history, D(50_000))
    m = an.analyze_window(Portfolio({"month": traded}), window="month", now_ms=now)
    assert m.excluded == "no_fills"  # the score still needs fills...
    assert m.score is None
    assert m.badness is not None  # ...losing does not
    assert m.badness > 0
    idle = an.analyze_window(Portfolio({"month": p}), window="month", now_ms=now)
    assert idle.badness is None  # no volume: no activity to judge
    # With fills known, a market maker is no loser to fade either.
    mm = _trader(losing, ["-1"] * 240, step_ms=36_000)
    assert mm.market_maker
    assert mm.badness is None


def test_public_trades_hint_at_a_market_maker_only_with_enough_of_them() -> None:
    assert an.looks_like_market_maker(taker=5, maker=95)
    assert an.looks_like_market_maker(taker=6, maker=24)  # 80% of 30
    assert not an.looks_like_market_maker(taker=7, maker=23)
    assert not an.looks_like_market_maker(taker=0, maker=29)  # too few to tell
    assert not an.looks_like_market_maker(taker=40, maker=60)  # a patient trader, not a quoter


def test_public_trades_hint_at_a_market_maker_by_their_rate_across_coins() -> None:
    minute = 60_000
    # 40 trades in a minute across 12 coins: 5,760 a day over the ten-minute floor.
    assert an.looks_like_market_maker(taker=16, maker=24, span_ms=minute, coins=12)
    # The same in one coin is a sweep of the book, not quoting.
    assert not an.looks_like_market_maker(taker=16, maker=24, span_ms=minute, coins=1)
    # 40 trades over a day is an active trader (the rate, not the count, tells).
    assert not an.looks_like_market_maker(taker=16, maker=24, span_ms=1440 * minute, coins=12)
    # 27 in ten minutes is under 4,000 a day; 28 would be over, but 30 are needed to tell.
    assert not an.looks_like_market_maker(taker=15, maker=12, span_ms=10 * minute, coins=9)
    assert an.looks_like_market_maker(taker=15, maker=15, span_ms=10 * minute, coins=9)
