"""Rules of the trader analytics that hold for any input, checked with hypothesis."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import pytest
from hlcopy.model import Fill, Portfolio, PortfolioPeriod, Side
from hlcopy.scout import analytics as an
from hlcopy.scout.analytics import RiskLevel, Style, TraderMetrics
from hypothesis import given, settings
from hypothesis import strategies as st

D = Decimal
T0 = 1_700_000_000_000

money = st.decimals(min_value=-(10**7), max_value=10**7, places=2, allow_nan=False)
values = st.decimals(min_value=-(10**3), max_value=10**7, places=2, allow_nan=False)


@st.composite
def periods(draw: st.DrawFn, min_points: int = 1) -> PortfolioPeriod:
    n = draw(st.integers(min_points, 40))
    gaps = draw(st.lists(st.integers(1, 3 * 86_400_000), min_size=n, max_size=n))
    times = [T0 + sum(gaps[:i]) for i in range(n)]
    avs = draw(st.lists(values, min_size=n, max_size=n))
    pnls = draw(st.lists(money, min_size=n, max_size=n))
    return PortfolioPeriod(
        tuple(zip(times, avs, strict=True)), tuple(zip(times, pnls, strict=True)), D(0)
    )


@given(periods(), st.data())
def test_no_pnl_change_means_no_return(p: PortfolioPeriod, data: st.DataObject) -> None:
    """Deposits and withdrawals move the account value only: return and drawdown stay 0."""
    pnl = data.draw(money)
    flat = PortfolioPeriod(
        p.account_value_history, tuple((t, pnl) for t, _ in p.pnl_history), p.vlm
    )
    stats = an.portfolio_stats(flat)
    assert stats is not None
    assert stats.return_ == 0.0
    assert stats.max_drawdown == 0.0
    assert stats.sharpe is None
    assert all(v == 1.0 for _, v in stats.index)
    assert stats.pnl == 0


@given(periods())
def test_index_and_drawdown_bounds(p: PortfolioPeriod) -> None:
    stats = an.portfolio_stats(p)
    assert stats is not None
    assert 0.0 <= stats.max_drawdown <= 1.0
    assert stats.return_ >= -1.0
    assert stats.index[0][1] == 1.0
    assert stats.index[-1][1] == pytest.approx(1.0 + stats.return_)
    assert all(v >= 0 for _, v in stats.index)
    assert len(stats.index) == len(p.pnl_history)


@given(periods(min_points=2))
def test_return_is_the_chained_product(p: PortfolioPeriod) -> None:
    """Against exact fractions: Π max(0, 1 + Δpnl/previous value), positive values only."""
    index = Fraction(1)
    for (t0, av0), (_, pnl1), (_, pnl0) in zip(
        p.account_value_history, p.pnl_history[1:], p.pnl_history, strict=False
    ):
        assert t0 is not None
        if av0 > 0:
            index = max(
                Fraction(0), index * (1 + (Fraction(pnl1) - Fraction(pnl0)) / Fraction(av0))
            )
    stats = an.portfolio_stats(p)
    assert stats is not None
    assert stats.return_ == pytest.approx(float(index - 1), rel=1e-9, abs=1e-9)


@given(periods(min_points=2), st.integers(1, 10**6))
def test_metrics_do_not_depend_on_account_size(p: PortfolioPeriod, k: int) -> None:
    scaled = PortfolioPeriod(
        tuple((t, v * k) for t, v in p.account_value_history),
        tuple((t, v * k) for t, v in p.pnl_history),
        p.vlm,
    )
    a, b = an.portfolio_stats(p), an.portfolio_stats(scaled)
    assert a is not None
    assert b is not None
    assert b.return_ == pytest.approx(a.return_, rel=1e-9, abs=1e-12)
    assert b.max_drawdown == pytest.approx(a.max_drawdown, rel=1e-9, abs=1e-12)
    assert (a.sharpe is None) == (b.sharpe is None)


# --- round trips ---------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn, end_flat: bool = False) -> list[Fill]:
    """Fills of 1-3 coins from flat, with distinct (time, tid), consistent startPositions,
    random PnL and fees; optionally every coin ends flat."""
    fills: list[Fill] = []
    tid = 0
    t = T0
    coins = draw(st.lists(st.sampled_from(["BTC", "ETH", "SOL"]), min_size=1, max_size=3))
    positions = dict.fromkeys(coins, 0)
    steps = draw(st.lists(st.tuples(st.sampled_from(coins), st.integers(-5, 5)), max_size=40))
    if end_flat:
        steps += [(c, 0) for c in coins]
    for coin, move in steps:
        start = positions[coin]
        delta = -start if move == 0 else move  # 0 means: close the whole position
        if delta == 0:
            continue
        t += draw(st.integers(0, 5000))  # equal times happen; tids keep the order
        tid += draw(st.integers(1, 3))
        side: Side = "B" if delta > 0 else "A"
        fills.append(
            Fill(
                coin=coin,
                px=D(100),
                sz=D(abs(delta)),
                side=side,
                time_ms=t,
                start_position=D(start),
                dir=None,
                closed_pnl=draw(money),
                hash=None,
                oid=tid,
                tid=tid,
                crossed=draw(st.booleans()),
                fee=draw(st.decimals(min_value=-1, max_value=50, places=4, allow_nan=False)),
            )
        )
        positions[coin] = start + delta
    return fills


@given(histories(), st.randoms(use_true_random=False))
def test_round_trips_do_not_depend_on_input_order(fills: list[Fill], rnd: random.Random) -> None:
    shuffled = list(fills)
    rnd.shuffle(shuffled)
    assert an.round_trips(shuffled) == an.round_trips(fills)


@given(histories(end_flat=True))
def test_flat_to_flat_history_conserves_pnl_and_fees(fills: list[Fill]) -> None:
    """From flat to flat, every fill belongs to a trip; flip fees split without loss."""
    trips = an.round_trips(fills)
    crossings = 0
    for f in fills:
        start = f.start_position or D(0)
        end = start + (f.sz if f.side == "B" else -f.sz)
        crossings += start != 0 and (end == 0 or (end > 0) != (start > 0))
    assert len(trips) == crossings
    assert sum(t.closed_pnl for t in trips) == sum(f.closed_pnl or 0 for f in fills)
    fees = sum((t.fees for t in trips), D(0)) - sum((f.fee or D(0) for f in fills), D(0))
    assert abs(fees) < D("1e-20")
    for t in trips:
        assert t.open_ms <= t.close_ms


@given(histories())
def test_history_seen_from_any_point_never_invents_trips(fills: list[Fill]) -> None:
    """Cutting off the start of a history (mid-position) only loses trips, never adds."""
    full = set(an.round_trips(fills))
    for cut in range(len(fills)):
        assert set(an.round_trips(fills[cut:])) <= full


# --- ratios and scores ---------------------------------------------------------------------


@given(st.integers(0, 500), st.integers(0, 500))
def test_wilson_bound_is_below_the_rate_and_grows_with_wins(a: int, b: int) -> None:
    n = max(a, b)
    wins = min(a, b)
    lb = an.wilson_lower_bound(wins, n)
    assert 0.0 <= lb <= (wins / n if n else 0.0)
    if wins < n:
        assert an.wilson_lower_bound(wins + 1, n) > lb


@given(
    st.lists(st.floats(-0.2, 0.2), min_size=6, max_size=40),
    st.integers(5, 40),
    st.data(),
)
@settings(max_examples=60)
def test_score_is_monotone_in_wins(returns: list[float], n: int, data: st.DataObject) -> None:
    """Same portfolio, same number of trips: one more winning trip never lowers the score."""
    wins = data.draw(st.integers(0, n - 1))

    def score(w: int) -> float:
        results = ["10"] * w + ["-10"] * (n - w)
        m = _trader(returns, results)
        assert m.score is not None
        return m.score

    assert score(wins + 1) >= score(wins)


def _trader(returns: list[float], results: list[str]) -> TraderMetrics:
    step = 3_600_000
    pts = [(T0, D(10_000), D(0))]
    value, pnl = 10_000.0, 0.0
    for i, r in enumerate(returns, 1):
        pnl += value * r
        value += value * r
        pts.append((T0 + i * step, D(repr(value)), D(repr(pnl))))
    p = PortfolioPeriod(tuple((t, v) for t, v, _ in pts), tuple((t, x) for t, _, x in pts), D(0))
    now = T0 + len(returns) * step
    spacing = (now - T0) // (len(results) + 1)
    fills = []
    for i, res in enumerate(results):
        t = T0 + (i + 1) * spacing
        opening = Fill("BTC", D(1), D(1), "B", t, D(0), None, D(0), None, 2 * i, 2 * i, True, D(0))
        closing = Fill("BTC", D(1), D(1), "A", t + spacing // 2, D(1), None, D(res), None,
                       2 * i + 1, 2 * i + 1, True, D(0))  # fmt: skip
        fills += [opening, closing]
    return an.analyze_window(Portfolio({"month": p}), window="month", now_ms=now, fills=fills)


@given(st.lists(st.floats(-0.99, 10.0), min_size=2, max_size=50))
def test_badness_and_sharpe_bound_ranges(returns: list[float]) -> None:
    bad = an.badness_of(returns)
    assert bad is not None
    assert -1.0 <= bad <= 1.0
    lb = an.sharpe_lower_bound(returns)
    assert lb is not None
    assert lb < an.MAX_POINT_SHARPE * len(returns) ** 0.5


@given(histories(), st.integers(1, 10**6), st.integers(1, 10**6))
def test_copyable_share_grows_with_follower_equity(fills: list[Fill], a: int, b: int) -> None:
    small, large = sorted((a, b))

    def share(equity: int) -> float | None:
        return an.copyable_share(
            fills,
            follower_equity=D(equity),
            leader_account_value=D(100_000),
            sz_decimals={"BTC": 3, "ETH": 1, "SOL": 0},
        )

    lo, hi = share(small), share(large)
    assert (lo is None) == (not fills)
    if lo is not None and hi is not None:
        assert 0.0 <= lo <= hi <= 1.0


optional_dec = st.none() | st.decimals(allow_nan=False, allow_infinity=False, places=6)
optional_float = st.none() | st.floats(allow_nan=False, allow_infinity=False)
optional_int = st.none() | st.integers(0, 10**9)


@given(
    st.builds(
        TraderMetrics,
        window=st.sampled_from(an.WINDOWS),
        account_value=optional_dec,
        pnl=optional_dec,
        return_=optional_float,
        max_drawdown=optional_float,
        trade_count=optional_int,
        profit_factor=optional_float,
        max_loss_usd=optional_dec,
        risk_level=st.none() | st.sampled_from(RiskLevel),
        style=st.none() | st.sampled_from(Style),
        market_maker=st.booleans(),
        score=optional_float,
        excluded=st.none() | st.text(max_size=12),
    )
)
def test_as_dict_round_trips(m: TraderMetrics) -> None:
    assert TraderMetrics.from_dict(m.as_dict()) == m
