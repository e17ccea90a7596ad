"""Rules of the fill model that hold for any book and any fills, checked with hypothesis."""

from __future__ import annotations

from decimal import Decimal

from hlcopy.follow.fills import PaperAccount, simulate_ioc
from hlcopy.model import BookLevel, L2Book
from hypothesis import given, settings
from hypothesis import strategies as st

D = Decimal

prices = st.decimals(min_value=D("0.01"), max_value=D(100_000), places=2)
sizes = st.decimals(min_value=D("0.001"), max_value=D(1000), places=3)
rates = st.decimals(min_value=D(0), max_value=D("0.01"), places=5)
levels = st.lists(st.builds(BookLevel, prices, sizes, st.integers(1, 10)), min_size=0, max_size=12)


@settings(max_examples=300)
@given(levels, levels, st.booleans(), sizes, rates, st.data())
def test_an_ioc_never_fills_past_its_limit_nor_beyond_its_size(
    bids: list[BookLevel],
    asks: list[BookLevel],
    is_buy: bool,
    sz: Decimal,
    rate: Decimal,
    data: st.DataObject,
) -> None:
    book = L2Book("X", 0, tuple(bids), tuple(asks))
    near = [lvl.px + d for lvl in (asks if is_buy else bids) for d in (D("-0.01"), D(0))]
    limit: Decimal = data.draw(prices)
    use_a_level = data.draw(st.booleans())
    if near and use_a_level:
        limit = data.draw(st.sampled_from(near))
    if limit <= 0:
        limit = D("0.01")
    fill = simulate_ioc(book, is_buy, sz, limit, rate)
    side = asks if is_buy else bids
    assert 0 <= fill.filled_sz <= sz
    assert fill.fee == rate * fill.notional
    # The liquidity within the limit bounds the fill, and the fill takes all of it it needs.
    within = [lvl for lvl in side if (lvl.px <= limit if is_buy else lvl.px >= limit)]
    assert fill.filled_sz == min(sz, sum((lvl.sz for lvl in within), D(0)))
    assert fill.levels_used <= len(within)
    if fill.filled_sz == 0:
        assert fill.avg_px is None
        assert fill.notional == 0
    else:
        assert fill.avg_px is not None
        assert (fill.avg_px <= limit) if is_buy else (fill.avg_px >= limit)
        # Best prices first: no better level within the limit was left untouched.
        best = min(lvl.px for lvl in within) if is_buy else max(lvl.px for lvl in within)
        assert (fill.avg_px >= best) if is_buy else (fill.avg_px <= best)
        assert (
            fill.notional == fill.avg_px * fill.filled_sz
            or abs(fill.notional - fill.avg_px * fill.filled_sz) < D("1e-18") * fill.notional
        )


fills = st.lists(st.tuples(st.booleans(), sizes, prices, rates), min_size=1, max_size=30)


@given(fills, prices)
def test_paper_accounting_conserves_value(trades: list[tuple[bool, D, D, D]], mark: D) -> None:
    """Whatever the fills, equity = deposit - what was paid for the position + what it is worth
    - fees: average-entry accounting moves PnL between realised and unrealised, never creates it.
    """
    acct = PaperAccount(D(1000))
    spent = D(0)
    fees = D(0)
    position = D(0)
    for is_buy, sz, px, rate in trades:
        fee = sz * px * rate
        booked = acct.apply_fill("X", is_buy, sz, px, fee)
        assert booked.start_position == position
        acct = booked.account
        delta = sz if is_buy else -sz
        position += delta
        spent += delta * px
        fees += fee
        assert acct.position("X") == position
        if position != 0:
            entry = acct.entry_px("X")
            assert entry is not None
            assert entry > 0
    expected = D(1000) - spent + position * mark - fees
    assert abs(acct.equity({"X": mark}) - expected) <= D("1e-15") * (abs(spent) + 1)
    assert acct.fees == fees
    assert abs(acct.cash - (D(1000) + acct.realized_pnl - fees)) <= D("1e-20")
