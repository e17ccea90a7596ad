"""The drift core: how a difference between the exchange and hlcopy's books is read."""

from __future__ import annotations

from decimal import Decimal

from hlcopy.follow.drift import reconcile_at_start, reconcile_coin, scale_parts, spread
from hypothesis import given
from hypothesis import strategies as st

D = Decimal
LOT = D("0.001")


def test_agreement_is_no_drift() -> None:
    assert reconcile_coin("ETH", D("1.5"), {"a": D(1)}, D("0.5"), {}, 3) is None
    assert reconcile_at_start("ETH", D(1), {"a": D("0.6"), "b": D("0.4")}, 3) is None


def test_a_shrink_in_a_held_coin_is_drift_the_parts_absorb_in_proportion() -> None:
    d = reconcile_coin("ETH", D("0.5"), {"a": D("0.75"), "b": D("0.25")}, D(0), {}, 3)
    assert d is not None
    assert d.kind == "drift"
    assert d.parts == {"a": D("0.375"), "b": D("0.125")}
    assert d.outside == 0
    assert d.gated == ()
    assert d.size == D("-0.5")


def test_growth_in_a_held_coin_is_drift_too_so_a_double_is_sold_back() -> None:
    d = reconcile_coin("ETH", D(2), {"a": D(1)}, D(0), {"a": D(1)}, 3)
    assert d is not None
    assert d.kind == "drift"
    assert d.parts == {"a": D(2)}


def test_the_outside_baseline_is_kept_apart() -> None:
    d = reconcile_coin("ETH", D("1.2"), {"a": D(1)}, D("0.5"), {}, 3)
    assert d is not None
    assert d.kind == "drift"
    assert d.parts == {"a": D("0.7")}
    assert d.outside == D("0.5")


def test_a_coin_hlcopy_neither_holds_nor_targets_is_outside_and_left_alone() -> None:
    d = reconcile_coin("SOL", D(-3), {}, D(0), {"a": D(0)}, 2)
    assert d is not None
    assert d.kind == "outside"
    assert d.outside == D(-3)
    assert d.parts == {}


def test_a_coin_only_targeted_spreads_the_difference_over_the_targets() -> None:
    d = reconcile_coin("ETH", D("0.3"), {}, D(0), {"a": D(2), "b": D(1)}, 3)
    assert d is not None
    assert d.kind == "drift"
    assert d.parts == {"a": D("0.2"), "b": D("0.1")}


def test_a_shrink_after_a_stop_gates_the_follows_that_lost() -> None:
    d = reconcile_coin("ETH", D("0.25"), {"a": D(1), "b": D("-0.5")}, D(0), {}, 3, gate_shrink=True)
    assert d is not None
    assert d.gated == ("a", "b")
    d = reconcile_coin("ETH", D(2), {"a": D(1)}, D(0), {}, 3, gate_shrink=True)
    assert d is not None
    assert d.gated == ()


def test_at_start_more_on_the_same_side_is_outside_less_is_gated_drift() -> None:
    more = reconcile_at_start("ETH", D(3), {"a": D(1)}, 3)
    assert more is not None
    assert more.kind == "outside"
    assert more.outside == D(2)
    less = reconcile_at_start("ETH", D("0.4"), {"a": D(1)}, 3)
    assert less is not None
    assert less.kind == "drift"
    assert less.parts == {"a": D("0.4")}
    assert less.gated == ("a",)
    flipped = reconcile_at_start("ETH", D(-1), {"a": D(1)}, 3)
    assert flipped is not None
    assert flipped.kind == "drift"
    assert flipped.parts == {"a": D(-1)}
    nothing_held = reconcile_at_start("BTC", D("0.1"), {}, 3)
    assert nothing_held is not None
    assert nothing_held.kind == "outside"


sizes = st.integers(-5_000, 5_000).map(lambda n: n * LOT)


@given(
    st.dictionaries(st.sampled_from("abcd"), sizes, min_size=1).filter(
        lambda p: sum(p.values()) != 0
    ),
    sizes,
)
def test_scaled_parts_sum_exactly_on_the_lot_grid(
    parts: dict[str, Decimal], total: Decimal
) -> None:
    out = scale_parts(parts, total, 3)
    assert sum(out.values()) == total
    assert all((v / LOT) == (v / LOT).to_integral_value() for v in out.values())
    assert set(out) == set(parts)


@given(
    sizes,
    st.dictionaries(st.sampled_from("abcd"), sizes, min_size=1).filter(
        lambda w: any(v != 0 for v in w.values())
    ),
)
def test_spread_sums_exactly_on_the_lot_grid(total: Decimal, weights: dict[str, Decimal]) -> None:
    out = spread(total, weights, 3)
    assert sum(out.values()) == total
    assert all((v / LOT) == (v / LOT).to_integral_value() for v in out.values())


@given(sizes, st.dictionaries(st.sampled_from("abc"), sizes), sizes)
def test_after_a_correction_the_books_agree_with_the_exchange(
    real: Decimal, parts: dict[str, Decimal], outside: Decimal
) -> None:
    d = reconcile_coin("ETH", real, parts, outside, {"a": D(1)}, 3)
    if d is None:
        assert sum(parts.values(), D(0)) + outside == real
        return
    assert sum(d.parts.values(), D(0)) + d.outside == real
    assert reconcile_coin("ETH", real, d.parts, d.outside, {"a": D(1)}, 3) is None
