"""The ``follows`` table: every follow the registry knows, whatever declared it.

The registry is the only writer (the instance lock keeps it to one process), so a write is the
whole row: the registry decides, this module stores. A removed follow keeps its row with
``removed_ms`` set, because copies and outcomes name it; adding a follow under the id of a
removed one takes the row over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from hlcopy.record import record
from hlcopy.store.db import Store, translate

Source = Literal["toml", "api", "auto"]

_SELECT = """SELECT id, source, leader, spec, paused, winding_down, started_ms, created_ms,
        updated_ms FROM follows WHERE removed_ms IS NULL ORDER BY id"""
_UPSERT = """INSERT INTO follows (id, source, leader, spec, paused, winding_down, started_ms,
        created_ms, updated_ms, removed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)
    ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, leader = EXCLUDED.leader,
        spec = EXCLUDED.spec, paused = EXCLUDED.paused, winding_down = EXCLUDED.winding_down,
        started_ms = EXCLUDED.started_ms, created_ms = EXCLUDED.created_ms,
        updated_ms = EXCLUDED.updated_ms, removed_ms = NULL"""
_INSERT = _UPSERT + " WHERE follows.removed_ms IS NOT NULL RETURNING id"


@record
class StoredFollow:
    """One live row of ``follows``. ``spec`` is the follow's fields as given (JSON)."""

    id: str
    source: Source
    leader: str
    spec: dict[str, Any]
    paused: bool
    winding_down: bool
    started_ms: int
    created_ms: int
    updated_ms: int

    def args(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.source,
            self.leader,
            self.spec,
            self.paused,
            self.winding_down,
            self.started_ms,
            self.created_ms,
            self.updated_ms,
        )


class FollowStore:
    """SQL for the follow registry. Nothing above ``store/`` sees asyncpg."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def live(self) -> list[StoredFollow]:
        """Every follow not removed, by id."""
        with translate("load follows"):
            rows = await self._store.pool.fetch(_SELECT)
        return [
            StoredFollow(
                r["id"],
                r["source"],
                r["leader"],
                r["spec"],
                r["paused"],
                r["winding_down"],
                r["started_ms"],
                r["created_ms"],
                r["updated_ms"],
            )
            for r in rows
        ]

    async def insert(self, row: StoredFollow) -> bool:
        """Add a follow; False (nothing written) when a live follow already has its id."""
        with translate("add follow"):
            got = await self._store.pool.fetchval(_INSERT, *row.args())
        return got is not None

    async def put(self, row: StoredFollow) -> None:
        """Write a follow's whole row, live from now on."""
        with translate("save follow"):
            await self._store.pool.execute(_UPSERT, *row.args())

    async def sync(self, rows: Sequence[StoredFollow], removed: Sequence[str], at_ms: int) -> None:
        """Write ``rows`` and mark ``removed`` removed, all or nothing (a TOML reload)."""
        with translate("sync follows"):
            async with self._store.pool.acquire() as con, con.transaction():
                if rows:
                    await con.executemany(_UPSERT, [r.args() for r in rows])
                if removed:
                    await con.execute(
                        "UPDATE follows SET removed_ms = $2, updated_ms = $2"
                        " WHERE id = ANY($1::text[]) AND removed_ms IS NULL",
                        list(removed),
                        at_ms,
                    )

    async def remove(self, follow_id: str, at_ms: int) -> None:
        """Mark a follow removed."""
        await self.sync((), (follow_id,), at_ms)
