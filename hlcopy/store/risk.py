"""What risk keeps across restarts: each scope's state and every transition with its cause."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hlcopy.follow.risk import RiskEvent, RiskState
from hlcopy.store.db import Store, translate


class RiskStore:
    """SQL for the risk keeper. Nothing above ``store/`` sees asyncpg."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def load(self) -> list[RiskState]:
        with translate("load risk states"):
            rows = await self._store.pool.fetch("SELECT state FROM risk_states ORDER BY scope")
        return [RiskState.from_dict(r["state"]) for r in rows]

    async def save(self, state: RiskState, events: Sequence[RiskEvent], at_ms: int) -> None:
        """The scope's new state and the events that led to it, in one transaction."""
        with translate("save risk state"):
            async with self._store.pool.acquire() as con, con.transaction():
                await con.execute(
                    """INSERT INTO risk_states (scope, state, updated_ms) VALUES ($1, $2, $3)
                       ON CONFLICT (scope) DO UPDATE
                       SET state = EXCLUDED.state, updated_ms = EXCLUDED.updated_ms""",
                    state.scope,
                    state.to_dict(),
                    at_ms,
                )
                if events:
                    await con.executemany(
                        """INSERT INTO risk_events
                           (scope, time_ms, cause, kind, state_before, state_after, detail)
                           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                        [
                            (
                                e.scope,
                                e.time_ms,
                                e.cause.value,
                                e.kind,
                                e.before.value,
                                e.after.value,
                                e.detail,
                            )
                            for e in events
                        ],
                    )

    async def events(self, limit: int, scope: str | None = None) -> list[dict[str, Any]]:
        """The latest transitions, newest first."""
        with translate("read risk events"):
            rows = await self._store.pool.fetch(
                """SELECT scope, time_ms, cause, kind, state_before, state_after, detail
                   FROM risk_events WHERE $1::text IS NULL OR scope = $1
                   ORDER BY time_ms DESC, id DESC LIMIT $2""",
                scope,
                limit,
            )
        return [dict(r) for r in rows]
