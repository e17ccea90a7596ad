"""The per-follow performance core: hand-computed examples, the gap's parts adding up exactly
(hypothesis), our PnL agreeing with the paper account, and the live ledger."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

import pytest
from hlcopy.follow.fills import PaperAccount, fill_shares
from hlcopy.follow.performance import (
    GAP_PARTS,
    CopyRecord,
    FollowLedger,
    FundingRecord,
    IdealSizing,
    LeaderStart,
    LeaderTrade,
    Performance,
    TransferRecord,
    follow_performance,
    implied_scale,
)
from hypothesis import given, settings
from hypothesis import strategies as st

D = Decimal
LEADER = "0x" + "11" * 20
HALF = IdealSizing(ratio=D("0.5"))


def order(
    coin: str,
    t: int,
    szi: str,
    px: str,
    *,
    fee: str = "0",
    tid: int | None = None,
    follow: str = "f",
    status: str = "filled",
    reason: str = "open",
    attribution: tuple[tuple[str, Decimal], ...] | None = None,
    order_sz: str | None = None,
) -> CopyRecord:
    size = D(szi)
    return CopyRecord(
        coin=coin,
        status=status,
        time_ms=t,
        attribution=attribution or ((follow, abs(size)),),
        is_buy=size > 0,
        sz=D(order_sz) if order_sz is not None else abs(size),
        filled_sz=abs(size) if status in ("filled", "partial") else D(0),
        avg_px=D(px) if status in ("filled", "partial") else None,
        fee=D(fee),
        leader=LEADER,
        leader_tid=tid,
        reason=reason,
    )


def skip(
    coin: str, t: int, szi: str, reason: str, tid: int | None, follow: str = "f"
) -> CopyRecord:
    return CopyRecord(
        coin=coin,
        status="skipped",
        time_ms=t,
        attribution=((follow, abs(D(szi))),),
        is_buy=D(szi) > 0,
        sz=abs(D(szi)),
        leader=LEADER,
        leader_tid=tid,
        skip_reason=reason,
    )


def fill(tid: int, coin: str, t: int, szi: str, px: str, start: str | None = None) -> LeaderTrade:
    return LeaderTrade(
        tid, coin, D(szi) > 0, D(px), abs(D(szi)), t, None if start is None else D(start)
    )


def adds_up(p: Performance) -> None:
    """Exactly: the figures are exact decimals, summed here with room for every digit."""
    with localcontext(Context(prec=120)):
        _adds_up(p)


def _adds_up(p: Performance) -> None:
    assert sum(p.parts.values(), D(0)) == p.gap
    assert p.gap == p.ours - p.leader_scaled
    assert p.realized + p.unrealized - p.fees + p.funding == p.ours
    for c in p.coins:
        assert sum(c.parts.values(), D(0)) == c.gap == c.ours - c.leader_scaled
    for name in GAP_PARTS:
        assert sum((c.parts[name] for c in p.coins), D(0)) == p.parts[name]


def run(**kw: object) -> Performance:
    args: dict[str, object] = {
        "follow_id": "f",
        "leader": LEADER,
        "sizing": HALF,
        "since_ms": 0,
        "until_ms": 10_000_000,
    }
    args.update(kw)
    p = follow_performance(**args)  # type: ignore[arg-type]
    adds_up(p)
    return p


# -- hand-computed examples --------------------------------------------------------------------


def test_a_copy_its_slippage_a_skipped_reduction_fees_and_funding() -> None:
    """Leader buys 2 @100 (we buy 1 @101, fee 0.05), sells 1 @110 (skipped: below $10 min),
    funding at 115 with rate 0.0001 on our 1; marked at 120.
    Ours 1 x 19 - 0.05 - 0.0115 = 18.9385; ideal +1 @100, -0.5 @110 = 20 - 5 = 15; leader 30.
    Gap 3.9385 = latency 1 x (100 - 101) = -1, fees/funding -0.0615, skipped -(-0.5) x 10 = 5."""
    p = run(
        copies=[
            order("ETH", 1_100, "1", "101", fee="0.05", tid=1),
            skip("ETH", 2_100, "-0.5", "below_min_notional", 2),
        ],
        leader_fills=[fill(1, "ETH", 1_000, "2", "100"), fill(2, "ETH", 2_000, "-1", "110")],
        funding=[FundingRecord(3_000, "ETH", D("115"), D("0.0001"))],
        marks={"ETH": D("120")},
    )
    assert p.ours == D("18.9385")
    assert p.leader_scaled == D("15")
    assert p.leader_pnl == D("30")
    assert p.gap == D("3.9385")
    assert p.parts == {
        "latency_slippage": D("-1"),
        "fees_funding": D("-0.0615"),
        "skipped": D("5"),
        "limits": D("0"),
        "entry": D("0"),
    }
    assert p.fees == D("0.05")
    assert p.funding == D("-0.0115")
    (eth,) = p.coins
    assert (eth.position, eth.ideal, eth.leader) == (D("1"), D("0.5"), D("1"))
    assert p.counts["skips"] == 1
    assert p.counts["fills"] == 1


def test_a_limit_caught_up_later_costs_the_price_move_in_limits() -> None:
    """Leader buys 2 @100; the follow gets 0.6 @100, 0.4 is cut by a limit and bought by a
    reconcile @105; marked at 110. Ideal 10, ours 8: limits -0.4 x 10 + 0.4 x 5 = -2."""
    p = run(
        copies=[
            order("ETH", 1_100, "0.6", "100", tid=1),
            skip("ETH", 1_100, "0.4", "limit_reached", 1),
            order("ETH", 5_000, "0.4", "105"),
        ],
        leader_fills=[fill(1, "ETH", 1_000, "2", "100")],
        marks={"ETH": D("110")},
    )
    assert (p.ours, p.leader_scaled, p.gap) == (D("8"), D("10"), D("-2"))
    assert p.parts["limits"] == D("-2")
    assert p.parts["latency_slippage"] == p.parts["skipped"] == p.parts["entry"] == 0


def test_a_position_the_leader_held_at_the_start_is_entry() -> None:
    """The leader held 4 @90 at the start; the follow (wait) adopts 2 @95 later; marked at 100.
    Ideal 2 x 10 = 20, ours 2 x 5 = 10: entry -10."""
    p = run(
        copies=[order("ETH", 5_000, "2", "95", reason="open;adopt")],
        leader_fills=[],
        leader_start={"ETH": LeaderStart(D("4"), D("90"), 0)},
        marks={"ETH": D("100")},
    )
    assert (p.ours, p.leader_scaled, p.leader_pnl) == (D("10"), D("20"), D("40"))
    assert p.parts["entry"] == D("-10")
    assert p.coins[0].start_px == D("90")


def test_one_decision_for_two_leader_fills_is_slippage_not_entry() -> None:
    """Inverse x1. The leader buys 1 @100 and 1 @101 in one order (tids 1, 2); the decision on
    tid 1 already sells 2 @100.5; marked at 99. Ideal 1 + 2 = 3, ours 3: no gap, and no
    part charged either (the ahead-of-time sale is settled against tid 2 in slippage)."""
    p = run(
        sizing=IdealSizing(mode="inverse", ratio=D(1)),
        copies=[order("ETH", 1_100, "-2", "100.5", tid=1)],
        leader_fills=[fill(1, "ETH", 1_000, "1", "100"), fill(2, "ETH", 1_000, "1", "101")],
        marks={"ETH": D("99")},
    )
    assert (p.ours, p.leader_scaled, p.gap) == (D("3"), D("3"), D("0"))
    assert all(v == 0 for v in p.parts.values())


@pytest.mark.parametrize("trigger", [1, 2])
def test_a_sweep_s_copy_is_one_copy_whichever_of_its_fills_triggered_it(trigger: int) -> None:
    """The leader buys 2 @100 (tid 1) and 2 @101 (tid 2) in one order; the follow (x0.5) wants
    2, a limit holds it at 1.6 @101; marked at 110. The copy is matched to the sweep in the
    order it filled, whichever fill the books saw first: latency 1 x (100 - 101) = -1, and
    the 0.4 held back of the 101 fill is the limits' -0.4 x 9 = -3.6 (not a skipped trade)."""
    p = run(
        copies=[order("ETH", 1_100, "1.6", "101", tid=trigger, reason="open;limit_reached")],
        leader_fills=[
            fill(1, "ETH", 1_000, "2", "100", start="0"),
            fill(2, "ETH", 1_000, "2", "101", start="2"),
        ],
        marks={"ETH": D("110")},
    )
    assert (p.ours, p.leader_scaled, p.gap) == (D("14.4"), D("19"), D("-4.6"))
    assert p.parts == {
        "latency_slippage": D("-1"),
        "fees_funding": D("0"),
        "skipped": D("0"),
        "limits": D("-3.6"),
        "entry": D("0"),
    }


def test_a_sweep_copied_from_a_state_read_is_a_late_copy_with_its_reasons() -> None:
    """The same sweep, but the leader's state was read before its fills came: the copy was
    decided from the read, with no leader fill (tid None). It is still the sweep's copy, late:
    the same parts as when a fill triggered it. A later reconcile is no copy of the sweep."""
    sweep = [
        fill(1, "ETH", 1_000, "2", "100", start="0"),
        fill(2, "ETH", 1_000, "2", "101", start="2"),
        fill(3, "ETH", 9_000, "-1", "108", start="4"),
    ]
    p = run(
        copies=[
            order("ETH", 1_100, "1.6", "101", reason="open;limit_reached"),
            order("ETH", 9_100, "-0.5", "108", tid=3, reason="reduce"),
        ],
        leader_fills=sweep,
        marks={"ETH": D("110")},
    )
    assert p.parts["latency_slippage"] == D("-1")
    assert p.parts["limits"] == D("-3.6")
    assert p.parts["skipped"] == p.parts["entry"] == 0
    # Decided from a read while waiting for an entry: nothing copied, and the parts say why.
    p = run(
        copies=[skip("ETH", 1_100, "2", "waiting_entry", None)],
        leader_fills=sweep[:2],
        marks={"ETH": D("110")},
    )
    assert p.parts["skipped"] == -(D(1) * 10 + D(1) * 9)
    assert p.parts["limits"] == 0


def test_the_start_position_comes_from_before_the_period() -> None:
    """Bought 1 @100 before ``since``; the price at the start is the last known (100 here, the
    leader's fill at 90 being older); the leader's position then was 2. Marked at 130."""
    p = run(
        since_ms=2_000,
        copies=[order("ETH", 1_100, "1", "100", tid=1)],
        leader_fills=[fill(1, "ETH", 1_000, "2", "100")],
        leader_start={"ETH": LeaderStart(D("2"), D("90"), 500)},
        marks={"ETH": D("130")},
    )
    (eth,) = p.coins
    assert (eth.position_start, eth.leader_start, eth.ideal_start) == (D(1), D(2), D(1))
    assert eth.start_px == D("100")
    assert (p.ours, p.leader_scaled, p.gap) == (D(30), D(30), D(0))
    assert p.realized == 0
    assert p.unrealized == D(30)


def test_a_leader_change_seen_only_through_start_position_is_skipped() -> None:
    """The books missed a buy of 2: the next fill says it started at 2 where we had 0."""
    p = run(
        copies=[],
        leader_fills=[fill(5, "ETH", 1_000, "1", "100", start="2")],
        leader_start={"ETH": LeaderStart(D(0), D(90), 0)},
        marks={"ETH": D(110)},
    )
    assert p.leader_pnl == D(3) * 10
    assert p.leader_scaled == D("15")
    assert p.parts["skipped"] == D("-15")


def test_fixed_notional_holds_its_size_until_the_leader_flips() -> None:
    """$1000 per leader position: opens 10 @100, holds through an add, closes on the flip and
    opens 1000/125 = 8 short."""
    sizing = IdealSizing(sizing="fixed_notional", fixed_notional_usd=D(1000))
    p = run(
        sizing=sizing,
        copies=[],
        leader_fills=[
            fill(1, "ETH", 1_000, "3", "100"),
            fill(2, "ETH", 2_000, "3", "110"),
            fill(3, "ETH", 3_000, "-10", "125"),
        ],
        marks={"ETH": D(120)},
    )
    (eth,) = p.coins
    assert eth.ideal == D(-8)
    assert p.leader_scaled == D(10) * 20 + D(-18) * (120 - 125)
    assert p.scale is None


def test_transfers_and_shared_fills_split_like_the_executor() -> None:
    shared = order(
        "BTC",
        1_000,
        "0.3",
        "50000",
        fee="3",
        attribution=(("a", D("0.1")), ("b", D("0.2"))),
    )
    moved = TransferRecord("BTC", "b", "a", D("0.05"), D("51000"), 2_000)
    a, b = (
        follow_performance(
            follow_id=follow,
            leader=LEADER,
            sizing=HALF,
            copies=[shared],
            transfers=[moved],
            leader_fills=[],
            marks={"BTC": D(52000)},
            since_ms=0,
            until_ms=10**7,
        )
        for follow in ("a", "b")
    )
    adds_up(a)
    adds_up(b)
    assert a.coins[0].position == D("0.15")
    assert b.coins[0].position == D("0.15")
    assert a.fees == D(1)
    assert b.fees == D(2)
    # Together they are the account: 0.3 bought at 50000, marked at 52000, fees 3.
    assert a.ours + b.ours == D("0.3") * 2000 - 3
    assert a.counts["transfers"] == 1


def test_implied_scale_reads_the_copier_s_ratio() -> None:
    rows = [order("ETH", 1_100, "0.25", "100", tid=1), order("ETH", 1_200, "0.25", "101", tid=1)]
    assert implied_scale(rows, "f", {1: D(2)}) == D("0.25")
    assert implied_scale(rows, "g", {1: D(2)}) is None


# -- properties ---------------------------------------------------------------------------------

COINS = ("BTC", "ETH")
REASONS = ("limit_reached", "below_min_notional", "coin_filtered", "stale_fill", "halted")
prices = st.integers(1, 2_000_000).map(lambda n: D(n) / 100)
sizes = st.integers(-5_000, 5_000).filter(bool).map(lambda n: D(n) / 1000)
times = st.integers(0, 20_000)


@st.composite
def histories(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(0, 12))
    fills = []
    for k in range(n):
        start = draw(st.one_of(st.none(), sizes))
        fills.append(
            LeaderTrade(
                k,
                draw(st.sampled_from(COINS)),
                draw(st.booleans()),
                draw(prices),
                abs(draw(sizes)),
                draw(times),
                start,
            )
        )
    copies = []
    for _ in range(draw(st.integers(0, 14))):
        tid = draw(st.one_of(st.none(), st.integers(0, max(n - 1, 0))))
        coin = fills[tid].coin if tid is not None and n else draw(st.sampled_from(COINS))
        mine = abs(draw(sizes))
        other = draw(st.one_of(st.none(), st.integers(1, 3000).map(lambda k: D(k) / 1000)))
        attribution = (("f", mine),) + ((("g", other),) if other else ())
        total = sum((s for _, s in attribution), D(0))
        kind = draw(st.sampled_from(("filled", "partial", "rejected", "skipped")))
        if kind == "skipped":
            copies.append(
                CopyRecord(
                    coin,
                    "skipped",
                    draw(times),
                    (("f", mine),),
                    draw(st.booleans()),
                    mine,
                    leader=LEADER,
                    leader_tid=tid,
                    skip_reason=draw(st.sampled_from(REASONS)),
                )
            )
            continue
        filled = total if kind == "filled" else D(0)
        if kind == "partial":
            filled = (total * draw(st.integers(1, 9)) / 10).quantize(D("0.001"))
        copies.append(
            CopyRecord(
                coin,
                kind,
                draw(times),
                attribution,
                draw(st.booleans()),
                total,
                filled,
                draw(prices) if filled else None,
                (filled * D("0.00045") * 100).quantize(D("0.000001")),
                LEADER,
                tid,
                None,
                draw(st.sampled_from(("open", "add;round_up"))),
            )
        )
    transfers = [
        TransferRecord(
            draw(st.sampled_from(COINS)),
            *draw(st.sampled_from([("f", "g"), ("g", "f")])),
            abs(draw(sizes)),
            draw(prices),
            draw(times),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    funding = [
        FundingRecord(
            draw(times),
            draw(st.sampled_from(COINS)),
            draw(prices),
            D(draw(st.integers(-100, 100))) / 1_000_000,
            draw(st.integers(1, 3)),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    sizing = draw(
        st.sampled_from(
            [
                IdealSizing(ratio=D("0.5")),
                IdealSizing(mode="inverse", ratio=D("0.25")),
                IdealSizing(sizing="equity", ratio=D(2), equity_ratio=D("0.013")),
                IdealSizing(sizing="fixed_notional", fixed_notional_usd=D(1000)),
                IdealSizing(mode="inverse", sizing="fixed_notional", fixed_notional_usd=D(77)),
            ]
        )
    )
    return {
        "sizing": sizing,
        "copies": copies,
        "leader_fills": fills,
        "transfers": transfers,
        "funding": funding,
        "marks": {c: draw(prices) for c in COINS if draw(st.booleans())},
        "since_ms": draw(st.integers(0, 10_000)),
        "until_ms": draw(st.integers(10_000, 25_000)),
        "leader_start": {
            c: LeaderStart(draw(st.one_of(st.none(), sizes)), draw(prices), 0)
            for c in COINS
            if draw(st.booleans())
        },
        "leader_now": draw(st.one_of(st.none(), st.just({"BTC": D(1)}))),
    }


@pytest.mark.slow(10)
@settings(max_examples=400, deadline=None)
@given(histories())
def test_the_parts_always_add_up_to_the_gap(history: dict[str, object]) -> None:
    run(**history)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(COINS), sizes, prices), max_size=12), prices, prices)
def test_a_perfect_copy_has_no_gap(
    moves: list[tuple[str, Decimal, Decimal]], btc: Decimal, eth: Decimal
) -> None:
    """Every leader fill copied at once, at the leader's price, without fees: nothing to explain."""
    fills = [LeaderTrade(i, c, s > 0, px, abs(s), 1000 * i) for i, (c, s, px) in enumerate(moves)]
    copies = [
        order(f.coin, f.time_ms + 1, str(D("0.5") * f.delta), str(f.px), tid=f.tid) for f in fills
    ]
    p = run(copies=copies, leader_fills=fills, marks={"BTC": btc, "ETH": eth})
    assert p.gap == 0
    assert all(v == 0 for v in p.parts.values())
    assert p.ours == p.leader_scaled == p.leader_pnl / 2


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(COINS), sizes, prices, st.integers(0, 50)), max_size=15),
    prices,
    prices,
)
def test_ours_is_the_paper_account_s_pnl(
    trades: list[tuple[str, Decimal, Decimal, int]], btc: Decimal, eth: Decimal
) -> None:
    """One follow owning the whole account: its PnL and the ledger's are the account's."""
    account = PaperAccount(cash=D(10_000))
    ledger = FollowLedger()
    rows = []
    for i, (coin, szi, px, fee_cents) in enumerate(trades):
        fee = D(fee_cents) / 100
        account = account.apply_fill(coin, szi > 0, abs(szi), px, fee).account
        row = order(coin, i, str(szi), str(px), fee=str(fee))
        ledger.settled(row)
        rows.append(row)
    marks = {"BTC": btc, "ETH": eth}
    p = run(copies=rows, leader_fills=[], marks=marks)
    # The account keeps its average entry to 28 digits; ours is exact: equal to far below a cent.
    tiny = D("1e-12")
    assert abs(p.ours - (account.equity(marks) - 10_000)) < tiny
    assert abs(p.realized - account.realized_pnl) < tiny
    figures = ledger.figures("f", marks)
    assert figures is not None
    assert abs(figures.pnl - (account.equity(marks) - 10_000)) < tiny
    assert abs(figures.realized - account.realized_pnl) < tiny
    assert figures.positions == {c: pos.szi for c, pos in account.positions.items()}
    assert FollowLedger.replay(rows).figures("f", marks) == figures


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10_000), st.text("abc", min_size=1, max_size=2)),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[1],
    ),
    st.integers(1, 10_000),
)
def test_a_fill_is_shared_exactly_in_proportion(
    weights: list[tuple[int, str]], filled_k: int
) -> None:
    """The executor books and the report replays a shared fill with this one function."""
    attribution = [(f, D(w) / 1000) for w, f in weights]
    total = sum((s for _, s in attribution), D(0))
    filled = min(total, D(filled_k) / 1000)
    parts = fill_shares(attribution, total, filled)
    assert [f for f, _ in parts] == [f for f, _ in attribution]
    assert abs(sum((p for _, p in parts), D(0)) - filled) <= D("1e-26")  # 28 digits
    for (_, share), (_, part) in zip(attribution, parts, strict=True):
        assert abs(part - share * filled / total) <= D("1e-20")


# -- the ledger -----------------------------------------------------------------------------------


def test_the_ledger_books_transfers_funding_and_refuses_unknown_marks() -> None:
    ledger = FollowLedger()
    ledger.settled(order("ETH", 1, "2", "100", fee="0.1", follow="a"))
    ledger.transfer(TransferRecord("ETH", "a", "b", D("0.5"), D("110"), 2))
    ledger.fund(FundingRecord(3_600_000, "ETH", D("120"), D("0.0001")))
    a = ledger.figures("a", {"ETH": D(130)})
    b = ledger.figures("b", {"ETH": D(130)})
    assert a is not None
    assert b is not None
    # a: bought 2 @100, handed 0.5 to b @110 (realises 5), holds 1.5 (+45), paid 0.018 funding.
    assert (a.realized, a.unrealized, a.fees, a.funding) == (D(5), D(45), D("0.1"), D("-0.018"))
    assert a.pnl == D("49.882")
    # b: holds 0.5 from 110 (+10), paid 0.006.
    assert (b.pnl, b.notional) == (D("9.994"), D(65))
    assert ledger.figures("a", {}) is None
    assert ledger.pnl("nobody", {}) == 0
    assert ledger.follows() == ("a", "b")


def test_a_follow_performance_needs_a_price_for_what_it_held() -> None:
    with pytest.raises(ValueError, match="equity ratio"):
        IdealSizing(sizing="equity").target(D(0), D(1), D(100))


def test_fills_of_one_millisecond_are_taken_in_the_order_they_happened() -> None:
    """One sweep, tids out of order: the startPosition chain gives the order, so no change is
    mistaken for an unseen one and each is priced at its own fill."""
    sweep = [
        fill(9, "ETH", 1_000, "-1", "99", start="2"),
        fill(3, "ETH", 1_000, "-1", "98", start="1"),
        fill(5, "ETH", 1_000, "2", "100", start="0"),
    ]
    known = {"leader_start": {"ETH": LeaderStart(D(0), D(100), 0)}}
    # A chain that ends where it began is ambiguous alone: the position now tells its head.
    now = {"leader_now": {"ETH": D(0)}}
    for start in (known, now):
        p = run(copies=[], leader_fills=sweep, marks={"ETH": D(100)}, **start)
        # Sold 1 at 99 and 1 at 98, marked at 100.
        assert p.leader_pnl == D(-3)
        assert p.leader_scaled == D("-1.5")
        assert p.parts["skipped"] == D("1.5")
        assert p.coins[0].leader_start == 0
        assert p.coins[0].leader == 0


def test_the_head_of_an_open_chain_is_the_leader_s_start() -> None:
    sweep = [
        fill(7, "ETH", 1_000, "2", "100", start="0"),
        fill(4, "ETH", 1_000, "-1", "99", start="2"),
    ]
    p = run(copies=[], leader_fills=sweep, marks={"ETH": D(100)})
    assert (p.coins[0].leader_start, p.coins[0].leader, p.leader_pnl) == (D(0), D(1), D(-1))
