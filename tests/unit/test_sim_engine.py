"""The simulator's engine: the exchange's rules and messages, fills, records, reproducibility."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hlcopy.hl.wire import Rounding, is_valid_price, round_price
from hlcopy.sim import views
from hlcopy.sim.auth import NonceBook
from hlcopy.sim.engine import Engine, OrderRequest, TradeRecord, fill_wire, trade_wire
from hlcopy.sim.population import Population

D = Decimal
USER = "0x" + "a1" * 20
OTHER = "0x" + "b2" * 20
BTC, ETH, MATIC = 0, 1, 3


def new_engine(usdc: int = 100_000) -> Engine:
    e = Engine(seed=5, start_ms=1_790_000_000_000)
    e.open_account(USER, D(usdc))
    return e


def mid(e: Engine, coin: str) -> Decimal:
    return e.by_name[coin].path.mid


def px(e: Engine, coin: str, factor: str, rounding: Rounding = Rounding.NEAREST) -> Decimal:
    a = e.by_name[coin]
    return round_price(a.path.mid * D(factor), a.sz_decimals, a.is_spot, rounding)


def place(
    e: Engine,
    asset: int,
    is_buy: bool,
    price: Decimal,
    sz: str,
    tif: str | None = "Ioc",
    reduce_only: bool = False,
    cloid: str | None = None,
    user: str = USER,
) -> Any:
    (status,) = e.place_orders(
        user, [OrderRequest(asset, is_buy, price, D(sz), reduce_only, tif, cloid)]
    )
    return status


def error(status: Any) -> str:
    assert isinstance(status, dict), status
    assert "error" in status, status
    return str(status["error"])


def test_tick_and_lot_rules() -> None:
    e = new_engine()
    assert error(place(e, BTC, True, mid(e, "BTC") + D("0.5"), "0.001")) == (
        "Price must be divisible by tick size. asset=0"
    )
    assert error(place(e, BTC, True, px(e, "BTC", "1.01"), "0.000001")) == (
        "Order has invalid size. asset=0"
    )


def test_minimum_notional_and_the_full_close_exemption() -> None:
    e = new_engine()
    assert error(place(e, BTC, True, px(e, "BTC", "1.01"), "0.0001")) == (
        "Order must have minimum value of $10. asset=0"
    )
    assert "filled" in place(e, BTC, True, px(e, "BTC", "1.01"), "0.00011")
    e.by_name["BTC"].path.set_mid(float(mid(e, "BTC")) * 0.8)  # the position is now under $10
    e.step()
    assert error(place(e, BTC, False, px(e, "BTC", "0.99"), "0.00005", reduce_only=True)) == (
        "Order must have minimum value of $10. asset=0"
    )
    closed = place(e, BTC, False, px(e, "BTC", "0.99"), "0.00011", reduce_only=True)
    assert closed["filled"]["totalSz"] == "0.00011"
    assert e.accounts[USER].positions["BTC"].szi == 0


def test_reduce_only_rules() -> None:
    e = new_engine()
    assert error(place(e, ETH, False, px(e, "ETH", "0.99"), "0.01", reduce_only=True)) == (
        "Reduce only order would increase position. asset=1"
    )
    place(e, ETH, True, px(e, "ETH", "1.01"), "0.01")
    assert error(place(e, ETH, True, px(e, "ETH", "1.01"), "0.01", reduce_only=True)).startswith(
        "Reduce only order would increase position."
    )
    shrunk = place(e, ETH, False, px(e, "ETH", "0.99"), "0.05", reduce_only=True)
    assert shrunk["filled"]["totalSz"] == "0.01"  # shrunk to the position, never flipped
    assert e.accounts[USER].positions["ETH"].szi == 0


def test_insufficient_margin() -> None:
    e = new_engine(usdc=1000)  # 20x on BTC: about $20k of notional
    assert error(place(e, BTC, True, px(e, "BTC", "1.01"), "0.3")) == (
        "Insufficient margin to place order. asset=0"
    )
    assert "filled" in place(e, BTC, True, px(e, "BTC", "1.01"), "0.1")
    # Reducing needs no margin, whatever the account has left.
    assert "filled" in place(e, BTC, False, px(e, "BTC", "0.99"), "0.1")


def test_prices_far_from_the_reference_reject_the_whole_batch() -> None:
    e = new_engine()
    far = px(e, "ETH", "1.9")
    orders = [
        OrderRequest(ETH, True, far, D("0.01"), False, "Ioc"),
        OrderRequest(BTC, True, px(e, "BTC", "1.01"), D("0.001"), False, "Ioc"),
    ]
    assert e.place_orders(USER, orders) == [
        {"error": "Order price cannot be more than 80% away from the reference price"}
    ]


def test_ioc_with_nothing_to_match_leaves_a_record() -> None:
    e = new_engine()
    cloid = "0x" + "0c" * 16
    assert error(place(e, ETH, True, px(e, "ETH", "0.9"), "0.01", cloid=cloid)) == (
        "Order could not immediately match against any resting orders. asset=1"
    )
    record = views.order_status(e.accounts[USER], cloid)
    assert record["status"] == "order"
    assert record["order"]["status"] == "iocCancelRejected"
    assert record["order"]["order"]["cloid"] == cloid


def test_post_only_that_would_cross_names_the_bbo() -> None:
    e = new_engine()
    message = error(place(e, ETH, True, px(e, "ETH", "1.01"), "0.01", tif="Alo"))
    book = views.l2_book(e, "ETH")
    assert book is not None
    bid, ask = book["levels"][0][0]["px"], book["levels"][1][0]["px"]
    assert message == (
        f"Post only order would have immediately matched, bbo was {bid}@{ask}. asset=1"
    )
    assert "resting" in place(e, ETH, True, px(e, "ETH", "0.99", Rounding.DOWN), "0.01", tif="Alo")


def test_delisted_and_unknown_assets() -> None:
    e = new_engine()
    assert "delisted" in error(place(e, MATIC, True, D("0.41"), "100"))
    assert error(place(e, 9999, True, D("1"), "100")) == "Invalid asset 9999"


def test_fills_carry_every_field_through_opens_closes_and_flips() -> None:
    e = new_engine()
    cloid = "0x" + "ee" * 16
    buy = px(e, "ETH", "1.01")
    sell = px(e, "ETH", "0.99")
    place(e, ETH, True, buy, "0.02", cloid=cloid)
    place(e, ETH, True, buy, "0.01")
    place(e, ETH, False, sell, "0.01")
    place(e, ETH, False, sell, "0.05")
    fills = [fill_wire(f) for f in e.accounts[USER].fills]
    assert [f["dir"] for f in fills] == ["Open Long", "Open Long", "Close Long", "Long > Short"]
    assert [D(f["startPosition"]) for f in fills] == [D(0), D("0.02"), D("0.03"), D("0.02")]
    assert e.accounts[USER].positions["ETH"].szi == D("-0.03")
    for f in fills:
        assert set(f) >= {
            "coin",
            "px",
            "sz",
            "side",
            "time",
            "startPosition",
            "dir",
            "closedPnl",
            "hash",
            "oid",
            "crossed",
            "fee",
            "tid",
            "feeToken",
        }
        assert f["crossed"] is True
        assert f["hash"].startswith("0x")
        assert len(f["hash"]) == 66
        assert D(f["fee"]) > 0
    assert fills[0]["cloid"] == cloid
    assert "cloid" not in fills[1]
    assert D(fills[0]["closedPnl"]) == 0
    entry = (D(fills[0]["px"]) * D("0.02") + D(fills[1]["px"]) * D("0.01")) / D("0.03")
    assert D(fills[2]["closedPnl"]) == ((D(fills[2]["px"]) - entry) * D("0.01")).quantize(
        D("0.000001")
    )
    # The other side of each trade: a market maker's fill with the same tid, not crossed.
    maker = e.accounts[e.market_makers[0]]
    maker_tids = {f[12]: fill_wire(f) for f in maker.fills}
    for f in fills:
        m = maker_tids[f["tid"]]
        assert m["crossed"] is False
        assert m["side"] != f["side"]
        assert (m["px"], m["sz"], m["hash"]) == (f["px"], f["sz"], f["hash"])
    trades = [trade_wire(t) for t in e.trades["ETH"]]
    assert trades[0]["users"] == [USER, maker.address]  # [buyer, seller]
    assert trades[-1]["users"] == [maker.address, USER]
    assert trades[0]["side"] == "B"
    assert trades[-1]["side"] == "A"


def test_resting_orders_fill_when_the_market_comes_to_them() -> None:
    e = new_engine()
    bid = px(e, "ETH", "0.98", Rounding.DOWN)
    resting = place(e, ETH, True, bid, "0.01", tif="Gtc", cloid="0x" + "11" * 16)
    oid = resting["resting"]["oid"]
    assert views.open_orders(e, e.accounts[USER])[0]["oid"] == oid
    e.by_name["ETH"].path.set_mid(float(bid) * 0.999)
    e.step()
    (fill,) = [fill_wire(f) for f in e.accounts[USER].fills]
    assert (fill["crossed"], D(fill["px"]), fill["oid"]) == (False, bid, oid)
    assert views.order_status(e.accounts[USER], oid)["order"]["status"] == "filled"
    assert views.open_orders(e, e.accounts[USER]) == []


def test_cancel_modify_and_their_records() -> None:
    e = new_engine()
    cloid = "0x" + "22" * 16
    low = px(e, "ETH", "0.9", Rounding.DOWN)
    oid = place(e, ETH, True, low, "0.01", tif="Gtc", cloid=cloid)["resting"]["oid"]
    replaced = e.modify(USER, cloid, OrderRequest(ETH, True, low, D("0.02"), False, "Gtc"))
    assert isinstance(replaced, dict)
    assert "resting" in replaced
    assert views.order_status(e.accounts[USER], oid)["order"]["status"] == "canceled"
    new_oid = replaced["resting"]["oid"]
    assert e.cancel(USER, [(ETH, new_oid), (ETH, 12345)]) == [
        "success",
        {"error": "Order was never placed, already canceled, or filled. asset=1"},
    ]
    assert e.modify(USER, new_oid, OrderRequest(ETH, True, low, D("0.01"), False, "Gtc")) == {
        "error": "Cannot modify canceled or filled order"
    }


def test_only_the_last_2000_records_are_kept() -> None:
    e = new_engine()
    first = place(e, ETH, True, px(e, "ETH", "0.9"), "0.01", cloid="0x" + "00" * 15 + "01")
    assert "error" in first
    for _ in range(2000):
        place(e, ETH, True, px(e, "ETH", "0.9"), "0.01")
    assert views.order_status(e.accounts[USER], "0x" + "00" * 15 + "01") == {"status": "unknownOid"}
    assert len(views.historical_orders(e.accounts[USER])) == 2000


def test_leverage_schedule_cancel_and_spot() -> None:
    e = new_engine()
    assert e.update_leverage(USER, BTC, False, 100) == "Invalid leverage value. asset=0"
    assert e.update_leverage(USER, BTC, False, 10) is None
    assert e.schedule_cancel(USER, e.now_ms + 60_000).startswith(  # type: ignore[union-attr]
        "Cannot set scheduled cancel time until enough volume traded. Required: $1000000."
    )
    purr = e.by_name["PURR/USDC"]
    spot_px = round_price(purr.path.mid * D("1.05"), purr.sz_decimals, True, Rounding.DOWN)
    assert error(place(e, purr.asset_id, True, spot_px, "100")) == (
        "Order has insufficient spot balance to trade asset=10000"
    )
    e.open_account(USER, D(0), spot_usdc=D(1000))
    assert "filled" in place(e, purr.asset_id, True, spot_px, "100")
    assert e.accounts[USER].spot[1] == D(100)
    assert fill_wire(e.accounts[USER].fills[-1])["dir"] == "Buy"


def test_mids_stay_on_the_tick_grid() -> None:
    e = new_engine()
    for _ in range(300):
        e.step()
        for a in e.assets.values():
            assert is_valid_price(a.path.mid, a.sz_decimals, a.is_spot), (a.name, a.path.mid)
    for a in e.assets.values():
        if a.delisted:
            continue
        for side in (False, True):
            for level_px, _ in e.depth_levels(a, side):
                assert is_valid_price(level_px, a.sz_decimals, a.is_spot), (a.name, level_px)


def _run(seed: int, ticks: int = 400) -> list[TradeRecord]:
    e = Engine(seed=seed, start_ms=1_790_000_000_000)
    p = Population(e, 60, seed=seed, rate=60)
    for _ in range(ticks):
        e.step()
        p.step(0.1)
    return [t for coin in sorted(e.trades) for t in e.trades[coin]]


def test_a_seeded_run_is_reproducible() -> None:
    first, again, other = _run(11), _run(11), _run(12)
    assert len(first) > 500
    assert first == again
    assert first != other


def test_every_archetype_is_in_the_population_in_its_share() -> None:
    e = Engine(seed=3, start_ms=1_790_000_000_000)
    p = Population(e, 120, seed=3)
    kinds = list(p.archetypes().values())
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "skilled": 18,
        "unskilled": 30,
        "market_maker": 4,
        "whale": 4,
        "noise": 59,
        "lucky": 3,
        "vault": 2,
    }
    assert set(e.market_makers) == {a for a, k in p.archetypes().items() if k == "market_maker"}
    assert {a for a, r in e.roles.items() if r == ("vault", None)} == {
        a for a, k in p.archetypes().items() if k == "vault"
    }
    masters = {r[1] for r in e.roles.values() if r[0] == "subAccount"}
    assert masters  # some traders trade in a sub-account of another
    assert masters <= set(p.archetypes())
    assert set(e.agents.values()) <= set(p.archetypes())  # agents trade for population masters
    assert len(e.agents) >= 10


NOW = 1_790_000_000_000
DAY = 86_400_000


@pytest.mark.parametrize(
    ("nonces", "expected"),
    [
        ([NOW + 5, NOW + 5], f"Invalid nonce: duplicate nonce {NOW + 5}"),
        ([NOW + DAY], f"Invalid nonce: nonce too high {NOW + DAY} > {NOW + DAY}"),
        ([NOW - 2 * DAY], f"Invalid nonce: nonce too low {NOW - 2 * DAY} < {NOW - 2 * DAY}"),
    ],
)
def test_nonce_rules(nonces: list[int], expected: str) -> None:
    book = NonceBook()
    results = [book.use("0xsigner", n, NOW) for n in nonces]
    assert results[:-1] == [None] * (len(nonces) - 1)
    assert results[-1] == expected
    assert book.use("0xsigner", NOW + DAY - 1, NOW) is None  # just inside the window
    assert book.use("0xsigner", NOW - 2 * DAY + 1, NOW) is None


def test_only_the_100_highest_nonces_are_kept() -> None:
    book = NonceBook()
    now = 1_790_000_000_000
    for i in range(1, 101):
        assert book.use("s", now + i * 10, now) is None
    assert book.use("s", now + 5, now) == f"Invalid nonce: nonce too low {now + 5} < {now + 10}"
    assert book.use("s", now + 15, now) is None  # unused and above the smallest kept
    assert book.use("other", now + 5, now) is None  # nonces are per signer
