"""The leader books' SQL: ``leader_fills`` written in batches, once per (leader, tid).

A row is written when a fill is first seen and again when a later sighting says more about it
(an exact source after a firehose hint; a change after a snapshot that only recorded it): the
upsert keeps the first source and adds what is new, so replays and duplicates change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from hlcopy.store.db import Store, translate

# leader, tid, coin, side, px, sz, time_ms, start_position, source, confirmed, snapshot,
# changed, received_ms
LeaderFillRow = tuple[
    str, int, str, str, Decimal, Decimal, int, Decimal | None, str, bool, bool, bool, int
]

_UPSERT = """
INSERT INTO leader_fills AS f (leader, tid, coin, side, px, sz, time_ms, start_position, source,
                               confirmed, snapshot, changed, received_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (leader, tid) DO UPDATE SET
    start_position = COALESCE(f.start_position, EXCLUDED.start_position),
    side = CASE WHEN f.start_position IS NULL AND EXCLUDED.start_position IS NOT NULL
                THEN EXCLUDED.side ELSE f.side END,
    confirmed = f.confirmed OR EXCLUDED.confirmed,
    changed = f.changed OR EXCLUDED.changed
WHERE (f.start_position IS NULL AND EXCLUDED.start_position IS NOT NULL)
   OR (NOT f.changed AND EXCLUDED.changed)
   OR (NOT f.confirmed AND EXCLUDED.confirmed)
"""


class LeaderFillStore:
    """``leader_fills``: batched upserts and the per-leader watermark."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def write(self, rows: Sequence[LeaderFillRow]) -> None:
        """Upsert ``rows`` in one transaction (ordered by key, so concurrent writers lock rows
        in one order)."""
        if not rows:
            return
        ordered = sorted(rows, key=lambda r: (r[0], r[1]))
        with translate("leader_fills write"):
            async with self._store.pool.acquire() as con, con.transaction():
                await con.executemany(_UPSERT, ordered)

    async def last_times(self, leaders: Iterable[str]) -> dict[str, int]:
        """The newest stored fill time per leader (leaders without fills are absent)."""
        with translate("leader_fills last_times"):
            rows = await self._store.pool.fetch(
                "SELECT leader, max(time_ms) AS t FROM leader_fills"
                " WHERE leader = ANY($1::text[]) GROUP BY leader",
                list(leaders),
            )
        return {r["leader"]: int(r["t"]) for r in rows}

    async def fills(self, leader: str, limit: int = 1000) -> list[LeaderFillRow]:
        """A leader's stored fills, newest first (for the API and tests)."""
        with translate("leader_fills fills"):
            rows = await self._store.pool.fetch(
                "SELECT leader, tid, coin, side, px, sz, time_ms, start_position, source,"
                " confirmed, snapshot, changed, received_ms FROM leader_fills"
                " WHERE leader = $1 ORDER BY time_ms DESC, tid LIMIT $2",
                leader,
                limit,
            )
        return [tuple(r) for r in rows]
