"""What per-follow performance reads (read-only over ``copies``, ``leader_fills`` and
``paper_funding``) and the one thing it writes: the attribution transfers between follows
(``follow_transfers``), which no copy row records. Rows leave as the core's plain records
(``hlcopy.follow.performance``): no asyncpg record leaves ``store/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

from hlcopy.follow.copier import Transfer
from hlcopy.follow.performance import (
    CopyRecord,
    FundingRecord,
    LeaderStart,
    LeaderTrade,
    TransferRecord,
)
from hlcopy.store.db import Store, translate

#: Rows that changed or explain a follow's position: settled orders and skips (an order still
#: planned or sending has no fill yet).
_SETTLED: Final = ("filled", "partial", "rejected", "unknown", "never_arrived", "skipped")

_COPIES: Final = """
SELECT coin, status, COALESCE(settled_ms, decided_ms) AS time_ms, attribution, is_buy, sz,
       filled_sz, avg_px, fee, leader, leader_tid, skip_reason, reason
FROM copies
WHERE ($1::text IS NULL OR follow_ids @> ARRAY[$1::text])
  AND status = ANY($2::text[])
  AND COALESCE(settled_ms, decided_ms) <= $3
ORDER BY COALESCE(settled_ms, decided_ms), id
"""

_TRANSFERS: Final = """
SELECT coin, from_follow, to_follow, sz, px, time_ms FROM follow_transfers
WHERE ($1::text IS NULL OR from_follow = $1 OR to_follow = $1) AND time_ms <= $2
ORDER BY time_ms, id
"""

_LEADER_FILLS: Final = """
SELECT tid, coin, side, px, sz, time_ms, start_position FROM leader_fills
WHERE leader = $1 AND time_ms >= $2 AND time_ms <= $3
ORDER BY time_ms, tid
"""

# Per coin, before the period: the position after the last fill whose startPosition is known,
# moved by the fills seen after it (firehose ones, which carry none), and the last price.
_LEADER_START: Final = """
WITH anchor AS (
    SELECT DISTINCT ON (coin) coin, tid, time_ms,
           start_position + CASE side WHEN 'B' THEN sz ELSE -sz END AS szi
    FROM leader_fills
    WHERE leader = $1 AND time_ms < $2 AND start_position IS NOT NULL
    ORDER BY coin, time_ms DESC, tid DESC
), last AS (
    SELECT DISTINCT ON (coin) coin, px, time_ms
    FROM leader_fills
    WHERE leader = $1 AND time_ms < $2
    ORDER BY coin, time_ms DESC, tid DESC
)
SELECT last.coin, last.px, last.time_ms,
       anchor.szi + COALESCE((
           SELECT sum(CASE f.side WHEN 'B' THEN f.sz ELSE -f.sz END) FROM leader_fills f
           WHERE f.leader = $1 AND f.coin = anchor.coin AND f.time_ms < $2
             AND (f.time_ms, f.tid) > (anchor.time_ms, anchor.tid)
       ), 0) AS szi
FROM last LEFT JOIN anchor ON anchor.coin = last.coin
"""


def _copy_record(r: Any) -> CopyRecord:
    return CopyRecord(
        coin=r["coin"],
        status=r["status"],
        time_ms=r["time_ms"],
        attribution=tuple((str(f), Decimal(s)) for f, s in r["attribution"]),
        is_buy=r["is_buy"],
        sz=r["sz"],
        filled_sz=r["filled_sz"],
        avg_px=r["avg_px"],
        fee=r["fee"],
        leader=r["leader"],
        leader_tid=r["leader_tid"],
        skip_reason=r["skip_reason"],
        reason=r["reason"],
    )


class PerformanceStore:
    """SQL for per-follow performance and the follow ledger. Nothing above ``store/`` sees
    asyncpg."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def record_transfers(self, moves: Sequence[Transfer], time_ms: int) -> None:
        """The transfers the copier decided (``PaperExecutor.transfer`` applied them)."""
        if not moves:
            return
        with translate("record follow transfers"):
            await self._store.pool.executemany(
                """INSERT INTO follow_transfers (coin, from_follow, to_follow, sz, px, time_ms)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                [(m.coin, m.from_follow, m.to_follow, m.sz, m.px, time_ms) for m in moves],
            )

    async def copies(self, follow: str | None, until_ms: int) -> list[CopyRecord]:
        """The settled copy rows and skips of ``follow`` (None: of every follow) up to
        ``until_ms``, oldest first: the whole history, which makes the start position."""
        with translate("performance copies"):
            rows = await self._store.pool.fetch(_COPIES, follow, list(_SETTLED), until_ms)
        return [_copy_record(r) for r in rows]

    async def transfers(self, follow: str | None, until_ms: int) -> list[TransferRecord]:
        with translate("performance transfers"):
            rows = await self._store.pool.fetch(_TRANSFERS, follow, until_ms)
        return [
            TransferRecord(
                r["coin"], r["from_follow"], r["to_follow"], r["sz"], r["px"], r["time_ms"]
            )
            for r in rows
        ]

    async def funding(self, since_ms: int, until_ms: int) -> list[FundingRecord]:
        """The paper funding booked in [since_ms, until_ms], per coin and hour."""
        with translate("performance funding"):
            rows = await self._store.pool.fetch(
                """SELECT hour_ms, coin, px, rate, hours FROM paper_funding
                   WHERE hour_ms >= $1 AND hour_ms <= $2 ORDER BY hour_ms, coin""",
                since_ms,
                until_ms,
            )
        return [
            FundingRecord(r["hour_ms"], r["coin"], r["px"], r["rate"], r["hours"]) for r in rows
        ]

    async def leader_fills(self, leader: str, since_ms: int, until_ms: int) -> list[LeaderTrade]:
        """The leader's fills in [since_ms, until_ms], in time order."""
        with translate("performance leader fills"):
            rows = await self._store.pool.fetch(_LEADER_FILLS, leader, since_ms, until_ms)
        return [
            LeaderTrade(
                r["tid"],
                r["coin"],
                r["side"] == "B",
                r["px"],
                r["sz"],
                r["time_ms"],
                r["start_position"],
            )
            for r in rows
        ]

    async def leader_start(self, leader: str, since_ms: int) -> dict[str, LeaderStart]:
        """Per coin the leader traded before ``since_ms``: its position then (None when no
        fill before it carried a startPosition) and its last price."""
        with translate("performance leader start"):
            rows = await self._store.pool.fetch(_LEADER_START, leader, since_ms)
        return {r["coin"]: LeaderStart(r["szi"], r["px"], r["time_ms"]) for r in rows}

    async def history(
        self,
    ) -> tuple[list[CopyRecord], list[TransferRecord], list[FundingRecord]]:
        """Everything a ``FollowLedger`` replays at start: every settled copy, transfer and
        funding (funding until the end of time)."""
        end = 2**62
        return (
            await self.copies(None, end),
            await self.transfers(None, end),
            await self.funding(0, end),
        )
