"""The PostgreSQL store: one asyncpg pool, numbered migrations, errors in our own types.

Nothing above ``store/`` sees asyncpg. Migrations are ``migrations/NNNN_name.sql`` files applied in
one transaction under an advisory lock, so two processes starting at once cannot both apply them;
an applied file that was edited afterwards, or a database newer than the code, stops the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from hlcopy.config import DatabaseConfig
from hlcopy.credentials import Secret
from hlcopy.errors import MigrationError, StoreConflict, StoreError, StoreUnavailable
from hlcopy.store.embedded import EmbeddedPostgres

# Any constant works; it only has to be the same for every hlcopy process on this database.
_MIGRATION_LOCK = 0x686C636F7079  # "hlcopy"
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
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
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreError(f"{what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
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


async def _init_connection(con: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await con.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class Store:
    """PostgreSQL access for every component: ``async with Store(...) as store``."""

    def __init__(
        self, cfg: DatabaseConfig, state_dir: Path, password: Secret | None = None
    ) -> None:
        self._cfg = cfg
        self._password = password
        self._embedded = None if cfg.dsn else EmbeddedPostgres(state_dir / "pg")
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    @property
    def embedded(self) -> bool:
        """Whether this store runs its own PostgreSQL."""
        return self._embedded is not None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def open(self) -> None:
        """Start the embedded server if needed and open the pool. Idempotent."""
        async with self._lock:
            if self._embedded is not None and self._pool is not None and not self._embedded.running:
                # The embedded server died under us: drop the pool and start it again.
                await self._close_pool()
                await self._embedded.stop()
            if self._pool is not None:
                return
            dsn = await self._embedded.start() if self._embedded else self._cfg.dsn
            with translate("connect"):
                self._pool = await asyncpg.create_pool(
                    dsn,
                    min_size=self._cfg.pool_min_size,
                    max_size=self._cfg.pool_max_size,
                    command_timeout=self._cfg.command_timeout_s,
                    password=self._password.reveal() if self._password else None,
                    init=_init_connection,
                )

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                pool.terminate()

    async def close(self) -> None:
        """Close the pool, then stop the embedded server if we started it."""
        async with self._lock:
            await self._close_pool()
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

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        with translate("ping"):
            await self.pool.fetchval("SELECT 1")

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
        return {
            "embedded": self.embedded,
            "open": pool is not None,
            "pool_size": pool.get_size() if pool else 0,
            "pool_idle": pool.get_idle_size() if pool else 0,
        }
