"""The tracker against the simulator and real PostgreSQL: it scores traders within the budget,
turns position changes into events, stores what it learns and picks it up after a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.config import DatabaseConfig, HlcopyConfig
from hlcopy.daemon import Daemon
from hlcopy.events import EventBus
from hlcopy.hl import InfoClient, StreamPool, UniverseService, new_session
from hlcopy.notify import Notifier
from hlcopy.scout.analytics import TraderMetrics
from hlcopy.scout.leaderboard import pack_metrics
from hlcopy.scout.tracker import Tracker
from hlcopy.sim import Simulator
from hlcopy.store import Store
from hlcopy.store.monitor import StoreMonitor

from tests.conftest import make_config, running

NOW_MS = 0  # registry entries are "seen now" relative to the sim's clock below


@dataclass
class Seen:
    """A registry entry as discovery keeps it."""

    address: str
    last_seen_ms: int
    trades: int
    volume_usd: Decimal
    taker: int = 0
    maker: int = 0
    first_seen_ms: int = 0
    coins: tuple[str, ...] = ()


class ListRegistry:
    def __init__(self, entries: list[Seen]) -> None:
        self._by = {e.address: e for e in entries}

    def __iter__(self) -> Iterator[Seen]:
        return iter(self._by.values())

    def get(self, address: str) -> Seen | None:
        return self._by.get(address)


class Board:
    """Collects what the tracker hands the leaderboard."""

    def __init__(self) -> None:
        self.metrics: dict[str, Mapping[str, TraderMetrics]] = {}

    def put(
        self,
        address: str,
        metrics: Mapping[str, TraderMetrics],
        *,
        account_value: Decimal | None,
        updated_ms: int,
    ) -> None:
        self.metrics[address] = metrics


async def sim_get(sim: Simulator, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(sim.url + path) as r:
        return await r.json()


async def sim_post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(sim.url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@dataclass
class Rig:
    daemon: Daemon
    tracker: Tracker
    board: Board
    bus: EventBus
    store: Store
    budget: WeightBudget


@pytest.fixture
async def rig(tmp_path: Path, sim: Simulator, dsn: str) -> AsyncIterator[Rig]:
    archetypes: dict[str, str] = await sim_get(sim, "/_sim/archetypes")
    now_ms = sim.engine.now_ms
    registry = ListRegistry(
        [
            Seen(address, now_ms, 100, Decimal(10_000 if kind == "whale" else 1000))
            for address, kind in sorted(archetypes.items())
            if kind != "market_maker"
        ]
    )
    cfg: HlcopyConfig = make_config(
        tmp_path,
        dsn,
        tracking={"workers": 3, "positions_interval_s": 5, "scoring_top_n": 4},
        retention={"prune_interval_s": 60},
    )
    store = Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False)
    bus = EventBus()
    board = Board()
    async with new_session(10) as session:
        budget = WeightBudget(1200, 5)
        info = InfoClient(session, sim.url, budget)
        universe = UniverseService(info)
        stream = StreamPool(sim.ws_url)
        tracker = Tracker(
            info=info,
            store=store,
            stream=stream,
            universe=universe,
            registry=registry,
            metrics=board,
            bus=bus,
            config=cfg,
        )
        daemon = Daemon(cfg, notifier=Notifier(""))
        for component in (StoreMonitor(store), universe, stream, tracker):
            daemon.add(component)
        try:
            async with running(daemon):
                yield Rig(daemon, tracker, board, bus, store, budget)
        finally:
            await store.close()


async def until(predicate: Any, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.1)


async def test_traders_are_scored_and_stored_within_the_budget(rig: Rig, sim: Simulator) -> None:
    archetypes: dict[str, str] = await sim_get(sim, "/_sim/archetypes")
    watched = sorted(a for a, kind in archetypes.items() if kind == "skilled")[:2]
    for address in watched:  # requested traders are candidates: fills, not just a portfolio
        rig.tracker.request_track(address)
    await until(lambda: len(rig.board.metrics) >= 6)
    # Stored before published: whatever the board holds now is in the table (a trader
    # published while the table is read comes after this snapshot).
    published = set(rig.board.metrics)
    address, metrics = next(iter(rig.board.metrics.items()))
    assert set(metrics) == {"day", "week", "month", "allTime"}
    assert metrics["month"].return_ is not None
    rows = await rig.store.pool.fetch(
        "SELECT address, stats, index_points, stats_at_ms, board_figures FROM traders"
        " WHERE stats IS NOT NULL"
    )
    stored = {r["address"]: r for r in rows}
    assert published <= set(stored)
    row = stored[address]
    assert TraderMetrics.from_dict(row["stats"]["month"]) == metrics["month"]
    # With the leaderboard's packed form of the same figures, for a fast restart.
    assert row["board_figures"] == pack_metrics(
        {w: TraderMetrics.from_dict(m) for w, m in row["stats"].items()},
        updated_ms=row["stats_at_ms"],
    )
    assert row["index_points"]["month"][0][1] == pytest.approx(1.0)
    # Candidates (near the top, or requested) get fills on top of their portfolio, which
    # completes their score; contenders (a complete score near the top) a role too.
    await until(lambda: rig.tracker.stats()["roles"] >= 1)
    await until(lambda: all(a in rig.board.metrics for a in watched))
    await until(lambda: any(rig.board.metrics[a]["month"].trade_count is not None for a in watched))
    assert rig.tracker.stats()["fills_fetched"] >= 1
    roles = await rig.store.pool.fetch(
        "SELECT address, role FROM traders WHERE role IS NOT NULL ORDER BY address"
    )
    sim_roles: dict[str, dict[str, str]] = await sim_get(sim, "/_sim/roles")
    assert roles
    for r in roles:
        assert r["role"] == sim_roles.get(r["address"], {"role": "user"})["role"]
    lanes = rig.budget.stats()["lanes"]
    assert lanes["scoring"]["requests"] > 0
    assert lanes["enrichment"]["requests"] >= 1
    assert (await sim_get(sim, "/_sim/stats"))["rate_limited"] == 0


@pytest.mark.slow(15)
async def test_a_requested_trader_becomes_position_events(rig: Rig, sim: Simulator) -> None:
    me = "0x" + "7e" * 20
    await sim_post(sim, "/_sim/fund", {"address": me, "usdc": "100000"})
    feed = rig.bus.subscribe(types=["position"], addresses=[me])
    rig.tracker.request_track(me)
    await until(lambda: rig.tracker.stats()["positions"] >= 1)
    # A first read only learns where the trader is; changes after it are events.
    await asyncio.sleep(6)
    await sim_post(sim, "/_sim/trade", {"address": me, "coin": "ETH", "is_buy": True, "usd": 5000})
    opened = await asyncio.wait_for(feed.next(), 30)
    assert opened.data["kind"] == "open"
    assert opened.data["coin"] == "ETH"
    assert Decimal(opened.data["new_szi"]) > 0
    await sim_post(
        sim, "/_sim/trade", {"address": me, "coin": "ETH", "is_buy": False, "usd": 10_000}
    )
    flipped = await asyncio.wait_for(feed.next(), 30)
    assert flipped.data["kind"] == "flip"
    assert Decimal(flipped.data["new_szi"]) < 0
    rows = await rig.store.pool.fetch(
        "SELECT kind FROM position_events WHERE address = $1 ORDER BY time_ms", me
    )
    assert [r["kind"] for r in rows] == ["open", "flip"]
    stored = await rig.store.pool.fetchval("SELECT positions FROM traders WHERE address = $1", me)
    assert [p["coin"] for p in stored] == ["ETH"]


@contextlib.asynccontextmanager
async def offline_tracker(tmp_path: Path, seen: list[Seen]) -> AsyncIterator[Tracker]:
    """A tracker for its choices alone (its exchange and database are never reached), with
    ``seen`` in the registry and the top two complete first."""
    cfg = make_config(tmp_path, tracking={"scoring_top_n": 2})
    async with new_session(1) as session:
        info = InfoClient(session, "http://127.0.0.1:9", WeightBudget(1200))
        yield Tracker(
            info=info,
            store=Store(DatabaseConfig(dsn="postgresql://127.0.0.1:9/x"), tmp_path),
            stream=StreamPool("ws://127.0.0.1:9"),
            universe=UniverseService(info),
            registry=ListRegistry(seen),
            metrics=Board(),
            bus=EventBus(),
            config=cfg,
        )


async def test_the_public_leaderboards_best_stay_candidates_once_the_field_settles(
    tmp_path: Path,
) -> None:
    """Once enough provisional scores are in, the candidates are the best of them; a month of
    luck among dozens explored outranks the public leaderboard's consistent winners on that
    alone, and they were never completed. They stay candidates: their fills come first."""
    from hlcopy.scout.tracker import Tracked

    async with offline_tracker(tmp_path, []) as tracker:
        lucky = [Tracked(f"0x{i:040x}", provisional_score=1.0 + i) for i in range(1, 6)]
        seeded = Tracked("0x" + "5e" * 20, provisional_score=0.5)
        for t in (*lucky, seeded):
            tracker._traders[t.address] = t
        tracker._seed_best = {seeded.address}
        tracker._mark_candidates()  # five scores and more: settled, for the top two
        assert [t.candidate for t in lucky] == [False, False, False, True, True]
        assert seeded.candidate


async def test_a_watched_trader_whose_complete_score_leads_has_its_role_read(
    tmp_path: Path,
) -> None:
    """A trader the user asked to watch is completed once the field settles; if its complete
    score then leads, its role is read like a contender's (a watched sub-account must not rank
    in the top unchecked). Watched or not, a trader whose complete score does not lead waits."""
    from hlcopy.scout.tracker import Tracked, role_wanted

    async with offline_tracker(tmp_path, []) as tracker:
        field = [Tracked(f"0x{i:040x}", provisional_score=1.0 + i) for i in range(1, 6)]
        watched = Tracked("0x" + "3a" * 20, provisional_score=0.1, score=5.0)
        unwatched = Tracked("0x" + "4b" * 20, provisional_score=0.2, score=6.0)
        trailing = Tracked("0x" + "5c" * 20, provisional_score=0.3, score=-1.0)
        for t in (*field, watched, unwatched, trailing):
            tracker._traders[t.address] = t
        tracker._requested = {watched.address, trailing.address}
        tracker._mark_candidates()  # settled: the top two by provisional score are candidates
        assert (watched.merit, watched.candidate, watched.contender) == (0, True, True)
        assert role_wanted(watched)
        assert (unwatched.candidate, role_wanted(unwatched)) == (False, False)  # not completed
        assert (trailing.candidate, role_wanted(trailing)) == (True, False)  # not leading


async def test_a_trader_quoting_at_a_high_rate_across_books_is_passed_over(
    tmp_path: Path,
) -> None:
    """Its fills (the most expensive of all) would only say it cannot rank: a trader whose
    public trades look like market making is never a candidate, whatever its provisional
    score."""
    from hlcopy.scout.tracker import Tracked

    minute = 60_000
    quoter = Seen(
        "0x" + "4a" * 20, 10 * minute, 40, Decimal(10**6), 16, 24, 9 * minute, ("A",) * 12
    )
    sweeper = Seen("0x" + "5b" * 20, 10 * minute, 40, Decimal(10**6), 16, 24, 9 * minute, ("BTC",))
    async with offline_tracker(tmp_path, [quoter, sweeper]) as tracker:
        field = [Tracked(f"0x{i:040x}", provisional_score=0.1 * i) for i in range(1, 5)]
        for t in (*field, Tracked(quoter.address, provisional_score=9.0)):
            tracker._traders[t.address] = t
        tracker._traders[sweeper.address] = Tracked(sweeper.address, provisional_score=8.0)
        tracker._mark_candidates()  # settled: the top two by provisional score
        assert not tracker._traders[quoter.address].candidate
        assert tracker._traders[sweeper.address].candidate  # one book: a whale's sweep
        assert [t.candidate for t in field] == [False, False, False, True]


async def test_a_score_that_would_lead_is_published_with_its_role_known(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    """A complete score near the top of the winners waits for the trader's role (a vault or an
    agent must not rank there even while its role is being read), whether the trader is near
    the top by its provisional score or the user asked to watch it; one that would not lead is
    published at once, its role left unread (60 weight)."""
    from hlcopy.scout.tracker import Tracked

    cfg = make_config(tmp_path, dsn, tracking={"scoring_top_n": 1})
    async with (
        Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store,
        new_session(10) as session,
    ):
        await store.migrate()
        info = InfoClient(session, sim.url, WeightBudget(1200))
        universe = UniverseService(info)
        board = Board()
        tracker = Tracker(
            info=info,
            store=store,
            stream=StreamPool(sim.ws_url),
            universe=universe,
            registry=ListRegistry([]),
            metrics=board,
            bus=EventBus(),
            config=cfg,
        )
        await universe.refresh()
        archetypes: dict[str, str] = await sim_get(sim, "/_sim/archetypes")
        skilled = sorted(a for a, kind in archetypes.items() if kind == "skilled")[0]
        t = Tracked(skilled)
        tracker._traders[skilled] = t
        portfolio = await info.portfolio(skilled)
        fills = await info.user_fills_by_time(skilled, sim.engine.now_ms - 30 * 86_400_000)
        champion = Tracked("0x" + "c4" * 20, score=1e9)  # the one leading score (top 1)
        tracker._traders[champion.address] = champion
        tracker._settled = True
        await tracker._publish_metrics(t, portfolio, list(fills))
        assert skilled in board.metrics
        assert (t.role, tracker.counters["roles"]) == (None, 0)  # it would not lead
        champion.score = None
        tracker._settled = False  # too few provisional scores yet: published, role unread
        await tracker._publish_metrics(t, portfolio, list(fills))
        assert (t.role, tracker.counters["roles"]) == (None, 0)
        tracker._settled = True  # a settled field: near the top now means something...
        await tracker._publish_metrics(t, portfolio, list(fills))
        assert (t.role, tracker.counters["roles"]) == (None, 0)  # ...but not on its record
        tracker._requested.add(skilled)  # watched: it may lead like any other
        tracker._settled = t.requested = True
        await tracker._publish_metrics(t, portfolio, list(fills))
        assert t.role is not None
        assert (t.role.role, tracker.counters["roles"]) == ("user", 1)
        tracker._requested.discard(skilled)
        t.requested, t.role = False, None
        tracker._settled, t.merit = True, 1  # near the top by its provisional score
        await tracker._publish_metrics(t, portfolio, list(fills))
        assert t.role is not None
        assert t.role.role == "user"
        assert tracker.counters["roles"] == 2
        assert t.score is not None  # a user's complete score, published with its role known


@contextlib.asynccontextmanager
async def sim_tracker(
    tmp_path: Path, sim: Simulator, dsn: str, budget: WeightBudget, cfg: HlcopyConfig
) -> AsyncIterator[Tracker]:
    """A tracker on the simulator and a migrated database, outside any daemon: the test drives
    its choices and reads itself."""
    async with (
        Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store,
        new_session(10) as session,
    ):
        await store.migrate()
        info = InfoClient(session, sim.url, budget)
        yield Tracker(
            info=info,
            store=store,
            stream=StreamPool(sim.ws_url),
            universe=UniverseService(info),
            registry=ListRegistry([]),
            metrics=Board(),
            bus=EventBus(),
            config=cfg,
        )


async def test_room_for_completing_the_top_is_kept_only_while_there_is_some_to_complete(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    """The scoring reserve keeps exploration out of room a candidate's fills or a contender's
    role will need; with nothing left to complete it would only leave the window idle."""
    from hlcopy.scout.tracker import SCORING_RESERVE, Tracked

    cfg = make_config(tmp_path, dsn, tracking={"scoring_top_n": 2})  # settled from 4 scores
    budget = WeightBudget(1200)
    async with sim_tracker(tmp_path, sim, dsn, budget, cfg) as tracker:
        assert budget.stats()["scoring_reserve"] == 0  # nobody to complete yet
        seed = Tracked("0x" + "5e" * 20, provisional_score=0.4)
        tracker._traders[seed.address] = seed
        tracker._seed_best = {seed.address}
        tracker._mark_candidates()
        assert seed.candidate
        # Its role, then its fills, are to come (the public leaderboard's top holds vaults).
        assert budget.stats()["scoring_reserve"] == 2 * SCORING_RESERVE
        seed.role_s = 1.0  # claimed: its read takes its own room
        tracker._mark_candidates()
        assert budget.stats()["scoring_reserve"] == SCORING_RESERVE
        seed.fills_s = 1.0
        tracker._mark_candidates()
        assert budget.stats()["scoring_reserve"] == 0
        # A complete score near the top: its role is to come (as _mark_candidates would say).
        leading = Tracked("0x" + "1e" * 20, merit=1, contender=True, fills_s=1.0)
        tracker._traders[leading.address] = leading
        tracker._reserve_scoring()
        assert budget.stats()["scoring_reserve"] == SCORING_RESERVE
        del tracker._traders[leading.address]
        # Room for each read to come, within what the budget allows the scoring lane to keep.
        others = [Tracked(f"0x{i:040x}", provisional_score=0.1) for i in range(1, 10)]
        for t in others:
            tracker._traders[t.address] = t
        tracker._seed_best |= {t.address for t in others[:2]}
        tracker._mark_candidates()  # (too few scores for contenders: only the seeds' roles)
        # The two new seeds' roles and fills (the first seed's are claimed).
        assert budget.stats()["scoring_reserve"] == 4 * SCORING_RESERVE
        tracker._seed_best |= {t.address for t in others}
        tracker._mark_candidates()
        assert budget.stats()["scoring_reserve"] == budget.read_limit // 4  # no truth reserve
        # A trader the user only asked to watch is a candidate once the field is settled, but
        # no part of the top: its fills keep no room.
        for t in [seed, *others]:
            t.fills_s = t.role_s = 1.0
        watched = Tracked("0x" + "3a" * 20, provisional_score=-5.0)
        tracker._traders[watched.address] = watched
        tracker._requested.add(watched.address)
        tracker._mark_candidates()
        assert watched.candidate
        assert watched.merit == 0
        assert budget.stats()["scoring_reserve"] == 0


async def test_a_leader_followed_while_scoring_fills_the_window_has_its_state_read_at_once(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    """Weight spent stays a whole window: a follow added after scoring filled it would wait up
    to a minute for its leader's first state in the leader lane. That read goes in the order
    lane (the follow's first orders wait on it); the next ones are leader reads."""
    from hlcopy.budget import Lane
    from hlcopy.clock import SYSTEM

    leader = "0x" + "1e" * 20
    await sim_post(sim, "/_sim/fund", {"address": leader, "usdc": "1000"})
    budget = WeightBudget(1200)
    async with sim_tracker(tmp_path, sim, dsn, budget, make_config(tmp_path, dsn)) as tracker:
        while budget.used() + 20 <= budget.read_limit:  # scoring takes all the window it may
            await budget.acquire(20, Lane.SCORING)
        tracker.set_leaders([leader])
        async with asyncio.timeout(5):  # not the minute the window's weight takes to expire
            await tracker._read_truth(leader, SYSTEM.monotonic())
        assert tracker.leader_state(leader) is not None
        assert budget.stats()["lanes"]["order"]["requests"] == 1
        second = asyncio.create_task(tracker._read_truth(leader, SYSTEM.monotonic()))
        await asyncio.sleep(0.5)
        assert not second.done()  # a leader read: it waits for room like the others
        assert budget.stats()["lanes"]["leader"]["waiting"] == 1
        second.cancel()
