"""Per-follow performance: ``GET /api/v1/performance?follow=&since_ms=`` — our PnL beside the
leader's PnL scaled by the follow over the same period, and the gap split into parts that add
up to it exactly (``hlcopy.follow.performance`` defines every figure).

The collaborator is ``app[PERFORMANCE]`` (a ``PerformanceReport``); a daemon without it answers
503. It reads the copy log, the transfers, the paper funding and the leader's fills from
PostgreSQL and marks at the current mids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol

from aiohttp import web

from hlcopy.api.params import ApiError, Args, Param, Route, invalid
from hlcopy.api.responses import json_response
from hlcopy.api.schemas import DEC, MS, NDEC, obj
from hlcopy.clock import SYSTEM, Clock
from hlcopy.config import FOLLOW_ID_PATTERN
from hlcopy.follow.follows import FollowRecord
from hlcopy.follow.performance import (
    GAP_PARTS,
    CoinPerformance,
    IdealSizing,
    Part,
    Performance,
    follow_performance,
    implied_scale,
)
from hlcopy.store.performance import PerformanceStore


class FollowsView(Protocol):
    """What the report needs of the follows (``hlcopy.follow.follows.FollowRegistry``)."""

    def follows(self) -> tuple[FollowRecord, ...]: ...

    def get(self, follow_id: str) -> FollowRecord | None: ...


Mids = Callable[[], Mapping[str, Decimal]]
#: A leader's positions now per coin (the leader books), for a coin whose start is unknown.
LeaderPositions = Callable[[str], Mapping[str, Decimal]]
#: Follower equity / the leader's equity now, for ``equity`` sizing (None: unknown).
EquityRatio = Callable[[str], Decimal | None]


class UnknownFollow(LookupError):
    """No follow with that id."""


class PerformanceReport:
    """Builds the report: reads the records, runs the core per follow."""

    def __init__(
        self,
        follows: FollowsView,
        reads: PerformanceStore,
        mids: Mids,
        clock: Clock = SYSTEM,
        *,
        leader_positions: LeaderPositions | None = None,
        equity_ratio: EquityRatio | None = None,
    ) -> None:
        self._follows = follows
        self._reads = reads
        self._mids = mids
        self._clock = clock
        self._leader_positions = leader_positions
        self._equity_ratio = equity_ratio

    async def report(self, follow: str | None, since_ms: int | None) -> dict[str, Any]:
        """Every follow's performance (or ``follow``'s); UnknownFollow for an unknown id."""
        if follow is not None:
            record = self._follows.get(follow)
            if record is None:
                raise UnknownFollow(follow)
            records: Sequence[FollowRecord] = (record,)
        else:
            records = self._follows.follows()
        until = self._clock.time_ms()
        mids = dict(self._mids())
        # One read of the shared records when every follow is asked for.
        shared = None
        if follow is None and records:
            shared = (
                await self._reads.copies(None, until),
                await self._reads.transfers(None, until),
            )
        funding_since = min((self._since(r, since_ms) for r in records), default=until)
        funding = await self._reads.funding(funding_since, until)
        out = []
        for r in records:
            since = self._since(r, since_ms)
            if shared is None:
                copies = await self._reads.copies(r.id, until)
                transfers = await self._reads.transfers(r.id, until)
            else:
                copies, transfers = shared
            fills = await self._reads.leader_fills(r.leader, since, until)
            start = await self._reads.leader_start(r.leader, since)
            sizing, source = self._sizing(r, copies, {f.tid: f.sz for f in fills})
            perf = follow_performance(
                follow_id=r.id,
                leader=r.leader,
                sizing=sizing,
                copies=copies,
                leader_fills=fills,
                marks=mids,
                since_ms=since,
                until_ms=until,
                transfers=transfers,
                funding=funding,
                leader_start=start,
                leader_now=None
                if self._leader_positions is None
                else self._leader_positions(r.leader),
            )
            out.append(performance_json(perf, r, source))
        return {"follow": follow, "until_ms": until, "follows": out}

    @staticmethod
    def _since(r: FollowRecord, since_ms: int | None) -> int:
        """The period starts when asked, never before the follow began."""
        return r.started_ms if since_ms is None else max(since_ms, r.started_ms)

    def _sizing(
        self, r: FollowRecord, copies: Sequence[Any], leader_sizes: Mapping[int, Decimal]
    ) -> tuple[IdealSizing, str]:
        core = r.core
        sizing = IdealSizing(core.mode, core.sizing, core.ratio, core.fixed_notional_usd)
        if core.sizing != "equity":
            return sizing, "spec"
        ratio = None if self._equity_ratio is None else self._equity_ratio(r.leader)
        if ratio is not None:
            return IdealSizing(core.mode, "equity", core.ratio, None, ratio), "equity_now"
        implied = implied_scale(copies, r.id, leader_sizes)
        if implied is not None:
            # The copier's |scale| read off the rows is ratio x the equity ratio.
            return IdealSizing(core.mode, "equity", core.ratio, None, implied / core.ratio), (
                "implied"
            )
        return IdealSizing(core.mode, "equity", core.ratio, None, Decimal(0)), "unknown"


def _parts(parts: Mapping[Part, Decimal]) -> dict[str, Decimal]:
    return {p: parts[p] for p in GAP_PARTS}


def _coin_json(c: CoinPerformance) -> dict[str, Any]:
    return {
        "coin": c.coin,
        "ours": c.ours,
        "realized": c.realized,
        "unrealized": c.unrealized,
        "fees": c.fees,
        "funding": c.funding,
        "leader_scaled": c.leader_scaled,
        "leader_pnl": c.leader_pnl,
        "gap": c.gap,
        "gap_parts": _parts(c.parts),
        "position_start": c.position_start,
        "position": c.position,
        "ideal_position_start": c.ideal_start,
        "ideal_position": c.ideal,
        "leader_position_start": c.leader_start,
        "leader_position": c.leader,
        "start_px": c.start_px,
        "mark": c.mark,
        "stale_mark": c.stale_mark,
    }


def performance_json(p: Performance, r: FollowRecord, scale_source: str) -> dict[str, Any]:
    """One follow's performance for the API (numbers as exact decimal strings)."""
    return {
        "follow": p.follow_id,
        "leader": r.leader,
        "mode": r.core.mode,
        "sizing": r.core.sizing,
        "scale": p.scale,
        "scale_source": scale_source,
        "since_ms": p.since_ms,
        "until_ms": p.until_ms,
        "ours": p.ours,
        "realized": p.realized,
        "unrealized": p.unrealized,
        "fees": p.fees,
        "funding": p.funding,
        "leader_scaled": p.leader_scaled,
        "leader_pnl": p.leader_pnl,
        "gap": p.gap,
        "gap_parts": _parts(p.parts),
        "counts": dict(p.counts),
        "stale_marks": list(p.stale_marks),
        "coins": [_coin_json(c) for c in p.coins],
    }


PERFORMANCE: Final = web.AppKey("performance", PerformanceReport)

_ID = re.compile(FOLLOW_ID_PATTERN)
MAX_MS: Final = 2**53 - 1


def _follow_param() -> Param:
    def parse(text: str) -> str:
        if not _ID.fullmatch(text):
            raise invalid("follow", "follow must be a follow id: 1-64 letters, digits, _ . -")
        return text

    schema = {"type": "string", "pattern": FOLLOW_ID_PATTERN, "examples": ["my-follow"]}
    return Param("follow", "Only this follow (its id); every follow when absent.", schema, parse)


def _since_param() -> Param:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,16}", text) or int(text) > MAX_MS:
            raise invalid("since_ms", f"since_ms must be milliseconds since the epoch, 0-{MAX_MS}")
        return int(text)

    schema = {"type": "integer", "minimum": 0, "maximum": MAX_MS, "examples": [1767225600000]}
    return Param(
        "since_ms",
        "The period's start (default and earliest: when the follow began).",
        schema,
        parse,
    )


async def performance_route(request: web.Request, args: Args) -> web.StreamResponse:
    report = request.app.get(PERFORMANCE)
    if report is None:
        raise ApiError(503, "copy execution is not running in this daemon", "unavailable")
    try:
        body = await report.report(args["follow"], args["since_ms"])
    except UnknownFollow as exc:
        raise ApiError(404, f"no follow {exc.args[0]!r}", "unknown_follow") from exc
    return json_response(body)


# -- the response's schema ------------------------------------------------------------------------


_PARTS: Final = {
    **obj(dict.fromkeys(GAP_PARTS, DEC)),
    "description": "The gap's parts; they add up to the gap exactly. latency_slippage: our "
    "copies' prices against the leader's; fees_funding: our fees and funding; skipped: sizes not "
    "copied (skips, unfilled orders, lot rounding) and their later catch-up; limits: sizes cut by "
    "a limit; entry: the position apart from the leader's at the start, and trades beyond it.",
}
_FIGURES: Final = {
    "ours": {**DEC, "description": "realised + unrealised - fees + funding"},
    "realized": DEC,
    "unrealized": DEC,
    "fees": DEC,
    "funding": DEC,
    "leader_scaled": {**DEC, "description": "the ideal copy's PnL (the leader scaled)"},
    "leader_pnl": {**DEC, "description": "the leader's own trading PnL (before its fees)"},
    "gap": {**DEC, "description": "ours - leader_scaled"},
    "gap_parts": _PARTS,
}
COIN: Final = obj(
    {
        "coin": {"type": "string"},
        **_FIGURES,
        "position_start": DEC,
        "position": DEC,
        "ideal_position_start": DEC,
        "ideal_position": DEC,
        "leader_position_start": DEC,
        "leader_position": DEC,
        "start_px": NDEC,
        "mark": NDEC,
        "stale_mark": {"type": "boolean", "description": "no mid: marked at the last price"},
    }
)
FOLLOW_PERFORMANCE: Final = obj(
    {
        "follow": {"type": "string"},
        "leader": {"type": "string"},
        "mode": {"type": "string", "enum": ["copy", "inverse"]},
        "sizing": {"type": "string", "enum": ["ratio", "equity", "fixed_notional"]},
        "scale": {**NDEC, "description": "the signed factor on the leader's size"},
        "scale_source": {"type": "string", "enum": ["spec", "equity_now", "implied", "unknown"]},
        "since_ms": MS,
        "until_ms": MS,
        **_FIGURES,
        "counts": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "leader_fills, orders, fills, skips, transfers, funding",
        },
        "stale_marks": {"type": "array", "items": {"type": "string"}},
        "coins": {"type": "array", "items": COIN},
    }
)
PERFORMANCE_PAGE: Final = obj(
    {
        "follow": {"type": ["string", "null"]},
        "until_ms": MS,
        "follows": {"type": "array", "items": FOLLOW_PERFORMANCE},
    }
)

ROUTES: Final = (
    Route(
        "GET",
        "/api/v1/performance",
        performance_route,
        "Per follow: our PnL, the leader's PnL scaled by the follow, and the gap in parts",
        "copy",
        params=(_follow_param(), _since_param()),
        response=PERFORMANCE_PAGE,
        errors=(400, 404, 503),
        description="Over the period from since_ms (default: when the follow began) to now, "
        "marked at the current mids: our PnL on the follow's part of the account (realised + "
        "unrealised - fees + funding), the PnL of an ideal copy that traded the follow's target "
        "of every leader fill at the leader's price without fees, and the gap between them split "
        "into latency_slippage, fees_funding, skipped, limits and entry, which add up to the gap "
        "exactly. Figures are exact decimals (sum them without rounding).",
    ),
)
