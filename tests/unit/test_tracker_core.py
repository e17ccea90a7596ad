"""The tracker's pure parts: snapshots to position events, and which job goes next."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hlcopy.model import AccountState, Leverage, MarginSummary, Position, UserRole
from hlcopy.scout.tracker import Tracked, next_job, position_events, priority, role_wanted

D = Decimal
A = "0x" + "ab" * 20


def pos(coin: str, szi: str, liq: str | None = None, lev: int = 5) -> Position:
    size = D(szi)
    return Position(
        coin=coin,
        szi=size,
        entry_px=D(100),
        leverage=Leverage("cross", lev),
        liquidation_px=None if liq is None else D(liq),
        margin_used=None,
        position_value=abs(size) * D(101),
        unrealized_pnl=None,
        return_on_equity=None,
    )


def state(*positions: Position) -> AccountState:
    return AccountState(
        positions, MarginSummary(D(1000), D(0), D(0), D(1000)), None, None, None, 1_000
    )


def kinds(
    before: dict[str, Position] | None, after: AccountState, mids: dict[str, Decimal]
) -> dict[str, str]:
    return {e.coin: e.kind for e in position_events(A, before, after, mids, 5_000)}


def test_a_first_observation_yields_no_events() -> None:
    assert position_events(A, None, state(pos("BTC", "1")), {}, 1) == []


def test_every_kind_of_change() -> None:
    before = {
        "BTC": pos("BTC", "1"),
        "ETH": pos("ETH", "2"),
        "SOL": pos("SOL", "-3"),
        "DOGE": pos("DOGE", "10"),
        "AVAX": pos("AVAX", "1"),
    }
    after = state(
        pos("BTC", "1.5"),  # increase
        pos("ETH", "1"),  # decrease
        pos("SOL", "4"),  # flip
        pos("ARB", "7"),  # open
        pos("AVAX", "1"),  # unchanged: no event
    )  # DOGE gone: close
    assert kinds(before, after, {}) == {
        "BTC": "increase",
        "ETH": "decrease",
        "SOL": "flip",
        "ARB": "open",
        "DOGE": "close",
    }


def test_event_figures() -> None:
    (event,) = position_events(A, {}, state(pos("BTC", "-2", lev=20)), {"BTC": D(110)}, 42)
    assert event.kind == "open"
    assert (event.prev_szi, event.new_szi) == (D(0), D(-2))
    assert event.px == D(110)
    assert event.notional == D(220)
    assert event.leverage == D(20)
    assert event.entry_px == D(100)
    assert event.time_ms == 42
    # Without a mid, the mark comes from the position's value.
    (event,) = position_events(A, {}, state(pos("BTC", "2")), {}, 42)
    assert event.px == D(101)


@pytest.mark.parametrize(
    ("szi", "liq", "mid", "expected"),
    [
        ("1", "90", "89", "liquidated"),  # a long, the price fell through its liquidation price
        ("1", "90", "91", "close"),
        ("-1", "110", "111", "liquidated"),  # a short, the price rose through it
        ("-1", "110", "109", "close"),
        ("1", None, "50", "close"),  # no liquidation price known: just closed
    ],
)
def test_liquidation_is_read_from_the_earlier_liquidation_price(
    szi: str, liq: str | None, mid: str, expected: str
) -> None:
    before = {"BTC": pos("BTC", szi, liq)}
    assert kinds(before, state(), {"BTC": D(mid)}) == {"BTC": expected}


def test_a_partial_liquidation_is_a_liquidation_not_a_decrease() -> None:
    before = {"BTC": pos("BTC", "2", "90")}
    assert kinds(before, state(pos("BTC", "1")), {"BTC": D(85)}) == {"BTC": "liquidated"}


def test_never_done_work_comes_first_then_the_most_overdue_by_priority() -> None:
    fresh = Tracked("0x" + "01" * 20, priority=1.0)
    busy = Tracked("0x" + "02" * 20, priority=9.0, positions_s=0.0, scored_s=0.0)
    quiet = Tracked("0x" + "03" * 20, priority=1.0, positions_s=0.0, scored_s=0.0)
    job = next_job([busy, quiet, fresh], 100.0, 60.0, 3600.0)
    assert job is not None
    assert job.trader is fresh
    assert job.kind == "score"  # scoring before positions when neither was ever done
    fresh.scored_s = fresh.positions_s = 100.0
    job = next_job([busy, quiet, fresh], 100.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (busy, "positions")  # same staleness, higher priority


def test_nothing_is_due_before_its_interval_and_failures_wait() -> None:
    t = Tracked("0x" + "01" * 20, positions_s=50.0, scored_s=50.0)
    assert next_job([t], 100.0, 60.0, 3600.0) is None
    job = next_job([t], 111.0, 60.0, 3600.0)
    assert job is not None
    assert job.kind == "positions"
    t.retry_after_s = 200.0
    assert next_job([t], 150.0, 60.0, 3600.0) is None


def test_a_candidate_is_completed_first_fills_then_for_a_contender_its_role() -> None:
    t = Tracked("0x" + "01" * 20, positions_s=0.0, scored_s=0.0)
    assert next_job([t], 10.0, 60.0, 3600.0) is None  # no candidate: nothing more to do
    other = Tracked("0x" + "02" * 20, priority=50.0)  # never scored, and a high priority
    t.candidate = True  # near the top of the losers: its fills complete its score...
    job = next_job([other, t], 10.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (t, "fills")  # ...before anyone else's first portfolio
    t.fills_s = 10.0
    assert next_job([t], 10.0, 60.0, 3600.0) is None  # a loser's role does not matter
    t.contender = True  # near the top of the winners: a vault or an agent must not rank there
    # Another candidate's fills wait, whatever its priority: t is on the board.
    other.candidate, other.scored_s, other.priority = True, 0.0, 500.0
    job = next_job([other, t], 10.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (t, "role")
    t.role_s = 10.0
    assert next_job([t], 11.0, 60.0, 3600.0) is None  # once


def test_the_most_promising_candidate_is_completed_first_whoever_asked_for_it() -> None:
    def candidate(n: int, merit: int, provisional: float | None, priority: float) -> Tracked:
        t = Tracked("0x" + f"{n:02x}" * 20, priority=priority, positions_s=0.0, scored_s=0.0)
        t.candidate, t.merit, t.provisional_score = True, merit, provisional
        return t

    watched = candidate(1, 0, -7.5, priority=130.0)  # only asked for by the user
    unknown = candidate(2, 0, None, priority=200.0)  # asked for, too few returns to tell
    seed = candidate(3, 2, -0.4, priority=31.0)  # among the public leaderboard's best
    explored = candidate(4, 1, 0.9, priority=2.0)  # near the top by provisional score
    later_seed = candidate(5, 2, -0.9, priority=40.0)
    order = []
    traders = [watched, unknown, seed, explored, later_seed]
    while (job := next_job(traders, 10.0, 60.0, 3600.0)) is not None:
        order.append((job.kind, job.trader))
        if job.kind == "role":
            job.trader.role_s, job.trader.role = 10.0, UserRole("user", None)
        else:
            job.trader.fills_s = 10.0
    # The public leaderboard's best, each its role first (that top holds vaults).
    assert order == [
        ("role", seed),
        ("fills", seed),
        ("role", later_seed),
        ("fills", later_seed),
        ("fills", explored),
        ("fills", watched),
        ("fills", unknown),
    ]
    # Roles by complete score: the best first, the one most likely to show at the top.
    for t, score in ((seed, -1.0), (later_seed, 0.1), (explored, 0.3)):
        t.contender, t.score = True, score
    job = next_job(traders, 11.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (explored, "role")


def test_the_public_leaderboards_best_are_read_their_role_first_and_no_fills_for_a_vault() -> None:
    seed = Tracked("0x" + "01" * 20, positions_s=0.0, scored_s=0.0, provisional_score=0.2)
    seed.candidate, seed.merit = True, 2
    other = Tracked("0x" + "02" * 20, positions_s=0.0, scored_s=0.0, provisional_score=0.1)
    other.candidate, other.merit = True, 1  # near the top by its provisional score only
    job = next_job([other, seed], 10.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (seed, "role")
    seed.role_s = 10.0  # its role in flight: its fills wait for it, the next candidate's don't
    job = next_job([other, seed], 10.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (other, "fills")
    other.fills_s = 10.0
    assert next_job([other, seed], 10.0, 60.0, 3600.0) is None
    seed.role = UserRole("vault", None)  # it can never rank: its fills are never read
    assert next_job([other, seed], 11.0, 60.0, 3600.0) is None
    seed.role = UserRole("user", None)
    job = next_job([other, seed], 11.0, 60.0, 3600.0)
    assert job is not None
    assert (job.trader, job.kind) == (seed, "fills")
    assert not role_wanted(other)  # its complete score does not lead (yet): no role


def test_priority_rises_with_volume_recency_seed_and_request() -> None:
    now = 10 * 3_600_000
    base = priority(D(1000), now - 3_600_000, now)
    assert priority(D(100_000), now - 3_600_000, now) > base
    assert priority(D(1000), now, now) > base
    assert priority(D(1000), now - 3_600_000, now, seed_rank=0) > base
    assert priority(D(1000), now - 3_600_000, now, requested=True) > base + 50
    assert priority(D(0), None, now) == 0.0
    assert math.isfinite(priority(D(10) ** 30, 0, now))


def test_a_requested_traders_positions_are_left_to_the_truth_worker() -> None:
    watched = Tracked("0x" + "01" * 20, positions_s=0.0, scored_s=0.0, fills_s=0.0, role_s=0.0)
    job = next_job([watched], 61.0, 60.0, 3600.0)
    assert job is not None
    assert job.kind == "positions"
    watched.requested = True  # read on its own interval in a higher lane, never behind scoring
    assert next_job([watched], 61.0, 60.0, 3600.0) is None


def test_seeds_are_the_best_by_their_weakest_window_and_the_worst_months_history_agrees() -> None:
    from hlcopy.model import SeedTrader, WindowPerformance
    from hlcopy.scout.tracker import _seed_lists

    def row(name: str, month: str, all_time: str, week: str | None = None) -> SeedTrader:
        def perf(roi: str) -> WindowPerformance:
            return WindowPerformance(D(0), D(roi), D(0))

        windows = {"month": perf(month), "allTime": perf(all_time)}
        if week is not None:
            windows["week"] = perf(week)
        return SeedTrader(name, D(1000), windows)

    rows = [
        row("steady", "0.4", "2.0"),
        row("lucky", "0.9", "-0.5"),  # a great month after losing over all time
        row("one trade", "1.5", "1.2", week="-0.1"),  # a month made by one lucky week
        row("good", "0.2", "0.1", week="0.05"),
        row("bleeder", "-0.6", "-0.9"),
        row("unlucky", "-0.8", "1.5"),  # a bad month after winning over all time
        row("flat", "0.0", "0.0"),
    ]
    best, worst = _seed_lists(rows, 2)
    assert [r.address for r in best] == ["steady", "good"]  # weakest windows 0.4 and 0.05
    assert [r.address for r in worst] == ["bleeder"]
