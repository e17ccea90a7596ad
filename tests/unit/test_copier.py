"""The copier on hand-built cases: sizing, limits, every skip reason, reduce-only, flips, netting,
the $10 minimum, cloids. Expected numbers are worked out in the comments, not by the module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hlcopy.follow.copier import (
    EXCHANGE_TIME_LAG_MS,
    AccountLimits,
    Decision,
    Follow,
    FollowerView,
    LeaderView,
    Market,
    SkipReason,
    allocate,
    decide,
    intent_cloid,
    split_fill,
)
from hlcopy.follow.risk import TradingState
from hlcopy.hl import derive_cloid, is_valid_price
from hlcopy.model import Asset, LeaderFill, OrderIntent

D = Decimal
ETH = Asset("ETH", 1, 4, 50)  # lot 0.0001 ETH, $0.20 at 2000: the $10 minimum binds
MID = D("2000")
NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
A = "0x" + "a" * 40
B = "0x" + "b" * 40
BUY_PX = D("2010")  # 2000 x 1.005, five significant figures
SELL_PX = D("1990")


def follow(fid: str = "f", leader: str = A, **kw: Any) -> Follow:
    return Follow(fid, leader, **kw)


def lead(szi: str, *, changed: int | None = NOW - 1_000, **kw: Any) -> LeaderView:
    return LeaderView(D(szi), last_change_ms=changed, **kw)


def held(szi: str = "0", **attributed: str) -> FollowerView:
    return FollowerView(D(szi), {k: D(v) for k, v in attributed.items()})


def run(
    follows: Sequence[Follow],
    leaders: Mapping[str, LeaderView],
    follower: FollowerView | None = None,
    *,
    mid: Decimal | None = MID,
    asset: Asset = ETH,
    **kw: Any,
) -> Decision:
    return decide(
        follows=follows,
        leaders=leaders,
        follower=follower or FollowerView(D(0)),
        market=Market(asset, mid),
        now_ms=kw.pop("now_ms", NOW),
        **kw,
    )


def only(decision: Decision) -> OrderIntent:
    assert len(decision.intents) == 1, decision
    return decision.intents[0]


def skip_reasons(decision: Decision) -> dict[str, SkipReason]:
    return {s.follow_id: s.reason for s in decision.skips}


def fill(leader: str = A, *, tid: int = 77, t: int = NOW - 500, coin: str = "ETH") -> LeaderFill:
    return LeaderFill(leader, coin, "B", D("1"), MID, t, tid, "userFills", D(0))


# --- sizing ----------------------------------------------------------------------------------


def test_ratio_copies_a_share_of_the_leaders_position_with_an_ioc_at_mid_plus_slippage() -> None:
    d = run([follow(ratio=D("0.1"))], {A: lead("10")})
    intent = only(d)
    assert (intent.is_buy, intent.sz, intent.limit_px) == (True, D("1"), BUY_PX)
    assert (intent.reduce_only, intent.reason, intent.tif) == (False, "open", "Ioc")
    assert intent.attribution == (("f", D("1")),)
    assert intent.decided_ms == NOW
    assert intent.cloid == derive_cloid(f"f|{A}|epoch0:ETH|0")
    assert d.skips == ()
    assert [(t.follow_id, t.szi, t.leader_szi) for t in d.targets] == [("f", D("1.0"), D("10"))]


def test_inverse_takes_the_other_side() -> None:
    intent = only(run([follow(mode="inverse", ratio=D("0.1"))], {A: lead("10")}))
    assert (intent.is_buy, intent.sz, intent.limit_px) == (False, D("1"), SELL_PX)


def test_equity_sizing_scales_by_the_two_accounts() -> None:
    f = follow(sizing="equity", ratio=D("2"))
    follower = FollowerView(D(0), equity=D("5000"))
    # 3 ETH x 5,000 / 100,000 x 2 = 0.3 ETH
    intent = only(run([f], {A: lead("-3", equity=D("100000"))}, follower))
    assert (intent.is_buy, intent.sz) == (False, D("0.3"))


@pytest.mark.parametrize(
    ("leader_equity", "follower_equity", "reason"),
    [
        (None, D("5000"), SkipReason.LEADER_EQUITY_UNKNOWN),
        (D(0), D("5000"), SkipReason.LEADER_EQUITY_UNKNOWN),  # zeros: an unknown address
        (D("100000"), None, SkipReason.FOLLOWER_EQUITY_UNKNOWN),
        (D("100000"), D(0), SkipReason.FOLLOWER_EQUITY_UNKNOWN),
    ],
)
def test_equity_sizing_without_both_equities_holds(
    leader_equity: Decimal | None, follower_equity: Decimal | None, reason: SkipReason
) -> None:
    f = follow(sizing="equity")
    follower = FollowerView(D("0.5"), {"f": D("0.5")}, equity=follower_equity)
    d = run([f], {A: lead("3", equity=leader_equity)}, follower)
    assert d.intents == ()
    assert skip_reasons(d) == {"f": reason}
    assert d.targets[0].szi == D("0.5")  # held where it is, not closed on a missing figure


def test_a_flat_leader_is_a_zero_target_whatever_the_sizing() -> None:
    f = follow(sizing="equity")
    d = run([f], {A: lead("0")}, FollowerView(D("0.5"), {"f": D("0.5")}))
    intent = only(d)
    assert (intent.is_buy, intent.sz, intent.reduce_only, intent.reason) == (
        False,
        D("0.5"),
        True,
        "close",
    )


def test_fixed_notional_sizes_by_the_mid_and_holds_within_its_band() -> None:
    f = follow(sizing="fixed_notional", fixed_notional_usd=D("1000"))
    intent = only(run([f], {A: lead("-7")}))
    assert (intent.is_buy, intent.sz) == (False, D("0.5"))  # 1000 / 2000
    # The price moved 5%: 0.5 ETH is now $1,050, inside the 10% band: no re-sizing.
    assert run([f], {A: lead("-7")}, held("-0.5", f="-0.5"), mid=D("2100")).intents == ()
    # Moved 20%: outside the band, re-sized to 1000 / 2500 = 0.4.
    resized = only(run([f], {A: lead("-7")}, held("-0.5", f="-0.5"), mid=D("2500")))
    assert (resized.is_buy, resized.sz, resized.reduce_only) == (True, D("0.1"), True)


# --- limits ----------------------------------------------------------------------------------


def test_the_per_coin_limit_clamps_the_target() -> None:
    f = follow(max_notional_per_coin_usd=D("1000"))
    intent = only(run([f], {A: lead("3")}))
    assert intent.sz == D("0.5")
    assert intent.reason == "open;limit_reached"
    at_cap = run([f], {A: lead("3")}, held("0.5", f="0.5"))
    assert at_cap.intents == ()
    assert [(s.reason, s.szi) for s in at_cap.skips] == [(SkipReason.LIMIT_REACHED, D("2.5"))]


def test_the_total_limit_counts_the_follows_other_coins() -> None:
    f = follow(max_total_notional_usd=D("10000"))
    follower = FollowerView(D(0), other_notional={"f": D("9500")})
    assert only(run([f], {A: lead("3")}, follower)).sz == D("0.25")  # $500 of room


def test_the_leverage_limit_is_total_notional_over_follower_equity() -> None:
    f = follow(max_leverage=D("2"))
    follower = FollowerView(D(0), equity=D("1000"), other_notional={"f": D("1500")})
    assert only(run([f], {A: lead("3")}, follower)).sz == D("0.25")  # 2 x 1000 - 1500 = $500
    unknown = run([f], {A: lead("3")}, FollowerView(D(0)))
    assert unknown.intents == ()
    assert skip_reasons(unknown) == {"f": SkipReason.FOLLOWER_EQUITY_UNKNOWN}


def test_a_position_over_a_limit_because_the_price_moved_is_held_not_trimmed() -> None:
    f = follow(max_notional_per_coin_usd=D("1000"))
    # 0.5 ETH was at the cap at 2000; at 2500 it is $1,250. The leader still holds 3.
    d = run([f], {A: lead("3")}, held("0.5", f="0.5"), mid=D("2500"))
    assert d.intents == ()
    assert d.targets[0].szi == D("0.5")
    # The leader halves: its target 1.5 is still above the cap (0.4), so the position is held...
    assert run([f], {A: lead("1.5")}, held("0.5", f="0.5"), mid=D("2500")).intents == ()
    # ...and follows the leader down below it: 0.3 ETH wanted, a sell of 0.2.
    down = only(run([f], {A: lead("0.3")}, held("0.5", f="0.5"), mid=D("2500")))
    assert (down.is_buy, down.sz, down.reduce_only) == (False, D("0.2"), True)


def test_account_limits_cap_what_grows_the_account_and_any_one_order() -> None:
    limits = AccountLimits(max_coin_notional_usd=D("3000"))
    d = run([follow()], {A: lead("5")}, held("1"), account_limits=limits)  # 1 ETH is manual
    assert only(d).sz == D("0.5")  # room: 3000 / 2000 - 1
    assert "limit_reached" in only(d).reason
    assert [(s.reason, s.szi) for s in d.skips] == [(SkipReason.LIMIT_REACHED, D("4.5"))]
    capped = run(
        [follow()], {A: lead("5")}, account_limits=AccountLimits(max_order_notional_usd=D("1005"))
    )
    assert only(capped).sz == D("0.5")  # 1005 / 2010 at the limit price


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        ({"coins": frozenset({"BTC"})}, SkipReason.COIN_FILTERED),
        ({"exclude_coins": frozenset({"ETH"})}, SkipReason.COIN_FILTERED),
        ({"active_hours_utc": (8, 20)}, SkipReason.OUTSIDE_HOURS),  # it is 22:13 UTC
        ({"active_hours_utc": (23, 6)}, SkipReason.OUTSIDE_HOURS),
        ({"winding_down": True}, SkipReason.REDUCING_ONLY),
        ({"started_ms": NOW}, SkipReason.WAITING_ENTRY),
        ({"started_ms": NOW, "entry": "adopt"}, SkipReason.ADOPT_DEVIATION),
        ({"max_fill_age_ms": 999}, SkipReason.STALE_FILL),
    ],
)
def test_filters_skip_growth_but_always_let_a_reduction_through(
    rules: dict[str, Any], reason: SkipReason
) -> None:
    f = follow(**rules)
    leader = lead("2", entry_px=D("1500"))  # changed 1 s ago, entry 25% from the mid
    grow = run([f], {A: leader}, held("0.5", f="0.5"))
    assert grow.intents == ()
    assert [(s.follow_id, s.reason, s.szi) for s in grow.skips] == [("f", reason, D("1.5"))]
    shrink = only(run([f], {A: lead("0.2", entry_px=D("1500"))}, held("0.5", f="0.5")))
    assert (shrink.is_buy, shrink.sz, shrink.reduce_only) == (False, D("0.3"), True)
    # A flip is cut at zero: the close goes, the open is skipped.
    flip = run([f], {A: lead("-2", entry_px=D("1500"))}, held("0.5", f="0.5"))
    assert (only(flip).sz, only(flip).reason) == (D("0.5"), f"close;{reason.value}")


def test_hours_that_wrap_midnight_include_the_late_evening() -> None:
    assert only(run([follow(active_hours_utc=(22, 6))], {A: lead("1")})).sz == D("1")
    assert only(run([follow(active_hours_utc=(0, 24))], {A: lead("1")})).sz == D("1")


def test_an_unconfirmed_leader_position_never_opens_but_may_reduce() -> None:
    grow = run([follow()], {A: lead("2", confirmed=False)})
    assert grow.intents == ()
    assert skip_reasons(grow) == {"f": SkipReason.LEADER_UNCONFIRMED}
    shrink = run([follow()], {A: lead("0", confirmed=False)}, held("1", f="1"))
    assert only(shrink).reduce_only


def test_wait_copies_once_the_leader_changes_after_the_follow_started() -> None:
    f = follow(started_ms=NOW - 10_000)
    before = run([f], {A: lead("2", changed=NOW - 20_000)})
    assert skip_reasons(before) == {"f": SkipReason.WAITING_ENTRY}
    assert only(run([f], {A: lead("2", changed=NOW - 5_000)})).sz == D("2")
    # A trigger fill is a change too, even before the book's last_change has caught up.
    assert only(run([f], {A: lead("2", changed=None)}, trigger=fill())).sz == D("2")


def test_wait_takes_a_streamed_fill_stamped_just_before_the_follow_as_after_it() -> None:
    # The leader traded as the follow began: the stream brings its fill, stamped with its block's
    # time, which trails the host's clock (CI: a copy lost to a 29 ms lag).
    f = follow(started_ms=NOW)
    just = NOW - EXCHANGE_TIME_LAG_MS
    for t in (NOW - 100, just):  # a tick of the simulator's clock; the allowance
        for source in ("userFills", "firehose"):
            streamed = replace(fill(t=t), source=source)
            assert only(run([f], {A: lead("2", changed=None)}, trigger=streamed)).sz == D("2")
    # Earlier than that, or history (a gap-fill's REST fill, a book's date), it waits.
    for trigger, changed in (
        (fill(t=just - 1), None),
        (replace(fill(t=NOW - 100), source="rest"), None),
        (None, NOW - 100),
    ):
        waits = run([f], {A: lead("2", changed=changed)}, trigger=trigger)
        assert skip_reasons(waits) == {"f": SkipReason.WAITING_ENTRY}


def test_adopt_copies_a_position_near_the_leaders_entry_however_old() -> None:
    f = follow(started_ms=NOW, entry="adopt", adopt_max_deviation_bps=100, max_fill_age_ms=1)
    near = lead("2", changed=NOW - 86_400_000, entry_px=D("1985"))  # 0.76% away
    assert only(run([f], {A: near})).sz == D("2")
    far = lead("2", changed=NOW - 86_400_000, entry_px=D("1970"))  # 1.52% away
    assert skip_reasons(run([f], {A: far})) == {"f": SkipReason.ADOPT_DEVIATION}
    no_entry = lead("2", changed=None)
    assert skip_reasons(run([f], {A: no_entry})) == {"f": SkipReason.ADOPT_DEVIATION}


def test_staleness_is_judged_on_the_freshest_known_change() -> None:
    f = follow(max_fill_age_ms=5_000)
    old = fill(t=NOW - 60_000)
    assert skip_reasons(run([f], {A: lead("2", changed=NOW - 60_000)}, trigger=old)) == {
        "f": SkipReason.STALE_FILL
    }
    # A reordered old fill arriving after a fresh change does not block the fresh position.
    assert only(run([f], {A: lead("2", changed=NOW - 1_000)}, trigger=old)).sz == D("2")
    # Reconciliation (no trigger) never chases an old move.
    stale = run([f], {A: lead("2", changed=NOW - 60_000)})
    assert skip_reasons(stale) == {"f": SkipReason.STALE_FILL}


# --- risk ------------------------------------------------------------------------------------


def test_halted_does_nothing_at_all_not_even_reduce() -> None:
    follower = held("1", f="1")
    for d in (
        run([follow()], {A: lead("0")}, follower, risk={"f": TradingState.HALTED}),
        run([follow()], {A: lead("0")}, follower, global_risk=TradingState.HALTED),
    ):
        assert d.intents == ()
        assert d.transfers == ()
        assert [(s.reason, s.szi) for s in d.skips] == [(SkipReason.HALTED, D("-1"))]


def test_reducing_allows_only_reductions_and_never_flips() -> None:
    r = {"f": TradingState.REDUCING}
    grow = run([follow()], {A: lead("2")}, held("1", f="1"), risk=r)
    assert skip_reasons(grow) == {"f": SkipReason.REDUCING_ONLY}
    assert grow.intents == ()
    flip = only(run([follow()], {A: lead("-2")}, held("1", f="1"), risk=r))
    assert (flip.is_buy, flip.sz, flip.reduce_only) == (False, D("1"), True)
    assert only(
        run([follow()], {A: lead("-2")}, held("1", f="1"), global_risk=TradingState.REDUCING)
    ).reduce_only


# --- unknowns --------------------------------------------------------------------------------


def test_no_price_no_leader_and_delisted_hold_everything() -> None:
    follower = held("1", f="1")
    assert skip_reasons(run([follow()], {A: lead("0")}, follower, mid=None)) == {
        "f": SkipReason.NO_PRICE
    }
    unknown = run([follow()], {}, follower)
    assert [(s.reason, s.szi) for s in unknown.skips] == [(SkipReason.LEADER_UNKNOWN, D(0))]
    gone = run([follow()], {A: lead("0")}, follower, asset=Asset("ETH", 1, 4, 50, delisted=True))
    assert skip_reasons(gone) == {"f": SkipReason.DELISTED}
    for d in (unknown, gone):
        assert d.intents == ()


# --- lots, minimum, reduce-only, flips ---------------------------------------------------------


def test_sizes_round_toward_zero_so_no_limit_is_ever_overshot() -> None:
    # 0.33333 ETH wanted: buy 0.3333 (rounded down).
    assert only(run([follow(ratio=D("0.1"))], {A: lead("3.3333")})).sz == D("0.3333")
    # From 0.5, 0.33333 wanted: sell 0.1667 (the reduction rounded up).
    d = run([follow(ratio=D("0.1"))], {A: lead("3.3333")}, held("0.5", f="0.5"))
    assert only(d).sz == D("0.1667")


def test_below_the_lot_nothing_trades_and_a_leader_fill_says_why() -> None:
    d = run([follow(ratio=D("0.00001"))], {A: lead("2")}, trigger=fill())
    assert d.intents == ()
    assert [(s.reason, s.szi) for s in d.skips] == [(SkipReason.BELOW_LOT, D("0.00002"))]
    assert run([follow(ratio=D("0.00001"))], {A: lead("2")}).skips == ()


def test_an_order_under_ten_dollars_is_skipped_by_default() -> None:
    d = run([follow()], {A: lead("0.004")})  # $8.04 at 2010
    assert d.intents == ()
    assert [(s.reason, s.szi) for s in d.skips] == [(SkipReason.BELOW_MIN_NOTIONAL, D("0.004"))]


def test_round_up_raises_an_order_to_ten_dollars_within_the_limits() -> None:
    f = follow(min_notional_policy="round_up")
    intent = only(run([f], {A: lead("0.004")}))
    assert intent.sz == D("0.005")  # 50 lots x 0.0001 x 2010 = $10.05
    assert intent.reason == "open;round_up"
    capped = follow(min_notional_policy="round_up", max_notional_per_coin_usd=D("9"))
    d = run([capped], {A: lead("0.004")})
    assert d.intents == ()
    assert skip_reasons(d) == {"f": SkipReason.BELOW_MIN_NOTIONAL}


def test_round_up_never_inflates_a_reduction() -> None:
    f = follow(min_notional_policy="round_up")
    d = run([f], {A: lead("0.996")}, held("1", f="1"))  # sell 0.004: $7.96
    assert d.intents == ()
    assert skip_reasons(d) == {"f": SkipReason.BELOW_MIN_NOTIONAL}


def test_closing_the_whole_position_is_exempt_from_the_minimum() -> None:
    intent = only(run([follow()], {A: lead("0")}, held("0.004", f="0.004")))
    assert (intent.sz, intent.reduce_only, intent.reason) == (D("0.004"), True, "close")
    # Not while another order is in flight: the exchange's position may differ from ours.
    busy = FollowerView(D("0.003"), {"f": D("0.003")}, {"f": D("0.001")})
    d = run([follow()], {A: lead("0")}, busy)
    assert d.intents == ()
    assert skip_reasons(d) == {"f": SkipReason.BELOW_MIN_NOTIONAL}


def test_pending_orders_count_as_done() -> None:
    follower = FollowerView(D(0), pending={"f": D("0.6")})
    assert only(run([follow()], {A: lead("1")}, follower)).sz == D("0.4")
    assert run([follow()], {A: lead("0.6")}, follower).intents == ()


def test_a_flip_is_a_reduce_only_close_then_an_open_with_their_own_cloids() -> None:
    d = run([follow()], {A: lead("-1")}, held("1", f="1"), trigger=fill(tid=5))
    close, open_ = d.intents
    assert (close.is_buy, close.sz, close.reduce_only, close.reason) == (
        False,
        D("1"),
        True,
        "flip_close",
    )
    assert (open_.is_buy, open_.sz, open_.reduce_only, open_.reason) == (
        False,
        D("1"),
        False,
        "flip_open",
    )
    assert close.cloid == derive_cloid(f"f|{A}|5|0|close")
    assert open_.cloid == derive_cloid(f"f|{A}|5|0|open")
    assert (close.source_tid, close.leader) == (5, A)
    # A flip whose open part is under $10 still closes.
    small = run([follow()], {A: lead("-0.001")}, held("1", f="1"))
    assert [(i.sz, i.reason) for i in small.intents] == [(D("1"), "close")]
    assert skip_reasons(small) == {"f": SkipReason.BELOW_MIN_NOTIONAL}


def test_the_follower_position_opened_outside_hlcopy_is_left_alone() -> None:
    # 5 ETH long by hand; the follow wants 1 short: a reduce-only sell of 1, attributed to it.
    intent = only(run([follow(mode="inverse")], {A: lead("1")}, held("5")))
    assert (intent.is_buy, intent.sz, intent.reduce_only, intent.reason) == (
        False,
        D("1"),
        True,
        "reduce",
    )
    # Nothing attributed and a flat leader: the manual position is not touched.
    assert run([follow()], {A: lead("0")}, held("5")).intents == ()


# --- several follows -------------------------------------------------------------------------


def test_opposite_moves_net_as_a_transfer_and_the_rest_is_one_order() -> None:
    fa = follow("a", A)
    fb = follow("b", B, mode="inverse")
    # a wants +3, b wants -1: b hands 1 to a internally, one buy of 2 for a.
    d = run([fa, fb], {A: lead("3"), B: lead("1")}, trigger=fill(B, tid=9))
    assert [(t.from_follow, t.to_follow, t.sz, t.px) for t in d.transfers] == [
        ("b", "a", D("1"), MID)
    ]
    intent = only(d)
    assert (intent.is_buy, intent.sz, intent.attribution) == (True, D("2"), (("a", D("2")),))
    assert intent.cloid == derive_cloid(f"a|{B}|9|0")  # first follow id, the trigger's leader


def test_same_side_moves_share_one_order_in_proportion() -> None:
    follows = [follow("a", A), follow("b", A, ratio=D("2")), follow("c", B)]
    d = run(follows, {A: lead("1"), B: lead("-1.5")})
    # a +1, b +2, c -1.5: c's 1.5 is netted, a and b share the remaining 1.5 buy 1:2.
    intent = only(d)
    assert intent.sz == D("1.5")
    assert intent.attribution == (("a", D("0.5")), ("b", D("1")))
    assert sum(t.sz for t in d.transfers) == D("1.5")


def test_the_order_of_the_follows_does_not_matter() -> None:
    follows = [follow("a", A), follow("b", A, ratio=D("2")), follow("c", B, mode="inverse")]
    leaders = {A: lead("1.2345"), B: lead("0.5")}
    follower = held("0.3", a="0.1", c="0.2")
    first = run(follows, leaders, follower)
    assert first.intents
    assert run(list(reversed(follows)), dict(reversed(leaders.items())), follower) == first


# --- cloids, prices, inputs ------------------------------------------------------------------


def test_reconciliation_cloids_differ_by_coin_epoch_and_attempt() -> None:
    ids = {
        intent_cloid("f", A, None, 3, "ETH", 0),
        intent_cloid("f", A, None, 3, "BTC", 0),
        intent_cloid("f", A, None, 4, "ETH", 0),
        intent_cloid("f", A, None, 3, "ETH", 1),
        intent_cloid("f", A, 3, 0, "ETH", 0),
    }
    assert len(ids) == 5
    d = run([follow()], {A: lead("1")}, epoch=3, attempt=2)
    assert only(d).cloid == intent_cloid("f", A, None, 3, "ETH", 2)
    assert only(d).attempt == 2


def test_the_limit_price_is_on_the_tick_grid_and_uses_the_tightest_slippage() -> None:
    btc = Asset("BTC", 0, 5, 50)
    follows = [follow("a", A, slippage_bps=80), follow("b", A, slippage_bps=30)]
    buy = only(run(follows, {A: lead("0.5")}, mid=D("61234.5"), asset=btc))
    assert buy.limit_px == D("61418")  # 61234.5 x 1.003 = 61418.2035, rounded down
    sell = only(run(follows, {A: lead("-0.5")}, mid=D("61234.5"), asset=btc))
    assert sell.limit_px == D("61051")  # 61050.7965, rounded up
    assert is_valid_price(buy.limit_px, 5, False)
    assert is_valid_price(sell.limit_px, 5, False)


def test_inputs_off_the_lot_grid_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match=r"^follower.szi = 0.00005 is not a multiple of the lot"):
        run([follow()], {A: lead("1")}, FollowerView(D("0.00005"), {"f": D("0.00005")}))
    with pytest.raises(ValueError, match=r"^attributed\[f\] = 0.00005 is not a multiple"):
        run([follow()], {A: lead("1")}, FollowerView(D("0.0001"), {"f": D("0.00005")}))
    with pytest.raises(ValueError, match=r"^pending\[f\] = 0.00003 is not a multiple"):
        run([follow()], {A: lead("1")}, FollowerView(D("0"), {}, pending={"f": D("0.00003")}))
    with pytest.raises(ValueError, match=r"^pending\[f\] = NaN is not a multiple"):
        run([follow()], {A: lead("1")}, FollowerView(D("0"), {}, pending={"f": D("NaN")}))
    with pytest.raises(ValueError, match="trigger is for BTC"):
        run([follow()], {A: lead("1")}, trigger=fill(coin="BTC"))
    with pytest.raises(ValueError, match="unique"):
        run([follow(), follow()], {A: lead("1")})


@pytest.mark.parametrize(
    "kw",
    [
        {"leader": "0xABC"},
        {"ratio": D(0)},
        {"sizing": "fixed_notional"},
        {"max_leverage": D(0)},
        {"active_hours_utc": (5, 5)},
        {"active_hours_utc": (24, 3)},
        {"slippage_bps": -1},
        {"max_fill_age_ms": 0},
    ],
)
def test_nonsense_follows_are_refused(kw: dict[str, Any]) -> None:
    args = {"id": "f", "leader": A, **kw}
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        Follow(**args)


# --- allocation ------------------------------------------------------------------------------


def test_allocation_sums_exactly_and_keeps_every_share_within_its_weight() -> None:
    lot = D("0.1")
    # 0.2 over three equal 0.1s: two get a lot, none gets two.
    assert allocate(D("0.2"), [("a", D("0.1")), ("b", D("0.1")), ("c", D("0.1"))], lot) == (
        ("a", D("0.1")),
        ("b", D("0.1")),
        ("c", D("0")),
    )
    # 1.0 over 0.6 / 0.3 / 0.3 (1.2): exact 0.5 / 0.25 / 0.25 -> 0.5 / 0.2 / 0.2 + 0.1 to b.
    assert allocate(D("1.0"), [("a", D("0.6")), ("b", D("0.3")), ("c", D("0.3"))], lot) == (
        ("a", D("0.5")),
        ("b", D("0.3")),
        ("c", D("0.2")),
    )
    with pytest.raises(ValueError, match="cannot split"):
        allocate(D("1"), [("a", D("0.5"))], lot)


def test_a_partial_fill_splits_on_the_grid() -> None:
    shares = split_fill(D("0.7"), [("a", D("0.6")), ("b", D("0.4"))], 1)
    assert shares == (("a", D("0.4")), ("b", D("0.3")))  # exact 0.42 / 0.28


def test_a_global_reducing_never_grows_the_account() -> None:
    # 5 ETH long by hand, the follow short 2: the follow's leader closes, so the follow buys 2
    # back — which shrinks the follow but grows the account. Global REDUCING forbids it.
    follower = held("3", f="-2")
    d = run([follow()], {A: lead("0")}, follower, global_risk=TradingState.REDUCING)
    assert d.intents == ()
    assert [(s.reason, s.szi) for s in d.skips] == [(SkipReason.REDUCING_ONLY, D("2"))]
    # The follow's own REDUCING is about the follow: it may buy back its short.
    mine = only(run([follow()], {A: lead("0")}, follower, risk={"f": TradingState.REDUCING}))
    assert (mine.is_buy, mine.sz, mine.reduce_only) == (True, D("2"), False)


def test_a_follow_moved_only_by_a_transfer_still_reports_what_was_left_out() -> None:
    fa = follow("a", A, max_notional_per_coin_usd=D("1000"))  # wants 3, capped at 0.5
    fb = follow("b", B, mode="inverse")  # wants -1
    d = run([fa, fb], {A: lead("3"), B: lead("1")})
    assert [(t.from_follow, t.to_follow, t.sz) for t in d.transfers] == [("b", "a", D("0.5"))]
    assert only(d).attribution == (("b", D("0.5")),)
    assert [(s.follow_id, s.reason, s.szi, s.detail) for s in d.skips] == [
        ("a", SkipReason.LIMIT_REACHED, D("2.5"), "follow")
    ]
