"""hlcopy's own protocol clients against the simulator: what they will meet in production."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest
from hlcopy.budget import Lane, WeightBudget
from hlcopy.errors import Rejected, WireError
from hlcopy.hl import ExchangeClient, InfoClient, Signer, load_universe, wire
from hlcopy.model import AllMids, L2Book, OrderStatus, OrderUpdates, Trades, UserFills
from hlcopy.sim import SimConfig, Simulator
from hlcopy.sim.engine import OrderRequest

from tests.component.test_sim_server import eth_spec, pool_on
from tests.component.test_stream import inbox, receive

D = Decimal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=30)) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def clients(
    sim: Simulator, session: aiohttp.ClientSession
) -> tuple[InfoClient, ExchangeClient, WeightBudget]:
    budget = WeightBudget()
    signer = Signer.from_key("0x" + secrets.token_hex(32))
    return (
        InfoClient(session, sim.url, budget, batch_clearinghouse_states=True),
        ExchangeClient(session, sim.url, signer, budget, is_mainnet=False),
        budget,
    )


async def test_every_info_request_parses(sim: Simulator, session: aiohttp.ClientSession) -> None:
    info, ex, budget = clients(sim, session)
    me = ex.actions.signer.address
    state = await info.clearinghouse_state(me)  # nobody funded it: empty, as on the exchange
    assert state.margin_summary.account_value == 0
    assert state.positions == ()
    assert (await info.user_role(me)).role == "missing"
    sim.fund(me, 100_000)
    state = await info.clearinghouse_state(me)
    assert state.margin_summary.account_value == D(100_000)
    cloid = "0x" + secrets.token_hex(16)
    (filled,) = await ex.place([eth_spec(sim, cloid=cloid)])
    bid = eth_spec(sim, factor="0.9985", tif="Gtc")  # inside the 20 levels l2Book shows
    (resting,) = await ex.place([bid])

    meta = await info.meta()
    assert meta.universe[3].delisted
    assert meta.universe[3].name == "MATIC"
    spot = await info.spot_meta()
    assert spot.universe[0].name == "PURR/USDC"
    dexes = await info.perp_dexs()
    assert [d.name for d in dexes] == ["test"]
    assert dexes[0].index == 1
    _, ctxs = await info.meta_and_asset_ctxs()
    assert ctxs[1].mark_px == sim.engine.by_name["ETH"].path.mid
    mids = await info.all_mids()
    assert set(mids) >= {"BTC", "ETH", "PURR/USDC", "@1"}
    assert "MATIC" not in mids
    assert set(await info.all_mids(dex="test")) == {"test:ABC", "test:XYZ"}
    book = await info.l2_book("ETH")
    assert book.bids[0].px < book.asks[0].px
    assert bid.px in {level.px for level in book.bids}  # our resting order is in the book
    sim.step(5)
    state = await info.clearinghouse_state(me)
    assert state.position("ETH") == D("0.01")
    assert (await info.clearinghouse_state(me, dex="test")).positions == ()
    assert await info.spot_clearinghouse_state(me) == ()
    (open_order,) = await info.open_orders(me)
    assert open_order.oid == resting.oid
    (frontend,) = await info.frontend_open_orders(me)
    assert (frontend.order_type, frontend.tif, frontend.is_trigger) == ("Limit", "Gtc", False)
    record = await info.order_status(me, cloid)
    assert record.status == "filled"
    assert record.order is not None
    assert record.order.oid == filled.oid
    assert (await info.order_status(me, 1)).status is None
    fills = await info.user_fills(me)
    assert fills[0].cloid == cloid
    assert fills[0].dir == "Open Long"
    assert [f.tid for f in await info.user_fills_by_time(me, 0)] == [f.tid for f in fills]
    history = await info.historical_orders(me)
    assert [r.status for r in history] == ["open", "filled"]
    assert await info.user_funding(me, 0) == []
    portfolio = await info.portfolio(me)
    assert set(portfolio.periods) == {
        "day",
        "week",
        "month",
        "allTime",
        "perpDay",
        "perpWeek",
        "perpMonth",
        "perpAllTime",
    }
    assert (await info.user_role(me)).role == "user"
    limits = await info.user_rate_limit(me)
    assert limits.n_requests_used == 2
    assert limits.n_requests_cap == 10_000 + int(limits.cum_vlm)
    trades = {t.tid: t for t in await info.recent_trades("ETH")}
    assert fills[0].tid is not None
    ours = trades[fills[0].tid]
    assert ours.users is not None
    assert me in ours.users
    states = await info.batch_clearinghouse_states([me, "0x" + "00" * 20])
    assert states[0] is not None
    assert states[0].position("ETH") == D("0.01")
    assert budget.stats()["rate_limited"] == 0


async def test_universe_with_the_builder_dex(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    info, _, _ = clients(sim, session)
    uni = await load_universe(info, spot=True, builder_dexes=True)
    assert uni.by_name("BTC").asset_id == 0
    assert uni.by_name("PURR/USDC").asset_id == 10_000
    assert uni.by_name("test:ABC").asset_id == 110_000
    assert uni.by_name("test:XYZ").sz_decimals == 1
    assert uni.by_name("MATIC").delisted


async def test_fills_by_time_page_past_2000(sim: Simulator, session: aiohttp.ClientSession) -> None:
    info, ex, budget = clients(sim, session)
    me = ex.actions.signer.address
    sim.fund(me, 100_000)
    eth = sim.engine.by_name["ETH"]
    for i in range(2600):  # alternate sides so margin never runs out
        is_buy = i % 2 == 0
        price = wire.round_price(
            eth.path.mid * D("1.01" if is_buy else "0.99"), 4, False, wire.Rounding.NEAREST
        )
        sim.engine.place_orders(me, [OrderRequest(1, is_buy, price, D("0.01"), False, "Ioc")])
        if i % 200 == 0:
            sim.step()  # time moves on between bursts
    fills = await info.user_fills_by_time(me, 0)
    assert len(fills) == len(sim.engine.accounts[me].fills) >= 2600
    assert len({f.tid for f in fills}) == len(fills)
    assert [f.time_ms for f in fills] == sorted(f.time_ms for f in fills)
    gap = budget.stats()["lanes"]["gapfill"]
    assert gap["requests"] >= 2
    assert gap["weight_total"] >= 2 * 20 + 100 + 30


async def test_every_exchange_action(sim: Simulator, session: aiohttp.ClientSession) -> None:
    info, ex, _ = clients(sim, session)
    me = ex.actions.signer.address
    sim.fund(me, 100_000)
    eth = (await load_universe(info)).by_name("ETH")  # as the daemon knows it
    assert eth.asset_id == 1
    c1, c2 = "0x" + secrets.token_hex(16), "0x" + secrets.token_hex(16)
    statuses = await ex.place(
        [
            eth_spec(sim, factor="0.95", tif="Gtc", cloid=c1),
            eth_spec(sim, factor="0.94", tif="Gtc", cloid=c2),
            eth_spec(sim, factor="1.01"),
            eth_spec(sim, factor="0.9", sz="0.001"),
        ]
    )
    assert [s.outcome for s in statuses] == ["resting", "resting", "filled", "error"]
    assert statuses[0].cloid == c1
    assert statuses[3] == OrderStatus("error", error="Order must have minimum value of $10.")
    moved = await ex.modify([(c2, eth_spec(sim, factor="0.93", tif="Gtc"))])
    assert moved[0].outcome == "resting"
    cancels = await ex.cancel_by_cloid([(eth, c1), (eth, "0x" + "00" * 16)])
    assert [c.ok for c in cancels] == [True, False]
    assert (await ex.cancel([(eth, moved[0].oid or 0)]))[0].ok
    assert await info.open_orders(me) == []
    # One ETH position is open (the IOC above filled): the margin type cannot change now.
    with pytest.raises(Rejected, match=r"^Cannot switch leverage type with open position\.$"):
        await ex.update_leverage(eth, 10, is_cross=False)
    await ex.update_leverage(eth, 10, is_cross=True)  # the leverage alone can
    (closed,) = await ex.place([eth_spec(sim, is_buy=False, factor="0.99")])
    assert closed.outcome == "filled"
    await ex.update_leverage(eth, 10, is_cross=False)  # flat: it can switch
    assert sim.engine.accounts[me].leverage["ETH"] == (10, False)
    # Our client refuses a leverage above the asset's maximum before sending it...
    with pytest.raises(WireError, match="leverage"):
        await ex.update_leverage(eth, 500, is_cross=True)
    # ...and the exchange refuses it too, when it is sent anyway.
    too_high = ex.actions._prepare(wire.update_leverage_action(1, True, 500), 1, None, None)
    with pytest.raises(Rejected, match="Invalid leverage value"):
        await ex._send(too_high)
    await ex.noop()
    with pytest.raises(Rejected, match=r"Required: \$1000000"):
        await ex.schedule_cancel(sim.engine.now_ms + 60_000)


async def test_stream_subscriptions_and_posts(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    _, ex, _ = clients(sim, session)
    me = ex.actions.signer.address
    sim.fund(me, 100_000)
    fills, updates = inbox(UserFills), inbox(OrderUpdates)
    trades, mids, books = inbox(Trades), inbox(AllMids), inbox(L2Book)

    async with pool_on(sim) as pool:
        await pool.user_fills(me, fills)
        await pool.order_updates(me, updates)
        for coin in ("ETH", "BTC"):
            await pool.trades(coin, trades)
        await pool.all_mids(mids)
        await pool.l2_book("ETH", books)
        (snapshot,) = await receive(fills, 1)
        assert snapshot.is_snapshot
        assert snapshot.user == me
        (first_mids,) = await receive(mids, 1)
        assert first_mids.mids["ETH"] == sim.engine.by_name["ETH"].path.mid
        (first_book,) = await receive(books, 1)
        assert first_book.coin == "ETH"
        assert first_book.bids[0].px < first_book.asks[0].px
        (filled,) = await ex.place([eth_spec(sim, cloid="0x" + "ab" * 16)])
        (fill_msg,) = await receive(fills, 1)
        assert not fill_msg.is_snapshot
        assert fill_msg.fills[0].oid == filled.oid
        assert fill_msg.fills[0].cloid == "0x" + "ab" * 16
        (update_msg,) = await receive(updates, 1)
        assert update_msg.user == me
        assert update_msg.updates[0].status == "filled"
        assert update_msg.updates[0].order.oid == filled.oid
        got_trades = await receive(trades, 1)
        got_trades += trades.drain_nowait()
        assert all(t.coin == "ETH" for m in got_trades for t in m.trades)
        sim.step(30)  # the population trades; the book and mids are pushed every few ticks
        await receive(books, 2)
        await receive(mids, 2)
        got_trades += trades.drain_nowait()
        assert {t.coin for m in got_trades for t in m.trades} <= {"ETH", "BTC"}
        assert all(m.coin == m.trades[0].coin for m in got_trades)
        assert pool.stats()["malformed"] == 0
        # Requests over the socket: an info post and a signed action.
        data = await pool._post("info", {"type": "clearinghouseState", "user": me})
        assert data["assetPositions"][0]["position"]["szi"] == "0.01"
        body = ex.actions._signed_body(wire.noop_action(), ex.nonces.next())
        assert await pool._post("action", body) == {
            "status": "ok",
            "response": {"type": "default"},
        }


async def test_the_budget_keeps_a_busy_client_under_the_servers_limit(
    session: aiohttp.ClientSession,
) -> None:
    async with Simulator(
        SimConfig(port=0, realtime=False, traders=10, weight_per_minute=200)
    ) as sim:
        budget = WeightBudget(200, 0)
        info = InfoClient(session, sim.url, budget)
        # Twelve meta requests (20 each) against 200 a minute: ten go, two wait for the window.
        results = await asyncio.gather(
            *(asyncio.wait_for(info.meta(), 1.0) for _ in range(12)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 10
        assert sum(isinstance(r, TimeoutError) for r in results) == 2
        assert sim.snapshot()["rate_limited"] == 0  # the client waited instead of being refused
        assert budget.stats()["lanes"][Lane.ENRICHMENT.name.lower()]["requests"] == 10
