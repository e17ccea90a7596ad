"""Per-follow performance: our PnL, the leader's scaled PnL, and the gap between them in parts
that add up to it exactly. Pure: plain records in, Decimal figures out, no I/O, no clock.

**The records.** The account-level copy log (one ``CopyRecord`` per ``copies`` row: orders with
their fills, skips with their reason), attribution transfers between follows (``TransferRecord``),
the paper funding booked per coin and hour (``FundingRecord``), the leader's fills
(``LeaderTrade``, from ``leader_fills``) and marks (the current mids). A follow's part of a fill is
split from the row's attribution as the executor splits it (``attribute_fill``), its fee in
the same proportion; its funding is what the account pays on that part (``-szi x px x rate x
hours`` with its attributed size at the funding hour).

**Our PnL** over the period [since, until], per coin: mark-to-market of the attributed position,
taking the position held at ``since`` as bought at the start price P0:
``A0 x (M - P0) + sum(e_j x (M - q_j)) + sum(t_k x (M - m_k)) - fees + funding``, over our fills
e_j at q_j and transfers t_k received at the mid m_k, marked at M. That is realised + unrealised
on the attributed position (average cost from P0) - fees + funding; ``unrealized`` is reported as
``trading - realized`` so the two add up exactly.

**The leader scaled** ("the ideal copy"): a copy that held the follow's target of the leader's
position at ``since`` (bought at P0) and traded every change of that target at the leader's fill
price, without fees, funding, delays, filters or limits:
``T0 x (M - P0) + sum((T_i - T_{i-1}) x (M - px_i))``, where ``T_i`` is the target after leader
fill i (``IdealSizing.target``): ``ratio`` r x L; ``equity`` r x (follower / leader equity) x L
with the equity ratio given (the figure as known when asked, or the one implied by the copy
rows); ``fixed_notional`` sign(L) x N / px at the fill that opens or flips, held while the leader
stays on that side; negated for ``inverse``. A leader change seen only through a later fill's
``startPosition`` (a fill the books missed) is a change of the ideal at that fill's price.

**The gap** = ours - leader scaled = the sum of ``GAP_PARTS``. ``fees_funding`` is our fees and
funding (the ideal has none). The rest is the trading gap, split by one rule: keep the deficit
D = ideal position - our position as FIFO lots, each tagged with a part; every change dD of the
deficit at price p contributes ``-dD x (M - p)``. It first offsets the oldest lots of the
opposite sign (their part takes that share of the contribution), the remainder opens a lot in
the part of the change. Since the sum of all contributions is exactly the trading gap, the parts
add up to it by construction. The changes:

- the start: D0 = T0 - A0 at P0, part ``entry``;
- leader fill i: the ideal change d_i = T_i - T_{i-1} at px_i. Our fills triggered by its tid
  (the copy rows with that ``leader_tid``) copy it directly up to d_i: each piece c at q adds
  ``c x (px_i - q)`` to ``latency_slippage`` (executing the copy later and at another price
  than the leader). What was not copied, m_i = d_i - sum(c), is a deficit change at px_i in the
  part of why, read from the fill's copy rows (or, for a fill of the same leader order — same
  time and side — without rows of its own, those of the order's first fill that has some: one
  decision orders a whole sweep): a ``limit_reached`` skip, or (with no skip row) an order a
  limit cut (its reason says ``limit_reached``) -> ``limits``; any other skip reason
  (below_min_notional,
  coin_filtered, stale_fill, outside_hours, leader_unconfirmed, halted, reducing_only,
  waiting_entry, below_lot, ...), an order that did not fill (IOC unmatched, rejected,
  never_arrived), lot rounding, or no copy row at all -> ``skipped``; with several skip rows the
  one with the largest size decides;
- what a triggered fill did beyond d_i (it caught up earlier deficits), our fills not triggered
  by a leader fill of the period (reconciliation catch-ups, adopt at start, drift corrections)
  and transfers are catch-ups: a deficit change of -size at their price. They close the lots they
  offset, in those lots' parts (a skipped move caught up later costs the price move meanwhile, in
  ``skipped``); a remainder (we moved beyond the ideal) opens a lot in ``latency_slippage`` for a
  triggered fill (it ran ahead of leader fills still to come, as when one decision sees several
  fills of one leader order), in ``skipped`` for a ``round_up`` order, else in ``entry``;
- a leader change only seen through ``startPosition``: its ideal change at that fill's price, in
  ``skipped``.

``FollowLedger`` keeps the same figures incrementally per follow for risk (daily loss, drawdown).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from typing import Final, Literal

from hlcopy.follow.copier import attribute_fill
from hlcopy.record import record

ZERO: Final = Decimal(0)
#: Where derived sizes (fixed-notional targets, fee shares) are cut: far below any lot or cent,
#: and short enough that every product stays exact in ``_EXACT``.
QUANTUM: Final = Decimal("1e-18")
#: Products and sums of stored figures are exact in this context (no rounding anywhere).
_EXACT: Final = Context(prec=120)

Part = Literal["latency_slippage", "fees_funding", "skipped", "limits", "entry"]
GAP_PARTS: Final[tuple[Part, ...]] = (
    "latency_slippage",
    "fees_funding",
    "skipped",
    "limits",
    "entry",
)
#: Skip reasons that are a limit binding (the follow's or the account's).
LIMIT_REASONS: Final = frozenset({"limit_reached"})
FILLED_STATUSES: Final = frozenset({"filled", "partial", "unknown"})

Mode = Literal["copy", "inverse"]
Sizing = Literal["ratio", "equity", "fixed_notional"]


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def part_of(reason: str | None) -> Part:
    """The gap part of a size not copied for ``reason`` (a skip reason, or None)."""
    return "limits" if reason in LIMIT_REASONS else "skipped"


# -- records ----------------------------------------------------------------------------------


@record
class LeaderTrade:
    """One leader fill (a ``leader_fills`` row)."""

    tid: int
    coin: str
    is_buy: bool
    px: Decimal
    sz: Decimal
    time_ms: int
    start_position: Decimal | None = None

    @property
    def delta(self) -> Decimal:
        return self.sz if self.is_buy else -self.sz


@record
class CopyRecord:
    """One copy row, account-wide: an order (``is_buy``, ``sz`` its size, ``filled_sz`` at
    ``avg_px`` with ``fee``) or a skip (status ``skipped``, ``sz`` the size not sent).
    ``time_ms``: when it took effect (settled, else decided)."""

    coin: str
    status: str
    time_ms: int
    attribution: tuple[tuple[str, Decimal], ...]
    is_buy: bool | None = None
    sz: Decimal | None = None
    filled_sz: Decimal = ZERO
    avg_px: Decimal | None = None
    fee: Decimal = ZERO
    leader: str | None = None
    leader_tid: int | None = None
    skip_reason: str | None = None
    reason: str | None = None
    # The coin's lot, when known: a partial fill then splits on it, as it was booked.
    sz_decimals: int | None = None

    @property
    def follows(self) -> frozenset[str]:
        return frozenset(f for f, _ in self.attribution)

    @property
    def filled(self) -> bool:
        return (
            self.status in FILLED_STATUSES
            and self.filled_sz > 0
            and self.avg_px is not None
            and self.is_buy is not None
            and self.sz is not None
        )

    def parts(self) -> list[tuple[str, Decimal, Decimal]]:
        """(follow, signed size, fee) of each follow's part of the fill (empty: no fill)."""
        if not self.filled:
            return []
        assert self.sz is not None
        sign = 1 if self.is_buy else -1
        out = []
        shares = attribute_fill(self.attribution, self.sz, self.filled_sz, self.sz_decimals)
        for follow, part in shares:
            with localcontext(_EXACT):
                fee = (self.fee * part / self.filled_sz).quantize(QUANTUM)
            out.append((follow, sign * part, fee))
        return out

    def part(self, follow_id: str) -> tuple[Decimal, Decimal]:
        """``follow_id``'s signed size and fee in this fill ((0, 0) when none)."""
        for follow, szi, fee in self.parts():
            if follow == follow_id:
                return szi, fee
        return ZERO, ZERO

    @property
    def round_up(self) -> bool:
        return self.reason is not None and "round_up" in self.reason.split(";")


@record
class TransferRecord:
    """``from_follow`` handed ``sz`` of long exposure to ``to_follow`` at ``px`` (no trade)."""

    coin: str
    from_follow: str
    to_follow: str
    sz: Decimal
    px: Decimal
    time_ms: int

    def szi_for(self, follow_id: str) -> Decimal:
        if follow_id == self.to_follow:
            return self.sz
        if follow_id == self.from_follow:
            return -self.sz
        return ZERO


@record
class FundingRecord:
    """One funding booked on the paper account (a ``paper_funding`` row): each follow pays or
    receives ``-szi x px x rate x hours`` on its attributed size."""

    hour_ms: int
    coin: str
    px: Decimal
    rate: Decimal
    hours: int = 1

    def payment(self, szi: Decimal) -> Decimal:
        with localcontext(_EXACT):
            return -(szi * self.px * self.rate * self.hours)


@record
class LeaderStart:
    """What is known of the leader in a coin at the period start: its position from the last
    fill before it with a ``startPosition`` (None: unknown) and the last traded price."""

    szi: Decimal | None = None
    px: Decimal | None = None
    px_time_ms: int | None = None


@record
class IdealSizing:
    """How the ideal copy sizes the leader's position (see the module docstring)."""

    mode: Mode = "copy"
    sizing: Sizing = "ratio"
    ratio: Decimal = Decimal(1)
    fixed_notional_usd: Decimal | None = None
    equity_ratio: Decimal | None = None

    @property
    def scale(self) -> Decimal | None:
        """The signed factor on the leader's size (None for fixed_notional, or equity sizing
        without an equity ratio)."""
        sign = -1 if self.mode == "inverse" else 1
        if self.sizing == "ratio":
            return sign * self.ratio
        if self.sizing == "equity" and self.equity_ratio is not None:
            return sign * self.ratio * self.equity_ratio
        return None

    def target(self, prev: Decimal, leader_szi: Decimal, px: Decimal) -> Decimal:
        """The ideal position after the leader's position becomes ``leader_szi`` at ``px``."""
        if leader_szi == 0:
            return ZERO
        if self.sizing == "fixed_notional":
            if self.fixed_notional_usd is None:
                raise ValueError("fixed_notional sizing needs fixed_notional_usd")
            side = _sign(leader_szi) * (-1 if self.mode == "inverse" else 1)
            if prev != 0 and _sign(prev) == side:
                return prev
            with localcontext(_EXACT):
                return side * (self.fixed_notional_usd / px).quantize(QUANTUM)
        scale = self.scale
        if scale is None:
            raise ValueError("equity sizing needs the follower/leader equity ratio")
        with localcontext(_EXACT):
            return (scale * leader_szi).quantize(QUANTUM)


# -- results ------------------------------------------------------------------------------------


def _zero_parts() -> dict[Part, Decimal]:
    return dict.fromkeys(GAP_PARTS, ZERO)


@record
class CoinPerformance:
    coin: str
    ours: Decimal
    realized: Decimal
    unrealized: Decimal
    fees: Decimal
    funding: Decimal
    leader_scaled: Decimal
    leader_pnl: Decimal
    gap: Decimal
    parts: Mapping[Part, Decimal]
    position_start: Decimal
    position: Decimal
    ideal_start: Decimal
    ideal: Decimal
    leader_start: Decimal
    leader: Decimal
    start_px: Decimal | None
    mark: Decimal | None
    stale_mark: bool


@record
class Performance:
    """One follow over [since_ms, until_ms]; ``parts`` add up to ``gap`` exactly."""

    follow_id: str
    since_ms: int
    until_ms: int
    scale: Decimal | None
    ours: Decimal
    realized: Decimal
    unrealized: Decimal
    fees: Decimal
    funding: Decimal
    leader_scaled: Decimal
    leader_pnl: Decimal
    gap: Decimal
    parts: Mapping[Part, Decimal]
    coins: tuple[CoinPerformance, ...]
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def stale_marks(self) -> tuple[str, ...]:
        return tuple(c.coin for c in self.coins if c.stale_mark)


# -- the computation ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Lot:
    part: Part
    szi: Decimal


class _Gap:
    """The deficit lots of one coin and the parts they charge (see the module docstring)."""

    def __init__(self, mark: Decimal) -> None:
        self.mark = mark
        self.lots: list[_Lot] = []
        self.parts = _zero_parts()

    def change(self, delta: Decimal, px: Decimal, own: Part) -> None:
        """The deficit (ideal - ours) changes by ``delta`` at ``px``.

        The lots are all on one side (a change against them uses them up, oldest first, before
        any of it is left to open a lot), so a change on their side only adds to the newest
        lot or opens one: a deficit that keeps growing (a limit cutting every copy) costs the
        same per change however many lots it has."""
        if delta == 0:
            return
        move = self.mark - px
        lots = self.lots
        rest = delta
        if lots and _sign(lots[0].szi) != _sign(rest):
            used = 0
            for lot in lots:
                take = _sign(rest) * min(abs(rest), abs(lot.szi))
                self.parts[lot.part] -= take * move
                lot.szi += take
                rest -= take
                if lot.szi == 0:
                    used += 1
                if rest == 0:
                    break
            del lots[:used]
        if rest != 0:
            self.parts[own] -= rest * move
            if lots and lots[-1].part == own:
                lots[-1].szi += rest  # one lot of one part: used up as one, in the same order
            else:
                lots.append(_Lot(own, rest))

    def copied(self, szi: Decimal, leader_px: Decimal, px: Decimal) -> None:
        """A leader change copied directly: ``szi`` at ``px`` for the leader's ``leader_px``."""
        self.parts["latency_slippage"] += szi * (leader_px - px)


@record
class _Ours:
    """One change of the follow's attributed position: a fill part or a transfer."""

    time_ms: int
    seq: int
    coin: str
    szi: Decimal
    px: Decimal
    fee: Decimal
    tid: int | None
    round_up: bool
    order: bool = True  # a fill of a copy order (False: a transfer)


def _between(t: int, since: int, until: int | None) -> bool:
    """``since < t < until`` (no ``until``: open)."""
    return since < t and (until is None or t < until)


def _skip_part(rows: Sequence[CopyRecord], follow_id: str) -> Part:
    skips = [r for r in rows if r.status == "skipped"]
    if not skips:
        # No wish left out entirely: an order a limit cut says so in its reason.
        cut = any(r.reason is not None and LIMIT_REASONS & set(r.reason.split(";")) for r in rows)
        return "limits" if cut else "skipped"

    def size(r: CopyRecord) -> Decimal:
        return sum((abs(s) for f, s in r.attribution if f == follow_id), ZERO)

    best = max(skips, key=lambda r: (size(r), r.skip_reason in LIMIT_REASONS))
    return part_of(best.skip_reason)


def _realized(start: Decimal, start_px: Decimal | None, changes: Sequence[_Ours]) -> Decimal:
    """Realised PnL of an average-cost position from ``start`` at ``start_px``."""
    szi = start
    entry = start_px or ZERO
    realized = ZERO
    for c in changes:
        if szi == 0 or _sign(szi) == _sign(c.szi):
            new = szi + c.szi
            entry = (abs(szi) * entry + abs(c.szi) * c.px) / abs(new)
            szi = new
            continue
        closed = min(abs(c.szi), abs(szi))
        realized += closed * (c.px - entry) * _sign(szi)
        new = szi + c.szi
        if new != 0 and _sign(new) != _sign(szi):
            entry = c.px
        szi = new
    return realized


def follow_performance(
    *,
    follow_id: str,
    leader: str,
    sizing: IdealSizing,
    copies: Iterable[CopyRecord],
    leader_fills: Iterable[LeaderTrade],
    marks: Mapping[str, Decimal],
    since_ms: int,
    until_ms: int,
    transfers: Iterable[TransferRecord] = (),
    funding: Iterable[FundingRecord] = (),
    leader_start: Mapping[str, LeaderStart] | None = None,
    leader_now: Mapping[str, Decimal] | None = None,
) -> Performance:
    """The follow's performance over [since_ms, until_ms] (see the module docstring).

    ``copies`` and ``transfers`` may hold the whole history (what came before ``since_ms`` makes
    the start position); ``leader_fills`` are the leader's fills of the period (others are
    ignored); ``leader_start`` what is known of the leader before it; ``leader_now`` its
    positions now (used only for a coin with no ``startPosition`` known before or during the
    period). A coin without a mark is marked at its last known price (``stale_mark``)."""
    leader_start = leader_start or {}
    with localcontext(_EXACT):
        return _performance(
            follow_id,
            leader,
            sizing,
            list(copies),
            list(leader_fills),
            marks,
            since_ms,
            until_ms,
            list(transfers),
            list(funding),
            leader_start,
            leader_now,
        )


def _performance(
    follow_id: str,
    leader: str,
    sizing: IdealSizing,
    copies: list[CopyRecord],
    leader_fills: list[LeaderTrade],
    marks: Mapping[str, Decimal],
    since_ms: int,
    until_ms: int,
    transfers: list[TransferRecord],
    funding: list[FundingRecord],
    leader_start: Mapping[str, LeaderStart],
    leader_now: Mapping[str, Decimal] | None,
) -> Performance:
    counts = {"leader_fills": 0, "orders": 0, "fills": 0, "skips": 0, "transfers": 0, "funding": 0}
    start_pos: dict[str, Decimal] = defaultdict(lambda: ZERO)
    last_px: dict[str, tuple[int, Decimal]] = {}  # the latest price before since, per coin
    changes: list[_Ours] = []
    by_tid: dict[int, list[CopyRecord]] = defaultdict(list)
    untriggered: dict[str, list[CopyRecord]] = defaultdict(list)  # decided with no leader fill
    seq = 0

    def seen_px(coin: str, time_ms: int, px: Decimal) -> None:
        if coin not in last_px or last_px[coin][0] <= time_ms:
            last_px[coin] = (time_ms, px)

    mine = [r for r in copies if follow_id in r.follows and r.time_ms <= until_ms]
    for r in sorted(mine, key=lambda r: r.time_ms):
        szi, fee = r.part(follow_id)
        if r.time_ms < since_ms:
            start_pos[r.coin] += szi
            if r.avg_px is not None and szi:
                seen_px(r.coin, r.time_ms, r.avg_px)
            continue
        counts["skips" if r.status == "skipped" else "orders"] += 1
        if r.leader_tid is not None and r.leader == leader:
            by_tid[r.leader_tid].append(r)
        elif r.leader_tid is None:
            untriggered[r.coin].append(r)
        if szi:
            assert r.avg_px is not None
            counts["fills"] += 1
            changes.append(
                _Ours(r.time_ms, seq, r.coin, szi, r.avg_px, fee, r.leader_tid, r.round_up)
            )
            seq += 1
    for t in sorted(transfers, key=lambda t: t.time_ms):
        szi = t.szi_for(follow_id)
        if not szi or t.time_ms > until_ms:
            continue
        if t.time_ms < since_ms:
            start_pos[t.coin] += szi
            seen_px(t.coin, t.time_ms, t.px)
            continue
        counts["transfers"] += 1
        changes.append(_Ours(t.time_ms, seq, t.coin, szi, t.px, ZERO, None, False, order=False))
        seq += 1
    for coin, start in leader_start.items():
        if start.px is not None:
            seen_px(coin, start.px_time_ms or 0, start.px)

    fills = sorted(
        (f for f in leader_fills if since_ms <= f.time_ms <= until_ms),
        key=lambda f: (f.time_ms, f.tid),
    )
    counts["leader_fills"] = len(fills)
    period_funding = [f for f in funding if since_ms <= f.hour_ms <= until_ms]
    coins = (
        {c for c, s in start_pos.items() if s}
        | {c.coin for c in changes}
        | {f.coin for f in fills}
        | {c for c, s in leader_start.items() if s.szi}
    )
    results = []
    for coin in sorted(coins):
        result = _coin(
            coin,
            follow_id,
            sizing,
            start_pos[coin],
            [c for c in changes if c.coin == coin],
            [f for f in fills if f.coin == coin],
            by_tid,
            untriggered[coin],
            leader_start.get(coin, LeaderStart()),
            None if leader_now is None else leader_now.get(coin),
            last_px.get(coin),
            marks.get(coin),
            [f for f in period_funding if f.coin == coin],
        )
        counts["funding"] += result[1]
        results.append(result[0])
    parts = _zero_parts()
    for c in results:
        for p in GAP_PARTS:
            parts[p] += c.parts[p]
    ours = sum((c.ours for c in results), ZERO)
    scaled = sum((c.leader_scaled for c in results), ZERO)
    return Performance(
        follow_id=follow_id,
        since_ms=since_ms,
        until_ms=until_ms,
        scale=sizing.scale,
        ours=ours,
        realized=sum((c.realized for c in results), ZERO),
        unrealized=sum((c.unrealized for c in results), ZERO),
        fees=sum((c.fees for c in results), ZERO),
        funding=sum((c.funding for c in results), ZERO),
        leader_scaled=scaled,
        leader_pnl=sum((c.leader_pnl for c in results), ZERO),
        gap=ours - scaled,
        parts=parts,
        coins=tuple(results),
        counts=counts,
    )


def _leader_start_szi(
    fills: Sequence[LeaderTrade], start: LeaderStart, now: Decimal | None
) -> Decimal:
    if start.szi is not None:
        return start.szi
    moved = ZERO
    for f in fills:
        if f.start_position is not None:
            # The first millisecond with a known startPosition: where its chain begins (a
            # start from which every fill of that millisecond follows the previous one).
            group = [g for g in fills if g.time_ms == f.time_ms]
            known = sorted(group, key=lambda g: g.tid)
            heads = [g.start_position for g in known if g.start_position is not None]
            perfect = [h for h in heads if _chain_is_whole(group, h)]
            if now is not None:
                before = now - sum((g.delta for g in fills), ZERO) + moved
                if before in perfect:
                    return before - moved
            return (perfect or heads)[0] - moved
        moved += f.delta
    if now is not None:
        return now - moved
    return ZERO


def _chain_is_whole(group: Sequence[LeaderTrade], head: Decimal) -> bool:
    return all(
        f.start_position is None or f.start_position == szi
        for f, szi in zip(*_walk(group, head), strict=True)
    )


def _walk(group: Sequence[LeaderTrade], head: Decimal) -> tuple[list[LeaderTrade], list[Decimal]]:
    ordered = chained(sorted(group, key=lambda f: f.tid), head)
    starts = []
    szi = head
    for f in ordered:
        starts.append(szi)
        szi = (f.start_position if f.start_position is not None else szi) + f.delta
    return ordered, starts


def chained(fills: Sequence[LeaderTrade], start: Decimal) -> list[LeaderTrade]:
    """``fills`` (sorted by time) in the order they happened: within one millisecond (one order
    sweeping several levels) tids are not in order, so each next fill is the one whose
    ``startPosition`` is where the previous left the position (lowest tid when none is)."""
    out: list[LeaderTrade] = []
    szi = start
    i = 0
    while i < len(fills):
        j = i
        while j < len(fills) and fills[j].time_ms == fills[i].time_ms:
            j += 1
        group = sorted(fills[i:j], key=lambda f: f.tid)
        while group:
            pick = next((f for f in group if f.start_position == szi), group[0])
            group.remove(pick)
            out.append(pick)
            szi = (pick.start_position if pick.start_position is not None else szi) + pick.delta
        i = j
    return out


def _coin(
    coin: str,
    follow_id: str,
    sizing: IdealSizing,
    a0: Decimal,
    ours: list[_Ours],
    fills: list[LeaderTrade],
    by_tid: Mapping[int, list[CopyRecord]],
    untriggered: Sequence[CopyRecord],
    start: LeaderStart,
    leader_now: Decimal | None,
    before: tuple[int, Decimal] | None,
    mark: Decimal | None,
    funding: list[FundingRecord],
) -> tuple[CoinPerformance, int]:
    # The start price: the last known before the period, else the first in it.
    p0: Decimal | None = before[1] if before is not None else None
    if p0 is None:
        firsts = [(f.time_ms, f.px) for f in fills[:1]] + [(c.time_ms, c.px) for c in ours[:1]]
        p0 = min(firsts)[1] if firsts else None
    stale = mark is None
    if mark is None:
        latest = [(f.time_ms, 0, f.px) for f in fills[-1:]] + [
            (c.time_ms, 1, c.px) for c in ours[-1:]
        ]
        mark = max(latest)[2] if latest else p0
    l0 = _leader_start_szi(fills, start, leader_now)
    fills = chained(fills, l0)
    if mark is None or p0 is None:
        # Nothing was ever priced in this coin: nothing was held or traded either.
        if a0 or l0 or ours or fills:
            raise ValueError(f"no price at all for {coin}")
        mark = p0 = ZERO
    gap = _Gap(mark)
    t0 = sizing.target(ZERO, l0, p0)
    gap.change(t0 - a0, p0, "entry")
    leader_pnl = l0 * (mark - p0)
    ideal_pnl = t0 * (mark - p0)
    szi_leader = l0
    target = t0
    triggered: dict[int, list[_Ours]] = defaultdict(list)
    tids = {f.tid for f in fills}
    loose: list[_Ours] = []
    for c in ours:
        if c.tid is not None and c.tid in tids:
            triggered[c.tid].append(c)
        else:
            loose.append(c)

    def catch_up(c: _Ours, szi: Decimal, own: Part) -> None:
        gap.change(-szi, c.px, own)

    # One timeline: the leader's orders, then (at equal times) our loose changes. The fills of
    # one order (same time and side, in the order they filled) are one sweep: one decision
    # copies it, triggered by whichever of its fills the books saw first.
    sweeps: list[list[LeaderTrade]] = []
    for f in fills:
        if sweeps and (sweeps[-1][0].time_ms, sweeps[-1][0].is_buy) == (f.time_ms, f.is_buy):
            sweeps[-1].append(f)
        else:
            sweeps.append([f])
    events: list[tuple[int, int, int, list[LeaderTrade] | _Ours]] = [
        (s[0].time_ms, 0, i, s) for i, s in enumerate(sweeps)
    ] + [(c.time_ms, 1, c.seq, c) for c in loose]
    ends = [s[0].time_ms for s in sweeps[1:]] + [None]
    claimed: set[int] = set()  # loose changes taken as a sweep's late copy
    for _, _, i, event in sorted(events, key=lambda e: e[:3]):
        if isinstance(event, _Ours):
            if event.seq not in claimed:
                catch_up(event, event.szi, "entry")
            continue
        sweep_rows = [r for f in event for r in by_tid.get(f.tid, ()) if r.coin == coin]
        copies = [c for f in event for c in triggered.get(f.tid, ())]
        wants: list[Decimal] = []
        for f in event:
            if f.start_position is not None and f.start_position != szi_leader:
                # A change the books never saw as a fill: the ideal follows it at this price.
                unseen = f.start_position - szi_leader
                leader_pnl += unseen * (mark - f.px)
                new = sizing.target(target, f.start_position, f.px)
                ideal_pnl += (new - target) * (mark - f.px)
                gap.change(new - target, f.px, "skipped")
                target = new
                szi_leader = f.start_position
            szi_leader += f.delta
            leader_pnl += f.delta * (mark - f.px)
            new = sizing.target(target, szi_leader, f.px)
            wants.append(new - target)
            ideal_pnl += (new - target) * (mark - f.px)
            target = new
        if not sweep_rows and not copies:
            # No decision of its own (a state read saw the trade before its fills came, or the
            # daemon was down): the follow's decisions without a leader fill, up to the next
            # sweep, are its late copy, and their reasons say what they left out.
            since, until = event[0].time_ms, ends[i]
            direction = _sign(sum(wants, ZERO))
            sweep_rows = [r for r in untriggered if _between(r.time_ms, since, until)]
            copies = [
                c
                for c in loose
                if c.order
                and c.seq not in claimed
                and _between(c.time_ms, since, until)
                and _sign(c.szi) == direction
            ]
            claimed.update(c.seq for c in copies)
        unmatched = [c.szi for c in copies]
        for f, wanted in zip(event, wants, strict=True):
            left = wanted
            for k, c in enumerate(copies):
                rest = unmatched[k]
                if left != 0 and rest != 0 and _sign(rest) == _sign(left):
                    direct = _sign(left) * min(abs(rest), abs(left))
                    gap.copied(direct, f.px, c.px)
                    left -= direct
                    unmatched[k] = rest - direct
            if left:
                own_rows = [r for r in by_tid.get(f.tid, ()) if r.coin == coin]
                gap.change(left, f.px, _skip_part(own_rows or sweep_rows, follow_id))
        for c, extra in zip(copies, unmatched, strict=True):
            if extra:
                catch_up(c, extra, "skipped" if c.round_up else "latency_slippage")

    # Ours: the start position bought at P0, every change at its price, fees and funding.
    trading = a0 * (mark - p0) + sum((c.szi * (mark - c.px) for c in ours), ZERO)
    fees = sum((c.fee for c in ours), ZERO)
    by_time = sorted(ours, key=lambda c: (c.time_ms, c.seq))
    paid = ZERO
    for fr in funding:
        held = a0 + sum((c.szi for c in by_time if c.time_ms <= fr.hour_ms), ZERO)
        paid += fr.payment(held)
    realized = _realized(a0, p0, by_time).quantize(QUANTUM)
    position = a0 + sum((c.szi for c in ours), ZERO)
    parts = dict(gap.parts)
    parts["fees_funding"] = paid - fees
    mine = trading - fees + paid
    return (
        CoinPerformance(
            coin=coin,
            ours=mine,
            realized=realized,
            unrealized=trading - realized,
            fees=fees,
            funding=paid,
            leader_scaled=ideal_pnl,
            leader_pnl=leader_pnl,
            gap=mine - ideal_pnl,
            parts=parts,
            position_start=a0,
            position=position,
            ideal_start=t0,
            ideal=target,
            leader_start=l0,
            leader=szi_leader,
            start_px=p0,
            mark=mark,
            stale_mark=stale,
        ),
        len(funding),
    )


def implied_scale(
    copies: Iterable[CopyRecord], follow_id: str, leader_sizes: Mapping[int, Decimal]
) -> Decimal | None:
    """The scale the copier used, read off the copy rows: this follow's filled size over the
    sizes of the leader fills that triggered them (None: no such fill)."""
    ours = ZERO
    tids: set[int] = set()
    for r in copies:
        if r.leader_tid is None or r.leader_tid not in leader_sizes:
            continue
        szi, _ = r.part(follow_id)
        if szi:
            ours += abs(szi)
            tids.add(r.leader_tid)
    theirs = sum((leader_sizes[t] for t in tids), ZERO)
    if theirs == 0:
        return None
    with localcontext(_EXACT):
        return (ours / theirs).quantize(QUANTUM)


# -- the live ledger ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Book:
    szi: Decimal = ZERO
    entry: Decimal = ZERO


@dataclass(slots=True)
class _Totals:
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO


@record
class FollowFigures:
    """A follow's cumulative figures: ``pnl`` = realized + unrealized - fees + funding."""

    pnl: Decimal
    realized: Decimal
    unrealized: Decimal
    fees: Decimal
    funding: Decimal
    notional: Decimal
    positions: Mapping[str, Decimal]


class FollowLedger:
    """Each follow's part of the account, kept incrementally for risk (daily loss, drawdown):
    attributed size and average entry per coin, realised PnL, fees and funding. Fed with the
    same records as ``follow_performance`` (a settled order, a transfer, a funding), as they
    happen or replayed from the store at start; answers in O(coins held)."""

    def __init__(self) -> None:
        self._books: dict[str, dict[str, _Book]] = {}
        self._totals: dict[str, _Totals] = {}
        self.applied = 0

    @classmethod
    def replay(
        cls,
        copies: Iterable[CopyRecord],
        transfers: Iterable[TransferRecord] = (),
        funding: Iterable[FundingRecord] = (),
    ) -> FollowLedger:
        """A ledger of the stored history, applied in time order (at equal times: fills,
        transfers, then funding)."""
        ledger = cls()
        events: list[tuple[int, int, int, CopyRecord | TransferRecord | FundingRecord]] = []
        events += [(r.time_ms, 0, i, r) for i, r in enumerate(copies)]
        events += [(t.time_ms, 1, i, t) for i, t in enumerate(transfers)]
        events += [(f.hour_ms, 2, i, f) for i, f in enumerate(funding)]
        for _, _, _, event in sorted(events, key=lambda e: e[:3]):
            if isinstance(event, CopyRecord):
                ledger.settled(event)
            elif isinstance(event, TransferRecord):
                ledger.transfer(event)
            else:
                ledger.fund(event)
        return ledger

    def settled(self, record: CopyRecord) -> None:
        """A settled copy row: its fill, split over its follows (a skip or no fill: nothing)."""
        assert record.avg_px is not None or not record.filled
        for follow, szi, fee in record.parts():
            assert record.avg_px is not None
            self.fill(follow, record.coin, szi, record.avg_px, fee)

    def fill(self, follow_id: str, coin: str, szi: Decimal, px: Decimal, fee: Decimal) -> None:
        """``follow_id``'s part of a fill: signed ``szi`` at ``px``, paying ``fee``."""
        totals = self._totals.setdefault(follow_id, _Totals())
        totals.fees += fee
        self._trade(follow_id, coin, szi, px)
        self.applied += 1

    def transfer(self, t: TransferRecord) -> None:
        """Attribution moved between follows at ``t.px``: the giver sells, the taker buys."""
        self._totals.setdefault(t.from_follow, _Totals())
        self._totals.setdefault(t.to_follow, _Totals())
        self._trade(t.from_follow, t.coin, -t.sz, t.px)
        self._trade(t.to_follow, t.coin, t.sz, t.px)
        self.applied += 1

    def fund(self, f: FundingRecord) -> None:
        """One funding on the account: each follow pays on its part of ``f.coin``."""
        for follow, books in self._books.items():
            book = books.get(f.coin)
            if book is not None and book.szi:
                self._totals[follow].funding += f.payment(book.szi)
        self.applied += 1

    def _trade(self, follow_id: str, coin: str, szi: Decimal, px: Decimal) -> None:
        if not szi:
            return
        books = self._books.setdefault(follow_id, {})
        book = books.setdefault(coin, _Book())
        totals = self._totals[follow_id]
        if book.szi == 0 or _sign(book.szi) == _sign(szi):
            new = book.szi + szi
            book.entry = (abs(book.szi) * book.entry + abs(szi) * px) / abs(new)
            book.szi = new
        else:
            closed = min(abs(szi), abs(book.szi))
            totals.realized += closed * (px - book.entry) * _sign(book.szi)
            new = book.szi + szi
            if new != 0 and _sign(new) != _sign(book.szi):
                book.entry = px
            book.szi = new
        if book.szi == 0:
            del books[coin]

    # -- reading --------------------------------------------------------------------------------

    def follows(self) -> tuple[str, ...]:
        return tuple(sorted(self._totals))

    def positions(self, follow_id: str) -> dict[str, Decimal]:
        return {c: b.szi for c, b in self._books.get(follow_id, {}).items()}

    def figures(self, follow_id: str, mids: Mapping[str, Decimal]) -> FollowFigures | None:
        """The follow's figures at ``mids``; None when a coin it holds has no mid (an unknown
        PnL must never read as a number). A follow never seen: all zero."""
        totals = self._totals.get(follow_id, _Totals())
        unrealized = ZERO
        notional = ZERO
        books = self._books.get(follow_id, {})
        for coin, book in books.items():
            mid = mids.get(coin)
            if mid is None:
                return None
            unrealized += book.szi * (mid - book.entry)
            notional += abs(book.szi) * mid
        return FollowFigures(
            pnl=totals.realized + unrealized - totals.fees + totals.funding,
            realized=totals.realized,
            unrealized=unrealized,
            fees=totals.fees,
            funding=totals.funding,
            notional=notional,
            positions={c: b.szi for c, b in books.items()},
        )

    def pnl(self, follow_id: str, mids: Mapping[str, Decimal]) -> Decimal | None:
        """Cumulative PnL of the follow (realised + unrealised - fees + funding) at ``mids``."""
        figures = self.figures(follow_id, mids)
        return None if figures is None else figures.pnl
