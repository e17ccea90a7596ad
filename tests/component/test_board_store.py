"""The leaderboard's stored state on a real PostgreSQL: what the tracker stores is what a restart
serves, from the packed figures; rows stored before those existed (migration 0003), or whose
packed figures do not belong to their stats, are read from the JSON and packed back."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from hlcopy.config import DatabaseConfig
from hlcopy.daemon import Daemon
from hlcopy.notify import Notifier
from hlcopy.scout.leaderboard import Leaderboard, LeaderboardService, pack_metrics
from hlcopy.store import Store
from hlcopy.store.db import bundled_migrations
from hlcopy.store.monitor import StoreMonitor
from hlcopy.store.tracking import TrackingStore

from tests.component.scout_env import store_traders
from tests.conftest import make_config, running
from tests.scout_data import Trader, population, stored_stats
from tests.unit.test_leaderboard import assert_same_board, board_of

TRADERS = population(60)


@contextlib.asynccontextmanager
async def restarted(
    dsn: str, tmp_path: Path, batch_size: int = 16
) -> AsyncIterator[tuple[Leaderboard, dict[str, Any]]]:
    """A daemon started on the database: its board once loaded, and the service's figures."""
    cfg = make_config(tmp_path, dsn)
    daemon = Daemon(cfg, notifier=Notifier(""))
    store = Store(cfg.database, cfg.state.dir)
    board = Leaderboard()
    service = LeaderboardService(board, store, cfg.leaderboard, batch_size=batch_size)
    daemon.add(StoreMonitor(store))
    daemon.add(service)
    try:
        async with running(daemon):
            yield board, service.stats()
    finally:
        await store.close()


async def stored_packed(dsn: str, tmp_path: Path) -> dict[str, bytes | None]:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        rows = await store.pool.fetch("SELECT address, board_figures FROM traders")
    return {r["address"]: r["board_figures"] for r in rows}


def packed(traders: Sequence[Trader]) -> dict[str, bytes | None]:
    return {t.address: pack_metrics(t.metrics, updated_ms=t.updated_ms) for t in traders}


async def test_what_the_tracker_stores_is_what_a_restart_serves(dsn: str, tmp_path: Path) -> None:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        db = TrackingStore(store)
        for t in TRADERS:  # the tracker's own write
            await db.save_stats(
                t.address,
                stored_stats(t),
                {},
                t.account_value,
                t.updated_ms,
                board_figures=pack_metrics(t.metrics, updated_ms=t.updated_ms),
            )
    async with restarted(dsn, tmp_path) as (board, stats):
        assert_same_board(board, board_of(TRADERS))
        assert stats["loaded_traders"] == len(TRADERS)
        assert (stats["load_from_json"], stats["load_packed_back"]) == (0, 0)


async def test_rows_stored_before_the_packed_figures_are_read_from_json_and_packed_back(
    dsn: str, tmp_path: Path
) -> None:
    old, new = TRADERS[::2], TRADERS[1::2]
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate(bundled_migrations()[:2])  # a database of the previous version
        await store_traders(store, old, packed=False)
        await store.migrate()
        await store_traders(store, new)  # rescored since: in the same batches as the old ones
    assert sum(p is None for p in (await stored_packed(dsn, tmp_path)).values()) == len(old)

    async with restarted(dsn, tmp_path) as (board, stats):
        assert_same_board(board, board_of(TRADERS))
        assert stats["loaded_traders"] == len(TRADERS)
        assert stats["load_from_json"] == stats["load_packed_back"] == len(old)
        assert stats["load_careful_batches"] == 0
    # Packed back exactly as the tracker packs: the JSON held the same figures.
    assert await stored_packed(dsn, tmp_path) == packed(TRADERS)

    async with restarted(dsn, tmp_path) as (board, stats):  # and the next start reads them
        assert_same_board(board, board_of(TRADERS))
        assert (stats["load_from_json"], stats["load_packed_back"]) == (0, 0)


async def test_stats_changed_behind_the_packed_figures_are_served_from_the_json(
    dsn: str, tmp_path: Path
) -> None:
    """Packed figures are read only with the stats they were packed with (same stats_at_ms):
    stats written by anything that did not pack them are read from the JSON."""
    t, donor = TRADERS[3], TRADERS[4]
    rewritten = Trader(t.address, donor.kind, donor.metrics, t.account_value, t.updated_ms + 1)
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        await store_traders(store, TRADERS)
        await store.pool.execute(
            "UPDATE traders SET stats = $2, stats_at_ms = $3 WHERE address = $1",
            t.address,
            stored_stats(rewritten),
            rewritten.updated_ms,
        )
    want = [rewritten if x.address == t.address else x for x in TRADERS]
    async with restarted(dsn, tmp_path) as (board, stats):
        assert_same_board(board, board_of(want))
        assert stats["load_from_json"] == stats["load_packed_back"] == 1
    assert await stored_packed(dsn, tmp_path) == packed(want)


async def test_damaged_packed_figures_are_served_from_the_json(dsn: str, tmp_path: Path) -> None:
    t = TRADERS[5]
    damaged = bytearray(pack_metrics(t.metrics, updated_ms=t.updated_ms))
    damaged[40] ^= 0x10
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        await store_traders(store, TRADERS)
        await store.pool.execute(
            "UPDATE traders SET board_figures = $2 WHERE address = $1", t.address, bytes(damaged)
        )
        # A trader without a readable window: read from the JSON at every start, never served.
        await store.pool.execute(
            "INSERT INTO traders (address, first_seen_ms, last_seen_ms, stats, stats_at_ms)"
            " VALUES ($1, 0, 0, '{\"month\": []}'::jsonb, 7)",
            "0x" + "0e" * 20,
        )
    for from_json in (1, 0):  # packed back at the first start
        async with restarted(dsn, tmp_path, batch_size=1000) as (board, stats):
            assert_same_board(board, board_of(TRADERS))
            assert "0x" + "0e" * 20 not in board
            assert stats["load_from_json"] == from_json
    assert (await stored_packed(dsn, tmp_path))[t.address] == packed([t])[t.address]


async def test_packed_figures_that_cannot_be_written_back_never_stop_the_start(
    dsn: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        await store_traders(store, TRADERS, packed=False)
        await store.pool.execute(
            """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'read-only today'; END $$;
               CREATE TRIGGER refuse BEFORE UPDATE OF board_figures ON traders
                   FOR EACH ROW EXECUTE FUNCTION refuse();"""
        )
    async with restarted(dsn, tmp_path) as (board, stats):
        assert_same_board(board, board_of(TRADERS))
        assert (stats["load_from_json"], stats["load_packed_back"]) == (len(TRADERS), 0)
    warnings = [
        line
        for line in log_stream.getvalue().splitlines()
        if "packed figures not written back" in line
    ]
    assert warnings
    assert "read-only today" in warnings[0]
    assert set((await stored_packed(dsn, tmp_path)).values()) == {None}
