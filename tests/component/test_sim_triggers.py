"""Stop and take-profit orders on the simulated exchange: they rest until the mark crosses them,
then trade as the exchange trades them (same oid, "triggered" then filled, taker fills), and a
reduce-only one never opens a position. Driven through hlcopy's own clients and feeds on a
stepped simulator (the mark moves only when the test moves it), and once through the official
SDK."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import eth_account
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.hl import ExchangeClient, InfoClient, Signer, wire
from hlcopy.model import Asset, Fill, OrderSpec, OrderUpdates, UserFills
from hlcopy.sim import SimConfig, Simulator
from hlcopy.sim.engine import TAKER_FEE
from hlcopy.sim.fmt import USD, num
from hyperliquid.exchange import Exchange
from hyperliquid.info import Info

from tests.component.test_sim_server import pool_on
from tests.component.test_stream import inbox, receive

D = Decimal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=10)) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def clients(sim: Simulator, session: aiohttp.ClientSession) -> tuple[InfoClient, ExchangeClient]:
    """A funded wallet's info and exchange clients."""
    budget = WeightBudget()
    signer = Signer.from_key("0x" + secrets.token_hex(32))
    sim.fund(signer.address, 100_000)
    return (
        InfoClient(session, sim.url, budget),
        ExchangeClient(session, sim.url, signer, budget, is_mainnet=False),
    )


def spec_asset(sim: Simulator, coin: str) -> Asset:
    """``coin`` as a client's universe describes it."""
    a = sim.engine.by_name[coin]
    return Asset(a.name, a.asset_id, a.sz_decimals, a.max_leverage)


def grid(sim: Simulator, coin: str, px: Decimal) -> Decimal:
    """``px`` on ``coin``'s price grid."""
    asset = sim.engine.by_name[coin]
    return wire.round_price(px, asset.sz_decimals, False, wire.Rounding.NEAREST)


def mark(sim: Simulator, coin: str) -> Decimal:
    return sim.engine.by_name[coin].path.mid


def trigger_spec(
    sim: Simulator,
    coin: str,
    is_buy: bool,
    sz: str,
    trigger_px: Decimal,
    tpsl: str,
    *,
    limit_px: Decimal | None = None,
    cloid: str | None = None,
) -> OrderSpec:
    """A reduce-only stop or take-profit: a market one (its limit 10% past the trigger, as the
    UI writes it) unless ``limit_px`` is given."""
    px = limit_px if limit_px is not None else trigger_px * (D("1.1") if is_buy else D("0.9"))
    return OrderSpec(
        spec_asset(sim, coin),
        is_buy,
        grid(sim, coin, px),
        D(sz),
        reduce_only=True,
        cloid=cloid,
        trigger_px=trigger_px,
        tpsl="sl" if tpsl == "sl" else "tp",
        trigger_is_market=limit_px is None,
    )


def move(sim: Simulator, coin: str, factor: str) -> None:
    """Put ``coin``'s mark at ``factor`` times where it is and let one tick pass."""
    asset = sim.engine.by_name[coin]
    sim.engine.set_price(asset, float(asset.path.mid * D(factor)))
    sim.step(1)


async def trade(
    ex: ExchangeClient, sim: Simulator, is_buy: bool, sz: str, coin: str = "ETH"
) -> None:
    """Buy or sell ``sz`` of ``coin`` now (an IOC 2% past the mark)."""
    px = grid(sim, coin, mark(sim, coin) * (D("1.02") if is_buy else D("0.98")))
    (status,) = await ex.place([OrderSpec(spec_asset(sim, coin), is_buy, px, D(sz))])
    assert status.outcome == "filled"
    assert status.total_sz == D(sz)


def statuses_of(messages: list[OrderUpdates], oid: int) -> list[str]:
    return [u.status for m in messages for u in m.updates if u.order.oid == oid]


async def collect_updates(queue: Any, oid: int, until_status: str) -> list[str]:
    """The statuses ``oid`` went through, read off the orderUpdates feed up to ``until_status``."""
    got: list[OrderUpdates] = []
    async with asyncio.timeout(5):
        while until_status not in statuses_of(got, oid):
            got.append(await queue.get())
    return statuses_of(got, oid)


async def collect_fills(queue: Any, oid: int, sz: Decimal) -> list[Fill]:
    """The fills of ``oid`` read off the userFills feed until they add up to ``sz``."""
    got: list[Fill] = []
    async with asyncio.timeout(5):
        while sum((f.sz for f in got), D(0)) < sz:
            got += [f for f in (await queue.get()).fills if f.oid == oid]
    return got


def assert_taker_fee(fill: Fill) -> None:
    assert fill.crossed is True
    assert fill.fee == (fill.px * fill.sz * TAKER_FEE).quantize(USD)


# --- a stop on a long ---------------------------------------------------------------------------


async def test_a_stop_market_closes_the_long_when_the_mark_falls_through_it(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    fills, updates = inbox(UserFills), inbox(OrderUpdates)
    async with pool_on(sim) as pool:
        await pool.user_fills(me, fills)
        await pool.order_updates(me, updates)
        (snapshot,) = await receive(fills, 1)
        assert snapshot.is_snapshot
        await trade(ex, sim, True, "0.1")
        before = mark(sim, "ETH")
        trigger_px = grid(sim, "ETH", before * D("0.95"))
        cloid = "0x" + "5a" * 16
        (stop,) = await ex.place(
            [trigger_spec(sim, "ETH", False, "0.1", trigger_px, "sl", cloid=cloid)]
        )
        assert stop.outcome == "resting"  # a trigger on its own rests, with its oid
        assert stop.oid is not None
        assert stop.cloid == cloid
        assert await collect_updates(updates, stop.oid, "open") == ["open"]
        (resting,) = await info.frontend_open_orders(me)
        assert (resting.oid, resting.order_type, resting.is_trigger) == (
            stop.oid,
            "Stop Market",
            True,
        )
        assert resting.trigger_condition == f"Price below {num(trigger_px)}"

        move(sim, "ETH", "0.93")  # the mark falls through the stop

        assert await collect_updates(updates, stop.oid, "filled") == ["triggered", "filled"]
        stream_fills = await collect_fills(fills, stop.oid, D("0.1"))

    assert {f.cloid for f in stream_fills} == {cloid}
    assert {f.dir for f in stream_fills} == {"Close Long"}
    assert sum((f.sz for f in stream_fills), D(0)) == D("0.1")
    for f in stream_fills:
        assert f.side == "A"
        assert f.px < trigger_px  # a market order at the mark after the gap...
        assert f.px >= grid(sim, "ETH", before * D("0.93") * D("0.9"))  # ...within 10% of it
        assert_taker_fee(f)
    state = await info.clearinghouse_state(me)
    assert state.position("ETH") == 0
    record = await info.order_status(me, stop.oid)
    assert (record.status, record.order and record.order.sz) == ("filled", D(0))
    assert (await info.order_status(me, cloid)).status == "filled"
    assert await info.frontend_open_orders(me) == []
    rest_fills = [f for f in await info.user_fills(me) if f.oid == stop.oid]
    assert {f.tid for f in rest_fills} == {f.tid for f in stream_fills}


# --- take-profits -------------------------------------------------------------------------------


async def test_take_profits_close_a_long_and_a_short_when_the_mark_reaches_them(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, True, "0.1")  # long ETH
    await trade(ex, sim, False, "0.002", "BTC")  # short BTC
    eth_tp_px = grid(sim, "ETH", mark(sim, "ETH") * D("1.04"))
    eth_limit = grid(sim, "ETH", eth_tp_px * D("0.99"))
    btc_tp_px = grid(sim, "BTC", mark(sim, "BTC") * D("0.96"))
    eth_tp, btc_tp = await ex.place(
        [
            trigger_spec(sim, "ETH", False, "0.1", eth_tp_px, "tp", limit_px=eth_limit),
            trigger_spec(sim, "BTC", True, "0.002", btc_tp_px, "tp"),
        ]
    )
    assert (eth_tp.outcome, btc_tp.outcome) == ("resting", "resting")
    conditions = {o.oid: o.trigger_condition for o in await info.frontend_open_orders(me)}
    assert conditions == {
        eth_tp.oid: f"Price above {num(eth_tp_px)}",
        btc_tp.oid: f"Price below {num(btc_tp_px)}",
    }

    btc = sim.engine.by_name["BTC"]
    sim.engine.set_price(btc, float(btc.path.mid * D("0.95")))
    move(sim, "ETH", "1.05")  # both marks reach their take-profits in one tick

    state = await info.clearinghouse_state(me)
    assert (state.position("ETH"), state.position("BTC")) == (D(0), D(0))
    by_oid: dict[int | None, list[Fill]] = {}
    for f in await info.user_fills(me):
        by_oid.setdefault(f.oid, []).append(f)
    eth_fills, btc_fills = by_oid[eth_tp.oid], by_oid[btc_tp.oid]
    assert {f.dir for f in eth_fills} == {"Close Long"}
    assert {f.dir for f in btc_fills} == {"Close Short"}
    assert all(f.px >= eth_limit for f in eth_fills)  # a limit take-profit keeps its limit
    assert sum((f.sz for f in eth_fills), D(0)) == D("0.1")
    assert sum((f.sz for f in btc_fills), D(0)) == D("0.002")
    for f in eth_fills + btc_fills:
        assert_taker_fee(f)
        assert f.closed_pnl is not None
        assert f.closed_pnl > 0  # they took a profit
    for oid in (eth_tp.oid, btc_tp.oid):
        assert oid is not None
        assert (await info.order_status(me, oid)).status == "filled"
    assert await info.frontend_open_orders(me) == []


# --- reduce-only triggers and the position ------------------------------------------------------


async def test_a_stop_whose_position_was_closed_first_is_cancelled_and_opens_nothing(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, True, "0.1")
    now = mark(sim, "ETH")
    (stop,) = await ex.place(
        [trigger_spec(sim, "ETH", False, "0.1", grid(sim, "ETH", now * D("0.95")), "sl")]
    )
    assert stop.oid is not None
    await trade(ex, sim, False, "0.1")  # closed by hand: flat
    fills_before = len(await info.user_fills(me))

    move(sim, "ETH", "0.9")

    assert (await info.clearinghouse_state(me)).position("ETH") == 0  # no short opened
    assert len(await info.user_fills(me)) == fills_before
    record = await info.order_status(me, stop.oid)
    assert record.status == "reduceOnlyCanceled"
    assert await info.frontend_open_orders(me) == []


async def test_a_stop_larger_than_the_position_closes_it_and_never_flips_it(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, True, "0.1")
    now = mark(sim, "ETH")
    (stop,) = await ex.place(
        [trigger_spec(sim, "ETH", False, "0.3", grid(sim, "ETH", now * D("0.95")), "sl")]
    )
    assert stop.oid is not None

    move(sim, "ETH", "0.9")

    assert (await info.clearinghouse_state(me)).position("ETH") == 0
    closing = [f for f in await info.user_fills(me) if f.oid == stop.oid]
    assert sum((f.sz for f in closing), D(0)) == D("0.1")
    assert {f.dir for f in closing} == {"Close Long"}
    record = await info.order_status(me, stop.oid)
    assert record.status == "filled"
    assert record.order is not None
    assert record.order.orig_sz == D("0.3")


async def test_a_stop_on_a_short_fires_when_the_mark_rises_through_it(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, False, "0.1")
    now = mark(sim, "ETH")
    (stop,) = await ex.place(
        [trigger_spec(sim, "ETH", True, "0.1", grid(sim, "ETH", now * D("1.05")), "sl")]
    )
    assert stop.oid is not None
    move(sim, "ETH", "1.03")  # not yet
    assert (await info.order_status(me, stop.oid)).status == "open"

    move(sim, "ETH", "1.05")

    assert (await info.clearinghouse_state(me)).position("ETH") == 0
    assert {f.dir for f in await info.user_fills(me) if f.oid == stop.oid} == {"Close Short"}
    assert (await info.order_status(me, stop.oid)).status == "filled"


async def test_a_stop_that_does_not_reduce_opens_a_position_if_the_margin_is_there(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    poor_info, poor = clients(sim, session)
    poor_address = poor.actions.signer.address
    sim.engine.withdraw(sim.engine.accounts[poor_address.lower()], D(99_880))  # $119 left
    entry_px = grid(sim, "ETH", mark(sim, "ETH") * D("1.03"))
    entry = OrderSpec(
        spec_asset(sim, "ETH"),
        True,
        grid(sim, "ETH", entry_px * D("1.1")),
        D("1"),
        trigger_px=entry_px,
        tpsl="sl",
    )  # a breakout entry: buy 1 ETH if the mark rises through entry_px
    (placed,) = await ex.place([entry])
    (refused_later,) = await poor.place([entry])  # placing it needs no margin...
    assert placed.oid is not None
    assert refused_later.oid is not None

    move(sim, "ETH", "1.04")

    me = ex.actions.signer.address
    assert (await info.clearinghouse_state(me)).position("ETH") == 1
    assert {f.dir for f in await info.user_fills(me)} == {"Open Long"}
    assert (await info.order_status(me, placed.oid)).status == "filled"
    # ...firing it does: 1 ETH at 20x needs some $180
    assert (await poor_info.clearinghouse_state(poor_address)).position("ETH") == 0
    assert await poor_info.user_fills(poor_address) == []
    assert (await poor_info.order_status(poor_address, refused_later.oid)).status == (
        "marginCanceled"
    )


# --- triggers that do not fire, and limit triggers that rest --------------------------------------


async def test_a_trigger_the_mark_has_not_crossed_keeps_resting(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, True, "0.1")
    now = mark(sim, "ETH")
    stop_px = grid(sim, "ETH", now * D("0.9"))
    tp_px = grid(sim, "ETH", now * D("1.1"))
    placed = await ex.place(
        [
            trigger_spec(sim, "ETH", False, "0.1", stop_px, "sl"),
            trigger_spec(sim, "ETH", False, "0.1", tp_px, "tp"),
        ]
    )
    move(sim, "ETH", "0.95")
    move(sim, "ETH", "1.09")
    sim.step(50)

    assert (await info.clearinghouse_state(me)).position("ETH") == D("0.1")
    open_now = {o.oid: o for o in await info.frontend_open_orders(me)}
    assert set(open_now) == {s.oid for s in placed}
    for s in placed:
        assert s.oid is not None
        assert (await info.order_status(me, s.oid)).status == "open"
        assert open_now[s.oid].is_trigger is True
        assert open_now[s.oid].sz == D("0.1")


async def test_a_stop_limit_the_market_gaps_through_rests_until_the_price_comes_back(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, True, "0.1")
    now = mark(sim, "ETH")
    stop_px = grid(sim, "ETH", now * D("0.95"))
    (stop,) = await ex.place(
        [trigger_spec(sim, "ETH", False, "0.1", stop_px, "sl", limit_px=stop_px)]
    )
    assert stop.oid is not None

    move(sim, "ETH", "0.9")  # a gap: the sell at the stop's price finds no bid that high

    record = await info.order_status(me, stop.oid)
    assert record.status == "triggered"
    assert [o.oid for o in await info.open_orders(me)] == [stop.oid]  # in the book now
    asks = sim.engine.by_name["ETH"].book.asks
    assert [(r.oid, r.px) for r in asks.orders()] == [(stop.oid, stop_px)]
    assert (await info.clearinghouse_state(me)).position("ETH") == D("0.1")

    sim.engine.set_price(sim.engine.by_name["ETH"], float(stop_px * D("1.01")))
    sim.step(1)  # the bids come back above it: the market maker takes it at its price

    assert (await info.clearinghouse_state(me)).position("ETH") == 0
    closing = [f for f in await info.user_fills(me) if f.oid == stop.oid]
    assert {(f.px, f.crossed, f.dir) for f in closing} == {(stop_px, False, "Close Long")}
    assert (await info.order_status(me, stop.oid)).status == "filled"
    assert await info.open_orders(me) == []


async def test_a_cancelled_trigger_leaves_the_index(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, ex = clients(sim, session)
    me = ex.actions.signer.address
    await trade(ex, sim, True, "0.1")
    now = mark(sim, "ETH")
    (stop,) = await ex.place(
        [trigger_spec(sim, "ETH", False, "0.1", grid(sim, "ETH", now * D("0.95")), "sl")]
    )
    assert stop.oid is not None
    (cancelled,) = await ex.cancel([(spec_asset(sim, "ETH"), stop.oid)])
    assert cancelled.ok
    eth = sim.engine.by_name["ETH"]
    assert (eth.triggers, eth.fires_below, eth.fires_above) == ({}, [], [])

    move(sim, "ETH", "0.9")

    assert (await info.clearinghouse_state(me)).position("ETH") == D("0.1")
    assert (await info.order_status(me, stop.oid)).status == "canceled"


# --- the official SDK ---------------------------------------------------------------------------


async def test_the_official_sdk_places_a_stop_that_fires() -> None:
    async with Simulator(SimConfig(port=0, realtime=False, traders=10)) as sim:
        wallet = eth_account.Account.create()
        sim.fund(wallet.address, 100_000)
        eth = sim.engine.by_name["ETH"]
        trigger_px = float(grid(sim, "ETH", eth.path.mid * D("0.95")))
        limit_px = float(grid(sim, "ETH", eth.path.mid * D("0.95") * D("0.9")))

        def place() -> dict[str, Any]:
            ex = Exchange(wallet, sim.url)
            opened = ex.market_open("ETH", True, 0.1)
            stop = ex.order(
                "ETH",
                False,
                0.1,
                limit_px,
                {"trigger": {"triggerPx": trigger_px, "isMarket": True, "tpsl": "sl"}},
                reduce_only=True,
            )
            return {"opened": opened, "stop": stop}

        placed = await asyncio.to_thread(place)
        assert placed["opened"]["response"]["data"]["statuses"][0]["filled"]["totalSz"] == "0.1"
        oid = placed["stop"]["response"]["data"]["statuses"][0]["resting"]["oid"]

        move(sim, "ETH", "0.93")

        def read() -> dict[str, Any]:
            info = Info(sim.url, skip_ws=True)
            return {
                "status": info.query_order_by_oid(wallet.address, oid),
                "state": info.user_state(wallet.address),
                "fills": info.user_fills(wallet.address),
            }

        out = await asyncio.to_thread(read)

    assert out["status"]["order"]["status"] == "filled"
    assert out["status"]["order"]["order"]["orderType"] == "Stop Market"
    assert out["state"]["assetPositions"] == []
    closing = [f for f in out["fills"] if f["oid"] == oid]
    assert {f["dir"] for f in closing} == {"Close Long"}
    assert all(f["crossed"] for f in closing)
