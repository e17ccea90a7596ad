"""Read queries for the leaderboard and the trader pages of the API.

The tracker writes ``traders.stats`` as ``{window: TraderMetrics.as_dict()}`` and, in the same
statement, ``traders.board_figures``: the leaderboard's packed form of the same figures, which the
leaderboard reads at start (taking 100,000 JSON documents apart costs PostgreSQL and Python
seconds). Rows written before that column existed, or whose packed form the board cannot read,
are read out of the JSON here instead, and the packed form written back. This module also reads a
trader's row, position events and fills for the API. Rows leave as tuples or JSON-ready dicts: no
asyncpg record leaves ``store/``. Stored JSON is read defensively: a figure that is missing, of the
wrong type or out of range reads as missing, so a row written by another version, or damaged, can
never stop the start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from hlcopy.store.db import Store, translate

StoredBoard = tuple[str, str | None, int, bytes | None]
"""One trader as the leaderboard loads it: address, account value (numeric text or None),
stats_at_ms (0 when unknown) and the packed figures (None when not written yet)."""

StoredFigures = tuple[Any, ...]
"""One (trader, window): address, window, the trader's account value (numeric text or None),
stats_at_ms (0 when unknown), then the requested numbers (float; NaN when missing or malformed),
texts (the exact decimal string as stored, or None) and labels (a string of at most 32
characters, or None), in the order they were asked for."""

# Two ways to read the figures. The fast one casts each figure straight to float8, which
# PostgreSQL does in C; anything malformed makes the cast, and so the whole batch, fail. That
# batch is then read the careful way, which checks every figure before casting it (several times
# slower: a start with 100,000 traders would take most of a minute that way).
#
# Careful: a JSON number, or a string holding a decimal number (how Decimals are stored), with a
# bounded exponent: numeric reads it, and float8 holds it unless it is out of range (then NaN).
_NUMERIC_TEXT = r"^-?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]{1,3})?$"
_KEY = re.compile(r"[a-z_]{1,40}")


def _stored_numeric(key: str) -> str:
    """SQL: the window's ``key`` as numeric when it is a number, NULL otherwise. Nested CASEs:
    PostgreSQL evaluates a branch only when its condition holds, so nothing is cast that could
    fail and stop the whole load."""
    value, text = f"w.value->'{key}'", f"w.value->>'{key}'"
    return (
        f"CASE WHEN jsonb_typeof({value}) = 'number' OR (jsonb_typeof({value}) = 'string'"
        f" AND {text} ~ '{_NUMERIC_TEXT}') THEN ({text})::numeric END"
    )


def _stored_float(key: str) -> str:
    x = _stored_numeric(key)
    return (
        f"coalesce(CASE WHEN ({x}) = 0 OR abs({x}) BETWEEN 1e-300 AND 1e300"
        f" THEN ({x})::float8 END, 'NaN'::float8)"
    )


def _stored_text(key: str) -> str:
    x = _stored_numeric(key)
    return f"CASE WHEN ({x}) = 0 OR abs({x}) BETWEEN 1e-300 AND 1e300 THEN w.value->>'{key}' END"


def _stored_label(key: str) -> str:
    return (
        f"CASE WHEN jsonb_typeof(w.value->'{key}') = 'string' THEN left(w.value->>'{key}', 32) END"
    )


_FINITE = "NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)"


def _column(key: str) -> str:
    return f'r."{key}"'


def _stored_figures_sql(
    numbers: Sequence[str], texts: Sequence[str], labels: Sequence[str], *, careful: bool
) -> str:
    for key in (*numbers, *texts, *labels):
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a figure name: {key!r}")
    record = ""
    if careful:
        parts = (
            [_stored_float(k) for k in numbers]
            + [_stored_text(k) for k in texts]
            + [_stored_label(k) for k in labels]
        )
    else:
        # jsonb_to_record reads the window's object once and casts each figure in C.
        floats = list(dict.fromkeys([*numbers, *texts]))
        fields = [f'"{k}" float8' for k in floats] + [f'"{k}" text' for k in labels]
        record = (
            "\nCROSS JOIN LATERAL jsonb_to_record(CASE WHEN jsonb_typeof(w.value) = 'object'"
            f" THEN w.value ELSE '{{}}'::jsonb END) AS r({', '.join(fields)})"
        )
        parts = (
            [f"CASE WHEN {_column(k)} {_FINITE} THEN {_column(k)} ELSE 'NaN' END" for k in numbers]
            + [f"CASE WHEN {_column(k)} {_FINITE} THEN w.value->>'{k}' END" for k in texts]
            + [f"left({_column(k)}, 32)" for k in labels]
        )
    columns = ",\n       ".join(parts)
    # Safe to format: every key was checked against _KEY above, the values are parameters.
    return f"""
WITH batch AS (
    SELECT address, account_value, stats, stats_at_ms FROM traders
    WHERE address = ANY($1::text[]) AND stats IS NOT NULL
)
SELECT b.address, w.key, b.account_value::text, coalesce(b.stats_at_ms, 0),
       {columns}
FROM batch b CROSS JOIN LATERAL jsonb_each(
    CASE WHEN jsonb_typeof(b.stats) = 'object' THEN b.stats ELSE '{{}}'::jsonb END
) AS w(key, value){record}
WHERE jsonb_typeof(w.value) = 'object' AND w.key = ANY($2::text[])
ORDER BY b.address
"""  # noqa: S608


# The batch is a plain range of the primary key, so it is an index scan that stops at the limit
# (a condition on the JSON there would make PostgreSQL sort the rest of the table instead).
_BOARDS = """
SELECT address, account_value::text, coalesce(stats_at_ms, 0), board_figures FROM traders
WHERE address > $1 AND stats IS NOT NULL
ORDER BY address
LIMIT $2
"""

# Only over the row it was read from: a tracker that scored the trader meanwhile wrote both.
_SAVE_BOARDS = """
UPDATE traders t SET board_figures = b.packed
FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS b(address, at_ms, packed)
WHERE t.address = b.address AND coalesce(t.stats_at_ms, 0) = b.at_ms
"""

_TRADER = """
SELECT address, first_seen_ms, last_seen_ms, trade_count, volume_usd::text AS volume_usd,
       taker_count, maker_count, coins, role, master, role_at_ms, tracked, track_requested_ms,
       seeded, stats, stats_at_ms, account_value::text AS account_value, positions,
       positions_at_ms, index_points
FROM traders WHERE address = $1
"""

_EVENTS = """
SELECT id, address, coin, kind, prev_szi::text AS prev_szi, new_szi::text AS new_szi,
       px::text AS px, entry_px::text AS entry_px, notional::text AS notional,
       leverage::text AS leverage, time_ms, tid
FROM position_events WHERE address = $1
ORDER BY time_ms DESC, id DESC
LIMIT $2 OFFSET $3
"""

_FILLS = """
SELECT address, tid, coin, px::text AS px, sz::text AS sz, side, time_ms,
       start_position::text AS start_position, dir, closed_pnl::text AS closed_pnl, hash, oid,
       crossed, fee::text AS fee, fee_token, cloid, source, received_ms
FROM fills WHERE address = $1
ORDER BY time_ms DESC, tid DESC
LIMIT $2 OFFSET $3
"""


class BoardQueries:
    """The leaderboard's and the API's reads of traders, events and fills."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sql: dict[tuple[tuple[str, ...], ...], tuple[str, str]] = {}
        self.careful_batches = 0

    async def stored_boards(self, after: str, limit: int) -> list[StoredBoard]:
        """Up to ``limit`` traders with stats whose address sorts after ``after``, in address
        order (keyset paging: no offset scan, and stable while the tracker writes)."""
        with translate("stored_boards"):
            rows = await self._store.pool.fetch(_BOARDS, after, limit)
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def save_boards(self, rows: Sequence[tuple[str, int, bytes]]) -> int:
        """Write packed figures (address, stats_at_ms, packed) where the stats are still the
        ones they were read from; how many rows were written."""
        if not rows:
            return 0
        with translate("save_boards"):
            status = await self._store.pool.execute(
                _SAVE_BOARDS, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
            )
        return int(status.split()[-1])

    async def stored_figures(
        self,
        addresses: Sequence[str],
        *,
        windows: Sequence[str],
        numbers: Sequence[str],
        texts: Sequence[str] = (),
        labels: Sequence[str] = (),
    ) -> list[StoredFigures]:
        """Figures out of ``traders.stats`` of ``addresses`` (rows of one trader together).
        PostgreSQL does the parsing: the rows arrive as floats and strings."""
        key = (tuple(numbers), tuple(texts), tuple(labels))
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = (
                _stored_figures_sql(numbers, texts, labels, careful=False),
                _stored_figures_sql(numbers, texts, labels, careful=True),
            )
        fast, careful = sql
        with translate("stored_figures"):
            try:
                rows = await self._store.pool.fetch(fast, list(addresses), list(windows))
            except asyncpg.DataError:  # something in this batch is malformed
                self.careful_batches += 1
                rows = await self._store.pool.fetch(careful, list(addresses), list(windows))
        return [tuple(r) for r in rows]

    async def trader(self, address: str) -> dict[str, Any] | None:
        """A trader's stored row, JSON-ready; None when the address was never stored."""
        with translate("trader"):
            r = await self._store.pool.fetchrow(_TRADER, address)
        if r is None:
            return None
        stats = r["stats"] if isinstance(r["stats"], dict) else {}
        points = r["index_points"] if isinstance(r["index_points"], dict) else {}
        return {
            "address": r["address"],
            "activity": {
                "address": r["address"],
                "first_seen_ms": r["first_seen_ms"],
                "last_seen_ms": r["last_seen_ms"],
                "trades": r["trade_count"],
                "volume_usd": r["volume_usd"],
                "taker": r["taker_count"],
                "maker": r["maker_count"],
                "coins": list(r["coins"] or ()),
            },
            "role": r["role"],
            "master": r["master"],
            "role_at_ms": r["role_at_ms"],
            "tracked": r["tracked"],
            "track_requested_ms": r["track_requested_ms"],
            "seeded": r["seeded"],
            "metrics": {w: m for w, m in stats.items() if isinstance(m, dict)},
            "metrics_at_ms": r["stats_at_ms"],
            "account_value": r["account_value"],
            "positions": r["positions"] if isinstance(r["positions"], list) else [],
            "positions_at_ms": r["positions_at_ms"],
            "index_points": {w: p for w, p in points.items() if isinstance(p, list)},
        }

    async def events(self, address: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """A trader's position events, newest first."""
        with translate("events"):
            rows = await self._store.pool.fetch(_EVENTS, address, limit, offset)
        return [dict(r) for r in rows]

    async def fills(self, address: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """A trader's stored fills, newest first."""
        with translate("fills"):
            rows = await self._store.pool.fetch(_FILLS, address, limit, offset)
        return [dict(r) for r in rows]
