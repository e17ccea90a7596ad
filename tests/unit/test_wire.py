"""Wire formats: tick and lot rounding, canonical strings, action key order."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hlcopy.errors import WireError
from hlcopy.hl import wire
from hlcopy.hl.wire import (
    Rounding,
    is_valid_price,
    is_valid_size,
    price_decimals,
    round_price,
    round_size,
    to_wire,
)
from hyperliquid.utils.signing import float_to_wire
from hypothesis import assume, given
from hypothesis import strategies as st

D = Decimal

# Positive prices across the range real markets span: 1e-8 .. 1e8 with up to 12 digits.
prices = st.builds(
    lambda m, e: D(m).scaleb(e), st.integers(1, 10**12 - 1), st.integers(-20, 0)
).filter(lambda p: D("1e-8") <= p <= D("1e8"))
perp_sz_decimals = st.integers(0, 5)
spot_sz_decimals = st.integers(0, 7)
roundings = st.sampled_from(list(Rounding))


def _quantum(px: Decimal, sz_decimals: int, is_spot: bool) -> Decimal:
    return D(1).scaleb(-price_decimals(px, sz_decimals, is_spot))


@pytest.mark.parametrize(
    ("px", "sz_decimals", "is_spot", "valid"),
    [
        # The exchange's own examples (tick-and-lot-size page).
        ("1234.5", 0, False, True),
        ("1234.56", 0, False, False),
        ("0.001234", 0, False, True),
        ("0.0012345", 0, False, False),
        ("0.01234", 1, False, True),
        ("0.012345", 1, False, False),
        ("0.0001234", 0, True, True),
        ("0.0001234", 1, True, True),
        ("0.0001234", 2, True, False),
        ("123456", 0, False, True),  # integer prices always allowed
        ("12345.6", 0, False, False),
        ("100000000", 5, False, True),
        ("0", 0, False, False),
        ("-1", 0, False, False),
    ],
)
def test_documented_price_examples(px: str, sz_decimals: int, is_spot: bool, valid: bool) -> None:
    assert is_valid_price(D(px), sz_decimals, is_spot) is valid


@given(prices, perp_sz_decimals, st.booleans(), roundings)
def test_rounded_prices_are_valid_and_move_only_in_the_given_direction(
    px: Decimal, szd: int, is_spot: bool, rounding: Rounding
) -> None:
    try:
        out = round_price(px, szd, is_spot, rounding)
    except WireError:
        assert rounding is not Rounding.UP  # only rounding down a tiny price can reach zero
        return
    assert is_valid_price(out, szd, is_spot)
    q = _quantum(px, szd, is_spot)
    if rounding is Rounding.DOWN:  # a sell floor / buy cap is never crossed
        assert out <= px < out + q or out == px
    elif rounding is Rounding.UP:
        assert out - q < px <= out or out == px
    else:
        assert abs(out - px) <= q / 2 or px == px.to_integral_value()
    assert round_price(out, szd, is_spot, rounding) == out  # idempotent


@given(prices, spot_sz_decimals, roundings)
def test_spot_prices_use_eight_decimals(px: Decimal, szd: int, rounding: Rounding) -> None:
    try:
        out = round_price(px, szd, True, rounding)
    except WireError:
        return
    assert is_valid_price(out, szd, True)
    decimals = max(0, -out.normalize().as_tuple().exponent)  # type: ignore[operator]
    assert decimals <= 8 - szd


@given(st.decimals(min_value=0, max_value=10**9, places=10), perp_sz_decimals, roundings)
def test_sizes_are_lot_multiples(sz: Decimal, szd: int, rounding: Rounding) -> None:
    out = round_size(sz, szd, rounding)
    lot = D(1).scaleb(-szd)
    assert out % lot == 0
    if rounding is Rounding.DOWN:
        assert out <= sz < out + lot
    elif rounding is Rounding.UP:
        assert out - lot < sz <= out
    if out > 0:
        assert is_valid_size(out, szd)


@given(st.decimals(min_value=D("-1e12"), max_value=D("1e12"), places=8, allow_nan=False))
def test_to_wire_round_trips_and_is_canonical(value: Decimal) -> None:
    text = to_wire(value)
    assert D(text) == value
    assert "E" not in text
    assert "e" not in text
    assert not text.startswith("+")
    if "." in text:
        assert not text.endswith("0")
        assert not text.endswith(".")
    assert text != "-0"


@given(prices, perp_sz_decimals, st.decimals(min_value=D("0.00001"), max_value=10**6, places=5))
def test_wire_strings_equal_the_sdks(px: Decimal, szd: int, raw_sz: Decimal) -> None:
    """What we send is byte-for-byte what the official SDK would send for the same value."""
    assume(px >= D(1).scaleb(szd - 6))  # below one tick every price rounds to zero
    price = round_price(px, szd, False, Rounding.NEAREST)
    size = round_size(raw_sz, szd)
    assert to_wire(price) == float_to_wire(float(price))
    if size > 0:
        assert to_wire(size) == float_to_wire(float(size))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", "100"),
        ("100.000", "100"),
        ("1E+2", "100"),
        ("0.0147", "0.0147"),
        ("0.01470", "0.0147"),
        ("-0", "0"),
        ("0E-8", "0"),
        ("1670.1", "1670.1"),
        ("0.00000001", "0.00000001"),
        # More digits than the default decimal context holds: still exact, with or without zeros.
        ("1234567890123456789012345678.9", "1234567890123456789012345678.9"),
        ("1234567890123456789012345678.90", "1234567890123456789012345678.9"),
    ],
)
def test_to_wire_examples(value: str, expected: str) -> None:
    assert to_wire(D(value)) == expected


@pytest.mark.parametrize(
    "bad", [1.5, 3, "1.5", D("NaN"), D("Infinity"), D("0.000000001"), D("0.123456789"), D("1E-9")]
)
def test_to_wire_refuses_what_it_cannot_send_exactly(bad: object) -> None:
    with pytest.raises(WireError):
        to_wire(bad)  # type: ignore[arg-type]


def test_rounding_a_tiny_price_down_to_zero_raises() -> None:
    with pytest.raises(WireError, match="rounds down to zero"):
        round_price(D("0.0000001"), 5, False, Rounding.DOWN)
    with pytest.raises(WireError):
        round_price(D(0), 0, False, Rounding.UP)


def test_min_notional() -> None:
    assert wire.meets_min_notional(D("10"), D("1"))
    assert not wire.meets_min_notional(D("9.99"), D("1"))
    assert wire.meets_min_notional(D("1"), D("1"), closes_position=True)  # a full close is exempt


def test_order_wire_key_order_and_values() -> None:
    w = wire.order_wire(4, True, D("1670.10"), D("0.0147"), False, "Ioc", "0x" + "AB" * 16)
    assert list(w) == ["a", "b", "p", "s", "r", "t", "c"]
    assert w == {
        "a": 4,
        "b": True,
        "p": "1670.1",
        "s": "0.0147",
        "r": False,
        "t": {"limit": {"tif": "Ioc"}},
        "c": "0x" + "ab" * 16,
    }
    trig = wire.order_wire(
        1,
        False,
        D(100),
        D(1),
        True,
        None,
        trigger={"triggerPx": D("103.0"), "isMarket": True, "tpsl": "sl"},
    )
    assert list(trig) == ["a", "b", "p", "s", "r", "t"]
    assert list(trig["t"]["trigger"]) == ["isMarket", "triggerPx", "tpsl"]
    assert trig["t"]["trigger"]["triggerPx"] == "103"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tif": "Fok"}, "tif must be"),
        ({"tif": "Gtc", "trigger": {"triggerPx": D(1), "isMarket": True, "tpsl": "sl"}}, "no tif"),
        ({"tif": None, "trigger": {"triggerPx": D(1), "isMarket": True, "tpsl": "x"}}, "tpsl"),
        ({"tif": "Gtc", "cloid": "0x1234"}, "cloid"),
    ],
)
def test_order_wire_refuses_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.order_wire(0, True, D(1), D(1), False, **kwargs)  # type: ignore[arg-type]


def test_action_builders_key_order() -> None:
    o = wire.order_wire(0, True, D(1), D(1), False, "Gtc")
    act = wire.order_action([o], builder={"b": "0x" + "AA" * 20, "f": 10})
    assert list(act) == ["type", "orders", "grouping", "builder"]
    assert act["builder"] == {"b": "0x" + "aa" * 20, "f": 10}
    assert list(wire.order_action([o])) == ["type", "orders", "grouping"]
    assert wire.cancel_action([(1, 2)]) == {"type": "cancel", "cancels": [{"a": 1, "o": 2}]}
    c = "0x" + "01" * 16
    assert wire.cancel_by_cloid_action([(3, c)]) == {
        "type": "cancelByCloid",
        "cancels": [{"asset": 3, "cloid": c}],
    }
    assert list(wire.modify_action(5, o)) == ["type", "oid", "order"]
    assert wire.batch_modify_action([(c, o)])["modifies"] == [{"oid": c, "order": o}]
    assert wire.schedule_cancel_action(None) == {"type": "scheduleCancel"}
    assert wire.schedule_cancel_action(7) == {"type": "scheduleCancel", "time": 7}
    assert list(wire.update_leverage_action(1, True, 5)) == ["type", "asset", "isCross", "leverage"]
    assert wire.noop_action() == {"type": "noop"}
    agent = wire.approve_agent_action("0x" + "BB" * 20, None, 9, False)
    assert agent["hyperliquidChain"] == "Testnet"
    assert agent["agentName"] == ""
    assert agent["agentAddress"] == "0x" + "bb" * 20


def test_batch_limits() -> None:
    o = wire.order_wire(0, True, D(1), D(1), False, "Gtc")
    assert len(wire.order_action([o] * 200)["orders"]) == 200
    with pytest.raises(WireError, match="at most 200"):
        wire.order_action([o] * 201)
    with pytest.raises(WireError, match="at least one"):
        wire.order_action([])
    with pytest.raises(WireError, match="at most 200"):
        wire.cancel_action([(0, i) for i in range(201)])
    with pytest.raises(WireError):
        wire.update_leverage_action(0, True, 0)
