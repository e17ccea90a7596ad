"""The copier: where each follow wants the follower to be in one coin, and the orders that get it
there. Pure: no I/O, no clock (``now_ms`` is a parameter), Decimal sizes; the same inputs give the
same decision, cloids included, whatever order the follows are listed in.

The shell calls ``decide`` for one coin whenever a leader fill or a snapshot touches it (and on
reconciliation), with every follow that shares the follower account and has the coin in play.

Per follow, in this order:

1. **Target.** ``ratio``: r x leader size. ``equity``: leader size x follower equity / leader
   equity x r. ``fixed_notional``: sign(leader) x notional / mid, held (not resized with the
   price) while the position's notional is within ``fixed_notional_band_bps`` of the notional.
   ``inverse`` negates. A flat leader means a target of 0 under every sizing.
2. **Limits.** |target| x mid ≤ ``max_notional_per_coin_usd``; the follow's notional in this coin
   plus its other coins ≤ ``max_total_notional_usd`` and ≤ ``max_leverage`` x follower equity.
   A limit stops growth, it does not chase the price: a position that is over a limit only
   because the price moved is held (never increased), and trimmed only when the leader reduces.
   Binding limits are recorded as ``limit_reached``.
3. **Filters** (``coin_filtered``, ``outside_hours``, ``leader_unconfirmed``, ``waiting_entry``,
   ``adopt_deviation``, ``stale_fill``) and **risk** (``reducing_only`` for REDUCING or a
   winding-down follow): the target is clipped toward zero — never a larger |position|, never a
   flip — so reducing exposure is always allowed and anything else is a skip with its reason.
   HALTED (follow or global) freezes the follow entirely (``halted``), reductions included.
   Entry: with ``wait`` a leader position that predates the follow (its last change is before
   ``started_ms``) is not copied until the leader changes it (a fill the streams bring while the
   follow is on is such a change even when stamped up to ``EXCHANGE_TIME_LAG_MS`` before it
   began: the exchange stamps a fill with its block's time, which trails the host's clock); with
   ``adopt`` it is copied if the mid is within ``adopt_max_deviation_bps`` of the leader's entry.
   ``max_fill_age_ms`` applies to the freshest known change (the trigger or the book's last
   change), so reconciliation never chases an old move and a reordered old fill does not block a
   fresh position.
4. **Rounding.** The follow's new position is its target rounded toward zero to the lot: an
   increase is rounded down, a reduction up, never past zero. So the follower may end below a
   target but never above a limit, and once traded it is within one lot of the target.

Then for the account: the follows' moves (new - attributed - pending) of opposite signs net
internally as ``Transfer``s (attribution moves at the mid, no trade); the rest is one order for
the net, attributed to the same-side follows in proportion to their moves (lot multiples that sum
exactly to the order, by largest remainders). The order is classified against the follower's
position plus everything in flight: reduce-only when it only reduces it, a flip is a reduce-only
close of the whole position and then an open (two intents, two cloids). Account limits
(``AccountLimits``) cap what increases the account and the size of any one order; under a global
REDUCING only the orders that reduce the account's position go (a follow shrinking its own short
would otherwise grow the account when a position opened by hand is long). An order under the $10
minimum at its limit price is skipped (``below_min_notional``) unless it closes the whole
position with nothing in flight (exempt), or every follow in it has ``round_up`` and raising it to
the smallest lot count worth $10 breaks no limit, filter or risk state. Only exposure that grows is
ever rounded up: an inflated reduction would overshoot, its correction would be small and round
up the other way, and the follower would churn around the target.

The IOC limit price is mid x (1 ± slippage) with the tightest slippage of the follows in the
order, put on the tick grid in the safe direction (a buy's down, a sell's up), and the minimum is
checked at that price. The cloid is ``derive_cloid("follow|leader|tid|attempt")`` with the first
follow id (sorted) of the intent, the trigger's leader and tid — or, without a trigger,
``epoch<epoch>:<coin>`` — and ``|close`` / ``|open`` for the two legs of a flip.

**One follow in play** in the common case (ACTIVE, nothing filtered or binding, one order at or
above the minimum) is decided by a shorter path, ``_decide_one``, with the general one taking
every other case; a property test holds the two to the same decision wherever the short one
applies.

Input rule: attributed and pending sizes, like the follower's position, are lot multiples (split
partial fills with ``split_fill``); anything else is a caller bug and raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from typing import Literal

from hlcopy.errors import WireError
from hlcopy.follow.fills import fill_shares
from hlcopy.follow.risk import TradingState, most_severe
from hlcopy.hl import MIN_NOTIONAL, Rounding, derive_cloid, round_price, round_size
from hlcopy.model import Asset, LeaderFill, OrderIntent, TargetPosition
from hlcopy.record import record

ZERO = Decimal(0)
BPS = Decimal(10_000)
HOUR_MS = 3_600_000
# A fill's time is its block's, which trails the moment the order landed (by up to a block, more
# when the exchange is busy), and the host's clock may differ a little: a fill the streams bring
# while a follow is on, stamped up to this much before it began, is a change after it (entry
# "wait"). History (a snapshot, a REST gap-fill, a state read) gets no such allowance.
EXCHANGE_TIME_LAG_MS = 500

Mode = Literal["copy", "inverse"]
Sizing = Literal["ratio", "equity", "fixed_notional"]
MinNotionalPolicy = Literal["skip", "round_up"]
EntryPolicy = Literal["wait", "adopt"]


class SkipReason(StrEnum):
    """Why a follow's wish was not (fully) traded. Listed most binding first."""

    HALTED = "halted"
    LEADER_UNKNOWN = "leader_unknown"
    NO_PRICE = "no_price"
    DELISTED = "delisted"
    LEADER_EQUITY_UNKNOWN = "leader_equity_unknown"
    FOLLOWER_EQUITY_UNKNOWN = "follower_equity_unknown"
    COIN_FILTERED = "coin_filtered"
    OUTSIDE_HOURS = "outside_hours"
    LEADER_UNCONFIRMED = "leader_unconfirmed"
    WAITING_ENTRY = "waiting_entry"
    ADOPT_DEVIATION = "adopt_deviation"
    STALE_FILL = "stale_fill"
    REDUCING_ONLY = "reducing_only"
    LIMIT_REACHED = "limit_reached"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    BELOW_LOT = "below_lot"


# Reasons that clip the target toward zero (only reductions pass).
_CLIPS = (
    SkipReason.COIN_FILTERED,
    SkipReason.OUTSIDE_HOURS,
    SkipReason.LEADER_UNCONFIRMED,
    SkipReason.WAITING_ENTRY,
    SkipReason.ADOPT_DEVIATION,
    SkipReason.STALE_FILL,
    SkipReason.REDUCING_ONLY,
)
_RANK = {reason: i for i, reason in enumerate(SkipReason)}


@record
class Follow:
    """One follow's rules (the shell maps the TOML and API configuration onto it)."""

    id: str
    leader: str
    mode: Mode = "copy"
    sizing: Sizing = "ratio"
    ratio: Decimal = Decimal(1)
    fixed_notional_usd: Decimal | None = None
    coins: frozenset[str] | None = None
    exclude_coins: frozenset[str] = frozenset()
    max_notional_per_coin_usd: Decimal | None = None
    max_total_notional_usd: Decimal | None = None
    max_leverage: Decimal | None = None
    min_notional_policy: MinNotionalPolicy = "skip"
    slippage_bps: int = 50
    max_fill_age_ms: int = 30_000
    entry: EntryPolicy = "wait"
    adopt_max_deviation_bps: int = 50
    active_hours_utc: tuple[int, int] | None = None
    winding_down: bool = False
    started_ms: int = 0
    fixed_notional_band_bps: int = 1_000

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("follow id must not be empty")
        if self.leader != self.leader.lower():
            raise ValueError(f"leader must be lowercase, got {self.leader!r}")
        if self.sizing == "fixed_notional":
            if self.fixed_notional_usd is None or not self.fixed_notional_usd > 0:
                raise ValueError("fixed_notional sizing needs a positive fixed_notional_usd")
        elif not self.ratio > 0:
            raise ValueError(f"ratio must be positive, got {self.ratio}")
        for name in ("max_notional_per_coin_usd", "max_total_notional_usd", "max_leverage"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.slippage_bps < 10_000:
            raise ValueError("slippage_bps must be in [0, 10000)")
        if self.max_fill_age_ms <= 0:
            raise ValueError("max_fill_age_ms must be positive")
        if self.adopt_max_deviation_bps < 0 or self.fixed_notional_band_bps < 0:
            raise ValueError("basis-point tolerances must not be negative")
        if self.active_hours_utc is not None:
            start, end = self.active_hours_utc
            if not (0 <= start <= 23 and 0 <= end <= 24 and start != end):
                raise ValueError("active_hours_utc must be (start 0-23, end 0-24), start != end")


@record
class LeaderView:
    """What the leader book knows of one leader in this coin.

    ``confirmed``: the position is known for sure (userFills, REST or a snapshot), not a firehose
    hint. ``equity``: the leader's account value (for ``equity`` sizing). ``last_change_ms``: the
    time of the leader's last change in this coin (None: none seen since it was first known).
    """

    szi: Decimal
    confirmed: bool = True
    entry_px: Decimal | None = None
    equity: Decimal | None = None
    last_change_ms: int | None = None


@record
class FollowerView:
    """The follower account in this coin: exchange truth (or paper) and our bookkeeping.

    ``attributed[follow_id]`` is the part of ``szi`` each follow owns (the rest was opened outside
    hlcopy and is left alone); ``pending[follow_id]`` the signed size of its orders in flight.
    ``other_notional[follow_id]`` is the follow's notional in other coins (for its total and
    leverage limits), ``other_notional_total`` the account's (for ``AccountLimits``).
    """

    szi: Decimal
    attributed: Mapping[str, Decimal] = field(default_factory=dict)
    pending: Mapping[str, Decimal] = field(default_factory=dict)
    equity: Decimal | None = None
    other_notional: Mapping[str, Decimal] = field(default_factory=dict)
    other_notional_total: Decimal = ZERO


@record
class AccountLimits:
    """Limits on the follower account as a whole (the TOML's risk section); None: no limit."""

    max_coin_notional_usd: Decimal | None = None
    max_total_notional_usd: Decimal | None = None
    max_leverage: Decimal | None = None
    max_order_notional_usd: Decimal | None = None


@record
class Market:
    asset: Asset
    mid: Decimal | None


@record
class Skip:
    """A follow's wish that was not traded: ``szi`` is the signed size left out (0 when the
    copier could not even compute one, e.g. an unknown leader). ``detail`` says where it was
    decided: "follow" (its own target: filters, limits, risk) or "order" (the account's order:
    the $10 minimum, account limits, a global REDUCING)."""

    follow_id: str
    coin: str
    reason: SkipReason
    szi: Decimal
    detail: str = ""


@record
class Transfer:
    """``from_follow`` hands ``sz`` (> 0) of long exposure to ``to_follow`` at ``px``, no trade:
    attributed[from_follow] -= sz, attributed[to_follow] += sz."""

    coin: str
    from_follow: str
    to_follow: str
    sz: Decimal
    px: Decimal


@record
class Decision:
    coin: str
    intents: tuple[OrderIntent, ...] = ()
    skips: tuple[Skip, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    targets: tuple[TargetPosition, ...] = ()


# --- helpers ---------------------------------------------------------------------------------


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


_LOTS = tuple(Decimal(1).scaleb(-d) for d in range(16))


def _lot(sz_decimals: int) -> Decimal:
    return _LOTS[sz_decimals] if 0 <= sz_decimals < len(_LOTS) else Decimal(1).scaleb(-sz_decimals)


def _down(sz: Decimal, sz_decimals: int) -> Decimal:
    """A non-negative size rounded down to the lot."""
    return round_size(max(sz, ZERO), sz_decimals, Rounding.DOWN)


def _toward_zero(szi: Decimal, sz_decimals: int) -> Decimal:
    return _sign(szi) * _down(abs(szi), sz_decimals)


def _clip(target: Decimal, current: Decimal) -> Decimal:
    """Reduce-only: never a larger |position| than ``current``, never the other side."""
    if current == 0 or target == 0 or _sign(target) != _sign(current):
        return ZERO
    return target if abs(target) < abs(current) else current


def _clamp(target: Decimal, current: Decimal, cap: Decimal | None) -> Decimal:
    """Cap |target|; a position already above the cap on the same side is held, not trimmed."""
    if cap is None or abs(target) <= cap:
        return target
    side = _sign(target)
    if _sign(current) == side and abs(current) > cap:
        return side * min(abs(target), abs(current))
    return side * cap


def _units(sz: Decimal, lot: Decimal) -> int:
    n = sz / lot
    if n != n.to_integral_value():
        raise ValueError(f"{sz} is not a multiple of the lot {lot}")
    return int(n)


def allocate(
    total: Decimal, weights: Sequence[tuple[str, Decimal]], lot: Decimal
) -> tuple[tuple[str, Decimal], ...]:
    """Split ``total`` over ``weights`` in proportion: every share a lot multiple no larger than
    its weight, the shares summing exactly to ``total``. Largest remainders get the leftover lots
    (ties: larger weight, then id), which keeps each share within its weight — putting the whole
    remainder on the largest share could push it past its own limit. Input order is kept."""
    if len(weights) == 1:  # the common case (one follow), without the bookkeeping
        key, weight = weights[0]
        n_one, n_total = _units(weight, lot), _units(total, lot)
        if not 0 <= n_total <= n_one:
            raise ValueError(f"cannot split {total} over weights summing to {n_one * lot}")
        return ((key, n_total * lot),)
    units = [(key, _units(w, lot)) for key, w in weights]
    n_total = _units(total, lot)
    n_sum = sum(u for _, u in units)
    if not 0 <= n_total <= n_sum:
        raise ValueError(f"cannot split {total} over weights summing to {n_sum * lot}")
    if n_total == n_sum:
        return tuple((key, u * lot) for key, u in units)
    base = {key: n_total * u // n_sum for key, u in units}
    rest = {key: n_total * u % n_sum for key, u in units}
    left = n_total - sum(base.values())
    for key, _ in sorted(units, key=lambda ku: (-rest[ku[0]], -ku[1], ku[0]))[:left]:
        base[key] += 1
    return tuple((key, base[key] * lot) for key, _ in units)


def split_fill(
    filled_sz: Decimal, attribution: Sequence[tuple[str, Decimal]], sz_decimals: int
) -> tuple[tuple[str, Decimal], ...]:
    """Attribute a (partial) fill of an intent to its follows, in proportion to their shares and
    on the lot grid, so attributed sizes stay lot multiples."""
    return allocate(filled_sz, attribution, _lot(sz_decimals))


def attribute_fill(
    attribution: Sequence[tuple[str, Decimal]],
    order_sz: Decimal,
    filled: Decimal,
    sz_decimals: int | None,
) -> list[tuple[str, Decimal]]:
    """Each follow's part of an order's fill. On the lot grid when the coin's lot is known
    (``split_fill``): a part off the grid would leave a follow holding a size no order can
    trade, which the next decision refuses. The exact proportional split (``fill_shares``)
    when it is not, or when the shares are not on the grid themselves."""
    if sz_decimals is None or filled == order_sz:
        return fill_shares(attribution, order_sz, filled)
    try:
        return list(split_fill(filled, attribution, sz_decimals))
    except ValueError:
        return fill_shares(attribution, order_sz, filled)


def _match(
    givers: Sequence[tuple[str, Decimal]], takers: Sequence[tuple[str, Decimal]]
) -> list[tuple[str, str, Decimal]]:
    """Pair two equal totals in order (both sorted by id): a deterministic netting."""
    out: list[tuple[str, str, Decimal]] = []
    g = [(k, v) for k, v in givers if v > 0]
    t = [(k, v) for k, v in takers if v > 0]
    i = j = 0
    g_left = g[0][1] if g else ZERO
    t_left = t[0][1] if t else ZERO
    while i < len(g) and j < len(t):
        amount = min(g_left, t_left)
        out.append((g[i][0], t[j][0], amount))
        g_left -= amount
        t_left -= amount
        if g_left == 0:
            i += 1
            g_left = g[i][1] if i < len(g) else ZERO
        if t_left == 0:
            j += 1
            t_left = t[j][1] if j < len(t) else ZERO
    return out


def intent_cloid(
    follow_id: str,
    leader: str,
    tid: int | None,
    epoch: int,
    coin: str,
    attempt: int,
    leg: Literal["", "close", "open"] = "",
) -> str:
    """The cloid of an intent: keccak of ``follow|leader|tid|attempt`` (+ ``|leg`` for a flip).

    Without a trigger the tid is ``epoch<epoch>:<coin>``: the caller's reconciliation epoch plus
    the coin, so two coins reconciled in one epoch never share a cloid.
    """
    tid_part = str(tid) if tid is not None else f"epoch{epoch}:{coin}"
    text = f"{follow_id}|{leader}|{tid_part}|{attempt}"
    return derive_cloid(f"{text}|{leg}" if leg else text)


# --- per follow ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    follow: Follow
    current: Decimal  # attributed + pending
    leader_szi: Decimal
    raw: Decimal | None  # the target before limits, filters and risk (None: unknown)
    target: Decimal  # the effective target
    new: Decimal  # where the follow goes: the target rounded toward zero to the lot
    cap: Decimal | None  # the follow's own size cap in this coin (None: none)
    may_add: bool  # no filter or risk clip: exposure may grow (round_up)
    notes: list[SkipReason] = field(default_factory=list)

    @property
    def move(self) -> Decimal:
        return self.new - self.current

    @property
    def main_reason(self) -> SkipReason | None:
        return min(self.notes, key=_RANK.__getitem__) if self.notes else None


def _in_hours(hours: tuple[int, int] | None, now_ms: int) -> bool:
    if hours is None:
        return True
    start, end = hours
    hour = (now_ms // HOUR_MS) % 24
    return start <= hour < end if start < end else (hour >= start or hour < end)


def _raw_target(
    f: Follow,
    lead: LeaderView,
    current: Decimal,
    follower_equity: Decimal | None,
    mid: Decimal | None,
) -> Decimal | SkipReason:
    szi = lead.szi
    if szi == 0:
        return ZERO
    if f.sizing == "ratio":
        target = f.ratio * szi
    elif f.sizing == "equity":
        # Zero equity is what the exchange answers for an unknown address: never scale by it.
        if lead.equity is None or lead.equity <= 0:
            return SkipReason.LEADER_EQUITY_UNKNOWN
        if follower_equity is None or follower_equity <= 0:
            return SkipReason.FOLLOWER_EQUITY_UNKNOWN
        target = szi * follower_equity / lead.equity * f.ratio
    else:
        assert f.fixed_notional_usd is not None  # checked by Follow
        if mid is None:
            return SkipReason.NO_PRICE
        target = _sign(szi) * f.fixed_notional_usd / mid
    if f.mode == "inverse":
        target = -target
    if f.sizing == "fixed_notional" and current != 0 and _sign(current) == _sign(target):
        assert f.fixed_notional_usd is not None
        assert mid is not None
        band = f.fixed_notional_usd * f.fixed_notional_band_bps / BPS
        if abs(abs(current) * mid - f.fixed_notional_usd) <= band:
            target = current  # held: a fixed notional is not re-sized with the price
    return target


def _follow_cap(
    f: Follow, follower: FollowerView, mid: Decimal
) -> tuple[Decimal | None, SkipReason | None]:
    caps: list[Decimal] = []
    reason: SkipReason | None = None
    other = follower.other_notional.get(f.id, ZERO)
    if f.max_notional_per_coin_usd is not None:
        caps.append(f.max_notional_per_coin_usd / mid)
    if f.max_total_notional_usd is not None:
        caps.append((f.max_total_notional_usd - other) / mid)
    if f.max_leverage is not None:
        if follower.equity is None or follower.equity <= 0:
            caps.append(ZERO)
            reason = SkipReason.FOLLOWER_EQUITY_UNKNOWN
        else:
            caps.append((f.max_leverage * follower.equity - other) / mid)
    if not caps:
        return None, None
    return max(ZERO, min(caps)), reason


def _entry_filter(
    f: Follow, lead: LeaderView, mid: Decimal, now_ms: int, trigger: LeaderFill | None
) -> SkipReason | None:
    if lead.szi == 0:
        return None
    ref = lead.last_change_ms
    news = False  # a fill the streams brought while the follow was on
    if trigger is not None and trigger.leader == f.leader:
        ref = trigger.time_ms if ref is None else max(ref, trigger.time_ms)
        # Its block's time may trail the follow's start a little; a REST gap-fill may bring
        # history, so it is not news by this rule.
        news = trigger.source != "rest" and trigger.time_ms >= f.started_ms - EXCHANGE_TIME_LAG_MS
    if ref is None or (ref < f.started_ms and not news):  # the position predates the follow
        if f.entry == "wait":
            return SkipReason.WAITING_ENTRY
        entry = lead.entry_px
        if entry is None or entry <= 0:
            return SkipReason.ADOPT_DEVIATION
        if abs(mid - entry) / entry * BPS > f.adopt_max_deviation_bps:
            return SkipReason.ADOPT_DEVIATION
        return None
    if now_ms - ref > f.max_fill_age_ms:
        return SkipReason.STALE_FILL
    return None


def _plan(
    f: Follow,
    coin: str,
    lead: LeaderView | None,
    follower: FollowerView,
    market: Market,
    state: TradingState,
    now_ms: int,
    trigger: LeaderFill | None,
) -> _Plan:
    current = follower.attributed.get(f.id, ZERO) + follower.pending.get(f.id, ZERO)
    mid = market.mid if market.mid is not None and market.mid > 0 else None
    leader_szi = ZERO if lead is None else lead.szi
    raw = (
        SkipReason.LEADER_UNKNOWN
        if lead is None
        else _raw_target(f, lead, current, follower.equity, mid)
    )

    def hold(reason: SkipReason) -> _Plan:
        known = None if isinstance(raw, SkipReason) else raw
        return _Plan(f, current, leader_szi, known, current, current, None, False, [reason])

    if state == TradingState.HALTED:
        return hold(SkipReason.HALTED)
    if isinstance(raw, SkipReason):
        return hold(raw)
    if mid is None:
        return hold(SkipReason.NO_PRICE)
    if market.asset.delisted:
        return hold(SkipReason.DELISTED)
    assert lead is not None

    notes: list[SkipReason] = []
    cap, cap_reason = _follow_cap(f, follower, mid)
    target = _clamp(raw, current, cap)
    if target != raw:
        notes.append(cap_reason or SkipReason.LIMIT_REACHED)

    clip: SkipReason | None = None
    if (f.coins is not None and coin not in f.coins) or coin in f.exclude_coins:
        clip = SkipReason.COIN_FILTERED
    elif not _in_hours(f.active_hours_utc, now_ms):
        clip = SkipReason.OUTSIDE_HOURS
    elif not lead.confirmed:
        clip = SkipReason.LEADER_UNCONFIRMED
    else:
        clip = _entry_filter(f, lead, mid, now_ms, trigger)
    if clip is None and (state == TradingState.REDUCING or f.winding_down):
        clip = SkipReason.REDUCING_ONLY
    if clip is not None:
        clipped = _clip(target, current)
        if clipped != target:
            notes.append(clip)
        target = clipped
    new = _toward_zero(target, market.asset.sz_decimals)
    return _Plan(f, current, leader_szi, raw, target, new, cap, clip is None, notes)


# --- the account -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Leg:
    kind: Literal["open", "add", "reduce", "close", "flip_close", "flip_open"]
    reduce_only: bool
    shares: dict[str, Decimal]
    notes: set[str] = field(default_factory=set)

    @property
    def sz(self) -> Decimal:
        return sum(self.shares.values(), ZERO)


def _account_room(
    limits: AccountLimits, follower: FollowerView, mid: Decimal, base: Decimal, sz_decimals: int
) -> Decimal | None:
    """How much the account may grow from |position| ``base`` in this coin (None: no limit)."""
    caps: list[Decimal] = []
    if limits.max_coin_notional_usd is not None:
        caps.append(limits.max_coin_notional_usd / mid)
    if limits.max_total_notional_usd is not None:
        caps.append((limits.max_total_notional_usd - follower.other_notional_total) / mid)
    if limits.max_leverage is not None:
        if follower.equity is None or follower.equity <= 0:
            caps.append(ZERO)
        else:
            caps.append(
                (limits.max_leverage * follower.equity - follower.other_notional_total) / mid
            )
    if not caps:
        return None
    return _down(min(caps) - base, sz_decimals)


def _headroom(
    plan: _Plan, position: Decimal, direction: int, extra: Decimal, sz_decimals: int
) -> Decimal:
    """How much more a follow can take in ``direction`` from ``position`` when an order is
    rounded up: only a follow that is growing its exposure, within its limits, filters and risk
    state. A follow that is reducing gets nothing extra: an overshoot toward zero would need a
    small correction the other way, which would round up again — a cycle."""
    if position != 0 and _sign(position) != direction:
        return ZERO
    if not plan.may_add or plan.move == 0 or _sign(plan.move) != direction:
        return ZERO
    if _sign(plan.current) == -direction:
        return ZERO  # its move crosses zero: the extra would be on the side it is leaving
    if plan.cap is None:
        return extra
    return min(extra, _down(plan.cap - abs(position), sz_decimals))


def limit_price(mid: Decimal, direction: int, slippage_bps: int, asset: Asset) -> Decimal | None:
    """mid x (1 +/- slippage) on the tick grid, rounded so a buy never pays more (a sell never
    gets less) than asked; None when the price cannot be put on the grid."""
    raw = mid * (1 + direction * Decimal(slippage_bps) / BPS)
    rounding = Rounding.DOWN if direction > 0 else Rounding.UP
    try:
        return round_price(raw, asset.sz_decimals, asset.is_spot, rounding)
    except WireError:
        return None


def _cut(
    leg: _Leg,
    room: Decimal,
    lot: Decimal,
    blocked: dict[tuple[str, SkipReason], Decimal],
    reason: SkipReason,
) -> None:
    """Shrink a leg to ``room`` (pro rata over its follows) and record what was left out."""
    weights = sorted((k, v) for k, v in leg.shares.items() if v > 0)
    kept = dict(allocate(room, weights, lot))
    for key, share in weights:
        left_out = share - kept[key]
        if left_out:
            blocked[(key, reason)] = blocked.get((key, reason), ZERO) + left_out
    leg.shares = {k: v for k, v in kept.items() if v > 0}


def _legs(
    shares: Mapping[str, Decimal],
    direction: int,
    by_id: Mapping[str, _Plan],
    follower: FollowerView,
    limits: AccountLimits,
    mid: Decimal,
    asset: Asset,
    received: Mapping[str, Decimal],
    account_reducing: bool,
    min_notional: Decimal = MIN_NOTIONAL,
) -> tuple[list[_Leg], Decimal, dict[tuple[str, SkipReason], Decimal]]:
    """The account's order for the net: classified against the position plus what is in flight,
    capped by the account limits, checked against the $10 minimum. Under a global REDUCING only
    the legs that reduce the account's position go (a follow shrinking its own position can
    still grow the account's, when a position opened outside hlcopy is on the other side)."""
    szd = asset.sz_decimals
    lot = _lot(szd)
    blocked: dict[tuple[str, SkipReason], Decimal] = {}
    weights = sorted(shares.items())
    slippage = min(by_id[k].follow.slippage_bps for k in shares)
    limit_px = limit_price(mid, direction, slippage, asset)
    if limit_px is None:
        for key, share in weights:
            blocked[(key, SkipReason.NO_PRICE)] = share
        return [], mid, blocked

    in_flight = any(v != 0 for v in follower.pending.values())
    position = follower.szi + sum(follower.pending.values(), ZERO)
    size = abs(position)
    total = sum(shares.values(), ZERO)
    if position == 0 or _sign(position) == direction:
        legs = [_Leg("open" if position == 0 else "add", False, dict(weights))]
    elif total <= size:
        legs = [_Leg("close" if total == size else "reduce", True, dict(weights))]
    else:
        close = dict(allocate(size, weights, lot))
        rest = {k: v - close[k] for k, v in weights}
        legs = [_Leg("flip_close", True, close), _Leg("flip_open", False, rest)]

    order_cap = (
        None
        if limits.max_order_notional_usd is None
        else _down(limits.max_order_notional_usd / limit_px, szd)
    )
    rooms: list[Decimal | None] = []
    for leg in legs:
        if account_reducing and not leg.reduce_only:
            _cut(leg, ZERO, lot, blocked, SkipReason.REDUCING_ONLY)
        room = order_cap
        if not leg.reduce_only:
            base = size if leg.kind == "add" else ZERO
            account = _account_room(limits, follower, mid, base, szd)
            if account is not None:
                room = account if room is None else min(room, account)
        rooms.append(room)
        if room is not None and leg.sz > room:
            _cut(leg, room, lot, blocked, SkipReason.LIMIT_REACHED)
            leg.notes.add(SkipReason.LIMIT_REACHED.value)
    if len(legs) == 2 and legs[0].sz < size:
        # The close was cut: no open before the position is flat; reduce now, the rest later.
        _cut(legs[1], ZERO, lot, blocked, SkipReason.LIMIT_REACHED)
        legs[0].kind = "reduce"

    done: dict[str, Decimal] = {}
    kept: list[_Leg] = []
    for leg, room in zip(legs, rooms, strict=True):
        if leg.sz == 0:
            continue
        exempt = leg.reduce_only and leg.sz == size and not in_flight
        if (
            not exempt
            and leg.sz * limit_px < min_notional
            and not _round_up(
                leg, room, direction, limit_px, lot, by_id, received, done, szd, min_notional
            )
        ):
            _cut(leg, ZERO, lot, blocked, SkipReason.BELOW_MIN_NOTIONAL)
            if leg.kind == "flip_close":  # no open leg without its close
                _cut(legs[1], ZERO, lot, blocked, SkipReason.BELOW_MIN_NOTIONAL)
            continue
        for key, share in leg.shares.items():
            done[key] = done.get(key, ZERO) + share
        kept.append(leg)
    if len(kept) == 1 and kept[0].kind.startswith("flip_"):
        kept[0].kind = "close" if kept[0].kind == "flip_close" else "open"
    return kept, limit_px, blocked


def _round_up(
    leg: _Leg,
    room: Decimal | None,
    direction: int,
    limit_px: Decimal,
    lot: Decimal,
    by_id: Mapping[str, _Plan],
    received: Mapping[str, Decimal],
    done: Mapping[str, Decimal],
    szd: int,
    min_notional: Decimal = MIN_NOTIONAL,
) -> bool:
    """Raise a leg under $10 to the smallest lot count worth $10 if every follow in it chose
    ``round_up`` and the extra fits within the limits of follows that are growing; True when it
    did. Reductions are never rounded up (a whole close is exempt anyway)."""
    keys = sorted(k for k, v in leg.shares.items() if v > 0)
    if leg.reduce_only or not keys:
        return False
    if any(by_id[k].follow.min_notional_policy != "round_up" for k in keys):
        return False
    lots = (min_notional / (limit_px * lot)).to_integral_value(ROUND_CEILING)
    want = lots * lot
    if room is not None and want > room:
        return False
    extra = want - leg.sz
    heads = []
    for key in keys:
        plan = by_id[key]
        position = plan.current + received.get(key, ZERO) + done.get(key, ZERO) + leg.shares[key]
        heads.append((key, _headroom(plan, position, direction, extra, szd)))
    if sum((h for _, h in heads), ZERO) < extra:
        return False
    for key, add in allocate(extra, heads, lot):
        leg.shares[key] += add
    leg.notes.add("round_up")
    return True


def _intent(
    leg: _Leg,
    *,
    coin: str,
    direction: int,
    limit_px: Decimal,
    by_id: Mapping[str, _Plan],
    trigger: LeaderFill | None,
    attempt: int,
    epoch: int,
    now_ms: int,
    flip: bool,
) -> OrderIntent:
    attribution = tuple(sorted((k, v) for k, v in leg.shares.items() if v > 0))
    first = attribution[0][0]
    leader = trigger.leader if trigger is not None else by_id[first].follow.leader
    tag: Literal["", "close", "open"] = ("close" if leg.reduce_only else "open") if flip else ""
    tid = None if trigger is None else trigger.tid
    notes = set(leg.notes)
    for key, _ in attribution:
        notes.update(n.value for n in by_id[key].notes)
    return OrderIntent(
        cloid=intent_cloid(first, leader, tid, epoch, coin, attempt, tag),
        coin=coin,
        is_buy=direction > 0,
        sz=leg.sz,
        limit_px=limit_px,
        reduce_only=leg.reduce_only,
        reason=";".join([leg.kind, *sorted(notes)]),
        attribution=attribution,
        leader=leader,
        source_tid=tid,
        attempt=attempt,
        decided_ms=now_ms,
    )


def _check_grid(follower: FollowerView, sz_decimals: int) -> None:
    """The follower's sizes are on the coin's lot: its position, and every follow's part and
    pending orders (in one loop: every copy decision checks; names only for the error)."""
    lot = _lot(sz_decimals)
    for value in (follower.szi, *follower.attributed.values(), *follower.pending.values()):
        if _off_grid(value, lot):
            named = (
                ("follower.szi", follower.szi),
                *((f"attributed[{k}]", v) for k, v in sorted(follower.attributed.items())),
                *((f"pending[{k}]", v) for k, v in sorted(follower.pending.items())),
            )
            where, bad = next((n, v) for n, v in named if _off_grid(v, lot))
            raise ValueError(
                f"{where} = {bad} is not a multiple of the lot (szDecimals {sz_decimals})"
            )


def _off_grid(value: Decimal, lot: Decimal) -> bool:
    return bool(value) and (not value.is_finite() or value != value.quantize(lot))


def _decide_one(
    f: Follow,
    lead: LeaderView | None,
    follower: FollowerView,
    market: Market,
    now_ms: int,
    state: TradingState,
    global_risk: TradingState,
    trigger: LeaderFill | None,
    attempt: int,
    epoch: int,
    limits: AccountLimits,
    min_notional: Decimal,
) -> Decision | None:
    """The common case without the general path's bookkeeping (on the bench's daemon, in about
    three fifths of its time): one follow, ACTIVE, nothing filtered, clipped or rounded up, no
    limit binding, one order at or above the minimum. None when any of that does not hold: the
    caller then takes the general path, which decides the same wherever this one applies (a
    property test holds the two together)."""
    mid = market.mid
    asset = market.asset
    coin = asset.name
    if (
        lead is None
        or mid is None
        or mid <= 0
        or asset.delisted
        or not lead.confirmed
        or f.winding_down
        or state != TradingState.ACTIVE
        or global_risk != TradingState.ACTIVE
        or (f.coins is not None and coin not in f.coins)
        or coin in f.exclude_coins
        or not _in_hours(f.active_hours_utc, now_ms)
        or _entry_filter(f, lead, mid, now_ms, trigger) is not None
    ):
        return None
    current = follower.attributed.get(f.id, ZERO) + follower.pending.get(f.id, ZERO)
    raw = _raw_target(f, lead, current, follower.equity, mid)
    if isinstance(raw, SkipReason):
        return None
    cap, _ = _follow_cap(f, follower, mid)
    if cap is not None and abs(raw) > cap:
        return None
    szd = asset.sz_decimals
    move = _toward_zero(raw, szd) - current
    if move == 0:
        return None
    direction = _sign(move)
    share = move if direction > 0 else -move
    sz = ZERO + share  # as the general path sums a leg's shares
    in_flight = False
    pending = ZERO
    for v in follower.pending.values():  # as sum() adds them, in order
        pending += v
        in_flight = in_flight or v != 0
    position = follower.szi + pending
    size = abs(position)
    kind: Literal["open", "add", "reduce", "close"]
    if position == 0 or _sign(position) == direction:
        kind, reduce_only = ("open" if position == 0 else "add"), False
    elif sz <= size:
        kind, reduce_only = ("close" if sz == size else "reduce"), True
    else:
        return None  # a flip: a close and an open
    limit_px = limit_price(mid, direction, f.slippage_bps, asset)
    if limit_px is None:
        return None
    room = (
        None
        if limits.max_order_notional_usd is None
        else _down(limits.max_order_notional_usd / limit_px, szd)
    )
    if not reduce_only:
        account = _account_room(limits, follower, mid, size if kind == "add" else ZERO, szd)
        if account is not None:
            room = account if room is None else min(room, account)
    if room is not None and sz > room:
        return None
    exempt = reduce_only and sz == size and not in_flight
    if not exempt and sz * limit_px < min_notional:
        return None
    leader = f.leader if trigger is None else trigger.leader
    tid = None if trigger is None else trigger.tid
    intent = OrderIntent(
        cloid=intent_cloid(f.id, leader, tid, epoch, coin, attempt),
        coin=coin,
        is_buy=direction > 0,
        sz=sz,
        limit_px=limit_px,
        reduce_only=reduce_only,
        reason=kind,
        attribution=((f.id, share),),
        leader=leader,
        source_tid=tid,
        attempt=attempt,
        decided_ms=now_ms,
    )
    target = TargetPosition(f.id, coin, raw, lead.szi, now_ms)
    return Decision(coin, (intent,), (), (), (target,))


def decide(
    *,
    follows: Sequence[Follow],
    leaders: Mapping[str, LeaderView],
    follower: FollowerView,
    market: Market,
    now_ms: int,
    risk: Mapping[str, TradingState] | None = None,
    global_risk: TradingState = TradingState.ACTIVE,
    trigger: LeaderFill | None = None,
    attempt: int = 0,
    epoch: int = 0,
    account_limits: AccountLimits | None = None,
    min_notional: Decimal = MIN_NOTIONAL,
) -> Decision:
    """Decide the orders, skips and transfers for one coin (``market.asset.name``).

    ``leaders`` is keyed by leader address, ``risk`` by follow id (missing: ACTIVE); the state
    that applies to a follow is the more severe of its own and ``global_risk``.
    ``min_notional`` is the exchange's order minimum (the backtest can set it to 0 to see a
    copy without it).
    """
    asset = market.asset
    coin = asset.name
    szd = asset.sz_decimals
    limits = account_limits or AccountLimits()
    risk = risk or {}
    if len(follows) == 1:  # the common case, without a sort and a set per leader fill
        ordered: Sequence[Follow] = follows
    else:
        ordered = sorted(follows, key=lambda f: f.id)
        if len({f.id for f in ordered}) != len(ordered):
            raise ValueError("follow ids must be unique")
    if trigger is not None and trigger.coin != coin:
        raise ValueError(f"trigger is for {trigger.coin}, decision for {coin}")
    _check_grid(follower, szd)

    if len(ordered) == 1:
        one = _decide_one(
            ordered[0],
            leaders.get(ordered[0].leader),
            follower,
            market,
            now_ms,
            risk.get(ordered[0].id, TradingState.ACTIVE),
            global_risk,
            trigger,
            attempt,
            epoch,
            limits,
            min_notional,
        )
        if one is not None:
            return one
    return _decide_all(
        ordered,
        leaders,
        follower,
        market,
        now_ms,
        risk,
        global_risk,
        trigger,
        attempt,
        epoch,
        limits,
        min_notional,
    )


def _decide_all(
    ordered: Sequence[Follow],
    leaders: Mapping[str, LeaderView],
    follower: FollowerView,
    market: Market,
    now_ms: int,
    risk: Mapping[str, TradingState],
    global_risk: TradingState,
    trigger: LeaderFill | None,
    attempt: int,
    epoch: int,
    limits: AccountLimits,
    min_notional: Decimal,
) -> Decision:
    """``decide`` for any number of follows (sorted by id), its inputs checked."""
    asset = market.asset
    coin = asset.name
    szd = asset.sz_decimals
    lot = _lot(szd)
    plans = [
        _plan(
            f,
            coin,
            leaders.get(f.leader),
            follower,
            market,
            most_severe(global_risk, risk.get(f.id, TradingState.ACTIVE)),
            now_ms,
            trigger,
        )
        for f in ordered
    ]
    by_id = {p.follow.id: p for p in plans}
    targets = tuple(
        TargetPosition(p.follow.id, coin, p.target, p.leader_szi, now_ms) for p in plans
    )
    skips: list[Skip] = []
    intents: list[OrderIntent] = []
    transfers: list[Transfer] = []

    ups = [(p.follow.id, p.move) for p in plans if p.move > 0]
    downs = [(p.follow.id, -p.move) for p in plans if p.move < 0]
    total_up = sum((v for _, v in ups), ZERO)
    total_down = sum((v for _, v in downs), ZERO)
    direction = _sign(total_up - total_down)
    mid = market.mid

    shares: dict[str, Decimal] = {}
    received: dict[str, Decimal] = {}
    if (ups or downs) and mid is not None and not (ups and downs):
        # All moves one way: nothing nets, every move is the order's.
        shares = {k: v for k, v in (ups or downs) if v > 0}
    elif ups and downs and mid is not None:
        # Opposite moves net internally; the majority side's netted part is in proportion.
        if direction > 0:
            netted = allocate(total_down, ups, lot)
            gives, takes = downs, list(netted)
            shares = {k: v - n for (k, v), (_, n) in zip(ups, netted, strict=True)}
        elif direction < 0:
            netted = allocate(total_up, downs, lot)
            gives, takes = list(netted), ups
            shares = {k: v - n for (k, v), (_, n) in zip(downs, netted, strict=True)}
        else:
            gives, takes = downs, ups
        for src, dst, sz in _match(gives, takes):
            transfers.append(Transfer(coin, src, dst, sz, mid))
            received[src] = received.get(src, ZERO) - sz
            received[dst] = received.get(dst, ZERO) + sz
        shares = {k: v for k, v in shares.items() if v > 0}

    if shares and mid is not None:
        legs, limit_px, blocked = _legs(
            shares,
            direction,
            by_id,
            follower,
            limits,
            mid,
            asset,
            received,
            account_reducing=global_risk == TradingState.REDUCING,
            min_notional=min_notional,
        )
        for (key, reason), sz in sorted(blocked.items()):
            skips.append(Skip(key, coin, reason, direction * sz, "order"))
        for leg in legs:
            intents.append(
                _intent(
                    leg,
                    coin=coin,
                    direction=direction,
                    limit_px=limit_px,
                    by_id=by_id,
                    trigger=trigger,
                    attempt=attempt,
                    epoch=epoch,
                    now_ms=now_ms,
                    flip=len(legs) == 2,
                )
            )

    # A follow in an intent has its reasons in the intent's reason; any other wish left out is a
    # skip, even when the follow moved by a transfer.
    in_intent = {key for intent in intents for key, _ in intent.attribution}
    for p in plans:
        key = p.follow.id
        main = p.main_reason
        if main is not None:
            if key in in_intent:
                continue
            raw_new = None if p.raw is None else _toward_zero(p.raw, szd)
            left_out = ZERO if raw_new is None else raw_new - p.new
            if raw_new is None or left_out != 0:
                skips.append(Skip(key, coin, main, left_out, "follow"))
        elif (
            trigger is not None
            and trigger.leader == p.follow.leader
            and p.target != p.current
            and p.move == 0
        ):
            skips.append(Skip(key, coin, SkipReason.BELOW_LOT, p.target - p.current, f"lot {lot}"))
    return Decision(
        coin,
        tuple(intents),
        tuple(sorted(skips, key=lambda s: (s.follow_id, _RANK[s.reason]))),
        tuple(transfers),
        targets,
    )
