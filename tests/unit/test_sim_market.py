"""The simulated market reacts: impact that decays, depth that is consumed and refills, mids
at half a tick, hourly funding from the premium, liquidations under maintenance margin, the
exchange's margin arithmetic and leverage rules, and 24-hour figures computed from the market."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hlcopy.hl.wire import Rounding, is_valid_price, round_price
from hlcopy.sim import views
from hlcopy.sim.engine import (
    BASE_RATE,
    MSG_CROSS_DECREASE,
    MSG_ISOLATED_DECREASE,
    MSG_NO_CROSS,
    MSG_SWITCH,
    Engine,
    OrderRequest,
    fill_wire,
    funding_rate,
)
from hlcopy.sim.fmt import num, usd
from hlcopy.sim.history import Pasts

D = Decimal
USER = "0x" + "a1" * 20
START = 1_790_000_000_000 - 1_790_000_000_000 % 3_600_000 + 60_000  # a minute past the hour
BTC, ETH = 0, 1


def engine(usdc: int = 100_000) -> Engine:
    e = Engine(seed=5, start_ms=START)
    e.open_account(USER, D(usdc))
    return e


def px(e: Engine, coin: str, factor: str) -> Decimal:
    a = e.by_name[coin]
    return round_price(a.path.mid * D(factor), a.sz_decimals, a.is_spot, Rounding.NEAREST)


def order(e: Engine, asset: int, is_buy: bool, sz: str, factor: str | None = None) -> Any:
    coin = "BTC" if asset == BTC else "ETH"
    price = px(e, coin, factor or ("1.05" if is_buy else "0.95"))
    (status,) = e.place_orders(USER, [OrderRequest(asset, is_buy, price, D(sz), False, "Ioc")])
    return status


def hold_prices(e: Engine) -> None:
    """Freeze every coin's random walk (tests move prices by hand)."""
    for a in e.assets.values():
        a.path.daily_vol = a.path.basis_sd = 0.0
        a.path._dt = -1.0
        a.path.regime = 0
        a.path.drift = 0.0


def test_taker_flow_moves_the_price_and_the_impact_decays() -> None:
    e = engine(10_000_000)
    hold_prices(e)
    btc = e.by_name["BTC"].path
    before = btc.fair
    assert "filled" in order(e, BTC, True, "3")  # about $300k: a third of the quoted asks
    pushed = btc.fair
    assert pushed > before * 1.0001
    for _ in range(600):  # a minute of 100 ms ticks
        e.step()
    assert before < btc.fair < before + (pushed - before) * 0.5  # most of it is gone
    for _ in range(6000):
        e.step()
    assert btc.fair == pytest.approx(before, rel=1e-6)


def test_depth_taken_stays_taken_and_refills_over_time() -> None:
    e = engine(10_000_000)
    hold_prices(e)
    eth = e.by_name["ETH"]
    best_ask_size = e.depth_levels(eth, is_ask=True)[0][1]
    take = round_price(best_ask_size / 2, 4, False, Rounding.DOWN)
    assert "filled" in order(e, ETH, True, str(take))
    assert e.depth_levels(eth, is_ask=True)[0][1] == best_ask_size - take
    e.step()  # a new tick does not rebuild the book: a tenth of a second refills little
    assert e.depth_levels(eth, is_ask=True)[0][1] < best_ask_size - take * D("0.9")
    for _ in range(10):  # a second later some more has come back, not all
        e.step()
    partly = e.depth_levels(eth, is_ask=True)[0][1]
    assert best_ask_size - take * D("0.9") < partly < best_ask_size
    for _ in range(600):
        e.step()
    assert e.depth_levels(eth, is_ask=True)[0][1] == best_ask_size


def test_mids_can_be_half_a_tick_and_are_then_not_order_prices() -> None:
    e = engine()
    half_ticks = 0
    for _ in range(300):
        e.step()
        for a in e.assets.values():
            if a.delisted:
                continue
            bid, ask = e.best(a)
            assert bid is not None
            assert ask is not None
            mid = views.all_mids(e, a.dex)[a.name]
            assert D(mid) == (bid + ask) / 2
            if not is_valid_price(D(mid), a.sz_decimals, a.is_spot):
                half_ticks += 1
                assert (ask - bid) / a.path.tick() % 2 == 1  # an odd number of ticks apart
    assert half_ticks > 100


def test_funding_is_paid_on_the_hour_from_the_premium() -> None:
    assert funding_rate(0.0) == BASE_RATE == D("0.0000125")  # interest alone: 0.01% / 8 hours
    assert funding_rate(0.002) == D("0.0001875")  # (0.002 - 0.0005) / 8
    assert funding_rate(-0.003) == D("-0.0003125")
    e = engine()
    hold_prices(e)
    eth = e.by_name["ETH"]
    eth.path.basis = 0.004  # the book trades 0.4% over the oracle: longs pay
    eth.path._reprice()
    assert "filled" in order(e, ETH, True, "2")
    before = e.accounts[USER].usdc
    while not e.accounts[USER].fundings:
        e.step()
    (row,) = e.accounts[USER].fundings
    hour, coin, received, szi, rate = row
    assert hour % 3_600_000 == 0
    assert (coin, szi) == ("ETH", D(2))
    assert rate > BASE_RATE  # the premium, not the interest floor
    assert received == (-szi * eth.path.oracle_px() * rate).quantize(D("0.000001"))
    assert received < 0
    assert e.accounts[USER].usdc == before + received
    (state,) = views.clearinghouse_state(e, e.accounts[USER])["assetPositions"]
    cum = state["position"]["cumFunding"]
    assert D(cum["allTime"]) == D(cum["sinceOpen"]) == -received  # positive: paid
    (wire,) = views.user_funding(e, None, USER, e.accounts[USER], 0, None)
    assert wire["delta"] == {
        "type": "funding",
        "coin": "ETH",
        "usdc": usd(received),
        "szi": "2.0",
        "fundingRate": num(rate),
        "nSamples": None,
    }


def test_an_isolated_position_under_maintenance_is_liquidated() -> None:
    e = engine(1_000)
    hold_prices(e)
    assert e.update_leverage(USER, BTC, False, 40) is None  # isolated, the maximum
    assert "filled" in order(e, BTC, True, "0.35")  # about $34k on $850 of margin
    acct = e.accounts[USER]
    state = views.clearinghouse_state(e, acct)
    position = state["assetPositions"][0]["position"]
    liq_px = D(position["liquidationPx"])
    entry = acct.positions["BTC"].entry_px
    assert entry * D("0.985") < liq_px < entry  # about 1/(2x40) below the entry
    btc = e.by_name["BTC"]
    e.set_price(btc, float(liq_px) * 1.001)  # just above: nothing happens
    e.step()
    assert acct.positions["BTC"].szi == D("0.35")
    e.set_price(btc, float(liq_px) * 0.999)  # just below: liquidated by the next check
    e.step()
    assert acct.positions["BTC"].szi == 0
    closes = [fill_wire(f) for f in acct.fills if f[14] is not None]
    assert closes
    assert {f["dir"] for f in closes} == {"Close Long"}
    assert closes[0]["liquidation"]["liquidatedUser"] == USER
    assert closes[0]["liquidation"]["method"] == "market"
    assert D(closes[0]["liquidation"]["markPx"]) < liq_px  # the mark that triggered it
    ledger = views.ledger_updates(e, None, USER, acct, 0, None)
    assert ledger[-1]["delta"]["type"] == "liquidation"
    assert ledger[-1]["delta"]["leverageType"] == "Isolated"
    assert ledger[-1]["delta"]["liquidatedPositions"] == [{"coin": "BTC", "szi": "0.35"}]
    assert acct.usdc >= 0
    assert e.counters["liquidations"] == 1


def test_clearinghouse_state_adds_up_as_on_the_exchange() -> None:
    e = engine(50_000)
    assert e.update_leverage(USER, BTC, True, 10) is None
    assert e.update_leverage(USER, ETH, False, 5) is None
    assert "filled" in order(e, BTC, False, "0.2")  # a cross short
    assert "filled" in order(e, ETH, True, "3")  # an isolated long
    for _ in range(50):
        e.step()
    state = views.clearinghouse_state(e, e.accounts[USER])
    for summary in (state["marginSummary"], state["crossMarginSummary"]):
        signed = sum(
            (
                D(p["position"]["szi"]) * e.by_name[p["position"]["coin"]].path.mid
                for p in state["assetPositions"]
                if summary is state["marginSummary"] or p["position"]["leverage"]["type"] == "cross"
            ),
            D(0),
        )
        assert D(summary["totalRawUsd"]) + signed == pytest.approx(
            D(summary["accountValue"]), abs=D("0.000002")
        )
    by_coin = {p["position"]["coin"]: p["position"] for p in state["assetPositions"]}
    btc, eth = by_coin["BTC"], by_coin["ETH"]
    assert btc["leverage"] == {"type": "cross", "value": 10}
    assert eth["leverage"]["type"] == "isolated"
    mark = e.by_name["ETH"].path.mid
    assert D(eth["marginUsed"]) == D(eth["leverage"]["rawUsd"]) + D(eth["szi"]) * mark
    assert D(btc["marginUsed"]) == (D(btc["positionValue"]) / 10).quantize(D("0.000001"))
    assert D(state["crossMaintenanceMarginUsed"]) == (D(btc["positionValue"]) / 80).quantize(
        D("0.000001")
    )
    isolated_equity = D(state["marginSummary"]["accountValue"]) - D(
        state["crossMarginSummary"]["accountValue"]
    )
    assert isolated_equity == D(eth["marginUsed"])
    assert D(state["withdrawable"]) == D(state["crossMarginSummary"]["accountValue"]) - D(
        state["crossMarginSummary"]["totalMarginUsed"]
    )


def test_update_leverage_follows_the_exchange_rules() -> None:
    e = engine(2_000)
    assert e.update_leverage(USER, BTC, False, 41) == "Invalid leverage value. asset=0"
    assert e.update_leverage(USER, 110_000, True, 5) == MSG_NO_CROSS  # a strict-isolated dex
    assert e.update_leverage(USER, BTC, True, 20) is None
    assert "filled" in order(e, BTC, True, "0.3")  # ~$29k at 20x: ~$1.46k of margin
    assert e.update_leverage(USER, BTC, False, 20) == MSG_SWITCH
    assert e.update_leverage(USER, BTC, True, 10) == MSG_CROSS_DECREASE  # would need ~$2.9k
    assert e.update_leverage(USER, BTC, True, 25) is None  # raising needs nothing
    assert e.accounts[USER].leverage["BTC"] == (25, True)
    assert e.update_leverage(USER, ETH, False, 20) is None
    assert "filled" in order(e, ETH, True, "0.1")
    assert e.update_leverage(USER, ETH, False, 2) == MSG_ISOLATED_DECREASE
    assert e.update_leverage(USER, ETH, False, 25) is None


def test_l2_book_aggregates_by_significant_figures_and_mantissa() -> None:
    e = engine()
    full = views.l2_book(e, "BTC")
    assert full is not None
    for sig, mantissa, step in ((2, None, D(1000)), (3, None, D(100)), (5, 5, D(5))):
        book = views.l2_book(e, "BTC", sig, mantissa)
        assert book is not None
        bids, asks = book["levels"]
        assert all(D(level["px"]) % step == 0 for level in bids + asks)
        assert bids[0]["px"] < asks[0]["px"]
        # Every resting size lands in exactly one bucket: the sizes add up.
        shown = sum(D(level["sz"]) for level in bids)
        assert shown <= sum(D(level["sz"]) for level in full["levels"][0])
        assert sum(level["n"] for level in bids) <= sum(level["n"] for level in full["levels"][0])


def test_24_hour_figures_come_from_the_market() -> None:
    e = engine(1_000_000)
    coins = {
        a.name: (a.sz_decimals, a.is_spot, a.path.daily_vol, a.open_price)
        for a in e.assets.values()
    }
    pasts = Pasts(5, e.start_ms, coins, {}, {})  # the market's past; no traders' pasts here
    eth = e.by_name["ETH"]
    for _ in range(36_000):  # an hour of 100 ms ticks, the user buying every ten seconds
        e.step()
        if e.ticks % 100 == 0:
            order(e, ETH, True, "0.5")
    ctx = views.asset_ctx(e, pasts, eth)
    day = range(e.now_ms // 3_600_000 - 23, e.now_ms // 3_600_000 + 1)
    hours = [views.hour_bar(e, pasts, eth, h) for h in day]
    assert all(hours)  # the past and the live market cover the whole day
    assert D(ctx["dayNtlVlm"]) == sum((h[6] for h in hours if h), D(0)).quantize(D("0.000001"))
    assert D(ctx["dayBaseVlm"]) == sum((h[4] for h in hours if h), D(0))
    assert D(ctx["openInterest"]) == D("0.5") * 360  # only the user is long ETH
    day_ago = views.minute_bar(e, pasts, eth, (e.now_ms - 86_400_000) // 60_000)
    assert day_ago is not None
    assert D(ctx["prevDayPx"]) == day_ago[0]
    bid, ask = (D(x) for x in ctx["impactPxs"])
    assert bid < D(ctx["midPx"]) < ask
    assert ctx["premium"] is not None
    assert D(ctx["funding"]) == funding_rate(eth.premium_sum / eth.premium_time)


def test_deposits_and_withdrawals_are_in_the_ledger() -> None:
    e = engine(1_000)
    acct = e.accounts[USER]
    e.deposit(acct, D(500))
    assert e.withdraw(acct, D(2_000)) == "Insufficient balance for withdrawal."
    assert e.withdraw(acct, D(300)) is None
    assert acct.usdc == D(1_199)  # the $1 fee
    rows = views.ledger_updates(e, None, USER, acct, 0, None)
    assert [r["delta"]["type"] for r in rows] == ["deposit", "deposit", "withdraw"]
    assert rows[2]["delta"] == {"type": "withdraw", "usdc": "300.0", "nonce": START, "fee": "1.0"}
    assert views.user_role(e, USER) == {"role": "user"}
    assert views.user_role(e, "0x" + "99" * 20) == {"role": "missing"}
    empty = views.clearinghouse_state(e, None)
    assert empty["marginSummary"]["accountValue"] == "0.0"
    assert empty["withdrawable"] == "0.0"
