"""What the tracker writes and reads back: snapshots, position events, roles, stats, fills.

Every write is batched or one statement per polled trader (never per fill or per event), and
idempotent: events and fills deduplicate on their natural keys, so a restart that sees the same
snapshot or fill again changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from hlcopy.model import Fill, PositionEvent, UserRole
from hlcopy.record import record
from hlcopy.store.db import Store, translate


@record
class TrackedRow:
    """What tracking knew about a trader when the daemon last stopped."""

    address: str
    role: str | None
    master: str | None
    role_at_ms: int | None
    positions: list[dict[str, Any]] | None
    positions_at_ms: int | None
    stats_at_ms: int | None
    track_requested_ms: int | None
    seeded: bool
    last_seen_ms: int | None
    volume_usd: Decimal


def _num(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


class TrackingStore:
    """SQL for the tracker. Nothing above ``store/`` sees asyncpg."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def requested(self) -> list[str]:
        """The traders a user asked to track (they are tracked whatever their activity)."""
        with translate("load track requests"):
            rows = await self._store.pool.fetch(
                "SELECT address FROM traders WHERE track_requested_ms IS NOT NULL"
            )
        return [r["address"] for r in rows]

    async def load(self, addresses: Sequence[str]) -> list[TrackedRow]:
        """What tracking knew of ``addresses`` (the ones chosen for tracking now): only those,
        so a database of a hundred thousand scored traders is not read into memory."""
        with translate("load tracking state"):
            rows = await self._store.pool.fetch(
                """SELECT address, role, master, role_at_ms, positions, positions_at_ms,
                          stats_at_ms, track_requested_ms, seeded, last_seen_ms, volume_usd
                   FROM traders
                   WHERE address = ANY($1::text[])
                     AND (role_at_ms IS NOT NULL OR positions_at_ms IS NOT NULL)""",
                list(addresses),
            )
        return [
            TrackedRow(
                r["address"],
                r["role"],
                r["master"],
                r["role_at_ms"],
                r["positions"],
                r["positions_at_ms"],
                r["stats_at_ms"],
                r["track_requested_ms"],
                r["seeded"],
                r["last_seen_ms"],
                r["volume_usd"],
            )
            for r in rows
        ]

    async def save_positions(
        self,
        address: str,
        account_value: Decimal,
        positions: list[dict[str, Any]],
        at_ms: int,
    ) -> None:
        with translate("save positions"):
            await self._store.pool.execute(
                """INSERT INTO traders (address, first_seen_ms, last_seen_ms, account_value,
                                        positions, positions_at_ms)
                   VALUES ($1, $4, $4, $2, $3, $4)
                   ON CONFLICT (address) DO UPDATE SET account_value = $2, positions = $3,
                                                       positions_at_ms = $4""",
                address,
                account_value,
                positions,
                at_ms,
            )

    async def record_events(self, events: Sequence[PositionEvent]) -> list[PositionEvent]:
        """Store events; return the ones that were new (a replay after a restart is not)."""
        if not events:
            return []
        with translate("record position events"):
            rows = await self._store.pool.fetch(
                """INSERT INTO position_events (address, coin, kind, prev_szi, new_szi, px,
                                                time_ms, entry_px, notional, leverage)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[],
                                        $5::numeric[], $6::numeric[], $7::bigint[],
                                        $8::numeric[], $9::numeric[], $10::numeric[])
                   ON CONFLICT (address, coin, time_ms, kind) DO NOTHING
                   RETURNING address, coin, time_ms, kind""",
                [e.address for e in events],
                [e.coin for e in events],
                [e.kind for e in events],
                [e.prev_szi for e in events],
                [e.new_szi for e in events],
                [e.px for e in events],
                [e.time_ms for e in events],
                [e.entry_px for e in events],
                [e.notional for e in events],
                [e.leverage for e in events],
            )
        fresh = {(r["address"], r["coin"], r["time_ms"], r["kind"]) for r in rows}
        return [e for e in events if (e.address, e.coin, e.time_ms, e.kind) in fresh]

    async def save_role(self, address: str, role: UserRole, at_ms: int) -> None:
        with translate("save role"):
            await self._store.pool.execute(
                """INSERT INTO traders (address, first_seen_ms, last_seen_ms, role, master,
                                        role_at_ms)
                   VALUES ($1, $4, $4, $2, $3, $4)
                   ON CONFLICT (address) DO UPDATE SET role = $2, master = $3, role_at_ms = $4""",
                address,
                role.role,
                role.master,
                at_ms,
            )

    async def save_stats(
        self,
        address: str,
        stats: Mapping[str, Any],
        index_points: Mapping[str, Any],
        account_value: Decimal | None,
        at_ms: int,
        *,
        board_figures: bytes,
    ) -> None:
        """A trader's metrics per window (JSON), and the leaderboard's packed form of the same
        figures, which a start reads instead of the JSON: both in one statement, so they never
        disagree."""
        with translate("save stats"):
            await self._store.pool.execute(
                """INSERT INTO traders (address, first_seen_ms, last_seen_ms, stats,
                                        index_points, account_value, stats_at_ms, board_figures)
                   VALUES ($1, $5, $5, $2, $3, $4, $5, $6)
                   ON CONFLICT (address) DO UPDATE SET stats = $2, index_points = $3,
                       account_value = COALESCE($4, traders.account_value), stats_at_ms = $5,
                       board_figures = $6""",
                address,
                dict(stats),
                dict(index_points),
                account_value,
                at_ms,
                board_figures,
            )

    async def request_track(self, address: str, at_ms: int) -> None:
        with translate("request tracking"):
            await self._store.pool.execute(
                """INSERT INTO traders (address, first_seen_ms, last_seen_ms, track_requested_ms)
                   VALUES ($1, $2, $2, $2)
                   ON CONFLICT (address) DO UPDATE SET track_requested_ms = $2""",
                address,
                at_ms,
            )

    async def mark_seeded(self, addresses: Sequence[str], at_ms: int) -> None:
        if not addresses:
            return
        with translate("mark seeded traders"):
            await self._store.pool.execute(
                """INSERT INTO traders (address, first_seen_ms, last_seen_ms, seeded)
                   SELECT a, $2, $2, true FROM unnest($1::text[]) AS a
                   ON CONFLICT (address) DO UPDATE SET seeded = true""",
                list(addresses),
                at_ms,
            )

    async def record_fills(
        self, address: str, fills: Sequence[Fill], source: str, received_ms: int
    ) -> int:
        """Store fills that carry a tid (older ones cannot be deduplicated); how many were new."""
        keyed = [f for f in fills if f.tid is not None]
        if not keyed:
            return 0
        with translate("record fills"):
            rows = await self._store.pool.fetch(
                """INSERT INTO fills (address, tid, coin, px, sz, side, time_ms, start_position,
                                      dir, closed_pnl, hash, oid, crossed, fee, fee_token, cloid,
                                      liquidation, source, received_ms)
                   SELECT $1, *, $15, $16 FROM unnest($2::bigint[], $3::text[], $4::numeric[],
                       $5::numeric[], $6::text[], $7::bigint[], $8::numeric[], $9::text[],
                       $10::numeric[], $11::text[], $12::bigint[], $13::boolean[],
                       $14::numeric[], $17::text[], $18::text[], $19::boolean[])
                   ON CONFLICT (address, tid) DO NOTHING
                   RETURNING tid""",
                address,
                [f.tid for f in keyed],
                [f.coin for f in keyed],
                [f.px for f in keyed],
                [f.sz for f in keyed],
                [f.side for f in keyed],
                [f.time_ms for f in keyed],
                [f.start_position for f in keyed],
                [f.dir for f in keyed],
                [f.closed_pnl for f in keyed],
                [f.hash for f in keyed],
                [f.oid for f in keyed],
                [f.crossed for f in keyed],
                [f.fee for f in keyed],
                source,
                received_ms,
                [f.fee_token for f in keyed],
                [f.cloid for f in keyed],
                [f.liquidation for f in keyed],
            )
        return len(rows)

    async def load_fills(self, address: str, since_ms: int) -> list[Fill]:
        """Stored fills of ``address`` from ``since_ms``, oldest first."""
        with translate("load fills"):
            rows = await self._store.pool.fetch(
                """SELECT coin, px, sz, side, time_ms, start_position, dir, closed_pnl, hash, oid,
                          tid, crossed, fee, fee_token, cloid, liquidation
                   FROM fills WHERE address = $1 AND time_ms >= $2
                   ORDER BY time_ms, tid""",
                address,
                since_ms,
            )
        return [
            Fill(
                coin=r["coin"],
                px=r["px"],
                sz=r["sz"],
                side=r["side"],
                time_ms=r["time_ms"],
                start_position=r["start_position"],
                dir=r["dir"],
                closed_pnl=r["closed_pnl"],
                hash=r["hash"],
                oid=r["oid"],
                tid=r["tid"],
                crossed=r["crossed"],
                fee=r["fee"],
                fee_token=r["fee_token"],
                cloid=r["cloid"],
                liquidation=r["liquidation"],
            )
            for r in rows
        ]

    async def prune(self, events_before_ms: int, fills_before_ms: int) -> tuple[int, int]:
        """Delete old events and fills; how many of each."""
        with translate("prune"):
            events = await self._store.pool.execute(
                "DELETE FROM position_events WHERE time_ms < $1", events_before_ms
            )
            fills = await self._store.pool.execute(
                "DELETE FROM fills WHERE time_ms < $1", fills_before_ms
            )
        return int(events.split()[-1]), int(fills.split()[-1])


def position_json(
    coin: str,
    szi: Decimal,
    entry_px: Decimal | None,
    position_value: Decimal | None,
    unrealized_pnl: Decimal | None,
    leverage: int | None,
    liquidation_px: Decimal | None,
    margin_used: Decimal | None,
) -> dict[str, Any]:
    """One position as stored in traders.positions (strings for numbers, as the exchange)."""
    return {
        "coin": coin,
        "szi": str(szi),
        "entry_px": _num(entry_px),
        "position_value": _num(position_value),
        "unrealized_pnl": _num(unrealized_pnl),
        "leverage": leverage,
        "liquidation_px": _num(liquidation_px),
        "margin_used": _num(margin_used),
    }
