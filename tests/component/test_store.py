"""The store on real PostgreSQL: embedded start, migrations (idempotent, race-safe, guarded)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import psutil
import pytest
from hlcopy.config import DatabaseConfig
from hlcopy.errors import InstanceLocked, MigrationError, StoreConflict, StoreUnavailable
from hlcopy.store import Migration, Store, bundled_migrations
from hlcopy.store.db import translate
from hlcopy.store.embedded import Postmaster, _exclusive, postmaster_alive

from tests.conftest import REPO

EXPECTED_TABLES = {
    "traders",
    "fills",
    "position_snapshots",
    "position_events",
    "follows",
    "orders",
    "kv",
    "leader_fills",
    "schema_migrations",
    "risk_states",
    "risk_events",
    "copies",
    "paper_account",
    "paper_fills",
    "paper_funding",
    "follow_transfers",
    "opportunities",
    "opportunity_outcomes",
    "leader_leverage_days",
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
    # Not exclusive: this is about the migration lock, not the one-instance lock.
    async with (
        Store(cfg, tmp_path, exclusive=False) as a,
        Store(cfg, tmp_path, exclusive=False) as b,
    ):
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


async def test_a_pooled_connection_comes_back_without_a_reset_query_but_rolled_back(
    dsn: str, tmp_path: Path
) -> None:
    """Releasing a pooled connection sends nothing (one round trip less per use), yet a
    transaction left open is still rolled back."""
    async with Store(DatabaseConfig(dsn=dsn, pool_min_size=1, pool_max_size=1), tmp_path) as store:
        await store.migrate()
        admin = await asyncpg.connect(dsn)
        try:

            async def last_query(pid: int) -> str:
                query = "SELECT query FROM pg_stat_activity WHERE pid = $1"
                return str(await admin.fetchval(query, pid))

            async with store.pool.acquire() as con:
                pid = con.get_server_pid()
                await con.execute("SELECT 1 AS released_last")
            assert await last_query(pid) == "SELECT 1 AS released_last"
            async with store.pool.acquire() as con:
                assert con.get_server_pid() == pid  # the pool's one connection, again
                await con.execute("BEGIN")
                await con.execute("""INSERT INTO kv (key, value) VALUES ('left_open', '1')""")
            assert await last_query(pid) == "ROLLBACK"  # asyncpg's own, for the open one
        finally:
            await admin.close()
        assert await store.pool.fetchval("SELECT count(*) FROM kv WHERE key = 'left_open'") == 0
        async with store.pool.acquire() as con:
            assert not con.is_in_transaction()


async def test_a_backend_shut_down_under_a_query_is_transient(dsn: str) -> None:
    """57P01 is what a backend answers when its postmaster dies under it; a daemon must wait
    for the server to come back, not stop."""
    victim = await asyncpg.connect(dsn)
    try:
        pid = victim.get_server_pid()
        sleeping = asyncio.create_task(victim.fetchval("SELECT pg_sleep(10)"))
        await asyncio.sleep(0.2)
        admin = await asyncpg.connect(dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        with pytest.raises(StoreUnavailable, match="terminating connection"), translate("read"):
            await sleeping
        with pytest.raises(StoreUnavailable, match="connection is closed"), translate("read"):
            await victim.fetchval("SELECT 1")
    finally:
        victim.terminate()


def test_asyncpgs_own_state_error_is_the_database_gone_for_a_moment() -> None:
    """What a pool raised in CI when it reset a connection of a killed server: the tracker
    stopped the daemon with it, because nothing translated it."""
    with pytest.raises(StoreUnavailable, match="save positions"), translate("save positions"):
        raise asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        )


def test_the_system_users_creation_is_one_process_at_a_time(tmp_path: Path) -> None:
    """A fresh machine's first test run once started two embedded servers at once: their
    useradds raced, and initdb ran as a uid whose user had been overwritten."""
    lock = tmp_path / "user.lock"
    probe = (
        "import fcntl, sys\n"
        f"f = open({str(lock)!r}, 'a')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    with _exclusive(lock):
        held = subprocess.run([sys.executable, "-c", probe], check=False)
    after = subprocess.run([sys.executable, "-c", probe], check=False)
    assert (held.returncode, after.returncode) == (3, 0)


async def test_unreachable_database_is_transient(tmp_path: Path) -> None:
    cfg = DatabaseConfig(dsn=f"postgresql://nobody@/x?host={tmp_path}&port=1", command_timeout_s=2)
    store = Store(cfg, tmp_path)
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.ping()


def _postgres_for(data_dir: Path) -> list[int]:
    """PIDs of live postmasters serving ``data_dir``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(data_dir) in (proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


async def test_a_second_exclusive_store_on_one_database_is_refused_naming_the_holder(
    dsn: str, tmp_path: Path
) -> None:
    cfg = DatabaseConfig(dsn=dsn)
    async with Store(cfg, tmp_path):
        with pytest.raises(InstanceLocked) as info:
            await Store(cfg, tmp_path).open()
        assert info.value.holder_pid == os.getpid()
        assert f"pid {os.getpid()}" in str(info.value)
    # Released with the first store: a new one gets it.
    async with Store(cfg, tmp_path) as again:
        await again.ping()


async def test_a_killed_postmaster_is_restarted_by_open_and_data_survives(tmp_path: Path) -> None:
    async with Store(DatabaseConfig(), tmp_path) as store:
        await store.migrate()
        await store.kv_set("k", 1)
        first = store.embedded_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(10):
            while postmaster_alive(first, (tmp_path / "pg").resolve()):
                await asyncio.sleep(0.05)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        async with asyncio.timeout(30):
            while True:  # orphaned backends may hold the old segment for a moment
                try:
                    await store.open()
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.5)
        assert store.embedded_pid not in (None, first)
        assert await store.kv_get("k") == 1
        assert store.stats()["reopens"] == 1
    assert _postgres_for((tmp_path / "pg").resolve()) == []


_OPEN_AND_HANG = """
import asyncio, sys
from pathlib import Path
from hlcopy.config import DatabaseConfig
from hlcopy.log import configure_logging
from hlcopy.store import Store
async def main():
    configure_logging("warning", "json", sys.stderr)
    store = Store(DatabaseConfig(), Path(sys.argv[1]))
    await store.open()
    print(store.embedded_pid, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_a_server_left_by_a_killed_process_is_adopted_then_stopped(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPEN_AND_HANG, str(tmp_path), stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert child.stdout is not None
        left_pid = int(await asyncio.wait_for(child.stdout.readline(), 60))
    finally:
        child.kill()  # SIGKILL: no cleanup at all
        await child.wait()
    data_dir = (tmp_path / "pg").resolve()
    assert postmaster_alive(left_pid, data_dir)
    async with Store(DatabaseConfig(), tmp_path) as store:
        assert store.embedded_pid == left_pid
        assert store.stats()["embedded_adoptions"] == 1
        await store.ping()
    assert _postgres_for(data_dir) == []  # the clean stop stopped the adopted server


@pytest.mark.parametrize("holder", ["dead", "unrelated"])
async def test_a_stale_postmaster_pid_does_not_block_the_start(tmp_path: Path, holder: str) -> None:
    async with Store(DatabaseConfig(), tmp_path) as store:
        await store.migrate()
    data_dir = (tmp_path / "pg").resolve()
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        if holder == "dead":
            sleeper.kill()
            await sleeper.wait()
        # A postmaster.pid as a crashed server leaves it, naming a PID that is not a postmaster.
        lines = [str(sleeper.pid), str(data_dir), "1700000000", "5432", str(data_dir), "", "0 0"]
        (data_dir / "postmaster.pid").write_text("\n".join([*lines, "ready", ""]))
        assert Postmaster.read(data_dir) is not None
        async with Store(DatabaseConfig(), tmp_path) as store:
            assert await store.schema_version() == len(bundled_migrations())
            assert store.embedded_pid != sleeper.pid
    finally:
        if sleeper.returncode is None:
            sleeper.kill()
            await sleeper.wait()
    assert _postgres_for(data_dir) == []
