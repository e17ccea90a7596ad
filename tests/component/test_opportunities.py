"""Counter-trade opportunities against the stepped simulator, with real PostgreSQL: a top loser's
open becomes an opportunity, its outcome is priced from the live mid when it falls due, and one
that fell due while the daemon was down is priced from the exchange's candles after a restart.

The simulator is stepped (``realtime=False``) and the component runs on a ``VirtualClock`` kept
at the market's time, so a 30-second horizon takes no real time and every expected figure is
worked out here from what the simulator itself says (REST mids, raw candles)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hlcopy.api.app import error_middleware
from hlcopy.api.opportunities import OPPORTUNITIES, OPPORTUNITIES_PAGE, ROUTES
from hlcopy.api.params import endpoint
from hlcopy.budget import WeightBudget
from hlcopy.clock import VirtualClock
from hlcopy.component import Ready
from hlcopy.config import HlcopyConfig, parse_config
from hlcopy.events import Event, EventBus, Subscriber
from hlcopy.follow.opportunities import outcome, tally
from hlcopy.follow.opportunities_service import Opportunities
from hlcopy.hl import InfoClient, UniverseService
from hlcopy.model import Position
from hlcopy.scout.analytics import TraderMetrics
from hlcopy.scout.leaderboard import Leaderboard
from hlcopy.scout.tracker import event_json, position_events
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store
from hlcopy.store.opportunities import OpportunityStore

from tests.component.test_api_fuzz import check
from tests.component.test_sim_server import pool_on

D = Decimal
LOSER = "0x" + "1a" * 20
WORSE = "0x" + "2b" * 20
NOBODY = "0x" + "3c" * 20
TICKS_PER_S = 10  # the simulator's 100 ms ticks


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        for who in (LOSER, WORSE, NOBODY):
            s.fund(who, 1_000_000)
        yield s


def config(horizons: list[int]) -> HlcopyConfig:
    return parse_config(
        {"opportunities": {"losers_top_n": 2, "notional_usd": 500, "horizons_s": horizons}}
    )


def losers_board(clock: VirtualClock) -> Leaderboard:
    """WORSE is the worst loser, LOSER the second; NOBODY lost nothing."""
    board = Leaderboard(clock=clock)
    for who, badness in ((WORSE, 3.0), (LOSER, 2.0), (NOBODY, -1.0)):
        board.put(
            who,
            {"month": TraderMetrics(window="month", badness=badness)},
            account_value=D(1_000_000),
            updated_ms=clock.time_ms(),
        )
    board.refresh()
    return board


@dataclass
class World:
    sim: Simulator
    clock: VirtualClock
    info: InfoClient
    universe: UniverseService
    board: Leaderboard
    store: Store
    http: aiohttp.ClientSession

    def step(self, seconds: int) -> None:
        """Move the market ``seconds`` on (the clock is moved by the test, when it chooses)."""
        self.sim.step(seconds * TICKS_PER_S)

    async def trade(
        self, who: str, coin: str, is_buy: bool, usd: int, bus: EventBus
    ) -> dict[str, Decimal]:
        """``who`` trades; the change is published as the tracker publishes it: the events
        between two snapshots, priced at the mids of the moment (returned)."""
        before = await self.info.clearinghouse_state(who)
        async with self.http.post(
            f"{self.sim.url}/_sim/trade",
            json={"address": who, "coin": coin, "is_buy": is_buy, "usd": usd},
        ) as resp:
            assert resp.status == 200, await resp.text()
        after = await self.info.clearinghouse_state(who)
        mids = await self.info.all_mids()
        held: dict[str, Position] = {p.coin: p for p in before.positions if p.szi != 0}
        for e in position_events(who, held, after, mids, self.clock.time_ms()):
            bus.publish(Event("position", event_json(e), e.time_ms, e.address))
        return mids

    async def candle_close(self, coin: str, at_ms: int) -> Decimal:
        """The close of the 1-minute bar holding ``at_ms``, read raw off the simulator."""
        body = {
            "type": "candleSnapshot",
            "req": {
                "coin": coin,
                "interval": "1m",
                "startTime": at_ms - 60_000,
                "endTime": at_ms + 60_000,
            },
        }
        async with self.http.post(f"{self.sim.url}/info", json=body) as resp:
            bars = await resp.json()
        (bar,) = [b for b in bars if b["t"] <= at_ms <= b["T"]]
        return D(bar["c"])


@contextlib.asynccontextmanager
async def world(sim: Simulator, store: Store) -> AsyncIterator[World]:
    clock = VirtualClock(epoch_ms=sim.engine.now_ms)
    async with aiohttp.ClientSession() as http:
        info = InfoClient(http, sim.url, WeightBudget())
        universe = UniverseService(info, clock=clock)
        await universe.refresh()
        yield World(sim, clock, info, universe, losers_board(clock), store, http)


@contextlib.asynccontextmanager
async def running(
    w: World, horizons: list[int], *, mids: bool = True
) -> AsyncIterator[tuple[Opportunities, EventBus, Subscriber]]:
    bus = EventBus()
    heard = bus.subscribe(types=["opportunity"])
    opps = Opportunities(
        w.store, bus, w.board, w.universe, w.info, config(horizons), w.clock, batch=50
    )
    async with pool_on(w.sim) as pool:
        if mids:
            await pool.all_mids(opps.mids_sink)
        up = asyncio.Event()
        task = asyncio.create_task(
            opps.run(Ready(lambda ok, _: up.set() if ok else None)), name="test:opportunities"
        )
        try:
            await asyncio.wait_for(up.wait(), 10)
            yield opps, bus, heard
        finally:
            await opps.drain()
            await asyncio.wait_for(task, 10)


async def until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def ticking(clock: VirtualClock, predicate: Callable[[], Any], timeout: float = 10) -> None:
    """Wait for ``predicate``, firing the clock's timers that fell due meanwhile: a component
    busy with the store when the clock moved arms its timer afterwards, in the past."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await clock.advance(0)
            await asyncio.sleep(0.01)


async def next_event(sub: Subscriber, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict((await sub.next()).data)


def lot(sz_decimals: int) -> Decimal:
    return Decimal(1).scaleb(-sz_decimals)


async def test_a_top_losers_open_is_recorded_and_resolved_at_the_live_mid(
    stepped: Simulator, store: Store
) -> None:
    async with world(stepped, store) as w, running(w, [30, 120]) as (opps, bus, heard):
        eth = w.universe.universe.by_name("ETH")
        t0 = w.clock.time_ms()
        # The second worst loser goes long.
        p0 = (await w.trade(LOSER, "ETH", True, 20_000, bus))["ETH"]

        got = await next_event(heard)
        # Published after it was stored: the store already holds exactly this.
        (stored,) = await OpportunityStore(store).opportunities(None, None, 10)
        assert {k: v for k, v in got.items() if k not in ("change", "horizon_s")} == stored
        assert (got["change"], got["horizon_s"]) == ("recorded", None)
        size = (D(500) / p0).quantize(lot(eth.sz_decimals), rounding=ROUND_DOWN)
        assert stored["trader"] == LOSER
        assert stored["coin"] == "ETH"
        assert stored["kind"] == "open"
        assert (stored["trader_side"], stored["our_side"]) == ("long", "short")
        assert D(stored["price"]) == p0
        assert D(stored["size"]) == size
        assert D(stored["notional_usd"]) == size * p0
        assert stored["time_ms"] == t0
        assert (stored["losers_rank"], stored["losers_window"]) == (2, "month")
        assert [(o["horizon_s"], o["due_ms"], o["price"]) for o in stored["outcomes"]] == [
            (30, t0 + 30_000, None),
            (120, t0 + 120_000, None),
        ]

        # Neither a trader off the losers list nor a loser's decrease is an opportunity.
        await w.trade(NOBODY, "ETH", False, 5_000, bus)
        await w.trade(LOSER, "ETH", False, 5_000, bus)
        await until(lambda: opps.counters["events"] == 3)
        assert opps.counters["skipped_not_a_top_loser"] == 1
        assert opps.counters["recorded"] == 1

        # The market moves on 30 s; the live mids catch up; then the clock reaches the due time.
        w.step(30)
        p30 = (await w.info.all_mids())["ETH"]
        assert p30 != p0  # the market moved: the outcome has a sign
        await until(lambda: opps.mids().get("ETH") == p30)
        await w.clock.advance(30)
        await ticking(w.clock, lambda: opps.counters["resolved"] == 1)
        resolved = await next_event(heard)

    assert (resolved["change"], resolved["horizon_s"]) == ("resolved", 30)
    first = resolved["outcomes"][0]
    # We were short `size` from p0: PnL = -size x (p30 - p0).
    pnl = -size * (p30 - p0)
    move = ((p30 - p0) / p0 * 10_000).quantize(D("0.01"))
    assert first == {
        "horizon_s": 30,
        "due_ms": t0 + 30_000,
        "price": str(p30),
        "source": "mid",
        "move_bps": str(move),
        "return_bps": str(-move),
        "pnl_usd": str(pnl),
        "hit": pnl > 0,
        "resolved_ms": t0 + 30_000,
    }
    assert resolved["outcomes"][1]["price"] is None  # 120 s is not due yet

    # The API: the rows as stored, and the summary over them.
    app = web.Application(middlewares=[error_middleware])
    app[OPPORTUNITIES] = OpportunityStore(store)
    for route in ROUTES:
        app.router.add_get(route.path, endpoint(route))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/opportunities", params={"trader": LOSER.upper()[2:]})
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_parameter"
        resp = await client.get("/api/v1/opportunities", params={"coin": "ETH", "limit": "5"})
        assert resp.status == 200
        body = await resp.json()
        check({}, OPPORTUNITIES_PAGE, body)
        assert body["opportunities"][0]["outcomes"][0] == first
        assert body["summary"] == [
            {
                "horizon_s": 30,
                "count": 1,
                "resolved": 1,
                "hits": 1 if pnl > 0 else 0,
                "hit_rate": "1.0000" if pnl > 0 else "0.0000",
                "mean_pnl_usd": str(pnl.quantize(D("0.000001"))),
                "mean_return_bps": str(-move),
            },
            {
                "horizon_s": 120,
                "count": 1,
                "resolved": 0,
                "hits": 0,
                "hit_rate": None,
                "mean_pnl_usd": None,
                "mean_return_bps": None,
            },
        ]
        resp = await client.get("/api/v1/opportunities", params={"trader": WORSE})
        body = await resp.json()
        assert body["opportunities"] == []
        assert body["summary"] == []


async def test_an_outcome_due_while_down_is_priced_from_the_candles_after_a_restart(
    stepped: Simulator, store: Store
) -> None:
    async with world(stepped, store) as w:
        async with running(w, [30]) as (_, bus, heard):
            t0 = w.clock.time_ms()
            # The worst loser goes short.
            p0 = (await w.trade(WORSE, "BTC", False, 30_000, bus))["BTC"]
            recorded = await next_event(heard)
            assert (recorded["trader_side"], recorded["our_side"]) == ("short", "long")
            size = D(recorded["size"])
        # Down: the due time passes, and then some, with nobody watching.
        w.step(150)
        await w.clock.advance(150)
        close = await w.candle_close("BTC", t0 + 30_000)
        assert close != (await w.info.all_mids())["BTC"]  # the mid now would be another answer

        # Back, with live mids at hand, but 120 s past due: the candle's close is the price.
        async with running(w, [30]) as (opps, _, heard):
            await ticking(w.clock, lambda: opps.counters["resolved"] == 1)
            assert opps.counters["resolved_candle_1m"] == 1
        (row,) = await OpportunityStore(store).opportunities(None, None, 10)

    (o,) = row["outcomes"]
    pnl = size * (close - p0)  # long from p0
    assert (o["price"], o["source"], o["pnl_usd"], o["hit"]) == (
        str(close),
        "candle_1m",
        str(pnl),
        pnl > 0,
    )
    assert o["resolved_ms"] == t0 + 150_000
    # The store's sums are the core's.
    mine = outcome("long", size, p0, 30, t0 + 30_000, close, "candle_1m", t0 + 150_000)
    assert await OpportunityStore(store).tallies(None, None) == tally([30], [(30, mine)])


async def test_without_mids_an_outcome_waits_for_its_candle_to_close(
    stepped: Simulator, store: Store
) -> None:
    async with world(stepped, store) as w, running(w, [30], mids=False) as (opps, bus, heard):
        t0 = w.clock.time_ms()
        p0 = (await w.trade(LOSER, "SOL", True, 10_000, bus))["SOL"]
        size = D((await next_event(heard))["size"])
        w.step(30)
        await w.clock.advance(30)
        # Due, but no mid and the minute holding the due time has not closed: deferred.
        await ticking(w.clock, lambda: opps.counters["deferred"] == 1)
        assert opps.counters["resolved"] == 0
        w.step(70)
        await w.clock.advance(70)
        await ticking(w.clock, lambda: opps.counters["resolved"] == 1)
        resolved = await next_event(heard)
        close = await w.candle_close("SOL", t0 + 30_000)

    (o,) = resolved["outcomes"]
    assert (o["price"], o["source"]) == (str(close), "candle_1m")
    assert D(o["pnl_usd"]) == -size * (close - p0)
    # Resolved as soon as its minute closed, not at the end of the 70 s.
    assert t0 + 30_000 < o["resolved_ms"] <= t0 + 90_000
