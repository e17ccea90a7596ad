"""A daemon serving the scout's API on real parts: PostgreSQL holding what a previous run's
tracker stored, the leaderboard service loading it, a real event bus, and small in-test
implementations of the registry and the tracker (the protocols the API defines; the real ones
are wired by the composition root)."""

from __future__ import annotations

import bisect
import contextlib
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from hlcopy.api.backtest import BacktestJobs
from hlcopy.api.close import CloseAll
from hlcopy.api.performance import PerformanceReport
from hlcopy.api.scout import FeedSettings
from hlcopy.api.server import ApiServer
from hlcopy.config import DatabaseConfig
from hlcopy.credentials import Secret
from hlcopy.daemon import Daemon
from hlcopy.events import EventBus
from hlcopy.follow.copier import Transfer
from hlcopy.follow.executor import NoMarketData
from hlcopy.follow.follows import FollowRegistry
from hlcopy.follow.riskkeeper import RiskKeeper
from hlcopy.model import L2Book, LeaderFill, OrderIntent
from hlcopy.notify import Notifier
from hlcopy.scout.leaderboard import Leaderboard, LeaderboardService, pack_metrics
from hlcopy.store import Store
from hlcopy.store.monitor import StoreMonitor
from hlcopy.store.performance import PerformanceStore

from tests.conftest import make_config, running
from tests.scout_data import NOW, Trader, population, stored_stats

TOKEN = "scout-token-0123456789abcdef"


@dataclass(slots=True)
class Activity:
    """What discovery's registry holds per address (the interface's ``Activity``)."""

    address: str
    first_seen_ms: int
    last_seen_ms: int
    trades: int
    volume_usd: Decimal
    taker: int
    maker: int
    coins: tuple[str, ...] = ()


class Registry:
    """The registry's interface: get, len, iter, search by address prefix."""

    def __init__(self, activities: Sequence[Activity]) -> None:
        self._by = {a.address: a for a in activities}
        self._sorted = sorted(self._by)

    def get(self, address: str) -> Activity | None:
        return self._by.get(address)

    def __len__(self) -> int:
        return len(self._by)

    def __iter__(self) -> Iterator[Activity]:
        return iter(self._by.values())

    def search(self, prefix: str, limit: int, offset: int) -> tuple[int, list[Activity]]:
        lo = bisect.bisect_left(self._sorted, prefix)
        hi = bisect.bisect_left(self._sorted, prefix + "g")  # "g" sorts after every hex digit
        matches = self._sorted[lo:hi]
        return len(matches), [self._by[a] for a in matches[offset : offset + limit]]


@dataclass(slots=True)
class Tracker:
    """The tracker's track-request sink: records what was asked."""

    requested: list[str] = field(default_factory=list)

    def request_track(self, address: str) -> None:
        self.requested.append(address)


class Flat:
    """The executor as close-all sees it, with nothing open (no executor runs here): the API's
    close-all route is served and fuzzed, and has nothing to send."""

    def attributed(self) -> dict[str, dict[str, Decimal]]:
        return {}

    def positions(self) -> dict[str, Decimal]:
        return {}

    def mids(self) -> dict[str, Decimal]:
        return {}

    async def book(self, coin: str) -> L2Book:
        raise NoMarketData(f"no book for {coin}")

    async def transfer(self, moves: Sequence[Transfer]) -> None:
        raise AssertionError("nothing to net")

    def submit(self, intent: OrderIntent, trigger: LeaderFill | None = None) -> None:
        raise AssertionError("nothing to close")


class Positions:
    """The copy engine's positions view (the protocol the API defines): one paper position."""

    def positions(self) -> dict[str, Any]:
        return {
            "mode": "paper",
            "equity": Decimal("10010.5"),
            "cash": Decimal("10000"),
            "positions": [
                {
                    "coin": "BTC",
                    "szi": Decimal("0.01"),
                    "entry_px": Decimal("60000"),
                    "follows": [{"follow": "one", "attributed_szi": Decimal("0.01")}],
                }
            ],
            "leaders": {
                "0x" + "a1" * 20: {
                    "via": "userFills",
                    "live": True,
                    "state_ms": NOW - 2_000,
                    "last_change_ms": NOW - 60_000,
                    "equity": Decimal("250000"),
                },
                "0x" + "b2" * 20: None,  # followed, no book yet
            },
        }


def activity_of(t: Trader, rng: random.Random) -> Activity:
    first = NOW - rng.randint(1, 90) * 86_400_000
    return Activity(
        t.address,
        first,
        NOW - rng.randint(0, 3_600_000),
        rng.randint(1, 5000),
        Decimal(rng.randint(1, 10**9)) / 100,
        rng.randint(0, 100),
        rng.randint(0, 100),
        ("BTC", "ETH"),
    )


def index_points(t: Trader) -> dict[str, list[list[float]]]:
    return {
        w: [[NOW - 3_600_000, 1.0], [NOW, 1.0 + (m.return_ or 0.0)]] for w, m in t.metrics.items()
    }


def positions_of(rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "coin": "BTC",
            "szi": str(Decimal(rng.randint(-100, 100)) / 100),
            "entry_px": "60000.5",
            "position_value": "1200.0",
            "unrealized_pnl": "-3.2",
            "leverage": 5,
            "liquidation_px": None,
            "margin_used": "240.0",
        }
    ]


async def store_traders(
    store: Store, traders: Sequence[Trader], seed: int = 3, *, packed: bool = True
) -> None:
    """Write ``traders`` as the tracker does: stats with their packed figures, account value,
    positions, index points, plus a few position events and fills each. ``packed=False``: as
    before migration 0003, without packed figures."""
    rng = random.Random(seed)
    traders_rows, events, fills = [], [], []
    for t in traders:
        traders_rows.append(
            (
                t.address,
                NOW - 86_400_000,
                NOW,
                rng.randint(1, 100),
                Decimal(rng.randint(1, 10**6)),
                "vault" if t.kind == "vault" else "user",
                stored_stats(t),
                t.updated_ms,
                t.account_value,
                positions_of(rng),
                NOW - 5000,
                index_points(t),
                ["BTC"],
            )
        )
        for i in range(3):
            events.append(
                (
                    t.address,
                    ["open", "increase", "close"][i],
                    Decimal(i) / 10,
                    Decimal(i + 1) / 10 if i < 2 else Decimal(0),
                    NOW - (3 - i) * 60_000,
                    1000 + i,
                )
            )
            fills.append((t.address, 2000 + i, NOW - (3 - i) * 60_000))
    pool = store.pool
    await pool.executemany(
        """INSERT INTO traders (address, first_seen_ms, last_seen_ms, trade_count, volume_usd,
               role, tracked, stats, stats_at_ms, account_value, positions, positions_at_ms,
               index_points, coins)
           VALUES ($1, $2, $3, $4, $5, $6, true, $7, $8, $9, $10, $11, $12, $13)""",
        traders_rows,
    )
    if packed:
        await pool.executemany(
            "UPDATE traders SET board_figures = $2 WHERE address = $1",
            [(t.address, pack_metrics(t.metrics, updated_ms=t.updated_ms)) for t in traders],
        )
    await pool.executemany(
        """INSERT INTO position_events (address, coin, kind, prev_szi, new_szi, px,
               time_ms, tid, entry_px, notional, leverage)
           VALUES ($1, 'BTC', $2, $3, $4, 60000, $5, $6, 60000, 600, 5)""",
        events,
    )
    await pool.executemany(
        """INSERT INTO fills (address, tid, coin, px, sz, side, time_ms, start_position,
               dir, closed_pnl, hash, oid, crossed, fee, fee_token, source, received_ms)
           VALUES ($1, $2, 'BTC', 60000.5, 0.1, 'B', $3, 0, 'Open Long', 0, '0xab', 7,
               true, 0.02, 'USDC', 'rest', $3)""",
        fills,
    )


@dataclass
class ScoutApi:
    url: str
    session: aiohttp.ClientSession
    daemon: Daemon
    board: Leaderboard
    bus: EventBus
    registry: Registry
    tracker: Tracker
    traders: list[Trader]
    server: ApiServer
    risk: RiskKeeper
    follows: FollowRegistry

    async def call(
        self, method: str, path: str, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as r:
            body = await r.read()
            return r.status, orjson.loads(body) if r.content_type == "application/json" else body

    async def get(self, path: str, **kwargs: Any) -> Any:
        status, body = await self.call("GET", path, **kwargs)
        assert status == 200, body
        return body


@contextlib.asynccontextmanager
async def scout_api(
    dsn: str,
    tmp_path: Path,
    *,
    traders: int = 80,
    read_auth: bool = False,
    feed: FeedSettings | None = None,
    config_path: Path | None = None,
) -> AsyncIterator[ScoutApi]:
    """Store ``traders`` as a previous run would have, then start a daemon on that database."""
    population_ = population(traders)
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        await store_traders(store, population_)
    rng = random.Random(5)
    # Discovery saw most of them, and some that were never scored.
    seen = [activity_of(t, rng) for t in population_[: traders - 5]]
    seen += [
        activity_of(Trader(f"0x{rng.getrandbits(160):040x}", "unseen", {}, None, 0), rng)
        for _ in range(20)
    ]
    cfg = make_config(
        tmp_path,
        dsn,
        api={"port": 0, "read_auth": read_auth},
        leaderboard={"refresh_interval_s": 1},
        # One follow declared in the file (the API may pause it, never delete it).
        follow=[{"leader": population_[0].address, "name": "declared", "ratio": 0.5}],
    )
    daemon = Daemon(cfg, config_path=config_path, notifier=Notifier(""))
    store = Store(cfg.database, cfg.state.dir)
    board = Leaderboard(losers_window=cfg.leaderboard.losers_window)
    bus = EventBus()
    registry = Registry(seen)
    tracker = Tracker()
    risk = RiskKeeper(store, bus)
    follows = FollowRegistry(store, cfg)
    server = ApiServer(
        daemon,
        cfg.api,
        Secret(TOKEN),
        leaderboard=board,
        registry=registry,
        tracker=tracker,
        bus=bus,
        store=store,
        risk=risk,
        feed_settings=feed,
        follows=follows,
        positions=Positions(),
        performance_report=PerformanceReport(follows, PerformanceStore(store), dict),
        closer=CloseAll(Flat(), risk, lambda coin: None),
        backtests=BacktestJobs(None, cfg),  # no exchange here: a started job fails at once
    )
    daemon.add(StoreMonitor(store))
    daemon.add(follows)
    daemon.add(LeaderboardService(board, store, cfg.leaderboard))
    daemon.add(risk)
    daemon.add(server)
    try:
        async with running(daemon), aiohttp.ClientSession() as session:
            yield ScoutApi(
                f"http://127.0.0.1:{server.port}",
                session,
                daemon,
                board,
                bus,
                registry,
                tracker,
                population_,
                server,
                risk,
                follows,
            )
    finally:
        await store.close()
