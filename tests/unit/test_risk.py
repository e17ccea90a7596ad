"""Risk on hand-built cases: every trigger, what clears on its own and what needs a resume, the
API's halt and resume, and the order gate."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hlcopy.follow.risk import (
    DAY_MS,
    REFUSED_BEFORE_SENDING,
    Cause,
    OrderResult,
    RiskEvent,
    RiskInputs,
    RiskLimits,
    RiskState,
    TradingState,
    evaluate,
    halt,
    most_severe,
    permits,
    result_of,
    resume,
)
from hlcopy.model import OrderOutcome

D = Decimal
ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
DAY0 = 19_675 * DAY_MS  # 2023-11-14 00:00 UTC
T = DAY0 + 10 * 3_600_000


def step(state: RiskState, now: int = T, **kw: object) -> tuple[RiskState, tuple[RiskEvent, ...]]:
    limits = kw.pop("limits", RiskLimits())
    return evaluate(state, RiskInputs(limits, **kw), now)  # type: ignore[arg-type]


def causes(events: tuple[RiskEvent, ...]) -> list[tuple[Cause, str, TradingState]]:
    return [(e.cause, e.kind, e.after) for e in events]


# --- daily loss ------------------------------------------------------------------------------

LOSS = RiskLimits(daily_loss_limit_usd=D("100"))


def test_the_daily_loss_halts_at_its_limit_and_not_before() -> None:
    s, ev = step(RiskState("global"), pnl=D("500"), limits=LOSS)  # the day's baseline
    assert (s.state, ev) == (ACTIVE, ())
    s, ev = step(s, T + 1, pnl=D("400.01"), limits=LOSS)
    assert s.state == ACTIVE
    s, ev = step(s, T + 2, pnl=D("400"), limits=LOSS)
    assert s.state == HALTED
    assert causes(ev) == [(Cause.DAILY_LOSS, "trip", HALTED)]
    assert ev[0].before == ACTIVE
    assert ev[0].changed
    assert "lost 100" in ev[0].detail


def test_a_daily_loss_halt_outlives_midnight_but_the_baseline_rolls_over() -> None:
    s, _ = step(RiskState("global"), pnl=D("0"), limits=LOSS)
    s, _ = step(s, T + 1, pnl=D("-150"), limits=LOSS)
    assert s.state == HALTED
    s, ev = step(s, DAY0 + DAY_MS + 5, pnl=D("-150"), limits=LOSS)
    assert s.state == HALTED  # sticky: a human looks before it trades again
    assert ev == ()
    assert (s.day, s.day_start_pnl) == (DAY0 // DAY_MS + 1, D("-150"))


def test_a_resume_forgives_the_days_loss_so_far() -> None:
    s, _ = step(RiskState("global"), pnl=D("0"), limits=LOSS)
    s, _ = step(s, T + 1, pnl=D("-150"), limits=LOSS)
    s, ev = resume(s, "checked by ops", T + 2)
    assert s.state == ACTIVE
    assert causes(ev) == [(Cause.RESUME, "clear", ACTIVE)]
    assert "daily_loss cleared by resume: checked by ops" in ev[0].detail
    s, _ = step(s, T + 3, pnl=D("-249"), limits=LOSS)
    assert s.state == ACTIVE  # measured from -150 now
    s, _ = step(s, T + 4, pnl=D("-250"), limits=LOSS)
    assert s.state == HALTED


# --- drawdown --------------------------------------------------------------------------------

DD = RiskLimits(max_drawdown_pct=D("20"))


def test_drawdown_from_the_high_water_mark_switches_to_reducing_and_sticks() -> None:
    s, _ = step(RiskState("global"), equity=D("1000"), limits=DD)
    s, _ = step(s, T + 1, equity=D("1200"), limits=DD)
    s, _ = step(s, T + 2, equity=D("961"), limits=DD)
    assert s.state == ACTIVE  # 19.9% below 1200
    s, ev = step(s, T + 3, equity=D("960"), limits=DD)
    assert causes(ev) == [(Cause.DRAWDOWN, "trip", REDUCING)]
    s, ev = step(s, T + 4, equity=D("2000"), limits=DD)
    assert s.state == REDUCING  # recovery does not lift it
    assert ev == ()
    s, _ = resume(s, "ok", T + 5)
    assert s.hwm == D("2000")  # re-based at the last equity seen
    s, _ = step(s, T + 6, equity=D("1700"), limits=DD)
    assert s.state == ACTIVE


# --- exposure (live) -------------------------------------------------------------------------


def test_exposure_beyond_a_limit_reduces_and_clears_itself_with_hysteresis() -> None:
    lim = RiskLimits(max_notional_usd=D("10000"))
    s, ev = step(RiskState("follow:a"), notional=D("10001"), limits=lim)
    assert causes(ev) == [(Cause.EXPOSURE, "trip", REDUCING)]
    s, ev = step(s, T + 1, notional=D("9500"), limits=lim)
    assert (s.state, ev) == (REDUCING, ())  # between 90% and 100%: still reducing
    s, ev = step(s, T + 2, notional=D("9000"), limits=lim)
    assert causes(ev) == [(Cause.EXPOSURE, "clear", ACTIVE)]
    s, ev = step(s, T + 3, limits=lim)  # unknown notional: nothing judged
    assert (s.state, ev) == (ACTIVE, ())


def test_leverage_is_notional_over_equity() -> None:
    lim = RiskLimits(max_leverage=D("3"))
    s, _ = step(RiskState("global"), notional=D("3000"), equity=D("1000"), limits=lim)
    assert s.state == ACTIVE
    s, _ = step(s, T + 1, notional=D("3001"), equity=D("1000"), limits=lim)
    assert s.state == REDUCING
    s, _ = step(RiskState("global"), notional=D("1"), equity=D("0"), limits=lim)
    assert s.state == REDUCING  # exposure with no equity behind it


# --- order errors ----------------------------------------------------------------------------


def results(*kinds: str, start: int = T - 5_000) -> tuple[OrderResult, ...]:
    return tuple(OrderResult(start + i, k) for i, k in enumerate(kinds))  # type: ignore[arg-type]


def test_rejects_in_a_row_halt_and_an_accepted_order_resets_the_streak() -> None:
    lim = RiskLimits(max_rejects_in_row=3, max_errors_per_window=None)
    s, _ = step(RiskState("global"), order_results=results("rejected", "rejected"), limits=lim)
    assert (s.state, s.reject_streak) == (ACTIVE, 2)
    s, _ = step(s, order_results=results("accepted", "rejected", "unfilled", "error"), limits=lim)
    assert (s.state, s.reject_streak) == (ACTIVE, 1)  # unfilled and error neither reset nor add
    s, ev = step(s, order_results=results("rejected", "rejected"), limits=lim)
    assert causes(ev) == [(Cause.REJECT_STREAK, "trip", HALTED)]
    s, _ = step(s, order_results=results("accepted"), limits=lim)
    assert s.state == HALTED  # sticky
    s, _ = resume(s, "fixed the key", T + 1)
    assert (s.state, s.reject_streak) == (ACTIVE, 0)


def test_errors_within_a_minute_halt_but_spread_out_they_do_not() -> None:
    lim = RiskLimits(max_rejects_in_row=None, max_errors_per_window=3, error_window_ms=60_000)
    spread = tuple(OrderResult(T - 61_000 * i, "error") for i in range(5))
    s, _ = step(RiskState("global"), order_results=spread, limits=lim)
    assert s.state == ACTIVE
    assert len(s.error_times) == 1
    s, _ = step(s, order_results=results("rejected", "error"), limits=lim)
    assert s.state == HALTED
    assert s.trip(Cause.ERROR_RATE) is not None


def test_outcomes_map_to_breaker_results() -> None:
    def kind(status: str, error: str | None = None) -> str:
        return result_of(OrderOutcome("0x" + "0" * 32, status, error=error, time_ms=5)).kind  # type: ignore[arg-type]

    assert kind("filled") == kind("partial") == kind("resting") == "accepted"
    assert kind("rejected", "Insufficient margin to place order. asset=4") == "rejected"
    no_match = "Order could not immediately match against any resting orders. asset=4"
    assert kind("rejected", no_match) == "unfilled"
    # Refused by hlcopy itself (risk state, action budget): it never reached the exchange.
    assert kind("rejected", REFUSED_BEFORE_SENDING + "trading is REDUCING") == "unfilled"
    assert kind("unknown") == kind("never_arrived") == "error"


# --- the leader's behaviour (live) -----------------------------------------------------------


def test_a_leader_beyond_its_norm_puts_its_follows_in_reducing() -> None:
    lim = RiskLimits(leader_leverage_multiple=D("2"), leader_drawdown_multiple=D("3"))
    s = RiskState(f"leader:{'0x' + 'a' * 40}")
    s, ev = step(s, leader_leverage=D("8.1"), leader_leverage_norm=D("4"), limits=lim)
    assert causes(ev) == [(Cause.LEADER_LEVERAGE, "trip", REDUCING)]
    s, ev = step(s, T + 1, leader_leverage=D("7.2"), leader_leverage_norm=D("4"), limits=lim)
    assert causes(ev) == [(Cause.LEADER_LEVERAGE, "clear", ACTIVE)]
    s, ev = step(
        s, T + 2, leader_drawdown_pct=D("31"), leader_drawdown_norm_pct=D("10"), limits=lim
    )
    assert causes(ev) == [(Cause.LEADER_DRAWDOWN, "trip", REDUCING)]
    # No norm to compare with: nothing is judged.
    s2, ev = step(
        RiskState("leader:x"), leader_leverage=D("50"), leader_leverage_norm=D("0"), limits=lim
    )
    assert (s2.state, ev) == (ACTIVE, ())


# --- the API ---------------------------------------------------------------------------------


def test_the_api_halts_and_resumes_with_a_reason() -> None:
    s, ev = halt(RiskState("global"), "exchange incident", T)
    assert s.state == HALTED
    assert causes(ev) == [(Cause.API, "trip", HALTED)]
    assert ev[0].detail == "exchange incident"
    s, ev = step(s, T + 1, notional=D("0"), limits=RiskLimits(max_notional_usd=D("1")))
    assert s.state == HALTED  # only a resume clears it
    s, ev = resume(s, "incident over", T + 2)
    assert s.state == ACTIVE
    assert [(e.cause, e.before, e.after) for e in ev] == [(Cause.RESUME, HALTED, ACTIVE)]
    s, ev = halt(s, "only close", T + 3, level=REDUCING)
    assert s.state == REDUCING
    with pytest.raises(ValueError, match="REDUCING or HALTED"):
        halt(s, "no", T, level=ACTIVE)


def test_a_resume_cannot_hide_a_live_breach() -> None:
    lim = RiskLimits(max_notional_usd=D("100"))
    s, _ = step(RiskState("global"), notional=D("500"), limits=lim)
    s, _ = halt(s, "manual", T + 1)
    s, ev = resume(s, "go", T + 2)
    assert s.state == ACTIVE
    assert {e.cause for e in ev} == {Cause.RESUME}
    assert len(ev) == 2  # the api halt and the exposure trip, each cleared with an event
    s, ev = step(s, T + 3, notional=D("500"), limits=lim)
    assert causes(ev) == [(Cause.EXPOSURE, "trip", REDUCING)]


def test_several_causes_the_state_is_the_most_severe() -> None:
    s, _ = step(RiskState("global"), notional=D("500"), limits=RiskLimits(max_notional_usd=D("1")))
    s, ev = halt(s, "stop", T + 1)
    assert (ev[0].before, ev[0].after) == (REDUCING, HALTED)
    assert most_severe(ACTIVE, REDUCING) == REDUCING
    assert most_severe(HALTED, ACTIVE) == HALTED
    assert most_severe() == ACTIVE


def test_persisted_state_round_trips_and_refuses_unknown_versions() -> None:
    s, _ = step(RiskState("global"), pnl=D("1.5"), equity=D("10"), limits=LOSS)
    s, _ = halt(s, "x", T)
    assert RiskState.from_dict(s.to_dict()) == s
    data = s.to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="version"):
        RiskState.from_dict(data)


@pytest.mark.parametrize(
    "kw",
    [
        {"daily_loss_limit_usd": D(0)},
        {"max_drawdown_pct": D(-1)},
        {"max_rejects_in_row": 0},
        {"error_window_ms": 0},
        {"clear_fraction": D("1.5")},
    ],
)
def test_nonsense_limits_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RiskLimits(**kw)  # type: ignore[arg-type]


# --- the gate --------------------------------------------------------------------------------


def test_the_gate_lets_only_reductions_through_when_reducing() -> None:
    assert permits(ACTIVE, D("0"), True, D("1"))
    assert permits(REDUCING, D("2"), False, D("2"))
    assert not permits(REDUCING, D("2"), False, D("2.1"))  # would flip
    assert not permits(REDUCING, D("2"), True, D("1"))
    assert not permits(REDUCING, D("0"), False, D("1"))
    assert permits(REDUCING, D("-2"), True, D("1"))
    assert not permits(HALTED, D("2"), False, D("1"))
