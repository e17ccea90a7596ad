"""The address registry's SQL: load what discovery knew, write what changed, in batches.

Discovery keeps every address in memory and writes *absolute* figures (not deltas), so a write
that was dropped or failed loses nothing for good: the address's next change writes its whole
state again. A batch is one transaction: ``COPY`` into a session temp table, then one
``INSERT … SELECT … ON CONFLICT`` that touches only discovery's columns of ``traders`` (the
tracker owns the others). Rows go in address order, so concurrent writers of the same rows lock
them in one order and cannot deadlock each other.

The staging table takes the volume as its exact decimal string and the coins joined by
``COIN_SEPARATOR``; PostgreSQL converts both in the INSERT. Sending ``numeric`` and ``text[]``
in binary costs three times as much per row in asyncpg's encoders, and at firehose rates the
rows written are a good part of the work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from hlcopy.errors import StoreUnavailable
from hlcopy.store.db import Store, translate

# Never in a coin name (the exchange's are letters, digits and ":/@#").
COIN_SEPARATOR = "\x1f"
# What a write sends per address: address, first_seen_ms, last_seen_ms, trade_count,
# volume_usd (str(Decimal), exact), taker_count, maker_count, coins (joined by COIN_SEPARATOR).
ActivityRow = tuple[str, int, int, int, str, int, int, str]
# What a load returns per address: the same, with the volume a Decimal and the coins a list.
LoadedRow = tuple[str, int, int, int, Decimal, int, int, list[str]]

COLUMNS = (
    "address",
    "first_seen_ms",
    "last_seen_ms",
    "trade_count",
    "volume_usd",
    "taker_count",
    "maker_count",
    "coins",
)
_STAGING = "discovery_activity_in"
# A session temp table: created once per pooled connection, emptied by every commit. Only
# transactions that touched it pay for the emptying (PostgreSQL skips the others).
_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS discovery_activity_in (
    address       text    NOT NULL,
    first_seen_ms bigint  NOT NULL,
    last_seen_ms  bigint  NOT NULL,
    trade_count   bigint  NOT NULL,
    volume_usd    text    NOT NULL,
    taker_count   bigint  NOT NULL,
    maker_count   bigint  NOT NULL,
    coins         text    NOT NULL
) ON COMMIT DELETE ROWS
"""
_UPSERT = """
INSERT INTO traders AS t (address, first_seen_ms, last_seen_ms, trade_count, volume_usd,
                          taker_count, maker_count, coins)
SELECT address, first_seen_ms, last_seen_ms, trade_count, volume_usd::numeric, taker_count,
       maker_count, string_to_array(coins, E'\\x1f')
FROM discovery_activity_in ORDER BY address
ON CONFLICT (address) DO UPDATE SET
    first_seen_ms = LEAST(t.first_seen_ms, EXCLUDED.first_seen_ms),
    last_seen_ms  = GREATEST(t.last_seen_ms, EXCLUDED.last_seen_ms),
    trade_count   = EXCLUDED.trade_count,
    volume_usd    = EXCLUDED.volume_usd,
    taker_count   = EXCLUDED.taker_count,
    maker_count   = EXCLUDED.maker_count,
    coins         = EXCLUDED.coins
"""
_PAGE = """
SELECT address, first_seen_ms, last_seen_ms, trade_count, volume_usd, taker_count, maker_count,
       coins
FROM traders WHERE address > $1 ORDER BY address LIMIT $2
"""


@contextlib.contextmanager
def _guard(what: str) -> Iterator[None]:
    """``translate``, and asyncpg's own confusion after the server died under it (a pooled
    connection "in another operation"), which is no PostgreSQL error: transient too."""
    try:
        with translate(what):
            yield
    except asyncpg.InternalClientError as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


class RegistryStore:
    """Reads and writes discovery's columns of ``traders``, and its kv entries."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def kv_get(self, key: str) -> Any:
        with _guard("kv_get"):
            return await self._store.kv_get(key)

    async def kv_set(self, key: str, value: Any) -> None:
        with _guard("kv_set"):
            await self._store.kv_set(key, value)

    async def load_page(self, after: str, limit: int) -> list[LoadedRow]:
        """Up to ``limit`` traders with an address above ``after``, in address order: a restart
        pages through a large table without holding it all twice."""
        with _guard("load registry"):
            rows = await self._store.pool.fetch(_PAGE, after, limit)
        return [
            (
                r["address"],
                r["first_seen_ms"],
                r["last_seen_ms"],
                r["trade_count"],
                r["volume_usd"],
                r["taker_count"],
                r["maker_count"],
                list(r["coins"]),
            )
            for r in rows
        ]

    async def upsert(self, rows: Sequence[ActivityRow]) -> None:
        """Write ``rows`` (each address at most once) in one transaction."""
        if not rows:
            return
        with _guard("write registry"):
            try:
                async with self._store.pool.acquire() as con, con.transaction():
                    await con.execute(_CREATE_STAGING)
                    await con.copy_records_to_table(_STAGING, records=rows, columns=COLUMNS)
                    await con.execute(_UPSERT)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # Another writer held the rows: nothing was written, and trying again will do.
                raise StoreUnavailable(f"write registry: {exc}") from exc
