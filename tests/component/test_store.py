"""The store on real PostgreSQL: embedded start, migrations (idempotent, race-safe, guarded)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from hlcopy.config import DatabaseConfig
from hlcopy.errors import MigrationError, StoreConflict, StoreUnavailable
from hlcopy.store import Migration, Store, bundled_migrations
from hlcopy.store.db import translate

EXPECTED_TABLES = {
    "traders",
    "fills",
    "position_snapshots",
    "position_events",
    "follows",
    "orders",
    "kv",
    "schema_migrations",
}


async def test_fresh_embedded_postgres_migrates_and_second_start_is_a_noop(tmp_path: Path) -> None:
    state = tmp_path / "s"
    async with Store(DatabaseConfig(), state) as store:
        assert store.embedded
        assert await store.migrate() == [m.version for m in bundled_migrations()]
        tables = {
            r["tablename"]
            for r in await store.pool.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert tables == EXPECTED_TABLES
        await store.kv_set("watermark", {"tid": 7})
    assert (state / "pg" / "PG_VERSION").exists()

    async with Store(DatabaseConfig(), state) as store:
        assert await store.migrate() == []
        assert await store.schema_version() == len(bundled_migrations())
        assert await store.kv_get("watermark") == {"tid": 7}  # data survived the restart
    # close() stopped the server it started
    assert not (state / "pg" / "postmaster.pid").exists()


async def test_two_starts_racing_apply_each_migration_once(dsn: str, tmp_path: Path) -> None:
    cfg = DatabaseConfig(dsn=dsn)
    async with Store(cfg, tmp_path) as a, Store(cfg, tmp_path) as b:
        results = await asyncio.gather(a.migrate(), b.migrate(), a.migrate())
        assert sorted(map(len, results)) == [0, 0, len(bundled_migrations())]
        assert await a.pool.fetchval("SELECT count(*) FROM schema_migrations") == len(
            bundled_migrations()
        )


async def test_edited_migration_is_refused(dsn: str, tmp_path: Path) -> None:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path) as store:
        await store.migrate()
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in bundled_migrations()]
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await store.migrate(edited)


async def test_database_newer_than_code_is_refused(dsn: str, tmp_path: Path) -> None:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path) as store:
        extra = Migration(len(bundled_migrations()) + 1, "future", "CREATE TABLE future (x int);")
        await store.migrate([*bundled_migrations(), extra])
        with pytest.raises(MigrationError, match="newer than this hlcopy knows"):
            await store.migrate()


async def test_failed_migration_rolls_back_everything(dsn: str, tmp_path: Path) -> None:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path) as store:
        broken = [
            *bundled_migrations(),
            Migration(len(bundled_migrations()) + 1, "broken", "NOT SQL;"),
        ]
        with pytest.raises(MigrationError, match=r"_broken\.sql failed"):
            await store.migrate(broken)
        assert await store.schema_version() == 0  # the good ones were rolled back too


async def test_errors_are_translated(dsn: str, tmp_path: Path) -> None:
    async with Store(DatabaseConfig(dsn=dsn), tmp_path) as store:
        await store.migrate()
        insert = """INSERT INTO orders
                        (cloid, coin, asset, is_buy, px, sz, reduce_only, tif, paper, state)
                    VALUES ($1, 'BTC', 0, true, $2, $3, false, 'Ioc', true, 'planned')"""
        cloid = "0x" + "ab" * 16
        with translate("insert order"):
            await store.pool.execute(insert, cloid, Decimal("100000"), Decimal("0.001"))
        with pytest.raises(StoreConflict, match="insert order"), translate("insert order"):
            await store.pool.execute(insert, cloid, Decimal("100000"), Decimal("0.001"))
        row = await store.pool.fetchrow("SELECT px, sz FROM orders WHERE cloid = $1", cloid)
        assert row is not None
        assert (row["px"], row["sz"]) == (Decimal("100000"), Decimal("0.001"))


async def test_unreachable_database_is_transient(tmp_path: Path) -> None:
    cfg = DatabaseConfig(dsn=f"postgresql://nobody@/x?host={tmp_path}&port=1", command_timeout_s=2)
    store = Store(cfg, tmp_path)
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.ping()
