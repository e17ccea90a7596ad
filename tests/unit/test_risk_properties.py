"""Rules of risk that hold for any sequence of figures, halts and resumes, checked with
hypothesis: every change is reported with its cause, sticky trips only go with a resume, the state
round-trips through its persisted form, and REDUCING/HALTED never let exposure grow."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from itertools import pairwise

from hlcopy.follow.risk import (
    DAY_MS,
    LIVE,
    STICKY,
    Cause,
    OrderResult,
    RiskEvent,
    RiskInputs,
    RiskLimits,
    RiskState,
    TradingState,
    evaluate,
    halt,
    permits,
    resume,
)
from hypothesis import given
from hypothesis import strategies as st

D = Decimal
T0 = 19_675 * DAY_MS

money = st.decimals(min_value=D(-5000), max_value=D(5000), places=2)
positive = st.decimals(min_value=D(1), max_value=D(5000), places=2)
opt = st.none()

limits = st.builds(
    RiskLimits,
    daily_loss_limit_usd=opt | positive,
    max_drawdown_pct=opt | st.decimals(min_value=D(1), max_value=D(90), places=1),
    max_notional_usd=opt | positive,
    max_leverage=opt | st.decimals(min_value=D(1), max_value=D(20), places=1),
    max_rejects_in_row=opt | st.integers(1, 5),
    max_errors_per_window=opt | st.integers(1, 5),
    leader_leverage_multiple=opt | st.decimals(min_value=D(1), max_value=D(5), places=1),
    leader_drawdown_multiple=opt | st.decimals(min_value=D(1), max_value=D(5), places=1),
)
results = st.lists(
    st.builds(
        OrderResult,
        st.integers(-120_000, 0),
        st.sampled_from(["accepted", "unfilled", "rejected", "error"]),
    ),
    max_size=6,
)
# The figures of one evaluation (limits are added per sequence: a scope's configuration).
known = st.sampled_from([True, True, True, False])


def maybe(values: st.SearchStrategy[Decimal]) -> st.SearchStrategy[Decimal | None]:
    return st.tuples(known, values).map(lambda kv: kv[1] if kv[0] else None)


inputs = st.builds(
    RiskInputs,
    st.just(RiskLimits()),
    pnl=maybe(money),
    equity=maybe(st.decimals(min_value=D(-100), max_value=D(10_000), places=2)),
    notional=maybe(st.decimals(min_value=D(0), max_value=D(20_000), places=2)),
    order_results=results.map(tuple),
    leader_leverage=opt | st.decimals(min_value=D(0), max_value=D(50), places=1),
    leader_leverage_norm=opt | st.decimals(min_value=D(0), max_value=D(10), places=1),
    leader_drawdown_pct=opt | st.decimals(min_value=D(0), max_value=D(100), places=1),
    leader_drawdown_norm_pct=opt | st.decimals(min_value=D(0), max_value=D(30), places=1),
)
# One step: evaluate new figures (most often), a halt, or a resume; and how much time passes.
steps = st.tuples(
    limits,
    st.lists(
        st.tuples(
            st.sampled_from(["evaluate"] * 6 + ["halt", "halt_reducing", "resume"]),
            inputs,
            st.integers(0, DAY_MS // 2),
        ),
        min_size=1,
        max_size=20,
    ),
).map(lambda ls: [(op, replace(inp, limits=ls[0]), dt) for op, inp, dt in ls[1]])


def do(
    state: RiskState, op: str, inp: RiskInputs, now: int
) -> tuple[RiskState, tuple[RiskEvent, ...]]:
    if op == "halt":
        return halt(state, "by hand", now)
    if op == "halt_reducing":
        return halt(state, "by hand", now, level=TradingState.REDUCING)
    if op == "resume":
        return resume(state, "by hand", now)
    # Order results happen before the evaluation that reports them.
    shifted = tuple(OrderResult(now + r.time_ms, r.kind) for r in inp.order_results)
    return evaluate(state, replace(inp, order_results=shifted), now)


@given(steps)
def test_every_change_is_an_event_with_its_cause(seq: list[tuple[str, RiskInputs, int]]) -> None:
    state = RiskState("global")
    now = T0
    for op, inp, dt in seq:
        now += dt
        new, events = do(state, op, inp, now)
        old_causes = {t.cause for t in state.trips}
        new_causes = {t.cause for t in new.trips}
        # The events chain from the old state to the new one.
        if events:
            assert events[0].before == state.state
            assert events[-1].after == new.state
            for a, b in pairwise(events):
                assert a.after == b.before
        else:
            assert new.state == state.state
            assert new_causes == old_causes
        # Every trip fired or cleared is reported with its cause.
        for cause in new_causes - old_causes:
            assert any(e.cause == cause and e.kind == "trip" for e in events), cause
        cleared = old_causes - new_causes
        if op == "resume":
            assert new.trips == ()
            assert sum(e.kind == "clear" and e.cause == Cause.RESUME for e in events) == len(
                cleared
            )
        else:
            for cause in cleared:
                assert cause in LIVE  # sticky trips only go with a resume
                assert any(e.cause == cause and e.kind == "clear" for e in events), cause
        assert all(e.time_ms == now and e.scope == "global" for e in events)
        if op.startswith("halt"):
            assert Cause.API in new_causes
        state = new


@given(steps)
def test_sticky_trips_stay_until_a_resume(seq: list[tuple[str, RiskInputs, int]]) -> None:
    state = RiskState("follow:a")
    now = T0
    for op, inp, dt in seq:
        now += dt
        sticky = {t.cause for t in state.trips if t.cause in STICKY}
        state, _ = do(state, op, inp, now)
        if op != "resume":
            assert sticky <= {t.cause for t in state.trips}
        halted_by = {t.cause for t in state.trips if t.level == TradingState.HALTED}
        assert (state.state == TradingState.HALTED) == bool(halted_by)


@given(steps)
def test_the_state_round_trips_through_its_persisted_form(
    seq: list[tuple[str, RiskInputs, int]],
) -> None:
    state = RiskState("leader:0xabc")
    now = T0
    for op, inp, dt in seq:
        now += dt
        state, _ = do(state, op, inp, now)
        stored = json.loads(json.dumps(state.to_dict()))
        assert RiskState.from_dict(stored) == state


@given(
    st.sampled_from(list(TradingState)),
    st.decimals(min_value=D(-10), max_value=D(10), places=3),
    st.booleans(),
    st.decimals(min_value=D(0), max_value=D(20), places=3),
)
def test_reducing_and_halted_never_let_exposure_grow(
    state: TradingState, position: Decimal, is_buy: bool, sz: Decimal
) -> None:
    after = position + (sz if is_buy else -sz)
    if permits(state, position, is_buy, sz) and state != TradingState.ACTIVE:
        assert state == TradingState.REDUCING
        assert abs(after) < abs(position)
        assert after == 0 or (after > 0) == (position > 0)
    if state == TradingState.HALTED:
        assert not permits(state, position, is_buy, sz)
    if state == TradingState.REDUCING and abs(after) < abs(position) and after * position >= 0:
        assert permits(state, position, is_buy, sz)  # and every reduction does go through
