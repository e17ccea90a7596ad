"""Paper execution against the simulator's real order books, with real PostgreSQL: the fill model
driven by the executor, the copy log it writes, the paper account it keeps, and the copies API.

Most tests use a stepped simulator (``realtime=False``): its market stands still unless stepped,
so the book a test reads over REST is the book the executor fills against, and every expected
figure is computed here, independently, from that book."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hlcopy.api.app import error_middleware
from hlcopy.api.copies import COPIES, COPIES_PAGE, ROUTES
from hlcopy.api.params import endpoint
from hlcopy.budget import WeightBudget
from hlcopy.clock import SYSTEM, Clock, VirtualClock
from hlcopy.component import Ready
from hlcopy.config import HlcopyConfig, parse_config
from hlcopy.events import EventBus, Subscriber
from hlcopy.follow.executor import (
    DEFAULT_TAKER_FEE_RATE,
    HOUR_MS,
    NO_MATCH,
    REDUCE_ONLY_REFUSED,
    PaperExecutor,
)
from hlcopy.hl import InfoClient, StreamPool
from hlcopy.model import AllMids, L2Book, LeaderFill, OrderIntent, OrderOutcome
from hlcopy.queues import BoundedQueue
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store
from hlcopy.store.copies import CopyRow, CopyStore

from tests.component.test_api_fuzz import check
from tests.component.test_sim_server import pool_on

D = Decimal
RATE = DEFAULT_TAKER_FEE_RATE
LEADER = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        yield s


@dataclass
class Env:
    executor: PaperExecutor
    intents: BoundedQueue[OrderIntent]
    outcomes: BoundedQueue[OrderOutcome]
    bus: EventBus
    feed: Subscriber
    info: InfoClient
    pool: StreamPool
    copies: CopyStore
    seen: list[OrderOutcome] = field(default_factory=list)


def config(equity: int = 10_000) -> HlcopyConfig:
    return parse_config({"account": {"paper_equity_usd": equity}})


@contextlib.asynccontextmanager
async def executor_on(
    sim: Simulator,
    store: Store,
    *,
    clock: Clock = SYSTEM,
    latency_ms: int = 20,
    funding: bool = False,
    sz_decimals: Callable[[str], int | None] | None = None,
) -> AsyncIterator[Env]:
    async with aiohttp.ClientSession() as session, pool_on(sim) as pool:
        info = InfoClient(session, sim.url, WeightBudget())
        intents = BoundedQueue[OrderIntent]("test:intents", 100)
        outcomes = BoundedQueue[OrderOutcome]("test:outcomes", 100)
        bus = EventBus()
        feed = bus.subscribe(types=["copy"])
        executor = PaperExecutor(
            intents,
            outcomes,
            pool,
            info,
            store,
            bus,
            config(),
            clock,
            latency_ms=latency_ms,
            funding=funding,
            sz_decimals=sz_decimals,
        )
        up = asyncio.Event()
        task = asyncio.create_task(
            executor.run(Ready(lambda ok, _: up.set() if ok else None)), name="test:executor"
        )
        copies = CopyStore(store)
        try:
            await asyncio.wait_for(up.wait(), 10)
            yield Env(executor, intents, outcomes, bus, feed, info, pool, copies)
        finally:
            await executor.drain()
            await asyncio.wait_for(task, 10)
            await copies.release()  # the write-ahead connection, if the test wrote ahead


def cloid() -> str:
    return "0x" + secrets.token_hex(16)


def intent(
    coin: str,
    is_buy: bool,
    sz: Decimal,
    limit_px: Decimal,
    *,
    reduce_only: bool = False,
    follows: tuple[tuple[str, Decimal], ...] | None = None,
    decided_ms: int = 0,
    tid: int | None = None,
) -> OrderIntent:
    return OrderIntent(
        cloid=cloid(),
        coin=coin,
        is_buy=is_buy,
        sz=sz,
        limit_px=limit_px,
        reduce_only=reduce_only,
        reason="test",
        attribution=follows or (("f1", sz),),
        leader=LEADER,
        source_tid=tid,
        decided_ms=decided_ms,
    )


def walk(book: L2Book, is_buy: bool, sz: Decimal, limit: Decimal) -> tuple[Decimal, Decimal]:
    """(filled size, notional): the book walked by hand, best level first."""
    levels = (
        sorted(book.asks, key=lambda x: x.px) if is_buy else sorted(book.bids, key=lambda x: -x.px)
    )
    left, notional = sz, D(0)
    for lvl in levels:
        if left == 0 or (lvl.px > limit if is_buy else lvl.px < limit):
            break
        take = min(lvl.sz, left)
        notional += take * lvl.px
        left -= take
    return sz - left, notional


async def outcome_of(env: Env, order: OrderIntent) -> OrderOutcome:
    """The next outcome of ``order`` (others that come first are kept for their turn)."""
    async with asyncio.timeout(10):
        while True:
            for i, got in enumerate(env.seen):
                if got.cloid == order.cloid:
                    return env.seen.pop(i)
            env.seen.append(await env.outcomes.get())


async def until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_an_intent_fills_at_the_books_prices_within_its_limit(
    stepped: Simulator, store: Store
) -> None:
    async with executor_on(stepped, store, latency_ms=50) as env:
        book = await env.info.l2_book("ETH")
        asks = sorted(book.asks, key=lambda x: x.px)
        sz = asks[0].sz + asks[1].sz / 2  # two levels
        limit = asks[3].px
        now = SYSTEM.time_ms()
        trigger = LeaderFill(LEADER, "ETH", "B", D(3), asks[0].px, now - 500, 77, "userFills")
        order = intent("ETH", True, sz, limit, decided_ms=now - 400, tid=77)
        env.executor.submit(order, trigger)
        assert env.executor.pending() == {("f1", "ETH"): sz}
        assert env.executor.pending_in("ETH") == {"f1": sz}
        assert env.executor.pending_in("BTC") == {}
        before = env.executor.positions()
        assert before == {}
        assert env.executor.positions() is before  # made once per account
        out = await outcome_of(env, order)

        notional = asks[0].sz * asks[0].px + asks[1].sz / 2 * asks[1].px
        assert out.status == "filled"
        assert out.filled_sz == sz
        assert out.avg_px == notional / sz
        assert asks[0].px < out.avg_px < asks[1].px <= limit
        assert out.fee == notional * RATE
        assert env.executor.pending() == {}
        assert env.executor.positions() == {"ETH": sz}
        assert before == {}  # a read kept across the fill is the account it was read from
        with pytest.raises(TypeError):
            env.executor.positions()["ETH"] = D(0)  # type: ignore[index]
        assert env.executor.attributed() == {"f1": {"ETH": sz}}
        account = env.executor.account()
        assert account.cash == D(10_000) - notional * RATE
        assert account.entry_px("ETH") == notional / sz

        (row,) = await env.copies.copies(None, None, 10)
        assert row["cloid"] == order.cloid
        assert row["status"] == "filled"
        assert row["leader_fill"] == {
            "tid": 77,
            "side": "B",
            "px": str(asks[0].px),
            "sz": "3",
            "time_ms": now - 500,
        }
        assert row["intent"]["side"] == "B"
        assert D(row["intent"]["sz"]) == sz
        assert D(row["intent"]["limit_px"]) == limit
        assert D(row["fill"]["filled_sz"]) == sz
        assert D(row["fill"]["avg_px"]) == out.avg_px
        assert D(row["fee"]) == out.fee
        expected_bps = ((out.avg_px - asks[0].px) / asks[0].px * 10_000).quantize(D("0.01"))
        assert D(row["slippage_bps"]) == expected_bps > 0
        assert row["delay_ms"]["decision"] == 100
        # Sent after the decision; filled after the latency allowance.
        assert row["delay_ms"]["send"] >= 400
        assert row["fill"]["settled_ms"] - row["fill"]["sent_ms"] >= 50
        event = await asyncio.wait_for(env.feed.next(), 5)
        assert event.type == "copy"
        assert event.address == LEADER
        assert event.data["cloid"] == order.cloid
        assert event.data["status"] == "filled"


async def test_the_account_figures_are_made_again_only_when_the_account_or_a_mid_changes(
    stepped: Simulator, store: Store
) -> None:
    """A copy decision reads the account's sums (equity, gross notional, each follow's): kept
    while nothing changes, made again after a fill is booked or the mids move."""
    async with executor_on(stepped, store) as env:
        await until(lambda: "ETH" in env.executor.mids() and "BTC" in env.executor.mids())
        ex = env.executor
        start = ex.figures()
        assert start.equity == D(10_000)
        assert start.notional == 0
        assert start.follow_notional == {}
        assert ex.figures() is start  # nothing changed: kept

        book = await env.info.l2_book("ETH")
        ask = min(book.asks, key=lambda x: x.px)
        sz = ask.sz / 2
        order = intent("ETH", True, sz, ask.px, follows=(("f1", sz / 2), ("f2", sz / 2)))
        ex.submit(order)
        out = await outcome_of(env, order)
        assert out.filled_sz == sz
        booked = ex.figures()
        assert booked is not start  # the fill changed the account
        assert booked.positions == {"ETH": sz}
        assert ex.figures() is booked

        ex.mids_sink.offer(AllMids({"ETH": D(3000), "BTC": D(60_000)}))
        moved = ex.figures()
        assert moved is not booked  # the mids moved
        assert ex.figures() is moved
        account = ex.account()
        entry = account.entry_px("ETH")
        assert entry is not None
        assert moved.positions == {"ETH": sz}
        assert moved.equity == account.cash + sz * (D(3000) - entry)
        assert moved.notional == sz * D(3000)
        assert moved.follow_notional == {"f1": sz / 2 * D(3000), "f2": sz / 2 * D(3000)}
        with pytest.raises(TypeError):
            moved.follow_notional["f1"] = D(0)  # type: ignore[index]


async def test_a_tight_limit_fills_partly_or_not_at_all(stepped: Simulator, store: Store) -> None:
    async with executor_on(stepped, store) as env:
        book = await env.info.l2_book("BTC")
        bids = sorted(book.bids, key=lambda x: -x.px)
        # A sell limited to the best bid takes that level only.
        sz = bids[0].sz + bids[1].sz
        partly = intent("BTC", False, sz, bids[0].px)
        await env.intents.put(partly)
        out = await outcome_of(env, partly)
        assert out.status == "partial"
        assert out.filled_sz == bids[0].sz
        assert out.avg_px == bids[0].px
        assert out.fee == bids[0].sz * bids[0].px * RATE
        assert env.executor.positions() == {"BTC": -bids[0].sz}

        # A buy limited below the best ask takes nothing: the exchange's IOC rejection.
        asks = sorted(book.asks, key=lambda x: x.px)
        nothing = intent("BTC", True, D("0.01"), asks[0].px - D(1))
        await env.intents.put(nothing)
        out = await outcome_of(env, nothing)
        assert out.status == "rejected"
        assert out.error == NO_MATCH
        assert out.filled_sz == 0
        assert env.executor.positions() == {"BTC": -bids[0].sz}
        assert env.executor.pending() == {}
        rows = {r["cloid"]: r for r in await env.copies.copies(None, None, 10)}
        assert rows[partly.cloid]["status"] == "partial"
        assert rows[nothing.cloid]["status"] == "rejected"
        assert rows[nothing.cloid]["error"] == NO_MATCH
        assert rows[nothing.cloid]["fill"]["avg_px"] is None


async def test_a_partial_fill_of_a_shared_order_leaves_every_follow_on_the_lot(
    stepped: Simulator, store: Store
) -> None:
    """Two follows share a sell 2:1 that fills only its first level: each follow's part is a
    lot multiple (an exact two thirds would be a position no order can trade, and the next
    decision for the coin would refuse it), and the parts sum to what filled."""
    async with aiohttp.ClientSession() as session:
        meta = await InfoClient(session, stepped.url, WeightBudget()).meta()
    lots = {a.name: a.sz_decimals for a in meta.universe}
    async with executor_on(stepped, store, sz_decimals=lots.get) as env:
        book = await env.info.l2_book("BTC")
        bids = sorted(book.bids, key=lambda x: -x.px)
        lot = D(1).scaleb(-lots["BTC"])
        units = int((bids[0].sz + bids[1].sz) / lot) // 3 * 3  # splits 2:1 on the lot
        sz = units * lot
        assert sz > bids[0].sz  # so the sell fills partly
        shares = (("f1", sz * 2 / 3), ("f2", sz / 3))
        partly = intent("BTC", False, sz, bids[0].px, follows=shares)
        await env.intents.put(partly)
        out = await outcome_of(env, partly)
        assert out.status == "partial"
        parts = {f: -coins["BTC"] for f, coins in env.executor.attributed().items()}
        assert sum(parts.values()) == out.filled_sz == -env.executor.positions()["BTC"]
        for follow, part in parts.items():
            assert part % lot == 0, (follow, part)
        exact = {f: share * out.filled_sz / sz for f, share in shares}
        assert all(abs(parts.get(f, D(0)) - x) < lot for f, x in exact.items())


async def test_fees_and_realised_pnl_match_a_hand_computation(
    stepped: Simulator, store: Store
) -> None:
    async with executor_on(stepped, store) as env:
        book = await env.info.l2_book("ETH")
        asks = sorted(book.asks, key=lambda x: x.px)
        bids = sorted(book.bids, key=lambda x: -x.px)
        sz = asks[0].sz + asks[1].sz
        buy_limit, sell_limit = asks[-1].px, bids[-1].px
        bought, buy_notional = walk(book, True, sz, buy_limit)
        assert bought == sz
        entry = buy_notional / sz
        half = sz / 2
        sold, sell_notional = walk(book, False, half, sell_limit)
        assert sold == half

        buy = intent("ETH", True, sz, buy_limit, follows=(("f1", sz * 3 / 4), ("f2", sz / 4)))
        env.executor.submit(buy)
        assert env.executor.pending() == {("f1", "ETH"): sz * 3 / 4, ("f2", "ETH"): sz / 4}
        await outcome_of(env, buy)
        sell = intent("ETH", False, half, sell_limit, reduce_only=True)
        env.executor.submit(sell)
        out = await outcome_of(env, sell)

        realised = half * (sell_notional / half - entry)  # a long closed: (exit - entry) x size
        fees = (buy_notional + sell_notional) * RATE
        account = env.executor.account()
        assert out.status == "filled"
        assert out.fee == sell_notional * RATE
        assert account.realized_pnl == realised < 0  # crossing the spread loses
        assert account.fees == fees
        assert account.cash == D(10_000) + realised - fees
        assert account.position("ETH") == sz - half
        assert account.entry_px("ETH") == entry  # a reduction keeps the entry
        assert env.executor.attributed() == {
            "f1": {"ETH": sz * 3 / 4 - half},
            "f2": {"ETH": sz / 4},
        }
        rows = {r["cloid"]: r for r in await env.copies.copies(None, None, 10)}
        assert D(rows[sell.cloid]["fill"]["closed_pnl"]) == realised
        assert D(rows[buy.cloid]["fill"]["closed_pnl"]) == 0
        fills = await env.copies.paper_fills()
        assert [(f["dir"], D(f["sz"])) for f in fills] == [("Close Long", half), ("Open Long", sz)]

        # Reduce-only is cut to the position and refused when it would increase it.
        rest = account.position("ETH")
        too_much = intent("ETH", False, rest * 10, sell_limit, reduce_only=True)
        env.executor.submit(too_much)
        out = await outcome_of(env, too_much)
        assert out.filled_sz == rest
        assert out.status == "partial"
        assert env.executor.positions() == {}
        wrong_way = intent("ETH", True, D("0.01"), buy_limit, reduce_only=True)
        env.executor.submit(wrong_way)
        out = await outcome_of(env, wrong_way)
        assert (out.status, out.error) == ("rejected", REDUCE_ONLY_REFUSED)
        assert env.executor.positions() == {}


async def test_a_restart_keeps_the_paper_account_and_the_copy_log(
    stepped: Simulator, store: Store
) -> None:
    async with executor_on(stepped, store) as env:
        book = await env.info.l2_book("ETH")
        asks = sorted(book.asks, key=lambda x: x.px)
        order = intent("ETH", True, asks[0].sz, asks[0].px)
        env.executor.submit(order)
        await outcome_of(env, order)
        before = env.executor.account()
        attributed = env.executor.attributed()
        env.executor.record_skip(
            "f1",
            "SOL",
            "coin_filtered",
            D(2),
            LeaderFill(LEADER, "SOL", "A", D(2), D(150), 1_000, 9, "userFills"),
        )
        await env.executor.flush_skips()
        # An intent a crashed run wrote ahead but never filled.
        orphan = CopyRow("planned", True, (("f1", D(1)),), "BTC", 5, cloid=cloid(), sz=D(1))
        assert await env.copies.write_intent(orphan) is None
        # The same cloid again is the same order: it is not run a second time.
        env.executor.submit(order)
        again = await outcome_of(env, order)
        assert again.status == "filled"
        assert again.filled_sz == asks[0].sz
        assert env.executor.account() == before
        assert env.executor.stats()["duplicates"] == 1

    async with executor_on(stepped, store) as env:
        assert env.executor.account() == before
        assert env.executor.positions() == {"ETH": asks[0].sz}
        assert env.executor.attributed() == attributed
        rows = await env.copies.copies(None, None, 10)
        by_status = {r["status"]: r for r in rows}
        assert set(by_status) == {"filled", "skipped", "never_arrived"}
        assert by_status["filled"]["cloid"] == order.cloid
        assert by_status["never_arrived"]["cloid"] == orphan.cloid
        assert by_status["skipped"]["skip_reason"] == "coin_filtered"
        assert env.executor.stats()["never_arrived"] == 1


async def test_funding_follows_the_exchanges_sign(stepped: Simulator, store: Store) -> None:
    async with executor_on(stepped, store) as env:
        eth = await env.info.l2_book("ETH")
        btc = await env.info.l2_book("BTC")
        long_eth = intent("ETH", True, D("0.5"), eth.asks[-1].px)
        short_btc = intent("BTC", False, D("0.02"), btc.bids[-1].px)
        for order in (long_eth, short_btc):
            env.executor.submit(order)
            assert (await outcome_of(env, order)).status == "filled"
        before = env.executor.account()
        meta, ctxs = await env.info.meta_and_asset_ctxs()
        ctx = {a.name: c for a, c in zip(meta.universe, ctxs, strict=False)}
        hour = SYSTEM.time_ms() // HOUR_MS * HOUR_MS + HOUR_MS
        # The hours since the account was loaded: one, or two when the test crossed an hour.
        loaded = await env.copies.load_paper()
        assert loaded is not None
        assert loaded.funded_hour_ms is not None
        hours = (hour - loaded.funded_hour_ms) // HOUR_MS
        assert hours in (1, 2)
        rows = await env.executor.fund(hour)

        per_hour = {}
        for coin, szi in (("ETH", D("0.5")), ("BTC", D("-0.02"))):
            rate, oracle = ctx[coin].funding, ctx[coin].oracle_px
            assert rate is not None
            assert oracle is not None
            # Longs pay shorts when the rate is positive: the cash change is -szi x oracle x rate.
            per_hour[coin] = -szi * oracle * rate
            assert rate != 0
            assert (per_hour[coin] < 0) == ((szi > 0) == (rate > 0))
        expected = {c: hours * v for c, v in per_hour.items()}
        assert {r.coin: r.usdc for r in rows} == expected
        after = env.executor.account()
        assert after.funding == sum(expected.values())
        assert after.cash == before.cash + sum(expected.values())
        assert after.realized_pnl == before.realized_pnl
        assert await env.executor.fund(hour) == []  # an hour is paid once
        stored = await env.copies.paper_funding()
        assert [(r["coin"], D(r["usdc"])) for r in stored] == sorted(expected.items())

    async with executor_on(stepped, store) as env:  # and a restart does not pay it again
        assert env.executor.account() == after
        assert await env.executor.fund(hour) == []
        # Two hours later (the daemon was down for one): both are paid, at the current rate.
        rows = await env.executor.fund(hour + 2 * HOUR_MS)
        assert {r.coin: r.usdc for r in rows} == {c: 2 * v for c, v in per_hour.items()}
        assert all(r.hours == 2 for r in rows)


async def test_funding_is_paid_on_the_hour_by_the_clock(stepped: Simulator, store: Store) -> None:
    clock = VirtualClock(epoch_ms=1_800_000_000_000 // HOUR_MS * HOUR_MS + 60_000)
    async with executor_on(stepped, store, clock=clock, latency_ms=0, funding=True) as env:
        eth = await env.info.l2_book("ETH")
        order = intent("ETH", True, D("0.5"), eth.asks[-1].px)
        env.executor.submit(order)
        assert (await outcome_of(env, order)).status == "filled"
        await clock.advance(HOUR_MS / 1000 - 61)  # not yet the hour
        await asyncio.sleep(0.2)
        assert env.executor.account().funding == 0
        await clock.advance(2)
        await until(lambda: env.executor.stats()["funding_hours"] == 1)
        (row,) = await env.copies.paper_funding()
        assert row["hour_ms"] == 1_800_000_000_000 // HOUR_MS * HOUR_MS + HOUR_MS
        assert (
            D(row["usdc"])
            == env.executor.account().funding
            == -D("0.5") * D(row["px"]) * D(row["rate"])
        )


async def test_skips_are_recorded_once_with_their_reason(stepped: Simulator, store: Store) -> None:
    async with executor_on(stepped, store) as env:
        fill = LeaderFill(LEADER, "ETH", "B", D(1), D(3000), 1_000, 42, "userFills")
        for _ in range(3):  # decided again and again: one row
            env.executor.record_skip("f1", "ETH", "below_min_notional", D("0.001"), fill)
        env.executor.record_skip(("f2", "f1"), "ETH", "limit_reached", None, fill, is_buy=True)
        await until(lambda: env.executor.stats()["skips_written"] == 4)
        rows = await env.copies.copies(None, ["skipped"], 10)
        assert sorted((r["skip_reason"], tuple(r["follows"])) for r in rows) == [
            ("below_min_notional", ("f1",)),
            ("limit_reached", ("f1", "f2")),
        ]
        row = next(r for r in rows if r["skip_reason"] == "below_min_notional")
        assert row["leader_fill"]["px"] == "3000"
        assert row["cloid"] is None
        assert row["intent"]["sz"] == "0.001"
        assert [r["skip_reason"] for r in await env.copies.copies("f2", None, 10)] == [
            "limit_reached"
        ]
        event = await asyncio.wait_for(env.feed.next(), 5)
        assert (event.data["status"], event.data["skip_reason"]) == (
            "skipped",
            "below_min_notional",
        )


async def test_fills_against_the_moving_market_stay_within_the_limit(
    sim: Simulator, store: Store
) -> None:
    """The real-time simulator: books move while orders are in flight."""
    async with executor_on(sim, store, latency_ms=100) as env:
        await env.executor.watch(["ETH", "BTC"])
        orders = []
        for coin in ("ETH", "BTC"):
            book = await env.info.l2_book(coin)
            mid = (book.bids[0].px + book.asks[0].px) / 2
            for is_buy in (True, False):
                limit = mid * (D("1.002") if is_buy else D("0.998"))
                sz = D("0.3") if coin == "ETH" else D("0.01")
                orders.append(intent(coin, is_buy, sz, limit))
        for order in orders:
            env.executor.submit(order)
        outs = {o.cloid: await outcome_of(env, o) for o in orders}
        for order in orders:
            out = outs[order.cloid]
            assert out.status in ("filled", "partial", "rejected")
            if out.avg_px is not None:
                assert (
                    out.avg_px <= order.limit_px if order.is_buy else out.avg_px >= order.limit_px
                )
                assert out.fee == out.filled_sz * out.avg_px * RATE
        assert env.executor.pending() == {}
        assert len(await env.copies.copies(None, None, 100)) == len(orders)


# -- the API -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def api(store: Store | None) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware])
    if store is not None:
        app[COPIES] = CopyStore(store)
    for route in ROUTES:
        app.router.add_get(route.path, endpoint(route))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_copies_api_shows_every_field(stepped: Simulator, store: Store) -> None:
    async with executor_on(stepped, store) as env:
        book = await env.info.l2_book("ETH")
        asks = sorted(book.asks, key=lambda x: x.px)
        now = SYSTEM.time_ms()
        trigger = LeaderFill(OTHER, "ETH", "A", D(2), asks[0].px, now - 300, 5, "userFills")
        order = intent("ETH", True, asks[0].sz, asks[0].px, decided_ms=now - 250, tid=5)
        env.executor.submit(order, trigger)
        await outcome_of(env, order)
        env.executor.record_skip("f9", "BTC", "outside_hours", D(1), trigger)
        await env.executor.flush_skips()

    async with api(store) as client:
        resp = await client.get("/api/v1/copies")
        assert resp.status == 200
        body = await resp.json()
        check({}, COPIES_PAGE, body)
        assert body["limit"] == 100
        assert [c["status"] for c in body["copies"]] == ["skipped", "filled"]
        filled = body["copies"][1]
        assert filled["leader_fill"]["px"] == str(asks[0].px)
        assert filled["fill"]["avg_px"] == str(asks[0].px)
        assert filled["slippage_bps"] == "0.00"
        assert filled["delay_ms"]["decision"] == 50
        assert filled["attribution"] == [{"follow": "f1", "sz": str(asks[0].sz)}]

        resp = await client.get("/api/v1/copies", params={"follow": "f9", "limit": "5"})
        body = await resp.json()
        assert [(c["skip_reason"], c["follows"]) for c in body["copies"]] == [
            ("outside_hours", ["f9"])
        ]
        resp = await client.get("/api/v1/copies", params={"status": "filled,partial"})
        body = await resp.json()
        assert [c["cloid"] for c in body["copies"]] == [order.cloid]
        assert body["status"] == ["filled", "partial"]
        resp = await client.get("/api/v1/copies", params={"limit": "1"})
        assert len((await resp.json())["copies"]) == 1

        for params, name in (
            ({"limit": "0"}, "limit"),
            ({"limit": "1001"}, "limit"),
            ({"limit": "x"}, "limit"),
            ({"status": "done"}, "status"),
            ({"follow": "a b"}, "follow"),
            ({"follow": "x" * 81}, "follow"),
            ({"folow": "f1"}, "folow"),
        ):
            resp = await client.get("/api/v1/copies", params=params)
            assert resp.status == 400, params
            error = (await resp.json())["error"]
            assert error["code"] == "invalid_parameter"
            assert error["parameter"] == name

    async with api(None) as client:
        resp = await client.get("/api/v1/copies")
        assert resp.status == 503
