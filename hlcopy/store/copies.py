"""The copy log and the paper account: what the executor writes and what the API reads.

A copy row is written before its order is "sent" (the write-ahead intent, unique on the cloid, so
deciding the same order twice executes it once) and settled afterwards; the paper account, its
fill and the settlement are written in one transaction, so a crash leaves either all of them or
none. Skips are rows too (status ``skipped``, no cloid), written in batches. Rows leave as plain
values or JSON-ready dicts: no asyncpg record leaves ``store/``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from hlcopy.model import OrderIntent
from hlcopy.record import record
from hlcopy.store.db import Store, translate

OPEN_STATUSES: Final = ("planned", "sending")
COPY_STATUSES: Final = (
    "planned",
    "sending",
    "filled",
    "partial",
    "rejected",
    "unknown",
    "never_arrived",
    "skipped",
)


@record
class OpenIntent:
    """A live intent a previous run left unsettled, as its row holds it."""

    intent: OrderIntent
    status: str  # planned | sending | unknown
    sent_ms: int | None


@record
class CopyRow:
    """One copy as first written: an intent (``cloid`` set; status planned, or live sending
    with ``sent_ms``: committed as "may have been sent" just before it is) or a skip."""

    status: str
    paper: bool
    attribution: tuple[tuple[str, Decimal], ...]
    coin: str
    decided_ms: int
    cloid: str | None = None
    leader: str | None = None
    is_buy: bool | None = None
    sz: Decimal | None = None
    limit_px: Decimal | None = None
    reduce_only: bool | None = None
    reason: str | None = None
    skip_reason: str | None = None
    attempt: int = 0
    leader_tid: int | None = None
    leader_side: str | None = None
    leader_px: Decimal | None = None
    leader_sz: Decimal | None = None
    leader_time_ms: int | None = None
    decision_delay_ms: int | None = None
    sent_ms: int | None = None
    send_delay_ms: int | None = None

    @property
    def follow_ids(self) -> list[str]:
        return sorted({follow for follow, _ in self.attribution})

    def values(self) -> tuple[Any, ...]:
        return (
            self.cloid,
            self.status,
            self.paper,
            self.follow_ids,
            [[f, str(s)] for f, s in self.attribution],
            self.leader,
            self.coin,
            self.is_buy,
            self.sz,
            self.limit_px,
            self.reduce_only,
            self.reason,
            self.skip_reason,
            self.attempt,
            self.decided_ms,
            self.leader_tid,
            self.leader_side,
            self.leader_px,
            self.leader_sz,
            self.leader_time_ms,
            self.decision_delay_ms,
            self.sent_ms,
            self.send_delay_ms,
        )


@record
class Settlement:
    """What became of a sent copy."""

    status: str
    settled_ms: int
    filled_sz: Decimal = Decimal(0)
    avg_px: Decimal | None = None
    fee: Decimal = Decimal(0)
    closed_pnl: Decimal | None = None
    slippage_bps: Decimal | None = None
    error: str | None = None


@record
class PaperFillRow:
    cloid: str
    coin: str
    is_buy: bool
    sz: Decimal
    px: Decimal
    fee: Decimal
    closed_pnl: Decimal
    start_position: Decimal
    dir: str
    time_ms: int


@record
class FundingRow:
    hour_ms: int
    coin: str
    szi: Decimal
    px: Decimal
    rate: Decimal
    hours: int
    usdc: Decimal


@record
class PaperState:
    """The stored paper account (JSON as written by ``PaperAccount.to_dict``)."""

    account: dict[str, Any]
    attributed: dict[str, dict[str, str]]
    funded_hour_ms: int | None


@record
class StoredOutcome:
    """A copy row's settlement as stored (for a cloid submitted twice)."""

    status: str
    filled_sz: Decimal
    avg_px: Decimal | None
    fee: Decimal
    error: str | None
    settled_ms: int | None


_COLUMNS: Final = """cloid, status, paper, follow_ids, attribution, leader, coin, is_buy, sz,
    limit_px, reduce_only, reason, skip_reason, attempt, decided_ms, leader_tid, leader_side,
    leader_px, leader_sz, leader_time_ms, decision_delay_ms, sent_ms, send_delay_ms"""
_PLACEHOLDERS: Final = ", ".join(f"${i}" for i in range(1, 24))

_INSERT_INTENT: Final = f"""
INSERT INTO copies ({_COLUMNS}) VALUES ({_PLACEHOLDERS})
ON CONFLICT (cloid) DO NOTHING
RETURNING id
"""  # noqa: S608 (constants only)

_INSERT_SKIP: Final = f"""
INSERT INTO copies ({_COLUMNS}) VALUES ({_PLACEHOLDERS})
ON CONFLICT (leader, leader_tid, coin, skip_reason, follow_ids)
    WHERE status = 'skipped' AND leader_tid IS NOT NULL
DO NOTHING
"""  # noqa: S608 (constants only)

_SETTLE: Final = """
UPDATE copies SET status = $2, settled_ms = $3, filled_sz = $4, avg_px = $5, fee = $6,
    closed_pnl = $7, slippage_bps = $8, error = $9
WHERE cloid = $1
"""

_SAVE_ACCOUNT: Final = """
INSERT INTO paper_account (id, account, attributed, funded_hour_ms, updated_ms)
VALUES (1, $1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET account = EXCLUDED.account, attributed = EXCLUDED.attributed,
    funded_hour_ms = EXCLUDED.funded_hour_ms, updated_ms = EXCLUDED.updated_ms
"""

#: Live mode keeps each follow's part of the real positions here (the positions are the exchange's).
LIVE_ATTRIBUTED_KEY: Final = "live_attributed"

_SAVE_LIVE: Final = """
INSERT INTO kv (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
"""

_SELECT: Final = """
SELECT id, cloid, status, paper, follow_ids, attribution, leader, coin, is_buy,
       sz::text AS sz, limit_px::text AS limit_px, reduce_only, reason, skip_reason, attempt,
       decided_ms, sent_ms, settled_ms, leader_tid, leader_side, leader_px::text AS leader_px,
       leader_sz::text AS leader_sz, leader_time_ms, filled_sz::text AS filled_sz,
       avg_px::text AS avg_px, fee::text AS fee, closed_pnl::text AS closed_pnl,
       slippage_bps::text AS slippage_bps, decision_delay_ms, send_delay_ms, error
FROM copies
WHERE ($1::text IS NULL OR follow_ids @> ARRAY[$1::text])
  AND ($2::text[] IS NULL OR status = ANY($2::text[]))
ORDER BY decided_ms DESC, id DESC
LIMIT $3
"""


def _account_json(account: Mapping[str, Any], attributed: Mapping[str, Mapping[str, Any]]) -> Any:
    return dict(account), {
        f: {c: str(s) for c, s in coins.items()} for f, coins in attributed.items()
    }


class CopyStore:
    """SQL for the executor and the copies API. Nothing above ``store/`` sees asyncpg.

    The write-ahead insert, the one database round trip before an order leaves, runs on a
    connection of its own, held (a pool's acquire and release add a reset round trip each
    time): one at a time, re-taken from the pool after any error. ``release`` gives it back."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._hot: Any = None  # the write-ahead connection, while held
        self._hot_lock = asyncio.Lock()

    # -- the paper account ------------------------------------------------------------------

    async def load_paper(self) -> PaperState | None:
        with translate("load paper account"):
            row = await self._store.pool.fetchrow(
                "SELECT account, attributed, funded_hour_ms FROM paper_account WHERE id = 1"
            )
        if row is None:
            return None
        return PaperState(dict(row["account"]), dict(row["attributed"]), row["funded_hour_ms"])

    async def save_paper(
        self,
        account: Mapping[str, Any],
        attributed: Mapping[str, Mapping[str, Decimal]],
        funded_hour_ms: int | None,
        now_ms: int,
    ) -> None:
        acc, attr = _account_json(account, attributed)
        with translate("save paper account"):
            await self._store.pool.execute(_SAVE_ACCOUNT, acc, attr, funded_hour_ms, now_ms)

    async def abandon_open(self, now_ms: int) -> list[str]:
        """Paper intents a previous run wrote but never settled: they never reached the (paper)
        book, since a fill is booked in the same transaction as its settlement."""
        with translate("abandon open paper intents"):
            rows = await self._store.pool.fetch(
                """UPDATE copies SET status = 'never_arrived', settled_ms = $1,
                       error = 'the daemon stopped before the paper order was filled'
                   WHERE paper AND status IN ('planned', 'sending') RETURNING cloid""",
                now_ms,
            )
        return [r["cloid"] for r in rows]

    async def open_live(self) -> list[OpenIntent]:
        """Live intents a previous run wrote but never settled, oldest first: ``planned`` ones
        were never sent (a row becomes ``sending`` before its order is signed); ``sending`` and
        ``unknown`` ones may have reached the exchange."""
        with translate("load open live intents"):
            rows = await self._store.pool.fetch(
                """SELECT cloid, status, attribution, leader, coin, is_buy, sz, limit_px,
                          reduce_only, reason, attempt, decided_ms, sent_ms, leader_tid
                   FROM copies
                   WHERE NOT paper AND cloid IS NOT NULL
                     AND status IN ('planned', 'sending', 'unknown')
                   ORDER BY id"""
            )
        return [
            OpenIntent(
                OrderIntent(
                    cloid=r["cloid"],
                    coin=r["coin"],
                    is_buy=bool(r["is_buy"]),
                    sz=r["sz"],
                    limit_px=r["limit_px"],
                    reduce_only=bool(r["reduce_only"]),
                    reason=r["reason"] or "",
                    attribution=tuple((str(f), Decimal(str(v))) for f, v in r["attribution"]),
                    leader=r["leader"],
                    source_tid=r["leader_tid"],
                    attempt=r["attempt"],
                    decided_ms=r["decided_ms"],
                ),
                r["status"],
                r["sent_ms"],
            )
            for r in rows
        ]

    # -- the live account's attribution ------------------------------------------------------

    async def load_live(self) -> dict[str, dict[str, str]] | None:
        """Each follow's part of the live positions as last stored, or None."""
        with translate("load live attribution"):
            value = await self._store.pool.fetchval(
                "SELECT value FROM kv WHERE key = $1", LIVE_ATTRIBUTED_KEY
            )
        return None if value is None else {f: dict(c) for f, c in dict(value).items()}

    async def save_live(self, attributed: Mapping[str, Mapping[str, Decimal]]) -> None:
        _, attr = _account_json({}, attributed)
        with translate("save live attribution"):
            await self._store.pool.execute(_SAVE_LIVE, LIVE_ATTRIBUTED_KEY, attr)

    # -- intents ------------------------------------------------------------------------------

    async def write_intent(self, row: CopyRow) -> StoredOutcome | None:
        """The write-ahead row. None when written now; the stored state when the cloid was
        already there (the same order decided twice: it must not run again)."""
        with translate("write intent"):
            async with self._hot_lock:
                if self._hot is None:
                    self._hot = await self._store.pool.acquire()
                con = self._hot
                try:
                    inserted = await con.fetchval(_INSERT_INTENT, *row.values())
                    if inserted is not None:
                        return None
                    r = await con.fetchrow(
                        "SELECT status, filled_sz, avg_px, fee, error, settled_ms FROM copies"
                        " WHERE cloid = $1",
                        row.cloid,
                    )
                except BaseException:
                    await self._drop_hot()
                    raise
        if r is None:  # a skip row cannot hold a cloid; stay safe anyway
            return StoredOutcome("unknown", Decimal(0), None, Decimal(0), "cloid conflict", None)
        return StoredOutcome(
            r["status"], r["filled_sz"], r["avg_px"], r["fee"], r["error"], r["settled_ms"]
        )

    async def release(self) -> None:
        """Give the write-ahead connection back to the pool (the executor, as it stops)."""
        async with self._hot_lock:
            await self._drop_hot()

    async def _drop_hot(self) -> None:
        con, self._hot = self._hot, None
        if con is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.pool.release(con))

    async def mark_sending(self, cloid: str, sent_ms: int, send_delay_ms: int | None) -> None:
        with translate("mark sending"):
            await self._store.pool.execute(
                "UPDATE copies SET status = 'sending', sent_ms = $2, send_delay_ms = $3"
                " WHERE cloid = $1",
                cloid,
                sent_ms,
                send_delay_ms,
            )

    async def settle(
        self,
        cloid: str,
        settlement: Settlement,
        *,
        account: Mapping[str, Any] | None = None,
        attributed: Mapping[str, Mapping[str, Decimal]] | None = None,
        funded_hour_ms: int | None = None,
        fill: PaperFillRow | None = None,
        live_attributed: Mapping[str, Mapping[str, Decimal]] | None = None,
    ) -> None:
        """Settle a copy row; with ``account``, also the paper account and ``fill``, and with
        ``live_attributed`` the live attribution, in one transaction."""
        s = settlement
        with translate("settle copy"):
            async with self._store.pool.acquire() as con, con.transaction():
                await con.execute(
                    _SETTLE,
                    cloid,
                    s.status,
                    s.settled_ms,
                    s.filled_sz,
                    s.avg_px,
                    s.fee,
                    s.closed_pnl,
                    s.slippage_bps,
                    s.error,
                )
                if fill is not None:
                    await con.execute(
                        """INSERT INTO paper_fills (cloid, coin, is_buy, sz, px, fee, closed_pnl,
                               start_position, dir, time_ms)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                        fill.cloid,
                        fill.coin,
                        fill.is_buy,
                        fill.sz,
                        fill.px,
                        fill.fee,
                        fill.closed_pnl,
                        fill.start_position,
                        fill.dir,
                        fill.time_ms,
                    )
                if account is not None:
                    acc, attr = _account_json(account, attributed or {})
                    await con.execute(_SAVE_ACCOUNT, acc, attr, funded_hour_ms, s.settled_ms)
                if live_attributed is not None:
                    _, attr = _account_json({}, live_attributed)
                    await con.execute(_SAVE_LIVE, LIVE_ATTRIBUTED_KEY, attr)

    async def book_funding(
        self,
        rows: Sequence[FundingRow],
        account: Mapping[str, Any],
        attributed: Mapping[str, Mapping[str, Decimal]],
        funded_hour_ms: int,
        now_ms: int,
    ) -> None:
        """One funding hour: its payments and the account, in one transaction (a payment
        already booked for that hour and coin is not booked twice)."""
        acc, attr = _account_json(account, attributed)
        with translate("book funding"):
            async with self._store.pool.acquire() as con, con.transaction():
                await con.executemany(
                    """INSERT INTO paper_funding (hour_ms, coin, szi, px, rate, hours, usdc)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    [(r.hour_ms, r.coin, r.szi, r.px, r.rate, r.hours, r.usdc) for r in rows],
                )
                await con.execute(_SAVE_ACCOUNT, acc, attr, funded_hour_ms, now_ms)

    async def paper_fills(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest paper fills, newest first."""
        with translate("paper fills"):
            rows = await self._store.pool.fetch(
                """SELECT cloid, coin, is_buy, sz::text AS sz, px::text AS px, fee::text AS fee,
                          closed_pnl::text AS closed_pnl,
                          start_position::text AS start_position, dir, time_ms
                   FROM paper_fills ORDER BY id DESC LIMIT $1""",
                limit,
            )
        return [dict(r) for r in rows]

    async def paper_funding(self) -> list[dict[str, Any]]:
        with translate("paper funding"):
            rows = await self._store.pool.fetch(
                """SELECT hour_ms, coin, szi::text AS szi, px::text AS px, rate::text AS rate,
                          hours, usdc::text AS usdc
                   FROM paper_funding ORDER BY hour_ms, coin"""
            )
        return [dict(r) for r in rows]

    # -- skips ------------------------------------------------------------------------------

    async def write_skips(self, rows: Sequence[CopyRow]) -> None:
        """Skipped copies, in one batch; a skip already recorded for the same leader fill,
        coin, reason and follows is not recorded again."""
        if not rows:
            return
        with translate("write skips"):
            await self._store.pool.executemany(_INSERT_SKIP, [r.values() for r in rows])

    # -- the API ----------------------------------------------------------------------------

    async def copies(
        self, follow: str | None, statuses: Sequence[str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """The latest copies, newest first, as the API shows them."""
        with translate("copies"):
            rows = await self._store.pool.fetch(
                _SELECT, follow, None if statuses is None else list(statuses), limit
            )
        return [copy_json(dict(r)) for r in rows]


def copy_json(r: Mapping[str, Any]) -> dict[str, Any]:
    """One copy row for the API (numbers as exact decimal strings)."""
    leader_fill = None
    if r["leader_tid"] is not None or r["leader_px"] is not None:
        leader_fill = {
            "tid": r["leader_tid"],
            "side": r["leader_side"],
            "px": r["leader_px"],
            "sz": r["leader_sz"],
            "time_ms": r["leader_time_ms"],
        }
    is_buy = r["is_buy"]
    return {
        "id": r["id"],
        "cloid": r["cloid"],
        "status": r["status"],
        "paper": r["paper"],
        "follows": list(r["follow_ids"]),
        "attribution": [{"follow": f, "sz": str(s)} for f, s in r["attribution"]],
        "leader": r["leader"],
        "coin": r["coin"],
        "leader_fill": leader_fill,
        "intent": {
            "side": None if is_buy is None else ("B" if is_buy else "A"),
            "sz": r["sz"],
            "limit_px": r["limit_px"],
            "reduce_only": r["reduce_only"],
            "reason": r["reason"],
            "attempt": r["attempt"],
            "decided_ms": r["decided_ms"],
        },
        "fill": {
            "filled_sz": r["filled_sz"],
            "avg_px": r["avg_px"],
            "fee": r["fee"],
            "closed_pnl": r["closed_pnl"],
            "sent_ms": r["sent_ms"],
            "settled_ms": r["settled_ms"],
        },
        "slippage_bps": r["slippage_bps"],
        "delay_ms": {"decision": r["decision_delay_ms"], "send": r["send_delay_ms"]},
        "fee": r["fee"],
        "skip_reason": r["skip_reason"],
        "error": r["error"],
    }
