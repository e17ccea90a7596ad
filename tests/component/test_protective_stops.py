"""Protective stops against the simulator, with real PostgreSQL: the live executor copies for a
master account through an approved agent, and the protector keeps one reduce-only stop-market
per coin on the exchange for hlcopy's part — placed when a position opens, moved (one order,
never two) as it grows, cancelled when flat. Killed without any cleanup, the stops stay and the
simulator fires them when the mark crosses them (chaos scenario j); a restart adopts its stop
rather than placing a second one. The dead man's switch is refused below the exchange's volume
threshold and, armed, cancels resting orders when hlcopy stops re-arming it.

The simulator is stepped (``realtime=False``): the mark moves only when a test moves it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.clock import VirtualClock
from hlcopy.component import Component, Ready
from hlcopy.config import parse_config
from hlcopy.events import EventBus
from hlcopy.follow.executor import PaperExecutor
from hlcopy.follow.protect import (
    DeadManSwitch,
    Protector,
    RestingStop,
    StopPlan,
    needs_move,
    plan_stops,
    stop_cloid,
    stop_generation,
    stop_trigger,
)
from hlcopy.follow.venues import LiveVenue
from hlcopy.hl import ExchangeClient, InfoClient, Rounding, Signer, round_price
from hlcopy.model import (
    AccountRead,
    Asset,
    Order,
    OrderIntent,
    OrderOutcome,
    OrderSpec,
    OrderStatus,
)
from hlcopy.queues import BoundedQueue
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store

from tests.component.test_live_executor import asset_of, intent, sim_post, until
from tests.component.test_sim_server import pool_on

D = Decimal
PCT = D(5)


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        yield s


@dataclass(frozen=True)
class Keys:
    master: Signer
    agent: Signer


async def approved(sim: Simulator) -> Keys:
    """A funded master account with an approved agent key."""
    master = Signer.from_key("0x" + secrets.token_hex(32))
    agent = Signer.from_key("0x" + secrets.token_hex(32))
    await sim_post(sim, "/_sim/fund", {"address": master.address, "usdc": "100000"})
    async with aiohttp.ClientSession() as session:
        by_master = ExchangeClient(session, sim.url, master, WeightBudget(), is_mainnet=False)
        await by_master.approve_agent(master, agent.address, "hlcopy")
    return Keys(master, agent)


@dataclass
class Run:
    sim: Simulator
    executor: PaperExecutor
    protector: Protector
    exchange: ExchangeClient
    info: InfoClient
    outcomes: BoundedQueue[OrderOutcome]
    master: str


@contextlib.asynccontextmanager
async def running(
    sim: Simulator,
    store: Store,
    keys: Keys,
    pcts: Mapping[str, Decimal] | None = None,
    follower_state: Callable[[], AccountRead | None] | None = None,
    retry_s: float = 10.0,
) -> AsyncIterator[Run]:
    """A live executor and its protector, sharing one exchange client (one nonce source). On
    exit both are killed: cancelled, no drain, nothing cleaned up (a dead daemon)."""
    pcts = {"f1": PCT} if pcts is None else pcts
    async with aiohttp.ClientSession() as session, pool_on(sim) as pool:
        info = InfoClient(session, sim.url, WeightBudget())
        exchange = ExchangeClient(session, sim.url, keys.agent, WeightBudget(), is_mainnet=False)
        venue = LiveVenue(
            exchange,
            info,
            keys.master.address,
            asset_of(sim),
            stream=pool,
            follower_state=follower_state,  # the tracker's reads, in the daemon
            expires_after_s=1.0,
        )
        bus = EventBus()
        outcomes = BoundedQueue[OrderOutcome]("test:outcomes", 100)
        executor = PaperExecutor(
            BoundedQueue[OrderIntent]("test:intents", 100),
            outcomes,
            pool,
            info,
            store,
            bus,
            parse_config({}),
            funding=False,
            venue=venue,
        )
        protector = Protector(
            executor,
            exchange,
            info,
            keys.master.address,
            asset_of(sim),
            lambda: pcts,
            bus,
            interval_s=0.2,
            retry_s=retry_s,
            expires_after_s=1.0,
        )
        up = [asyncio.Event(), asyncio.Event()]
        parts: list[tuple[Component, asyncio.Event]] = [(executor, up[0]), (protector, up[1])]
        tasks = [
            asyncio.create_task(part.run(ready_setting(event)), name=f"test:{part.name}")
            for part, event in parts
        ]
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(*(e.wait() for e in up))
            yield Run(sim, executor, protector, exchange, info, outcomes, keys.master.address)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def ready_setting(event: asyncio.Event) -> Ready:
    def on_change(ok: bool, _: str | None) -> None:
        if ok:
            event.set()

    return Ready(on_change)


async def filled(run: Run, order: OrderIntent) -> None:
    run.executor.submit(order)
    async with asyncio.timeout(10):
        while True:
            out = await run.outcomes.get()
            if out.cloid == order.cloid:
                assert out.status == "filled", out
                return


async def open_orders(run: Run) -> list[Order]:
    return await run.info.frontend_open_orders(run.master)


async def settled(run: Run) -> list[Order]:
    """Wait for two more passes of the protector, then the account's open orders."""
    passes = run.protector.counters["passes"]
    await until(lambda: run.protector.counters["passes"] >= passes + 2)
    return await open_orders(run)


def expected_trigger(run: Run, coin: str) -> Decimal:
    """Where the stop should be: PCT beyond the worse of the entry and the mid hlcopy sees."""
    position = run.executor.account().positions[coin]
    a = run.sim.engine.by_name[coin]
    px = stop_trigger(position.szi, position.entry_px, run.executor.mids().get(coin), PCT)
    return round_price(px, a.sz_decimals, False, Rounding.NEAREST)


def mark(sim: Simulator, coin: str) -> Decimal:
    return sim.engine.by_name[coin].path.mid


def move(sim: Simulator, coin: str, factor: str) -> None:
    asset = sim.engine.by_name[coin]
    sim.engine.set_price(asset, float(asset.path.mid * D(factor)))


# --- the stop follows the position -----------------------------------------------------------


async def test_a_copied_long_gets_one_stop_that_moves_as_it_grows_and_goes_when_flat(
    stepped: Simulator, store: Store
) -> None:
    keys = await approved(stepped)
    async with running(stepped, store, keys) as run:
        assert await settled(run) == []  # nothing held, nothing placed
        await filled(run, intent(stepped, True, "0.02"))

        await until(lambda: "ETH" in run.protector.stops())
        (stop,) = await open_orders(run)
        assert (stop.order_type, stop.is_trigger, stop.reduce_only) == ("Stop Market", True, True)
        assert stop.side == "A"  # a long's stop sells
        assert stop.sz == D("0.02")
        assert stop.trigger_px == expected_trigger(run, "ETH")
        now = mark(stepped, "ETH")
        assert now * D("0.94") < stop.trigger_px < now * D("0.96")
        assert stop_generation(stop.cloid, "ETH") is not None  # ours, by its cloid
        first_gen = run.protector.stops()["ETH"].generation

        await filled(run, intent(stepped, True, "0.03"))  # the position grows

        await until(lambda: run.protector.stops()["ETH"].sz == D("0.05"))
        (moved,) = await settled(run)  # still one stop on the exchange
        assert moved.sz == D("0.05")
        assert moved.trigger_px == expected_trigger(run, "ETH")
        assert moved.oid != stop.oid
        assert run.protector.stops()["ETH"].generation > first_gen
        assert (await run.info.order_status(run.master, stop.oid)).status == "canceled"
        assert run.protector.counters["moved"] == 1
        assert run.protector.counters["placed"] == 1

        await filled(run, intent(stepped, False, "0.05", reduce_only=True))  # flat

        await until(lambda: "ETH" not in run.protector.stops())
        assert await settled(run) == []
        assert run.protector.counters["cancelled"] == 1
        assert run.protector.counters["errors"] == 0
        placed_or_moved = run.protector.counters["placed"] + run.protector.counters["moved"]
        assert placed_or_moved == 2  # no churn while nothing changed


async def test_where_modifying_a_stop_is_refused_it_moves_by_place_then_cancel(
    stepped: Simulator, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator modifies triggers as the docs describe; an exchange that refuses it (the
    docs leave room for that) is staged here by refusing every modify."""
    keys = await approved(stepped)
    async with running(stepped, store, keys, retry_s=0.3) as run:
        modifies: list[object] = []

        async def refuse(modifies_: object, **_: object) -> list[OrderStatus]:
            modifies.append(modifies_)
            return [OrderStatus("error", error="Cannot modify a trigger order")]

        monkeypatch.setattr(run.exchange, "modify", refuse)
        await filled(run, intent(stepped, True, "0.02"))
        await until(lambda: "ETH" in run.protector.stops())
        (first,) = await open_orders(run)

        await filled(run, intent(stepped, True, "0.03"))

        await until(lambda: run.protector.counters["replaced"] == 1)
        (stop,) = await settled(run)  # the old one was cancelled after the new one rested
        assert stop.sz == D("0.05")
        assert stop.trigger_px == expected_trigger(run, "ETH")
        assert run.protector.stops()["ETH"].oid == stop.oid
        assert (await run.info.order_status(run.master, first.oid)).status == "canceled"
        counters = run.protector.counters
        assert (counters["modify_refused"], counters["moved"], len(modifies)) == (1, 0, 1)

        await filled(run, intent(stepped, False, "0.01", reduce_only=True))  # moved again
        await until(lambda: run.protector.counters["replaced"] == 2)
        (smaller,) = await settled(run)
        assert smaller.sz == D("0.04")
        assert len(modifies) == 1  # modify is not tried again


async def test_a_follow_without_a_percent_gets_no_stop(stepped: Simulator, store: Store) -> None:
    keys = await approved(stepped)
    async with running(stepped, store, keys, pcts={"other": PCT}) as run:
        await filled(run, intent(stepped, True, "0.02"))  # held by f1, which sets none
        assert await settled(run) == []
        assert run.protector.stops() == {}


async def test_a_stop_whose_reply_was_lost_is_found_on_the_exchange_never_placed_twice(
    stepped: Simulator, store: Store
) -> None:
    keys = await approved(stepped)
    pcts: dict[str, Decimal] = {}
    async with running(stepped, store, keys, pcts) as run:
        await filled(run, intent(stepped, True, "0.02"))
        assert await settled(run) == []
        await sim_post(stepped, "/_sim/faults", {"exchange_lose_reply": 1})
        actions_before = stepped.stats["exchange_requests"]
        pcts["f1"] = PCT  # the follow now asks for a stop: the placing reply is lost

        await until(lambda: run.protector.counters["ambiguous"] == 1)
        assert stepped.stats["replies_lost"] == 1
        assert run.protector.stats()["in_doubt"] == ["ETH"]
        # After expiresAfter the account's open orders are read again and the stop adopted.
        await until(lambda: run.protector.counters["adopted"] == 1, timeout=5)
        (stop,) = await settled(run)
        assert run.protector.stops()["ETH"].oid == stop.oid
        assert stop.sz == D("0.02")
        assert run.protector.counters["placed"] == 0  # it was placed once, by the lost action
        assert stepped.stats["exchange_requests"] - actions_before == 1


async def test_a_stop_that_fired_while_hlcopy_runs_is_let_go_and_a_new_one_sized_to_the_account(
    stepped: Simulator, store: Store
) -> None:
    keys = await approved(stepped)
    seen: list[AccountRead | None] = [None]  # what the tracker last read of the account
    async with running(stepped, store, keys, follower_state=lambda: seen[0]) as run:
        await filled(run, intent(stepped, True, "0.02"))
        await until(lambda: "ETH" in run.protector.stops())
        fired = run.protector.stops()["ETH"]

        move(stepped, "ETH", "0.93")  # through the stop, the exchange's clock brought to ours
        stepped.engine.step(now_ms=int(time.time() * 1000))
        stepped.publish()
        sent_ms = int(time.time() * 1000)
        state = await run.info.clearinghouse_state(run.master)
        assert state.position("ETH") == 0
        seen[0] = AccountRead(state, sent_ms, int(time.time() * 1000))

        await until(lambda: run.protector.stops() == {})
        assert await settled(run) == []
        assert run.protector.counters["gone"] == 1  # its cancel found it filled: no error
        assert run.protector.counters["errors"] == 0
        record = await run.info.order_status(run.master, fired.cloid)
        assert record.status == "filled"

        # The copy engine opens again; hlcopy's books still count the stopped-out part, the
        # account does not: the new stop is the account's size, never more.
        assert run.executor.attributed() == {"f1": {"ETH": D("0.02")}}
        await filled(run, intent(stepped, True, "0.02"))
        await until(lambda: "ETH" in run.protector.stops())
        (stop,) = await settled(run)
        assert stop.sz == D("0.02")
        assert run.executor.attributed() == {"f1": {"ETH": D("0.04")}}
        assert stop.trigger_px == expected_trigger(run, "ETH")
        assert stop.cloid != fired.cloid


# --- chaos (j): the daemon dies, the stops hold ---------------------------------------------


async def test_stops_outlive_a_killed_daemon_and_close_the_positions_when_crossed(
    stepped: Simulator, store: Store
) -> None:
    keys = await approved(stepped)
    async with running(stepped, store, keys) as run:
        await filled(run, intent(stepped, True, "0.03"))
        await filled(run, intent(stepped, False, "0.002", coin="BTC"))
        await until(lambda: set(run.protector.stops()) == {"ETH", "BTC"})
        stops = run.protector.stops()
        info_orders = {o.coin: o for o in await open_orders(run)}
        assert info_orders["BTC"].side == "B"  # a short's stop buys
        assert info_orders["BTC"].trigger_px == expected_trigger(run, "BTC")
        assert info_orders["BTC"].trigger_px > mark(stepped, "BTC")
    # Killed: no drain, nothing cancelled. Then the market falls through the long's stop and
    # rises through the short's.
    move(stepped, "ETH", "0.93")
    move(stepped, "BTC", "1.07")
    stepped.step(1)

    account = stepped.engine.accounts[keys.master.address.lower()]
    assert {c: p.szi for c, p in account.positions.items() if p.szi} == {}
    async with aiohttp.ClientSession() as session:
        info = InfoClient(session, stepped.url, WeightBudget())
        fills = await info.user_fills(keys.master.address)
        assert await info.frontend_open_orders(keys.master.address) == []
        for coin, direction in (("ETH", "Close Long"), ("BTC", "Close Short")):
            closing = [f for f in fills if f.cloid == stops[coin].cloid]
            assert {f.dir for f in closing} == {direction}
            assert sum((f.sz for f in closing), D(0)) == stops[coin].sz
            assert (await info.order_status(keys.master.address, stops[coin].cloid)).status == (
                "filled"
            )


# --- a restart finds its own stop --------------------------------------------------------------


async def test_a_restart_adopts_its_stop_and_cancels_an_older_duplicate(
    stepped: Simulator, store: Store
) -> None:
    keys = await approved(stepped)
    async with running(stepped, store, keys) as run:
        await filled(run, intent(stepped, True, "0.02"))
        await until(lambda: "ETH" in run.protector.stops())
        first = run.protector.stops()["ETH"]
        # An older stop of ours a previous run left behind (say its cancel was lost).
        asset = asset_of(stepped)("ETH")
        assert asset is not None
        stale_px = round_price(
            first.trigger_px * D("0.99"), asset.sz_decimals, False, Rounding.NEAREST
        )
        stale_cloid = stop_cloid("ETH", first.generation - 1000)
        (status,) = await run.exchange.place(
            [
                OrderSpec(
                    asset,
                    False,
                    stale_px * D("0.9"),
                    D("0.02"),
                    reduce_only=True,
                    cloid=stale_cloid,
                    trigger_px=stale_px,
                    tpsl="sl",
                )
            ]
        )
        assert status.outcome == "resting"
    await asyncio.sleep(0.01)  # a new nonce source starts at the clock's millisecond
    actions_before = stepped.stats["exchange_requests"]

    async with running(stepped, store, keys) as again:
        (kept,) = await settled(again)
        assert kept.oid == first.oid  # adopted, not placed again
        assert again.protector.stops()["ETH"].cloid == first.cloid
        counters = again.protector.counters
        assert (counters["adopted"], counters["stale_cancelled"]) == (1, 1)
        assert (counters["placed"], counters["moved"], counters["errors"]) == (0, 0, 0)
        assert stepped.stats["exchange_requests"] - actions_before == 1  # the stale cancel only
        assert (await again.info.order_status(again.master, stale_cloid)).status == "canceled"


# --- the dead man's switch ---------------------------------------------------------------------


async def test_the_dead_mans_switch_is_refused_without_volume_and_cancels_orders_once_armed(
    stepped: Simulator,
) -> None:
    keys = await approved(stepped)
    address = keys.master.address
    async with aiohttp.ClientSession() as session:
        info = InfoClient(session, stepped.url, WeightBudget())
        exchange = ExchangeClient(
            session, stepped.url, keys.agent, WeightBudget(), is_mainnet=False
        )
        switch = DeadManSwitch(exchange, 10.0, refused_retry_s=3600)

        assert await switch.arm() == 3600  # a new account: refused, tried again in an hour
        assert switch.refused is not None
        assert "enough volume" in switch.refused
        account = stepped.engine.accounts[address.lower()]
        assert account.schedule_cancel_ms is None

        account.volume = D(2_000_000)  # the exchange's threshold is $1M traded
        wait_s = await switch.arm()
        assert abs(wait_s - 10 / 3) < 1e-9  # re-armed every third of the delay
        assert switch.refused is None
        assert switch.armed_until_ms is not None
        assert account.schedule_cancel_ms == switch.armed_until_ms

        asset = asset_of(stepped)("ETH")
        assert asset is not None
        bid = round_price(mark(stepped, "ETH") * D("0.5"), asset.sz_decimals, False, Rounding.DOWN)
        (resting,) = await exchange.place([OrderSpec(asset, True, bid, D("0.02"), tif="Gtc")])
        assert resting.outcome == "resting"
        assert resting.oid is not None

        # hlcopy is gone: nobody re-arms it, and the exchange's time passes it.
        ticks = (switch.armed_until_ms - stepped.engine.now_ms) // stepped.engine.tick_ms + 1
        stepped.step(int(ticks), publish=False)

        assert await info.frontend_open_orders(address) == []
        assert (await info.order_status(address, resting.oid)).status == "scheduledCancel"


async def test_the_dead_mans_switch_rearms_every_third_of_its_delay_and_stays_armed_when_stopped(
    stepped: Simulator,
) -> None:
    keys = await approved(stepped)
    stepped.engine.accounts[keys.master.address.lower()].volume = D(2_000_000)
    clock = VirtualClock(epoch_ms=int(time.time() * 1000))
    async with aiohttp.ClientSession() as session:
        exchange = ExchangeClient(
            session, stepped.url, keys.agent, WeightBudget(), is_mainnet=False
        )
        switch = DeadManSwitch(exchange, 30.0, clock, stops_on=lambda: True)
        up = asyncio.Event()
        task = asyncio.create_task(switch.run(ready_setting(up)), name="test:switch")
        try:
            await until(lambda: switch.counters["armed"] == 1)
            account = stepped.engine.accounts[keys.master.address.lower()]
            first = account.schedule_cancel_ms
            assert first == clock.time_ms() + 30_000
            await clock.advance(9.9)  # not yet
            assert switch.counters["armed"] == 1
            await clock.advance(0.2)
            await until(lambda: switch.counters["armed"] == 2)
            assert account.schedule_cancel_ms == first + 10_000
        finally:
            await switch.drain()
            await asyncio.wait_for(task, 5)
    assert up.is_set()
    assert account.schedule_cancel_ms == first + 10_000  # a stopped hlcopy leaves it armed


# --- the pure core -------------------------------------------------------------------------------


def _eth(sz_decimals: int = 4) -> Asset:
    return Asset("ETH", 1, sz_decimals, 25)


def _assets(coin: str) -> Asset | None:
    return {"ETH": _eth(), "BTC": Asset("BTC", 0, 5, 40)}.get(coin)


def test_the_stop_sits_beyond_the_worse_of_entry_and_mark() -> None:
    assert stop_trigger(D(1), D(100), D(110), D(5)) == D("95.00")  # in profit: guards the entry
    assert stop_trigger(D(1), D(100), D(90), D(5)) == D("85.50")  # at a loss: beyond the mark
    assert stop_trigger(D(-1), D(100), D(90), D(5)) == D("105.00")
    assert stop_trigger(D(-1), D(100), D(120), D(5)) == D("126.00")
    assert stop_trigger(D(1), None, D(200), D(10)) == D("180.0")
    with pytest.raises(ValueError, match="neither"):
        stop_trigger(D(1), None, None, D(5))


def test_one_stop_per_coin_for_the_net_part_at_the_tightest_percent() -> None:
    attributed = {
        "a": {"ETH": D("0.3"), "BTC": D("0.01")},
        "b": {"ETH": D("-0.1")},
        "c": {"ETH": D("0.2")},
    }
    positions = {"ETH": D("0.5"), "BTC": D("0.004")}
    entries = {"ETH": D(2000), "BTC": D(50000)}
    mids = {"ETH": D(2000), "BTC": D(50000)}
    plans = plan_stops(attributed, positions, entries, mids, {"a": D(10), "b": D(4)}, _assets)
    # ETH: 0.3 - 0.1 + 0.2 = 0.4 (c sets no percent, its part is still hlcopy's); b's 4% is
    # the tightest. BTC: a's 0.01, cut to the account's 0.004.
    assert plans == {
        "ETH": StopPlan("ETH", False, D("0.4"), D(1920), D(4)),
        "BTC": StopPlan("BTC", False, D("0.004"), D(45000), D(10)),
    }
    # The account holds the other side, or nothing: no stop can reduce it.
    assert plan_stops(attributed, {"ETH": D(-1)}, entries, mids, {"a": D(10)}, _assets) == {}
    # Nobody holding the coin sets a percent.
    assert plan_stops(attributed, positions, entries, mids, {"z": D(1)}, _assets) == {}
    # Less than a lot, or no price: none.
    tiny = {"a": {"ETH": D("0.00001")}}
    assert plan_stops(tiny, positions, entries, mids, {"a": D(5)}, _assets) == {}
    assert plan_stops(attributed, positions, {}, {}, {"a": D(5)}, _assets) == {}


def test_a_stop_moves_on_size_side_or_a_drift_past_the_step() -> None:
    plan = StopPlan("ETH", False, D("0.4"), D(1900), D(5))  # the stop's distance: 95
    resting = RestingStop("ETH", stop_cloid("ETH", 7), 1, False, D("0.4"), D(1900), 7)
    step = D("0.1")
    assert not needs_move(plan, resting, step)
    assert not needs_move(StopPlan("ETH", False, D("0.4"), D("1909.5"), D(5)), resting, step)
    assert needs_move(StopPlan("ETH", False, D("0.4"), D(1910), D(5)), resting, step)
    assert needs_move(StopPlan("ETH", False, D("0.5"), D(1900), D(5)), resting, step)
    assert needs_move(StopPlan("ETH", True, D("0.4"), D(1900), D(5)), resting, step)


def test_stop_cloids_name_their_coin_and_generation() -> None:
    cloid = stop_cloid("ETH", 1_763_000_000_000)
    assert len(cloid) == 34
    assert stop_generation(cloid, "ETH") == 1_763_000_000_000
    assert stop_generation(cloid.upper().replace("0X", "0x"), "ETH") == 1_763_000_000_000
    assert stop_generation(cloid, "BTC") is None  # another coin's
    assert stop_generation("0x" + "ab" * 16, "ETH") is None  # a copy's cloid
    assert stop_generation(None, "ETH") is None
    assert stop_cloid("ETH", 2) != stop_cloid("ETH", 1)
    with pytest.raises(ValueError, match="range"):
        stop_cloid("ETH", 0)
