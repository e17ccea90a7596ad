"""The PostgreSQL store: one asyncpg pool, numbered migrations, errors in our own types.

Nothing above ``store/`` sees asyncpg. Migrations are ``migrations/NNNN_name.sql`` files applied in
one transaction under an advisory lock, so two processes starting at once cannot both apply them;
an applied file that was edited afterwards, or a database newer than the code, stops the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from hlcopy.config import DatabaseConfig
from hlcopy.credentials import Secret
from hlcopy.errors import (
    InstanceLocked,
    MigrationError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from hlcopy.record import record
from hlcopy.store.embedded import EmbeddedPostgres

# Any constants work; they only have to be the same for every hlcopy process on a database.
_MIGRATION_LOCK = 0x686C636F7079  # "hlcopy"
_INSTANCE_LOCK = (0x686C6370, 0x696E7374)  # ("hlcp", "inst"): the two-int4 form, see _holder
_APP_NAME = re.compile(r"hlcopy pid=(\d+)")
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    # A backend that sees its postmaster die answers the next query with 57P01 ("terminating
    # connection due to unexpected postmaster exit"); a crash restart ends backends with 57P02.
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # The client's own state machine, when the connection broke under it (a pool resetting a
    # connection whose server was killed: "cannot switch to state 15; another operation is in
    # progress"); not a PostgresError, so it would otherwise escape every handler.
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn asyncpg and socket errors raised inside the block into StoreError types."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise StoreConflict(f"{what}: {exc.detail or exc}") from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: database unavailable: {exc}") from exc
    except asyncpg.InterfaceError as exc:
        if "connection is closed" in str(exc):  # asyncpg has no subclass for a closed connection
            raise StoreUnavailable(f"{what}: database unavailable: {exc}") from exc
        raise StoreError(f"{what}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"{what}: {exc}") from exc


@record
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migrations shipped with this hlcopy, in version order."""
    found = []
    for entry in resources.files("hlcopy.store").joinpath("migrations").iterdir():
        m = _MIGRATION_FILE.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m[1]), m[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(
            f"migration files must be numbered 0001, 0002, ... without gaps: {versions}"
        )
    return found


async def _keep_session(con: asyncpg.Connection) -> None:
    """The pool's reset on release, which does nothing more. asyncpg still rolls back a
    transaction left open; its default reset query (unlock advisory locks, close cursors,
    unlisten, reset settings) would be one more round trip per pooled use, and hlcopy leaves
    none of those on a pooled connection: the instance lock has a connection of its own, and the
    registry's temp table is meant to stay."""


async def _init_connection(con: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await con.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class Store:
    """PostgreSQL access for every component: ``async with Store(...) as store``.

    With ``exclusive`` (the daemon's case) ``open`` first takes a session-level advisory lock on
    a connection of its own and keeps it for the life of the store, so a second hlcopy on the same
    database refuses to start instead of doubling orders. ``open`` is also how the store comes
    back: it restarts a dead embedded server and re-takes the lock after the database restarted.
    """

    def __init__(
        self,
        cfg: DatabaseConfig,
        state_dir: Path,
        password: Secret | None = None,
        *,
        exclusive: bool = True,
    ) -> None:
        self._cfg = cfg
        self._password = password
        self._exclusive = exclusive
        self._embedded = None if cfg.dsn else EmbeddedPostgres(state_dir / "pg")
        self._pool: asyncpg.Pool | None = None
        self._lock_con: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self.reopens = 0

    @property
    def embedded(self) -> bool:
        """Whether this store runs its own PostgreSQL."""
        return self._embedded is not None

    @property
    def embedded_pid(self) -> int | None:
        """The embedded server's postmaster PID, while it runs."""
        return None if self._embedded is None else self._embedded.pid

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    def _intact(self) -> bool:
        if self._pool is None:
            return False
        if self._embedded is not None and not self._embedded.running:
            return False
        return not (self._exclusive and (self._lock_con is None or self._lock_con.is_closed()))

    async def open(self) -> None:
        """Start the embedded server if needed, take the instance lock and open the pool.

        Idempotent while everything is intact; otherwise it rebuilds what broke."""
        async with self._lock:
            if self._intact():
                return
            if self._pool is not None or self._lock_con is not None:
                self.reopens += 1
            await self._disconnect()
            dsn = await self._embedded.start() if self._embedded else self._cfg.dsn
            password = self._password.reveal() if self._password else None
            if self._exclusive:
                await self._take_instance_lock(dsn, password)
            with translate("connect"):
                self._pool = await asyncpg.create_pool(
                    dsn,
                    min_size=self._cfg.pool_min_size,
                    max_size=self._cfg.pool_max_size,
                    command_timeout=self._cfg.command_timeout_s,
                    password=password,
                    init=_init_connection,
                    reset=_keep_session,
                )

    async def _take_instance_lock(self, dsn: str | None, password: str | None) -> None:
        with translate("instance lock"):
            con = await asyncpg.connect(
                dsn,
                password=password,
                timeout=self._cfg.command_timeout_s,
                server_settings={"application_name": f"hlcopy pid={os.getpid()}"},
            )
        try:
            with translate("instance lock"):
                got = await con.fetchval("SELECT pg_try_advisory_lock($1, $2)", *_INSTANCE_LOCK)
                holder = None if got else await _holder(con)
        except BaseException:
            await _close_quietly(con)
            raise
        if not got:
            await _close_quietly(con)
            who = f"pid {holder}" if holder is not None else "pid unknown"
            raise InstanceLocked(
                f"another hlcopy ({who}) is using this database; stop it first", holder
            )
        self._lock_con = con

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers and our lock still holds."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        if not self._intact():
            raise StoreUnavailable("the database server or the instance lock went away")
        with translate("ping"):
            await self.pool.fetchval("SELECT 1")
            if self._lock_con is not None:
                await self._lock_con.fetchval("SELECT 1")

    async def _disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except (TimeoutError, asyncpg.InterfaceError, OSError):
                pool.terminate()
        con, self._lock_con = self._lock_con, None
        if con is not None:
            await _close_quietly(con)

    async def close(self) -> None:
        """Close the pool and the lock, then stop the embedded server if we run one."""
        async with self._lock:
            await self._disconnect()
            if self._embedded is not None:
                await self._embedded.stop()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def migrate(self, migrations: list[Migration] | None = None) -> list[int]:
        """Apply pending migrations; return the versions applied now (empty when up to date)."""
        wanted = bundled_migrations() if migrations is None else migrations
        known = {m.version: m for m in wanted}
        applied_now: list[int] = []
        with translate("migrate"):
            async with self.pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version    integer PRIMARY KEY,
                           name       text NOT NULL,
                           checksum   text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                rows = await con.fetch("SELECT version, name, checksum FROM schema_migrations")
                for row in rows:
                    mig = known.get(row["version"])
                    if mig is None:
                        raise MigrationError(
                            "the database is at schema version "
                            f"{max(r['version'] for r in rows)}, newer than this hlcopy knows "
                            f"({max(known, default=0)}); upgrade hlcopy"
                        )
                    if mig.checksum != row["checksum"]:
                        raise MigrationError(
                            f"migration {mig.version:04d}_{mig.name}.sql was changed after it was "
                            "applied; add a new migration instead of editing an old one"
                        )
                done = {row["version"] for row in rows}
                for mig in wanted:
                    if mig.version in done:
                        continue
                    try:
                        await con.execute(mig.sql)
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(
                            f"migration {mig.version:04d}_{mig.name}.sql failed: {exc}"
                        ) from exc
                    await con.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)",
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
                    applied_now.append(mig.version)
        return applied_now

    async def schema_version(self) -> int:
        """The highest applied migration, 0 for an empty database."""
        with translate("schema_version"):
            exists = await self.pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return 0
            return int(
                await self.pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

    async def kv_get(self, key: str, default: Any = None) -> Any:
        """A value from the key-value table, or ``default``."""
        with translate("kv_get"):
            row = await self.pool.fetchrow("SELECT value FROM kv WHERE key = $1", key)
        return default if row is None else row["value"]

    async def kv_set(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key``."""
        with translate("kv_set"):
            await self.pool.execute(
                """INSERT INTO kv (key, value) VALUES ($1, $2)
                   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
                key,
                value,
            )

    def stats(self) -> dict[str, Any]:
        pool = self._pool
        out: dict[str, Any] = {
            "embedded": self.embedded,
            "open": pool is not None,
            "pool_size": pool.get_size() if pool else 0,
            "pool_idle": pool.get_idle_size() if pool else 0,
            "reopens": self.reopens,
        }
        if self._embedded is not None:
            out["embedded_pid"] = self._embedded.pid
            out["embedded_starts"] = self._embedded.starts
            out["embedded_adoptions"] = self._embedded.adoptions
        return out


async def _holder(con: asyncpg.Connection) -> int | None:
    """The PID of the hlcopy holding the instance lock, from its connection's name.

    The two-int4 form of an advisory lock shows in pg_locks as classid, objid and objsubid 2.
    """
    name = await con.fetchval(
        """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
             AND l.classid::bigint = $1 AND l.objid::bigint = $2""",
        *_INSTANCE_LOCK,
    )
    m = _APP_NAME.fullmatch(name or "")
    return int(m[1]) if m else None


async def _close_quietly(con: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(con.close(), timeout=5)
    except (TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
        con.terminate()
