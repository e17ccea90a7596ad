"""The fill model: IOC fills against a book, funding's sign, and paper accounting checked against a
real trader's fills (closedPnl, startPosition) from the exchange."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hlcopy.follow.fills import PaperAccount, funding_payment, gross_notional, simulate_ioc
from hlcopy.hl.parse import parse_fill
from hlcopy.model import BookLevel, Fill, L2Book

D = Decimal
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hyperliquid"


def _raw(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())["response"]


def book(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> L2Book:
    return L2Book(
        "ETH",
        0,
        tuple(BookLevel(D(p), D(s), 1) for p, s in bids),
        tuple(BookLevel(D(p), D(s), 1) for p, s in asks),
    )


BOOK = book(
    bids=[("99", "1"), ("98", "2"), ("97", "5")],
    asks=[("101", "1"), ("102", "2"), ("103", "5")],
)


# --- simulate_ioc ----------------------------------------------------------------------------


def test_a_buy_walks_the_asks_up_to_its_limit() -> None:
    fill = simulate_ioc(BOOK, True, D("2.5"), D("102"), D("0.00045"))
    assert fill.filled_sz == D("2.5")
    assert fill.notional == D("101") + D("1.5") * D("102")
    assert fill.avg_px == fill.notional / D("2.5")
    assert fill.fee == fill.notional * D("0.00045")
    assert fill.levels_used == 2


def test_a_sell_walks_the_bids_down_and_stops_at_its_limit() -> None:
    fill = simulate_ioc(BOOK, False, D("10"), D("98"), D("0.001"))
    assert fill.filled_sz == D("3")  # 1 @ 99 + 2 @ 98; 97 is below the limit
    assert fill.avg_px == (D("99") + D("196")) / 3
    assert fill.levels_used == 2


def test_nothing_fills_beyond_the_limit() -> None:
    fill = simulate_ioc(BOOK, True, D("1"), D("100.99"), D("0.001"))
    assert fill.filled_sz == 0
    assert fill.avg_px is None
    assert fill.fee == 0
    assert fill.levels_used == 0


def test_levels_in_any_order_are_taken_best_first() -> None:
    asks = (BookLevel(D("103"), D("5"), 1), BookLevel(D("101"), D("1"), 1))
    fill = simulate_ioc(asks, True, D("2"), D("200"), D(0))
    assert fill.avg_px == D("102")  # 1 @ 101 + 1 @ 103


def test_an_empty_book_fills_nothing() -> None:
    fill = simulate_ioc(book([], []), False, D("1"), D("1"), D("0.001"))
    assert (fill.filled_sz, fill.avg_px, fill.levels_used) == (D(0), None, 0)


@pytest.mark.parametrize(("sz", "px"), [("0", "1"), ("-1", "1"), ("1", "0")])
def test_nonsense_orders_are_refused(sz: str, px: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        simulate_ioc(BOOK, True, D(sz), D(px), D(0))


# --- funding ---------------------------------------------------------------------------------


def test_longs_pay_and_shorts_receive_when_the_rate_is_positive() -> None:
    assert funding_payment(D("2"), D("100"), D("0.0001")) == D("-0.0200")
    assert funding_payment(D("-2"), D("100"), D("0.0001")) == D("0.0200")
    assert funding_payment(D("2"), D("100"), D("-0.0001")) == D("0.0200")


def test_funding_has_the_sign_of_the_recorded_payments() -> None:
    """The recorded userFunding deltas: usdc has the sign of -szi x rate (mark is positive)."""
    rows = [r["delta"] for r in _raw("info_user_funding.json")]
    assert rows
    for r in rows:
        ours = funding_payment(D(r["szi"]), D(1), D(r["fundingRate"]))
        assert (ours > 0) == (D(r["usdc"]) > 0), r


def test_the_account_books_funding() -> None:
    acct = PaperAccount(D(1000)).apply_fill("ETH", True, D("2"), D("100"), D(0)).account
    acct, paid = acct.apply_funding("ETH", D("100"), D("0.0001"))
    assert paid == D("-0.02")
    assert acct.cash == D("999.98")
    assert acct.funding == D("-0.02")
    flat, nothing = PaperAccount(D(1)).apply_funding("ETH", D("100"), D("0.01"))
    assert nothing == 0
    assert flat.cash == 1


# --- paper accounting ------------------------------------------------------------------------


def test_an_increase_averages_the_entry_and_a_reduction_keeps_it() -> None:
    acct = PaperAccount(D(1000))
    b1 = acct.apply_fill("BTC", True, D("1"), D("100"), D("0.1"))
    assert (b1.start_position, b1.dir, b1.closed_pnl) == (D(0), "Open Long", D(0))
    b2 = b1.account.apply_fill("BTC", True, D("3"), D("120"), D("0.3"))
    assert b2.account.entry_px("BTC") == D("115")
    b3 = b2.account.apply_fill("BTC", False, D("1"), D("130"), D("0.1"))
    assert b3.dir == "Close Long"
    assert b3.closed_pnl == D("15")
    assert b3.account.entry_px("BTC") == D("115")
    assert b3.account.position("BTC") == D("3")
    assert b3.account.cash == D(1000) + D(15) - D("0.5")
    assert b3.account.fees == D("0.5")
    assert b3.account.realized_pnl == D("15")
    assert b3.account.equity({"BTC": D("110")}) == b3.account.cash + 3 * (D("110") - D("115"))


def test_a_flip_closes_the_whole_position_and_opens_the_rest_at_the_fill_price() -> None:
    acct = PaperAccount(D(0)).apply_fill("SOL", False, D("2"), D("50"), D(0)).account
    b = acct.apply_fill("SOL", True, D("5"), D("40"), D(0))
    assert (b.start_position, b.dir) == (D("-2"), "Short > Long")
    assert b.closed_pnl == D("20")  # the short of 2 bought back 10 lower
    assert b.account.position("SOL") == D("3")
    assert b.account.entry_px("SOL") == D("40")
    back = b.account.apply_fill("SOL", False, D("4"), D("45"), D(0))
    assert back.dir == "Long > Short"
    assert back.closed_pnl == D("15")
    assert back.account.entry_px("SOL") == D("45")


def test_a_full_close_leaves_no_position() -> None:
    acct = PaperAccount(D(0)).apply_fill("ETH", False, D("1"), D("10"), D(0)).account
    b = acct.apply_fill("ETH", True, D("1"), D("12"), D(0))
    assert b.dir == "Close Short"
    assert b.closed_pnl == D("-2")
    assert "ETH" not in b.account.positions
    assert b.account.equity({}) == D("-2")


def test_equity_without_a_mid_for_an_open_position_is_refused() -> None:
    acct = PaperAccount(D(0)).apply_fill("ETH", True, D("1"), D("10"), D(0)).account
    with pytest.raises(ValueError, match="no mid for ETH"):
        acct.equity({"BTC": D(1)})
    with pytest.raises(ValueError, match="no mid for ETH"):
        acct.notional({})
    assert acct.notional({"ETH": D("11")}) == D("11")


def test_the_account_is_immutable_and_round_trips() -> None:
    acct = PaperAccount(D("100")).apply_fill("ETH", True, D("1.5"), D("10"), D("0.01")).account
    with pytest.raises(TypeError):
        acct.positions["BTC"] = acct.positions["ETH"]  # type: ignore[index]
    again = PaperAccount.from_dict(json.loads(json.dumps(acct.to_dict())))
    assert again == acct
    seeded = PaperAccount(D(0)).with_position("ETH", D("2"), D("5"))
    assert seeded.position("ETH") == D("2")
    assert seeded.with_position("ETH", D(0), D(0)).positions == {}


# --- the exchange's closedPnl, replayed ------------------------------------------------------

# The recording (May 2023) ends with every open position closed within ten seconds, mostly by
# single orders sweeping the book: a liquidation, by the look of it. There the reported
# closedPnl does not follow the fill prices (ATOM: three fills of one order at 10.96, 10.959 and
# 10.956 out of a long opened at 10.966 imply entries 10.966, 10.9656 and 10.9628), so the sweep
# is not a test of ordinary accounting.
SWEEP_FROM_MS = 1683245875000


def _chronological(raw: list[dict[str, Any]]) -> list[Fill]:
    """userFills is newest first, but fills of one millisecond are listed in execution order."""
    order = sorted(range(len(raw)), key=lambda i: (raw[i]["time"], i))
    return [parse_fill(raw[i]) for i in order]


def _self_trades(fills: list[Fill]) -> Iterator[tuple[Fill, ...]]:
    """Group the two legs of a self-trade (the trader's order matching its own resting order):
    same coin and millisecond, same reported startPosition, opposite sides, equal size."""
    i = 0
    while i < len(fills):
        a = fills[i]
        if i + 1 < len(fills):
            b = fills[i + 1]
            if (a.coin, a.time_ms, a.start_position, a.sz) == (
                b.coin,
                b.time_ms,
                b.start_position,
                b.sz,
            ) and a.side != b.side:
                yield (a, b)
                i += 2
                continue
        yield (a,)
        i += 1


def test_replaying_a_traders_fills_reproduces_closed_pnl() -> None:
    """Where startPosition chains from a known entry (the fill price of a flip: the fixture never
    passes through flat), every fill's closedPnl is reproduced to the cent; and wherever it
    chains at all, the fill's direction ("Open Long", "Short > Long", ...) is the exchange's.

    A chain breaks where startPosition is not our position (the recording's first fill of a coin)
    and at a self-trade: both legs report the position before the match, so neither the order the
    exchange booked them in nor the entry after it can be derived from the fills. Self-trade legs
    are booked but not checked, and the entry is unknown until the next flip. An entry inferred
    from a fill's closedPnl would not do as an anchor on this account: consecutive reductions
    with nothing between them imply different entries (OP at 1683245583036 and 1683245589085).
    Short > Long fills are left out of the PnL check: in this 2023 recording their closedPnl has
    the opposite sign of the closed short's PnL (SUI at 1683245708735: a short opened at 1.323 by
    a flip and bought back at 1.3225, a gain of 0.02375, reported as -0.02375).
    """
    fills = _chronological(_raw("info_user_fills.json"))
    acct = PaperAccount(D(0))
    known: dict[str, bool] = {}
    directions = pnls = closes = 0
    misses: list[str] = []
    for group in _self_trades(fills):
        first = group[0]
        assert first.start_position is not None
        if acct.position(first.coin) != first.start_position:
            acct = acct.with_position(first.coin, first.start_position, D(0))
            known[first.coin] = False
        for f in group:
            assert f.closed_pnl is not None
            assert f.fee is not None
            was_known = known.get(f.coin, False) and len(group) == 1
            booked = acct.apply_fill(f.coin, f.side == "B", f.sz, f.px, f.fee)
            acct = booked.account
            if booked.dir in ("Long > Short", "Short > Long") or acct.position(f.coin) == 0:
                known[f.coin] = True  # the entry is the fill price (or there is none)
            if len(group) == 2:
                continue
            assert (booked.start_position, booked.dir) == (f.start_position, f.dir)
            directions += 1
            if not was_known or f.time_ms >= SWEEP_FROM_MS or f.dir == "Short > Long":
                continue
            pnls += 1
            closes += f.closed_pnl != 0
            if abs(booked.closed_pnl - f.closed_pnl) >= D("0.01"):
                misses.append(
                    f"{f.coin} {f.time_ms} {f.dir}: {booked.closed_pnl} != {f.closed_pnl}"
                )
        if len(group) == 2:
            known[first.coin] = False
    assert misses == []
    assert directions >= 300
    assert pnls >= 20
    assert closes >= 8


def test_gross_notional_counts_both_sides_skips_one_coin_and_prices_only_what_has_a_mid() -> None:
    sizes = {"BTC": D("-0.5"), "ETH": D("2"), "SOL": D("10"), "DOGE": D("0")}
    mids = {"BTC": D("60000"), "ETH": D("3000.5"), "DOGE": D("0.1")}
    assert gross_notional(sizes, mids) == D("30000") + D("6001")  # SOL has no mid: zero
    assert gross_notional(sizes, mids, but="BTC") == D("6001")
    assert gross_notional({}, mids) == 0
    account = PaperAccount(cash=D(0)).with_position("BTC", D("-0.5"), D("1"))
    account = account.with_position("ETH", D("2"), D("1"))
    assert gross_notional({"BTC": D("-0.5"), "ETH": D("2")}, mids) == account.notional(mids)
