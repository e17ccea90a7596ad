"""Risk: a pure state machine per scope (the follower account, one follow, one leader).

A scope is ACTIVE, REDUCING (only orders that reduce exposure) or HALTED (no orders at all; the
shell may still cancel). The state is the most severe of the scope's active *trips*; each trip has
a cause, a level, the time it fired and a detail line. ``evaluate`` takes the scope's latest
figures and returns the new state and one ``RiskEvent`` per trip fired or cleared, so every
transition is recorded with its cause. The copier applies the most severe of the global, leader
and follow states (``most_severe``).

Triggers and whether they clear on their own:

- **daily loss** (sticky, HALTED): ``pnl`` - the PnL at the start of the UTC day ≥
  ``daily_loss_limit_usd``. The baseline rolls over at 00:00 UTC (the first evaluation of a new
  day), but the halt itself does *not* lift at midnight: an account that lost its daily limit
  gets a human look before it trades again. A resume re-bases the day at the last PnL seen.
- **drawdown** (sticky, REDUCING): the equity's fall from its high-water mark ≥
  ``max_drawdown_pct`` percent. A resume re-bases the high-water mark at the last equity seen.
- **reject streak** (sticky, HALTED): ``max_rejects_in_row`` definite rejections in a row; an
  accepted order resets the streak, an IOC that found nothing to match ("unfilled") and a
  transport error neither extend nor reset it.
- **error rate** (sticky, HALTED): ``max_errors_per_window`` rejections or errors within
  ``error_window_ms`` (a minute by default).
- **exposure** (live, REDUCING): gross notional > ``max_notional_usd`` or notional / equity >
  ``max_leverage``. Clears on its own once both are at or below ``clear_fraction`` of their limit
  (hysteresis, so a position sitting on the limit does not flap).
- **leader leverage / leader drawdown** (live, REDUCING): the leader's leverage (drawdown) above
  ``leader_leverage_multiple`` (``leader_drawdown_multiple``) x its 30-day norm. Clear on their
  own below ``clear_fraction`` of the threshold. A norm of zero or an unknown figure judges
  nothing.
- **api** (sticky, HALTED or REDUCING): ``halt`` with a reason; only ``resume`` clears it.

``resume`` (the authenticated API) always overrides: it clears every trip, sticky or live. A live
condition that still holds trips again at the next evaluation, with its cause, so a resume can
never hide a fact; it only forgives the past (the day's loss, the old high-water mark, the error
counters) for the trips it cleared. An unknown input (None) never trips and never clears.

The state is plain data (``to_dict``/``from_dict``, JSON-safe): the shell persists it after every
change, so a restart keeps a halt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from hlcopy.model import OrderOutcome
from hlcopy.record import record

DAY_MS = 86_400_000
STATE_VERSION = 1
HUNDRED = Decimal(100)


class TradingState(StrEnum):
    """What a scope may do; later members are more severe."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


def most_severe(*states: TradingState) -> TradingState:
    """The state that binds when several scopes apply (global, leader, follow)."""
    worst = TradingState.ACTIVE
    for s in states:  # a plain loop: this runs in every copy decision
        if s is not worst and _SEVERITY[s] > _SEVERITY[worst]:
            worst = s
    return worst


def permits(state: TradingState, position: Decimal, is_buy: bool, sz: Decimal) -> bool:
    """Whether ``state`` lets an order of ``sz`` through against ``position`` (signed): ACTIVE
    anything, REDUCING only an order that shrinks |position| without crossing zero, HALTED
    nothing. The copier already obeys this; the executor checks it again before sending."""
    if state == TradingState.ACTIVE:
        return True
    if state == TradingState.HALTED or sz <= 0:
        return False
    return (position > 0 and not is_buy and sz <= position) or (
        position < 0 and is_buy and sz <= -position
    )


class Cause(StrEnum):
    DAILY_LOSS = "daily_loss"
    DRAWDOWN = "drawdown"
    EXPOSURE = "exposure"
    REJECT_STREAK = "reject_streak"
    ERROR_RATE = "error_rate"
    LEADER_LEVERAGE = "leader_leverage"
    LEADER_DRAWDOWN = "leader_drawdown"
    API = "api"
    RESUME = "resume"


#: Trips that only a resume clears.
STICKY = frozenset(
    {Cause.DAILY_LOSS, Cause.DRAWDOWN, Cause.REJECT_STREAK, Cause.ERROR_RATE, Cause.API}
)
#: Trips that clear on their own when the measurement is back within its band.
LIVE = frozenset({Cause.EXPOSURE, Cause.LEADER_LEVERAGE, Cause.LEADER_DRAWDOWN})


@record
class Trip:
    """One active condition of a scope."""

    cause: Cause
    level: TradingState
    since_ms: int
    detail: str


@record
class RiskEvent:
    """A trip fired (``kind="trip"``) or cleared (``"clear"``), with the state around it."""

    scope: str
    time_ms: int
    cause: Cause
    kind: Literal["trip", "clear"]
    before: TradingState
    after: TradingState
    detail: str

    @property
    def changed(self) -> bool:
        """Whether the scope's state itself changed (not only its set of causes)."""
        return self.before != self.after


OrderResultKind = Literal["accepted", "unfilled", "rejected", "error"]


@record
class OrderResult:
    """What became of one order, for the error breakers.

    ``accepted``: on the book or (partly) filled. ``unfilled``: an IOC that found nothing to match
    (market conditions, not a fault). ``rejected``: a definite refusal. ``error``: no definite
    answer (timeout, transport, settled as never arrived).
    """

    time_ms: int
    kind: OrderResultKind


_IOC_NO_MATCH = "Order could not immediately match"
#: How a live order refused by hlcopy itself (risk state, action budget) begins its error: it
#: never reached the exchange, so it is no rejection for the breakers.
REFUSED_BEFORE_SENDING = "refused before sending: "


def result_of(outcome: OrderOutcome) -> OrderResult:
    """Classify an ``OrderOutcome`` for the breakers."""
    if outcome.status in ("filled", "partial", "resting"):
        return OrderResult(outcome.time_ms, "accepted")
    if outcome.status == "rejected":
        if (outcome.error or "").startswith((_IOC_NO_MATCH, REFUSED_BEFORE_SENDING)):
            return OrderResult(outcome.time_ms, "unfilled")
        return OrderResult(outcome.time_ms, "rejected")
    return OrderResult(outcome.time_ms, "error")


@record
class RiskLimits:
    """A scope's thresholds; None disables a trigger."""

    daily_loss_limit_usd: Decimal | None = None
    max_drawdown_pct: Decimal | None = None  # percent: 20 means 20 %
    max_notional_usd: Decimal | None = None
    max_leverage: Decimal | None = None
    max_rejects_in_row: int | None = 5
    max_errors_per_window: int | None = 20
    error_window_ms: int = 60_000
    leader_leverage_multiple: Decimal | None = None
    leader_drawdown_multiple: Decimal | None = None
    clear_fraction: Decimal = Decimal("0.9")

    def __post_init__(self) -> None:
        for name in (
            "daily_loss_limit_usd",
            "max_drawdown_pct",
            "max_notional_usd",
            "max_leverage",
            "leader_leverage_multiple",
            "leader_drawdown_multiple",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("max_rejects_in_row", "max_errors_per_window"):
            count = getattr(self, name)
            if count is not None and count < 1:
                raise ValueError(f"{name} must be at least 1, got {count}")
        if self.error_window_ms <= 0:
            raise ValueError("error_window_ms must be positive")
        if not 0 < self.clear_fraction <= 1:
            raise ValueError("clear_fraction must be in (0, 1]")


@record
class RiskInputs:
    """The scope's latest figures; None means unknown (judges nothing).

    ``pnl`` is the scope's cumulative PnL (realised + unrealised - fees + funding), unaffected by
    deposits. ``equity`` is the value drawdown is measured on; for the account, net of deposits
    and withdrawals (or a withdrawal reads as a drawdown). ``notional`` is the gross exposure.
    ``order_results`` are the orders settled since the previous evaluation, oldest first.
    """

    limits: RiskLimits
    pnl: Decimal | None = None
    equity: Decimal | None = None
    notional: Decimal | None = None
    order_results: tuple[OrderResult, ...] = ()
    leader_leverage: Decimal | None = None
    leader_leverage_norm: Decimal | None = None
    leader_drawdown_pct: Decimal | None = None
    leader_drawdown_norm_pct: Decimal | None = None


@record
class RiskState:
    """One scope's persisted risk state. ``scope`` names it ("global", "follow:<id>", ...)."""

    scope: str
    trips: tuple[Trip, ...] = ()
    day: int | None = None
    day_start_pnl: Decimal | None = None
    hwm: Decimal | None = None
    reject_streak: int = 0
    error_times: tuple[int, ...] = ()
    last_pnl: Decimal | None = None
    last_equity: Decimal | None = None

    @property
    def state(self) -> TradingState:
        if not self.trips:
            return TradingState.ACTIVE
        return most_severe(*(t.level for t in self.trips))

    def trip(self, cause: Cause) -> Trip | None:
        for t in self.trips:
            if t.cause == cause:
                return t
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: Decimals as strings, enums as their values."""
        return {
            "version": STATE_VERSION,
            "scope": self.scope,
            "trips": [
                {
                    "cause": t.cause.value,
                    "level": t.level.value,
                    "since_ms": t.since_ms,
                    "detail": t.detail,
                }
                for t in self.trips
            ],
            "day": self.day,
            "day_start_pnl": _opt_str(self.day_start_pnl),
            "hwm": _opt_str(self.hwm),
            "reject_streak": self.reject_streak,
            "error_times": list(self.error_times),
            "last_pnl": _opt_str(self.last_pnl),
            "last_equity": _opt_str(self.last_equity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown risk state version {data.get('version')!r}")
        return cls(
            scope=str(data["scope"]),
            trips=_sorted(
                Trip(
                    cause=Cause(t["cause"]),
                    level=TradingState(t["level"]),
                    since_ms=int(t["since_ms"]),
                    detail=str(t["detail"]),
                )
                for t in data["trips"]
            ),
            day=None if data["day"] is None else int(data["day"]),
            day_start_pnl=_opt_dec(data["day_start_pnl"]),
            hwm=_opt_dec(data["hwm"]),
            reject_streak=int(data["reject_streak"]),
            error_times=tuple(int(t) for t in data["error_times"]),
            last_pnl=_opt_dec(data["last_pnl"]),
            last_equity=_opt_dec(data["last_equity"]),
        )


def _opt_str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _opt_dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _sorted(trips: Iterable[Trip]) -> tuple[Trip, ...]:
    return tuple(sorted(trips, key=lambda t: t.cause.value))


class _Log:
    """Applies trip changes one at a time so each event knows the state before and after."""

    def __init__(self, state: RiskState, now_ms: int) -> None:
        self.state = state
        self.now_ms = now_ms
        self.events: list[RiskEvent] = []

    def fire(self, cause: Cause, level: TradingState, detail: str) -> None:
        current = self.state.trip(cause)
        if current is not None and current.level == level:
            return
        before = self.state.state
        others = [t for t in self.state.trips if t.cause != cause]
        self.state = replace(
            self.state, trips=_sorted([*others, Trip(cause, level, self.now_ms, detail)])
        )
        self.events.append(
            RiskEvent(
                self.state.scope, self.now_ms, cause, "trip", before, self.state.state, detail
            )
        )

    def clear(self, cause: Cause, detail: str, event_cause: Cause | None = None) -> None:
        if self.state.trip(cause) is None:
            return
        before = self.state.state
        self.state = replace(
            self.state, trips=tuple(t for t in self.state.trips if t.cause != cause)
        )
        self.events.append(
            RiskEvent(
                self.state.scope,
                self.now_ms,
                event_cause or cause,
                "clear",
                before,
                self.state.state,
                detail,
            )
        )


def evaluate(
    state: RiskState, inputs: RiskInputs, now_ms: int
) -> tuple[RiskState, tuple[RiskEvent, ...]]:
    """Advance one scope with its latest figures; returns the new state and what changed."""
    limits = inputs.limits
    log = _Log(state, now_ms)
    _track_baselines(log, inputs, now_ms)
    _check_daily_loss(log, inputs)
    _check_drawdown(log, inputs)
    _check_errors(log, inputs, now_ms)
    _check_live(
        log,
        Cause.EXPOSURE,
        _exposure_ratio(inputs),
        Decimal(1),
        limits.clear_fraction,
        "exposure",
    )
    _check_live(
        log,
        Cause.LEADER_LEVERAGE,
        _norm_ratio(inputs.leader_leverage, inputs.leader_leverage_norm),
        limits.leader_leverage_multiple,
        limits.clear_fraction,
        "leader leverage / 30-day norm",
    )
    _check_live(
        log,
        Cause.LEADER_DRAWDOWN,
        _norm_ratio(inputs.leader_drawdown_pct, inputs.leader_drawdown_norm_pct),
        limits.leader_drawdown_multiple,
        limits.clear_fraction,
        "leader drawdown / 30-day norm",
    )
    return log.state, tuple(log.events)


def _track_baselines(log: _Log, inputs: RiskInputs, now_ms: int) -> None:
    s = log.state
    day = now_ms // DAY_MS
    changes: dict[str, Any] = {}  # one replace: every scope is evaluated every second
    if inputs.pnl is not None:
        if s.day != day or s.day_start_pnl is None:
            changes["day"] = day
            changes["day_start_pnl"] = inputs.pnl
        if s.last_pnl != inputs.pnl:
            changes["last_pnl"] = inputs.pnl
    if inputs.equity is not None:
        hwm = inputs.equity if s.hwm is None else max(s.hwm, inputs.equity)
        if s.hwm != hwm:
            changes["hwm"] = hwm
        if s.last_equity != inputs.equity:
            changes["last_equity"] = inputs.equity
    if changes:
        log.state = replace(s, **changes)


def _check_daily_loss(log: _Log, inputs: RiskInputs) -> None:
    limit = inputs.limits.daily_loss_limit_usd
    s = log.state
    if limit is None or inputs.pnl is None or s.day_start_pnl is None:
        return
    loss = s.day_start_pnl - inputs.pnl
    if loss >= limit:
        log.fire(
            Cause.DAILY_LOSS,
            TradingState.HALTED,
            f"lost {loss} since 00:00 UTC (limit {limit})",
        )


def _check_drawdown(log: _Log, inputs: RiskInputs) -> None:
    limit = inputs.limits.max_drawdown_pct
    s = log.state
    if limit is None or inputs.equity is None or s.hwm is None or s.hwm <= 0:
        return
    drawdown_pct = (s.hwm - inputs.equity) / s.hwm * HUNDRED
    if drawdown_pct >= limit:
        log.fire(
            Cause.DRAWDOWN,
            TradingState.REDUCING,
            f"drawdown {drawdown_pct:.2f}% from high-water mark {s.hwm} (limit {limit}%)",
        )


def _check_errors(log: _Log, inputs: RiskInputs, now_ms: int) -> None:
    limits = inputs.limits
    s = log.state
    streak = s.reject_streak
    times = list(s.error_times)
    for result in inputs.order_results:
        if result.kind == "accepted":
            streak = 0
        elif result.kind == "rejected":
            streak += 1
            times.append(result.time_ms)
        elif result.kind == "error":
            times.append(result.time_ms)
    horizon = now_ms - limits.error_window_ms
    times = sorted(t for t in times if t > horizon)
    if limits.max_errors_per_window is not None:
        times = times[-limits.max_errors_per_window :]  # bounded: only the count matters
    kept = tuple(times)
    if streak != s.reject_streak or kept != s.error_times:
        log.state = replace(s, reject_streak=streak, error_times=kept)
    if limits.max_rejects_in_row is not None and streak >= limits.max_rejects_in_row:
        log.fire(
            Cause.REJECT_STREAK,
            TradingState.HALTED,
            f"{streak} orders rejected in a row (limit {limits.max_rejects_in_row})",
        )
    if limits.max_errors_per_window is not None and len(times) >= limits.max_errors_per_window:
        log.fire(
            Cause.ERROR_RATE,
            TradingState.HALTED,
            f"{len(times)} order errors within {limits.error_window_ms} ms"
            f" (limit {limits.max_errors_per_window})",
        )


def _exposure_ratio(inputs: RiskInputs) -> Decimal | None:
    """The larger of notional/limit and leverage/limit; None when nothing can be judged."""
    limits = inputs.limits
    ratios: list[Decimal] = []
    if limits.max_notional_usd is not None and inputs.notional is not None:
        ratios.append(abs(inputs.notional) / limits.max_notional_usd)
    if (
        limits.max_leverage is not None
        and inputs.notional is not None
        and inputs.equity is not None
    ):
        if inputs.equity > 0:
            ratios.append(abs(inputs.notional) / inputs.equity / limits.max_leverage)
        elif inputs.notional != 0:
            ratios.append(Decimal("Infinity"))  # exposure with no equity behind it
    return max(ratios) if ratios else None


def _norm_ratio(value: Decimal | None, norm: Decimal | None) -> Decimal | None:
    if value is None or norm is None or norm <= 0:
        return None
    return value / norm


def _check_live(
    log: _Log,
    cause: Cause,
    ratio: Decimal | None,
    threshold: Decimal | None,
    clear_fraction: Decimal,
    what: str,
) -> None:
    """Trip above ``threshold``; clear at or below ``clear_fraction`` x ``threshold``."""
    if ratio is None or threshold is None:
        return
    if ratio > threshold:
        log.fire(cause, TradingState.REDUCING, f"{what} at {ratio:.4g} (threshold {threshold})")
    elif ratio <= threshold * clear_fraction:
        log.clear(cause, f"{what} back to {ratio:.4g} (clears at {threshold * clear_fraction})")


def halt(
    state: RiskState, reason: str, now_ms: int, level: TradingState = TradingState.HALTED
) -> tuple[RiskState, tuple[RiskEvent, ...]]:
    """The API's halt (or, with ``level=REDUCING``, its reduce-only switch); sticky."""
    if level == TradingState.ACTIVE:
        raise ValueError("halt needs REDUCING or HALTED")
    log = _Log(state, now_ms)
    log.fire(Cause.API, level, reason)
    return log.state, tuple(log.events)


def resume(state: RiskState, reason: str, now_ms: int) -> tuple[RiskState, tuple[RiskEvent, ...]]:
    """The API's resume: clears every trip and forgives the past of the ones it cleared."""
    log = _Log(state, now_ms)
    s = log.state
    if s.trip(Cause.DAILY_LOSS) is not None:
        s = replace(s, day_start_pnl=s.last_pnl)
    if s.trip(Cause.DRAWDOWN) is not None:
        s = replace(s, hwm=s.last_equity)
    if s.trip(Cause.REJECT_STREAK) is not None or s.trip(Cause.ERROR_RATE) is not None:
        s = replace(s, reject_streak=0, error_times=())
    log.state = s
    for trip in s.trips:
        log.clear(trip.cause, f"{trip.cause.value} cleared by resume: {reason}", Cause.RESUME)
    return log.state, tuple(log.events)
