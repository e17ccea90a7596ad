"""Leader books against the simulator and real PostgreSQL: userFills, the trades firehose (from a
real Discovery) and REST gap-fill, deduplicated by (leader, tid); faults change nothing."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.clock import SYSTEM
from hlcopy.config import DatabaseConfig, HlcopyConfig
from hlcopy.daemon import Daemon
from hlcopy.follow.leaders import LeaderBooks, LeaderChange
from hlcopy.hl import InfoClient, StreamPool, UniverseService, new_session
from hlcopy.model import LeaderFill
from hlcopy.notify import Notifier
from hlcopy.queues import BoundedQueue
from hlcopy.scout.discovery import Discovery
from hlcopy.sim import Simulator
from hlcopy.store import Store
from hlcopy.store.monitor import StoreMonitor

from tests.conftest import make_config, running

COINS = ["ETH", "BTC", "SOL"]


def address(i: int) -> str:
    return "0x" + f"{0xA0 + i:02x}" * 20


async def sim_post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(sim.url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def trade(
    sim: Simulator, leader: str, coin: str, is_buy: bool, usd: int, sz: Decimal | None = None
) -> None:
    """A trade of about ``usd`` at the mid, or of exactly ``sz`` (a close: the mid moves)."""
    body: dict[str, object] = {"address": leader, "coin": coin, "is_buy": is_buy}
    body.update({"usd": usd} if sz is None else {"sz": str(sz)})
    reply = await sim_post(sim, "/_sim/trade", body)
    assert "filled" in reply["statuses"][0], reply


@dataclass
class Rig:
    books: LeaderBooks
    discovery: Discovery
    info: InfoClient
    store: Store
    changes: BoundedQueue[LeaderChange]
    seen: list[LeaderChange] = field(default_factory=list)

    def collect(self) -> list[LeaderChange]:
        self.seen += self.changes.drain_nowait()
        return self.seen

    async def truth(self, leader: str) -> dict[str, Decimal]:
        state = await self.info.clearinghouse_state(leader)
        return {p.coin: p.szi for p in state.positions if p.szi != 0}

    def book(self, leader: str) -> dict[str, Decimal]:
        out = {}
        for coin in COINS:
            view = self.books.view(leader, coin)
            if view is not None and view.szi != 0:
                out[coin] = view.szi
        return out

    async def until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.collect()
                await asyncio.sleep(0.05)
        self.collect()

    async def converged(self, leader: str, timeout: float = 30) -> dict[str, Decimal]:
        """Wait until the book equals the exchange's positions (from fills, not snapshots)."""
        truth = await self.truth(leader)
        await self.until(lambda: self.book(leader) == truth, timeout)
        return truth

    async def seed(self, leaders: list[str]) -> None:
        """What the tracker's truth worker does: hand each leader's clearinghouseState over."""
        for leader in leaders:
            self.books.snapshot(leader, await self.info.clearinghouse_state(leader))


async def make_rig(
    tmp_path: Path, sim: Simulator, dsn: str, leaders: dict[str, int], slots: int
) -> AsyncIterator[Rig]:
    for leader in leaders:
        await sim_post(sim, "/_sim/fund", {"address": leader, "usdc": "1000000"})
    cfg: HlcopyConfig = make_config(
        tmp_path,
        dsn,
        tracking={"user_fills_subscriptions": slots},
        discovery={"coins": COINS, "flush_interval_ms": 200},
    )
    store = Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False)
    firehose = BoundedQueue[LeaderFill]("leader_fills", 10_000, "block")
    changes = BoundedQueue[LeaderChange]("leader_changes", 10_000, "block")
    async with new_session(10) as session:
        info = InfoClient(session, sim.url, WeightBudget(1200, 5))
        universe = UniverseService(info)
        stream = StreamPool(sim.ws_url)
        discovery = Discovery(
            stream, universe, info, store, cfg.discovery, firehose, calibration_delay_s=0.5
        )
        books = LeaderBooks(stream, info, store, firehose, changes, cfg)
        # The lead's wiring: discovery watches every followed leader; the books pick the slots.
        discovery.watch(leaders)
        books.set_leaders(leaders)
        daemon = Daemon(cfg, notifier=Notifier(""))
        for component in (StoreMonitor(store), universe, stream, discovery, books):
            daemon.add(component)
        try:
            async with running(daemon):
                rig = Rig(books, discovery, info, store, changes)
                await rig.until(lambda: len(books.subscribed()) == min(slots, len(leaders)))
                await rig.seed(list(leaders))
                yield rig
        finally:
            await store.close()


@pytest.fixture
async def one(tmp_path: Path, sim: Simulator, dsn: str) -> AsyncIterator[Rig]:
    async for rig in make_rig(tmp_path, sim, dsn, {address(0): 1}, slots=8):
        yield rig


async def test_the_book_follows_a_leaders_trades_exactly(one: Rig, sim: Simulator) -> None:
    leader = address(0)
    assert one.books.subscribed() == {leader}
    view = one.books.view(leader, "ETH")  # flat as of the seed snapshot
    assert view is not None
    assert view.szi == 0
    assert view.confirmed
    steps = [
        ("ETH", True, 5000),
        ("ETH", False, 2000),
        ("BTC", True, 3000),
        ("ETH", False, 8000),  # a flip
        ("BTC", False, 0),  # the whole BTC position, whatever the mid did since
    ]
    truth: dict[str, Decimal] = {}
    for coin, is_buy, usd in steps:
        await trade(sim, leader, coin, is_buy, usd, None if usd else abs(truth[coin]))
        truth = await one.converged(leader)
    assert set(truth) == {"ETH"}
    assert truth["ETH"] < 0
    await one.until(lambda: one.books.view(leader, "ETH").confirmed)  # type: ignore[union-attr]
    eth = one.books.view(leader, "ETH")
    assert eth is not None
    assert eth.entry_px is not None
    assert eth.last_change_ms is not None
    assert eth.equity is not None
    assert eth.equity > 0
    assert one.books.coins(leader) == {"ETH"}
    status = one.books.status(leader)
    assert status is not None
    assert (status["via"], status["live"]) == ("userFills", True)
    assert status["state_ms"] is not None
    btc = one.books.view(leader, "BTC")  # flat again, closed last
    assert btc is not None
    assert btc.last_change_ms is not None
    assert status["last_change_ms"] == max(eth.last_change_ms, btc.last_change_ms)
    assert status["equity"] == eth.equity
    assert one.books.status(address(5)) is None  # not followed
    # Every change came from a fill of this leader; the last exact one ends where the book is.
    assert all(c.fill is not None and c.leader == leader for c in one.seen)
    exact = [c for c in one.seen if c.fill is not None and c.fill.source == "userFills"]
    assert exact
    assert exact[-1].fill is not None
    # Each tid is recorded once, and the table holds every fill the exchange reports.
    fills = await one.info.user_fills_by_time(leader, 0)
    await one.books.flush()
    rows = await one.store.pool.fetch(
        "SELECT tid, changed, snapshot FROM leader_fills WHERE leader = $1", leader
    )
    assert sorted(r["tid"] for r in rows) == sorted(f.tid for f in fills if f.tid)
    assert all(r["changed"] and not r["snapshot"] for r in rows)


async def test_duplicated_and_reordered_messages_change_nothing(one: Rig, sim: Simulator) -> None:
    leader = address(0)
    sim.faults.update({"ws_duplicate": True, "ws_reorder": True})
    for coin, is_buy, usd in [("ETH", True, 4000), ("SOL", False, 3000), ("ETH", True, 2000)]:
        await trade(sim, leader, coin, is_buy, usd)
    truth = await one.converged(leader)
    sim.faults.update({"clear": True})
    assert truth == one.book(leader)
    stats = one.books.stats()
    assert stats["duplicates"] > 0  # the faults did reach the books
    # At most one exact change and one firehose change per tid (the firehose hint first, then
    # its exact version when it says more), never two from one source.
    by_source: dict[tuple[str, int], int] = {}
    for c in one.seen:
        assert c.fill is not None
        key = ("firehose" if c.fill.source == "firehose" else "exact", c.fill.tid)
        by_source[key] = by_source.get(key, 0) + 1
    assert max(by_source.values()) == 1
    # The positions the changes report end where the exchange is.
    last = {c.coin: c.szi for c in one.seen}
    assert {k: v for k, v in last.items() if v != 0} == truth


async def test_the_same_tid_through_every_source_counts_once(one: Rig, sim: Simulator) -> None:
    leader = address(0)
    await trade(sim, leader, "SOL", True, 3000)
    truth = await one.converged(leader)
    # The firehose and userFills both delivered it; now REST (a gap-fill) and a replay of each.
    await one.until(lambda: one.books.stats()["fills_user_fills"] >= 1)
    await one.until(lambda: one.books.stats()["fills_firehose"] >= 1)
    before = list(one.collect())
    assert await one.books.gapfill(leader)
    fills = [f for f in await one.info.user_fills_by_time(leader, 0) if f.coin == "SOL"]
    assert fills
    for f in fills:
        assert f.tid is not None
        assert f.start_position is not None
        for source in ("userFills", "rest", "firehose"):
            replay = LeaderFill(
                leader,
                f.coin,
                f.side,
                f.sz,
                f.px,
                f.time_ms,
                f.tid,
                source,
                None if source == "firehose" else f.start_position,
            )
            assert not one.books.ingest(replay)
            assert not one.books.ingest(replay, snapshot=True)
    await asyncio.sleep(0.3)
    assert one.collect() == before  # nothing moved
    assert one.book(leader) == truth
    await one.books.flush()
    rows = await one.store.pool.fetch(
        "SELECT tid, count(*) AS n FROM leader_fills WHERE leader = $1 GROUP BY tid", leader
    )
    assert {r["tid"] for r in rows} == {f.tid for f in fills}
    assert all(r["n"] == 1 for r in rows)


async def test_a_dropped_websocket_and_gap_fill_lose_no_change(one: Rig, sim: Simulator) -> None:
    leader = address(0)
    gapfills = one.books.stats()["gapfills"]
    # Drop every connection and trade before anything can reconnect: neither userFills nor the
    # firehose carries this fill; the resubscription's snapshot only records it (history).
    assert sim.drop_ws("all") >= 1
    status = sim.engine.market_order(leader, "ETH", True, Decimal("1.5"), Decimal("0.05"))
    assert isinstance(status, dict), status
    assert "filled" in status, status
    sim.publish()
    truth = await one.converged(leader, timeout=40)
    assert truth["ETH"] == Decimal("1.5")
    moved = [c for c in one.seen if c.coin == "ETH"]
    assert len(moved) == 1
    fill = moved[0].fill
    assert fill is not None
    assert fill.source == "rest"
    assert fill.start_position == 0
    assert moved[0].szi == Decimal("1.5")
    assert moved[0].confirmed
    stats = one.books.stats()
    assert stats["gapfills"] > gapfills
    assert stats["fills_snapshot"] >= 1  # the replay saw it first, and changed nothing
    # After the stream is back, new trades flow as before.
    await trade(sim, leader, "ETH", False, 1000)
    await one.converged(leader)


TWELVE = {address(i): 100 - i for i in range(12)}


@pytest.fixture
async def twelve(tmp_path: Path, sim: Simulator, dsn: str) -> AsyncIterator[Rig]:
    async for rig in make_rig(tmp_path, sim, dsn, TWELVE, slots=10):
        yield rig


@pytest.mark.slow(16)
async def test_leaders_beyond_the_slots_follow_through_the_firehose(
    twelve: Rig, sim: Simulator
) -> None:
    rig, leaders = twelve, TWELVE
    ranked = sorted(leaders, key=lambda a: -leaders[a])
    assert rig.books.subscribed() == set(ranked[:10])
    outside = ranked[10:]
    assert rig.books.stats()["firehose_only"] == 2
    await rig.until(lambda: rig.discovery.users_order is not None, timeout=30)
    rounds = [("ETH", True, 3000), ("SOL", False, 2000), ("ETH", False, 1000)]
    for coin, is_buy, usd in rounds:
        for leader in ranked:
            await trade(sim, leader, coin, is_buy, usd)
        await asyncio.sleep(0.2)
    for leader in ranked:
        await rig.converged(leader)
    for leader in outside:
        mine = [c for c in rig.seen if c.leader == leader]
        assert len(mine) >= len(rounds)
        assert all(c.fill is not None and c.fill.source == "firehose" for c in mine)
        eth = rig.books.view(leader, "ETH")
        assert eth is not None
        assert eth.confirmed
    via = {leader: rig.books.status(leader) for leader in ranked}
    assert all(v is not None and v["live"] for v in via.values()), via
    assert {a for a, v in via.items() if v is not None and v["via"] == "firehose"} == set(outside)
    # More firehose-only trades, one at a time, to measure the detection delay.
    sent: list[tuple[str, int]] = []
    for i in range(30):
        leader = outside[i % 2]
        sent.append((leader, SYSTEM.time_ms()))
        await trade(sim, leader, "ETH", i % 4 < 2, 1000)
        await asyncio.sleep(0.1)
    for leader in outside:
        await rig.converged(leader)
    wall = []
    for leader, t0 in sent:
        after = [c.time_ms for c in rig.seen if c.leader == leader and c.time_ms >= t0]
        wall.append(min(after) - t0)
    wall.sort()
    print(
        f"\nfirehose detection, POST /_sim/trade sent -> LeaderChange, {len(wall)} trades:"
        f" p50 {statistics.median(wall):.0f} ms, p95 {wall[int(0.95 * len(wall))]} ms,"
        f" max {wall[-1]} ms"
    )
    delays = [
        c.time_ms - c.fill.time_ms
        for c in rig.seen
        if c.fill is not None and c.fill.source == "firehose"
    ]
    delays.sort()
    p95 = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
    print(
        f"firehose detection, fill time (sim, 100 ms ticks) -> LeaderChange, {len(delays)}:"
        f" p50 {statistics.median(delays):.0f} ms, p95 {p95} ms, max {delays[-1]} ms"
    )
    print("leader books:", rig.books.stats())
