"""SQL for the leaders' daily leverage history (``follow/norms.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hlcopy.store.db import Store, translate

DayRow = tuple[str, int, float, int, float]
"""(leader, day, sum of leverages, samples, max leverage)."""


class NormStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, rows: Sequence[DayRow]) -> None:
        """Fold new samples into their days (one statement for the batch)."""
        if not rows:
            return
        with translate("save leader leverage days"):
            await self._store.pool.executemany(
                """INSERT INTO leader_leverage_days (leader, day, lev_sum, samples, lev_max)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (leader, day) DO UPDATE
                   SET lev_sum = leader_leverage_days.lev_sum + EXCLUDED.lev_sum,
                       samples = leader_leverage_days.samples + EXCLUDED.samples,
                       lev_max = greatest(leader_leverage_days.lev_max, EXCLUDED.lev_max)""",
                rows,
            )

    async def load(self, leaders: Iterable[str], since_day: int) -> list[DayRow]:
        with translate("load leader leverage days"):
            rows = await self._store.pool.fetch(
                """SELECT leader, day, lev_sum, samples, lev_max FROM leader_leverage_days
                   WHERE leader = ANY($1::text[]) AND day >= $2""",
                list(leaders),
                since_day,
            )
        return [(r["leader"], r["day"], r["lev_sum"], r["samples"], r["lev_max"]) for r in rows]

    async def prune(self, before_day: int) -> None:
        with translate("prune leader leverage days"):
            await self._store.pool.execute(
                "DELETE FROM leader_leverage_days WHERE day < $1", before_day
            )
