"""Discovery against the simulator, real PostgreSQL and the real stream pool.

The simulator runs stepped (no trades until a test steps it), so every trade it sent can be read
back from it and checked against what discovery registered and stored. Discovery runs on a
virtual clock: its flush timer, universe checks and retry pauses move only when a test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.clock import VirtualClock
from hlcopy.component import Ready
from hlcopy.config import DatabaseConfig, DiscoveryConfig
from hlcopy.errors import StoreUnavailable
from hlcopy.hl import InfoClient, StreamPool, UniverseService
from hlcopy.model import LeaderFill
from hlcopy.queues import BoundedQueue
from hlcopy.scout.discovery import KV_USERS_ORDER, Activity, Discovery
from hlcopy.sim import SimConfig, Simulator
from hlcopy.sim.engine import TradeRecord
from hlcopy.store import Store
from hlcopy.store.embedded import postmaster_alive

D = Decimal
FUNDED_USD = 100_000  # what the simulator once gave any address it was asked about


@dataclass
class Expected:
    """What the simulator's trades say about one address."""

    trades: int = 0
    taker: int = 0
    maker: int = 0
    volume: Decimal = field(default_factory=Decimal)
    coins: set[str] = field(default_factory=set)
    times: list[int] = field(default_factory=list)


class Trade(NamedTuple):
    """One trade as the simulator records it (``TradeRecord``), its fields named."""

    coin: str
    buyer_took: bool  # the buyer was the taker: the wire's side "B"
    px: str
    sz: str
    time: int
    hash: str
    tid: int
    buyer: str
    seller: str

    @property
    def users(self) -> tuple[str, str]:
        """As the wire's ``users``: [buyer, seller]."""
        return self.buyer, self.seller


def trades_of(sim: Simulator, coin: str) -> list[Trade]:
    """The trades the simulator kept for ``coin`` (the last 2000), oldest first."""
    kept: Iterable[TradeRecord] = sim.engine.trades.get(coin, ())
    return [Trade(*t) for t in kept]


def sent_trades(sim: Simulator, coins: set[str]) -> list[Trade]:
    """Every trade the simulator made on ``coins`` (it keeps the last 2000 per coin)."""
    out: list[Trade] = []
    for coin in coins:
        kept = trades_of(sim, coin)
        assert len(kept) < 2000, "stepped too far: the simulator forgot trades"
        out.extend(kept)
    return out


def expected_from(trades: list[Trade]) -> dict[str, Expected]:
    """Per address, counted the way the docs read a trade: users = [buyer, seller]."""
    out: dict[str, Expected] = defaultdict(Expected)
    for t in trades:
        buyer, seller = t.users
        taker = buyer if t.buyer_took else seller
        for who in (buyer, seller):
            e = out[who]
            e.trades += 1
            e.taker += who == taker
            e.maker += who != taker
            e.volume += D(t.px) * D(t.sz)
            e.coins.add(t.coin)
            e.times.append(t.time)
    return out


async def until(predicate: Callable[[], bool], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@dataclass
class Harness:
    sim: Simulator
    store: Store
    stream: StreamPool
    universe: UniverseService
    discovery: Discovery
    clock: VirtualClock
    fills: BoundedQueue[LeaderFill]

    def watched_coins(self) -> set[str]:
        """The coins the simulator has a trades subscriber for: what discovery really asked."""
        return {
            coin
            for (kind, coin, _), clients in self.sim._subs.items()
            if kind == "trades" and clients
        }

    async def step(self, ticks: int) -> list[Trade]:
        """Step the market and wait until discovery registered every trade it made."""
        before = self.discovery.registry.trades
        seen = len(sent_trades(self.sim, self.watched_coins()))
        self.sim.step(ticks)
        made = len(sent_trades(self.sim, self.watched_coins())) - seen
        await until(lambda: self.discovery.registry.trades >= before + made)
        return sent_trades(self.sim, self.watched_coins())


@contextlib.asynccontextmanager
async def harness(
    sim: Simulator,
    store: Store,
    config: DiscoveryConfig | None = None,
    *,
    builder_dexes: bool = False,
    wait_ready: bool = True,
    fills_size: int = 1000,
    max_subscriptions: int = 1000,
    **kwargs: Any,
) -> AsyncIterator[Harness]:
    clock = VirtualClock()
    async with aiohttp.ClientSession() as session:
        info = InfoClient(session, sim.url, WeightBudget())
        universe = UniverseService(info, builder_dexes=builder_dexes)
        await universe.refresh()
        stream = StreamPool(
            sim.ws_url,
            backoff_base_s=0.05,
            backoff_cap_s=0.2,
            max_subscriptions=max_subscriptions,
        )
        fills = BoundedQueue[LeaderFill]("test:leader_fills", fills_size)
        cfg = config or DiscoveryConfig(calibrate=False)
        discovery = Discovery(
            stream, universe, info, store, cfg, fills, clock, calibration_delay_s=0, **kwargs
        )
        stream_up, disc_up = asyncio.Event(), asyncio.Event()
        pool_task = asyncio.create_task(
            stream.run(Ready(lambda ok, _: stream_up.set() if ok else None)), name="test:stream"
        )
        try:
            await asyncio.wait_for(stream_up.wait(), 10)
            disc_task = asyncio.create_task(
                discovery.run(Ready(lambda ok, _: disc_up.set() if ok else None)),
                name="test:discovery",
            )
            try:
                if wait_ready:
                    await asyncio.wait_for(disc_up.wait(), 20)
                else:  # subscribed, at least
                    await until(lambda: discovery.stats()["subscriptions"] > 0)
                yield Harness(sim, store, stream, universe, discovery, clock, fills)
            finally:
                await discovery.drain()
                await asyncio.wait_for(disc_task, 20)
        finally:
            await stream.drain()
            await asyncio.wait_for(pool_task, 10)


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=60, rate=40)) as s:
        yield s


async def stored(store: Store) -> dict[str, Any]:
    rows = await store.pool.fetch(
        "SELECT address, trade_count, taker_count, maker_count, volume_usd, first_seen_ms,"
        " last_seen_ms, coins FROM traders"
    )
    return {r["address"]: r for r in rows}


def assert_matches(actual: Activity | Mapping[str, Any], e: Expected) -> None:
    """A registry Activity, or a traders row, against what the simulator sent."""
    if isinstance(actual, Activity):
        got = (
            actual.trades,
            actual.taker,
            actual.maker,
            actual.volume_usd,
            set(actual.coins),
            actual.first_seen_ms,
            actual.last_seen_ms,
        )
    else:
        got = (
            actual["trade_count"],
            actual["taker_count"],
            actual["maker_count"],
            actual["volume_usd"],
            set(actual["coins"]),
            actual["first_seen_ms"],
            actual["last_seen_ms"],
        )
    assert got == (e.trades, e.taker, e.maker, e.volume, e.coins, min(e.times), max(e.times))


async def test_every_address_traded_is_registered_and_stored_in_batches(
    stepped: Simulator, store: Store
) -> None:
    # A statement-level trigger counts the statements that write traders: the server's count,
    # not ours.
    await store.pool.execute(
        """CREATE TABLE writes (n int);
           CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO writes VALUES (1); RETURN NULL; END $$;
           CREATE TRIGGER traders_writes AFTER INSERT ON traders
             FOR EACH STATEMENT EXECUTE FUNCTION count_write();"""
    )
    async with harness(stepped, store) as h:
        perps = {a.name for a in h.universe.universe.perps()}
        assert h.watched_coins() == perps  # every listed perp, the delisted MATIC left out
        assert "MATIC" not in perps
        assert h.discovery.stats()["subscriptions"] == len(perps)
        for _ in range(3):
            # 40 ticks: the market's flow rate counts resting limits too, so it takes this long
            # to bring the hundred-odd trades per flush interval this test is about.
            trades = await h.step(40)
            await h.clock.advance(0.5)  # the flush interval: one batch per interval
            await until(lambda: h.discovery.registry.pending == 0)
        await h.discovery.flush()
        expected = expected_from(trades)
        assert len(trades) > 300
        assert len(expected) > 20
        assert len(h.discovery.registry) == len(expected)
        for address, e in expected.items():
            a = h.discovery.registry.get(address)
            assert a is not None, address
            assert_matches(a, e)
        stats = h.discovery.stats()
        assert stats["trades"] == len(trades)
        assert stats["addresses"] == len(expected)
        assert stats["dropped"] == 0
        assert stats["persisted"] >= len(expected)
    rows = await stored(store)
    assert set(rows) == set(expected)
    for address, e in expected.items():
        assert_matches(rows[address], e)
    statements = await store.pool.fetchval("SELECT count(*) FROM writes")
    assert 1 <= statements <= 4  # three flush intervals (and a last flush): never one per trade
    assert statements < len(trades) / 50


async def test_changes_made_while_writing_wait_for_the_next_interval(
    stepped: Simulator, store: Store
) -> None:
    """The writer writes the queue as it stood when the flush began: a stream busy during the
    write does not make it write again at once (back to back, a write per few trades)."""
    async with harness(stepped, store) as h:
        await h.step(40)
        assert h.discovery.registry.pending > 0
        flushes = h.discovery.counters["flushes"]
        locked, release = asyncio.Event(), asyncio.Event()

        async def hold_traders() -> None:
            async with store.pool.acquire() as con, con.transaction():
                await con.execute("LOCK TABLE traders IN SHARE ROW EXCLUSIVE MODE")
                locked.set()
                await release.wait()

        holder = asyncio.create_task(hold_traders(), name="test:lock-traders")
        await locked.wait()
        await h.clock.advance(0.5)  # the interval: the write takes the queue, then waits
        await until(lambda: h.discovery.registry.pending == 0)
        await h.step(40)  # changes made while the write waits on the lock
        waiting = h.discovery.registry.pending
        assert waiting > 0
        release.set()
        await holder
        await until(lambda: h.discovery.counters["flushes"] > flushes)
        await asyncio.sleep(0.3)  # time enough for a second write, were one coming
        assert h.discovery.counters["flushes"] == flushes + 1
        assert h.discovery.registry.pending == waiting
        await h.clock.advance(0.5)
        await until(lambda: h.discovery.registry.pending == 0)
        await until(lambda: h.discovery.counters["flushes"] == flushes + 2)


async def test_subscriptions_follow_new_listings_and_delistings(
    stepped: Simulator, store: Store
) -> None:
    async with harness(stepped, store, resync_s=5.0) as h:
        before = h.watched_coins()
        assert "DYDX" in before
        engine = stepped.engine
        engine.by_name["DYDX"].delisted = True
        new_id = max(a.asset_id for a in engine.assets.values() if not a.is_spot and not a.dex)
        # (asset id, name, size decimals, max leverage, spot, dex, opening price, daily vol)
        engine._add(new_id + 1, "NEWC", 1, 5, False, "", "2.5", 0.05)
        await h.universe.refresh()
        await h.clock.advance(5.0)  # discovery notices the refreshed universe
        await until(lambda: h.watched_coins() == (before - {"DYDX"}) | {"NEWC"})
        assert h.discovery.stats()["subscriptions"] == len(before)
        # The new listing's trades are registered under its name.
        stepped.fund("0x" + "ab" * 20, FUNDED_USD)
        engine.market_order("0x" + "ab" * 20, "NEWC", True, D(10), D("0.05"))
        stepped.publish()
        await until(lambda: "0x" + "ab" * 20 in h.discovery.registry)
        activity = h.discovery.registry.get("0x" + "ab" * 20)
        assert activity is not None
        assert activity.coins == ("NEWC",)


async def test_configured_coins_builder_dexes_and_spot(stepped: Simulator, store: Store) -> None:
    only = DiscoveryConfig(calibrate=False, coins=["BTC", "ETH", "NOPE", "MATIC"])
    async with harness(stepped, store, only) as h:
        assert h.watched_coins() == {"BTC", "ETH"}  # unknown and delisted coins are skipped
    wide = DiscoveryConfig(calibrate=False, builder_dexes=True, spot=True)
    async with harness(stepped, store, wide, builder_dexes=True) as h:
        coins = h.watched_coins()
        assert {"BTC", "test:ABC", "test:XYZ", "PURR/USDC", "@1", "@2"} <= coins
        assert "MATIC" not in coins
    # Within the pool's limit, the first dex's perps first (in asset id order).
    async with harness(stepped, store, wide, builder_dexes=True, max_subscriptions=10) as h:
        first_ten = {a.name for a in h.universe.universe.perps()[:10]}
        assert h.watched_coins() == first_ten
        await h.clock.advance(10.0)  # tried again later: still within the limit, no failures
        await until(lambda: h.discovery.stats()["subscriptions"] == 10)
        assert h.watched_coins() == first_ten
        assert h.discovery.stats()["subscribe_failures"] == 0


async def test_a_watched_address_trading_becomes_a_leader_fill(
    stepped: Simulator, store: Store
) -> None:
    leader = "0x" + "cd" * 20
    stepped.fund(leader, FUNDED_USD)
    async with harness(stepped, store) as h:
        house = stepped.engine._maker(stepped.engine.by_name["ETH"])  # the book's market maker
        h.discovery.watch([leader.upper().replace("0X", "0x"), house])
        assert h.discovery.users_order is None  # calibration is off: fills are hints
        stepped.engine.market_order(leader, "ETH", True, D("0.5"), D("0.05"))
        stepped.publish()
        fills = [await asyncio.wait_for(h.fills.get(), 10)]
        while not h.fills.empty() or len(fills) < 2:
            fills.append(await asyncio.wait_for(h.fills.get(), 10))
        trades = trades_of(stepped, "ETH")
        mine = [t for t in trades if leader in t.users]
        assert mine
        by_tid = {t.tid: t for t in mine}
        leader_fills = [f for f in fills if f.leader == leader]
        house_fills = [f for f in fills if f.leader == house]
        assert [f.tid for f in leader_fills] == [t.tid for t in mine]
        assert [f.tid for f in house_fills] == [t.tid for t in trades if house in t.users]
        assert house_fills
        for f in leader_fills:
            t = by_tid[f.tid]
            assert (f.coin, f.side, f.px, f.sz, f.time_ms) == (
                "ETH",
                "B",  # the leader bought
                D(t.px),
                D(t.sz),
                t.time,
            )
            assert f.source == "firehose"
            assert f.confirmed is False
            assert f.start_position is None
            assert f.recv_ns > 0
        assert {f.side for f in house_fills} == {"A"}  # the maker sold to it
        assert h.discovery.stats()["leader_fills"] == len(fills)
        # Nobody watched: nothing handed over.
        h.discovery.watch([])
        activity = h.discovery.registry.get(leader)
        assert activity is not None
        seen = activity.trades
        stepped.engine.market_order(leader, "ETH", False, D("0.5"), D("0.05"))
        stepped.publish()
        await until(lambda: activity.trades > seen)
        assert h.fills.empty()


async def test_leader_fills_wait_for_room_and_are_never_dropped(
    stepped: Simulator, store: Store
) -> None:
    leader = "0x" + "cd" * 20
    stepped.fund(leader, FUNDED_USD)
    async with harness(stepped, store, fills_size=1) as h:
        h.discovery.watch([leader])
        for i in range(4):
            stepped.engine.market_order(leader, "SOL", i % 2 == 0, D(1), D("0.05"))
            stepped.publish()
        mine = [t for t in trades_of(stepped, "SOL") if leader in t.users]
        assert len(mine) >= 4
        got: list[LeaderFill] = []
        while len(got) < len(mine):  # the copy engine, slow: one at a time
            got.append(await asyncio.wait_for(h.fills.get(), 10))
            await asyncio.sleep(0.01)
        assert [(f.tid, f.side) for f in got] == [
            (t.tid, "B" if t.users[0] == leader else "A") for t in mine
        ]
        assert h.discovery.stats()["leader_fills_lost"] == 0
        assert h.discovery.stats()["leader_fills_waited"] > 0
        await until(lambda: h.discovery.registry.trades == len(mine))  # the consumer went on


async def test_calibration_finds_buyer_seller_and_is_remembered(
    stepped: Simulator, store: Store
) -> None:
    async with harness(stepped, store, DiscoveryConfig()) as h:
        await h.step(20)
        await until(lambda: h.discovery.users_order is not None)
        assert h.discovery.users_order == "buyer_seller"
        stats = h.discovery.stats()
        assert stats["calibration"] == "calibrated"
        assert stats["calibrated"] is True
        assert stats["calibration_lookups"] == 1
        async with asyncio.timeout(10):  # recorded right after it is known
            while await store.kv_get(KV_USERS_ORDER) != "buyer_seller":
                await asyncio.sleep(0.01)
    # A later start reuses it without a lookup, and fills are confirmed from the first trade.
    leader = "0x" + "ee" * 20
    stepped.fund(leader, FUNDED_USD)
    async with harness(stepped, store, DiscoveryConfig()) as h:
        await until(lambda: h.discovery.users_order == "buyer_seller")
        assert h.discovery.stats()["calibration"] == "stored"
        h.discovery.watch([leader])
        stepped.engine.market_order(leader, "BTC", False, D("0.01"), D("0.05"))
        stepped.publish()
        fill = await asyncio.wait_for(h.fills.get(), 10)
        assert (fill.leader, fill.side, fill.confirmed) == (leader, "A", True)
        assert h.discovery.stats()["calibration_lookups"] == 0


async def test_a_restart_reloads_the_registry(stepped: Simulator, store: Store) -> None:
    async with harness(stepped, store) as h:
        first = await h.step(40)
    # drained: the last changes were written on the way out
    async with harness(stepped, store, load_page=7) as h:  # small pages: several round trips
        loaded = {a.address: (a.trades, a.volume_usd, a.coins) for a in h.discovery.registry}
        expected = expected_from(first)
        assert set(loaded) == set(expected)
        for address, e in expected.items():
            a = h.discovery.registry.get(address)
            assert a is not None
            assert_matches(a, e)
        both = await h.step(40)  # the new trades add to what was loaded
        await h.discovery.flush()
    expected = expected_from(both)
    assert len(both) > len(first)
    rows = await stored(store)
    assert set(rows) == set(expected)
    for address, e in expected.items():
        assert_matches(rows[address], e)


async def kill_postgres(store: Store, data_dir: Path) -> None:
    """The database server dies: no goodbye to its clients."""
    pid = store.embedded_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while postmaster_alive(pid, data_dir):
            await asyncio.sleep(0.05)


async def reopen(store: Store) -> None:
    """What the store monitor does in the daemon."""
    async with asyncio.timeout(30):
        while True:
            try:
                await store.open()
                return
            except StoreUnavailable:  # orphaned backends may hold the old segment for a moment
                await asyncio.sleep(0.5)


async def test_a_database_away_at_start_does_not_hold_up_the_stream(tmp_path: Path) -> None:
    sim = Simulator(SimConfig(port=0, realtime=False, traders=60, rate=40))
    async with sim, Store(DatabaseConfig(), tmp_path) as store:
        await store.migrate()
        async with harness(sim, store) as h:  # a first life: some addresses are stored
            first = await h.step(20)
        await kill_postgres(store, (tmp_path / "pg").resolve())
        async with harness(sim, store, wait_ready=False, retry_cap_s=1.0) as h:
            assert not h.discovery.loaded
            both = await h.step(20)  # registered while the registry cannot load
            assert h.discovery.registry.trades == len(both) - len(first)
            await reopen(store)
            async with asyncio.timeout(30):
                while not h.discovery.loaded:  # a fresh server may refuse for a moment more
                    await h.clock.advance(1.0)  # the load's retry pause
                    await asyncio.sleep(0.05)
            await h.discovery.flush()
            # What was seen before the load was added to what was stored, not overwritten.
            expected = expected_from(both)
            for address, e in expected.items():
                a = h.discovery.registry.get(address)
                assert a is not None
                assert_matches(a, e)
            rows = await stored(store)
        assert set(rows) == set(expected)
        for address, e in expected.items():
            assert_matches(rows[address], e)


async def test_a_stopped_database_drops_the_oldest_changes_and_catches_up(
    tmp_path: Path,
) -> None:
    sim = Simulator(SimConfig(port=0, realtime=False, traders=400, rate=200))
    async with sim, Store(DatabaseConfig(), tmp_path) as store:
        await store.migrate()
        config = DiscoveryConfig(calibrate=False, queue_size=100, persist_batch_size=50)
        async with harness(sim, store, config, retry_cap_s=1.0) as h:
            await h.step(5)
            await h.discovery.flush()
            await kill_postgres(store, (tmp_path / "pg").resolve())
            # The stream keeps flowing into the registry while nothing can be written.
            trades = await h.step(60)
            for _ in range(5):
                await h.clock.advance(1.0)  # writes are tried, fail, and wait
            stats = h.discovery.stats()
            assert stats["trades"] == len(trades)
            assert len(h.discovery.registry) == len(expected_from(trades)) > 100
            assert stats["pending"] == 100  # the cap
            assert stats["dropped"] > 0
            assert stats["write_failures"] > 0
            assert stats["frames_dropped"] == 0
            await reopen(store)
            for _ in range(20):
                await h.clock.advance(1.0)
                if h.discovery.registry.pending == 0 and h.discovery.registry.stale == 0:
                    break
            assert await h.discovery.flush()
            assert h.discovery.stats()["swept"] > 0
            rows = await stored(store)
        expected = expected_from(trades)
        assert set(rows) == set(expected)
        for address, e in expected.items():
            assert_matches(rows[address], e)
