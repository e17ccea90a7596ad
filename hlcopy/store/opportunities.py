"""Counter-trade opportunities and their outcomes: what the opportunities component writes and
what the API reads.

An opportunity is written with one unresolved outcome row per horizon, in one transaction, so
an outcome still owed survives any restart (``due`` finds it); resolving fills the row in once.
Rows leave as plain values or JSON-ready dicts: no asyncpg record leaves ``store/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from hlcopy.follow.opportunities import Opportunity, Outcome, Side, Tally
from hlcopy.record import record
from hlcopy.store.db import Store, translate

_INSERT: Final = """
INSERT INTO opportunities (trader, coin, kind, trader_side, our_side, trader_sz, size, price,
    time_ms, losers_rank, losers_window, recorded_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (trader, coin, time_ms) DO NOTHING
RETURNING id
"""

_DUE: Final = """
SELECT o.opportunity_id, o.horizon_s, o.due_ms, o.tries, p.coin, p.our_side, p.size, p.price
FROM opportunity_outcomes o JOIN opportunities p ON p.id = o.opportunity_id
WHERE o.resolved_ms IS NULL AND o.due_ms <= $1 AND coalesce(o.next_try_ms, 0) <= $1
ORDER BY o.due_ms, o.opportunity_id, o.horizon_s
LIMIT $2
"""

_RESOLVE: Final = """
UPDATE opportunity_outcomes
SET price = $3, source = $4, move_bps = $5, return_bps = $6, pnl_usd = $7, hit = $8,
    resolved_ms = $9
WHERE opportunity_id = $1 AND horizon_s = $2 AND resolved_ms IS NULL
"""

# Filters shared by the page and the summary: $1 trader, $2 coin (either may be NULL).
_WHERE: Final = "($1::text IS NULL OR p.trader = $1) AND ($2::text IS NULL OR p.coin = $2)"

_PAGE: Final = f"""
SELECT p.id, p.trader, p.coin, p.kind, p.trader_side, p.our_side, p.trader_sz::text AS trader_sz,
       p.size::text AS size, p.price::text AS price, (p.size * p.price)::text AS notional_usd,
       p.time_ms, p.losers_rank, p.losers_window, p.recorded_ms,
       coalesce(json_agg(json_build_object(
           'horizon_s', o.horizon_s, 'due_ms', o.due_ms, 'price', o.price::text,
           'source', o.source, 'move_bps', o.move_bps::text, 'return_bps', o.return_bps::text,
           'pnl_usd', o.pnl_usd::text, 'hit', o.hit, 'resolved_ms', o.resolved_ms)
           ORDER BY o.horizon_s) FILTER (WHERE o.horizon_s IS NOT NULL), '[]') AS outcomes
FROM opportunities p LEFT JOIN opportunity_outcomes o ON o.opportunity_id = p.id
WHERE {_WHERE} AND ($4::bigint IS NULL OR p.id = $4)
GROUP BY p.id
ORDER BY p.time_ms DESC, p.id DESC
LIMIT $3
"""  # noqa: S608 (constants only)

_TALLIES: Final = f"""
SELECT o.horizon_s, count(*) AS count, count(o.resolved_ms) AS resolved,
       count(*) FILTER (WHERE o.hit) AS hits,
       coalesce(sum(o.pnl_usd), 0) AS pnl_usd, coalesce(sum(o.return_bps), 0) AS return_bps
FROM opportunities p JOIN opportunity_outcomes o ON o.opportunity_id = p.id
WHERE {_WHERE}
GROUP BY o.horizon_s
ORDER BY o.horizon_s
"""  # noqa: S608 (constants only)


@record
class DueOutcome:
    """An outcome owed, with what resolving it needs of its opportunity."""

    opportunity_id: int
    horizon_s: int
    due_ms: int
    tries: int  # times its price could not be had yet
    coin: str
    our_side: Side
    size: Decimal
    price: Decimal  # p_0


class OpportunityStore:
    """SQL for the opportunities component and its API. Nothing above ``store/`` sees asyncpg."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(
        self, opp: Opportunity, horizons: Sequence[int], recorded_ms: int
    ) -> int | None:
        """Write ``opp`` and its unresolved outcomes; its id, or None when the same change was
        recorded already."""
        with translate("record opportunity"):
            async with self._store.pool.acquire() as con, con.transaction():
                opp_id = await con.fetchval(
                    _INSERT,
                    opp.trader,
                    opp.coin,
                    opp.kind,
                    opp.trader_side,
                    opp.our_side,
                    opp.trader_sz,
                    opp.size,
                    opp.price,
                    opp.time_ms,
                    opp.losers_rank,
                    opp.window,
                    recorded_ms,
                )
                if opp_id is None:
                    return None
                await con.executemany(
                    "INSERT INTO opportunity_outcomes (opportunity_id, horizon_s, due_ms)"
                    " VALUES ($1, $2, $3)",
                    [(opp_id, h, opp.time_ms + h * 1000) for h in horizons],
                )
        return int(opp_id)

    async def due(self, now_ms: int, limit: int) -> list[DueOutcome]:
        """Unresolved outcomes due by ``now_ms``, the longest overdue first."""
        with translate("due outcomes"):
            rows = await self._store.pool.fetch(_DUE, now_ms, limit)
        return [
            DueOutcome(
                r["opportunity_id"],
                r["horizon_s"],
                r["due_ms"],
                r["tries"],
                r["coin"],
                r["our_side"],
                r["size"],
                r["price"],
            )
            for r in rows
        ]

    async def next_due(self) -> int | None:
        """When the next unresolved outcome falls due, or its deferred try (None: none is
        owed)."""
        with translate("next due outcome"):
            value = await self._store.pool.fetchval(
                "SELECT min(greatest(due_ms, coalesce(next_try_ms, 0)))"
                " FROM opportunity_outcomes WHERE resolved_ms IS NULL"
            )
        return None if value is None else int(value)

    async def defer(self, opportunity_id: int, horizon_s: int, next_try_ms: int) -> None:
        """An outcome whose price cannot be had yet: not before ``next_try_ms``."""
        with translate("defer outcome"):
            await self._store.pool.execute(
                "UPDATE opportunity_outcomes SET tries = tries + 1, next_try_ms = $3"
                " WHERE opportunity_id = $1 AND horizon_s = $2 AND resolved_ms IS NULL",
                opportunity_id,
                horizon_s,
                next_try_ms,
            )

    async def resolve(self, opportunity_id: int, o: Outcome) -> bool:
        """Fill in one outcome; False when it was resolved already (it is never rewritten)."""
        with translate("resolve outcome"):
            status = await self._store.pool.execute(
                _RESOLVE,
                opportunity_id,
                o.horizon_s,
                o.price,
                o.source,
                o.move_bps,
                o.return_bps,
                o.pnl_usd,
                o.hit,
                o.resolved_ms,
            )
        return bool(status.endswith(" 1"))

    async def opportunity(self, opportunity_id: int) -> dict[str, Any] | None:
        """One opportunity with its outcomes, as the API shows it."""
        with translate("opportunity"):
            row = await self._store.pool.fetchrow(_PAGE, None, None, 1, opportunity_id)
        return None if row is None else opportunity_json(dict(row))

    async def opportunities(
        self, trader: str | None, coin: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The latest opportunities with their outcomes, newest first."""
        with translate("opportunities"):
            rows = await self._store.pool.fetch(_PAGE, trader, coin, limit, None)
        return [opportunity_json(dict(r)) for r in rows]

    async def tallies(self, trader: str | None, coin: str | None) -> list[Tally]:
        """Sums per horizon over every stored opportunity that passes the filters."""
        with translate("opportunity tallies"):
            rows = await self._store.pool.fetch(_TALLIES, trader, coin)
        return [
            Tally(
                r["horizon_s"],
                r["count"],
                r["resolved"],
                r["hits"],
                Decimal(r["pnl_usd"]),
                Decimal(r["return_bps"]),
            )
            for r in rows
        ]

    async def prune(self, before_ms: int) -> int:
        """Delete opportunities seen before ``before_ms`` (their outcomes go with them)."""
        with translate("prune opportunities"):
            status = await self._store.pool.execute(
                "DELETE FROM opportunities WHERE time_ms < $1", before_ms
            )
        return int(status.rsplit(" ", 1)[-1])


def opportunity_json(r: Mapping[str, Any]) -> dict[str, Any]:
    """One opportunity row for the API (numbers as exact decimal strings)."""
    return {
        "id": r["id"],
        "trader": r["trader"],
        "coin": r["coin"],
        "kind": r["kind"],
        "trader_side": r["trader_side"],
        "our_side": r["our_side"],
        "trader_sz": r["trader_sz"],
        "size": r["size"],
        "price": r["price"],
        "notional_usd": r["notional_usd"],
        "time_ms": r["time_ms"],
        "losers_rank": r["losers_rank"],
        "losers_window": r["losers_window"],
        "recorded_ms": r["recorded_ms"],
        "outcomes": [dict(o) for o in r["outcomes"]],
    }
