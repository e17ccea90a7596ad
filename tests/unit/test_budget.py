"""The weight budget on virtual time: the 60-s window, lane priority, headroom, 429 back-off."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest
from hlcopy.budget import PACE_HORIZON_S, Lane, WeightBudget, extra_weight
from hlcopy.clock import VirtualClock

READS = [lane for lane in Lane if lane is not Lane.ORDER]


def budget(clock: VirtualClock, limit: int = 1200, headroom: float = 10.0) -> WeightBudget:
    # The mechanics on the exchange's own 60-s window; the default adds a second (see below).
    return WeightBudget(limit, headroom, clock=clock, window_s=60.0)


@contextlib.asynccontextmanager
async def saturated(b: WeightBudget, lane: Lane, weight: int = 20) -> AsyncIterator[list[int]]:
    """A lane that asks for ``weight`` again as soon as it gets it; yields ``[weight got]``."""
    got = [0]

    async def take() -> None:
        while True:
            await b.acquire(weight, lane)
            got[0] += weight

    task = asyncio.create_task(take())
    try:
        yield got
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # still asking: it never failed
            await task


async def test_the_default_window_keeps_a_second_for_the_road() -> None:
    clock = VirtualClock()
    b = WeightBudget(100, 0, clock=clock)
    await b.acquire(100, Lane.SCORING)
    late = asyncio.create_task(b.acquire(1, Lane.SCORING))
    await clock.advance(60.5)  # the exchange's window has moved on; ours has not yet
    assert not late.done()
    await clock.advance(0.6)
    assert late.done()


def max_window_sum(events: list[tuple[float, int]], window: float = 60.0) -> int:
    """The largest total weight admitted in any half-open window of ``window`` seconds."""
    best = 0
    times = sorted(events)
    for i, (start, _) in enumerate(times):
        total = sum(w for t, w in times[i:] if t < start + window)
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(25))
async def test_never_above_the_limit_in_any_window_and_nothing_starves(seed: int) -> None:
    rng = random.Random(seed)
    clock = VirtualClock()
    b = budget(clock)
    admitted: list[tuple[float, int, Lane]] = []

    async def request(at: float, weight: int, lane: Lane) -> None:
        await b.acquire(weight, lane)
        admitted.append((clock.monotonic(), weight, lane))

    plan = [
        (rng.uniform(0, 240), rng.choice([1, 2, 2, 2, 20, 20, 60, 120]), rng.choice(list(Lane)))
        for _ in range(400)
    ]
    tasks: list[asyncio.Task[None]] = []
    t = 0.0
    for at, weight, lane in sorted(plan, key=lambda p: p[0]):
        await clock.advance(at - t)
        t = at
        tasks.append(asyncio.create_task(request(at, weight, lane)))
    await clock.advance(1200)  # long enough to drain every queue
    assert all(task.done() for task in tasks), "a request starved"
    assert len(admitted) == len(plan)
    assert max_window_sum([(t, w) for t, w, _ in admitted]) <= b.limit
    assert (
        max_window_sum([(t, w) for t, w, lane in admitted if lane is not Lane.ORDER])
        <= b.read_limit
    )


async def test_strict_lane_priority_when_saturated() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=600, headroom=0)
    await b.acquire(600, Lane.ORDER)  # the window is full until t=60
    order: list[Lane] = []

    async def request(lane: Lane) -> None:
        await b.acquire(50, lane)  # all six fit, with the room the order keeps for orders
        order.append(lane)

    tasks = [asyncio.create_task(request(lane)) for lane in reversed(Lane)]  # lowest first
    # Weight spent at t frees up at t + 60 s (a microsecond later, so rounding can't matter).
    await clock.advance(59)
    assert order == []
    await clock.advance(1.001)
    assert order == list(Lane)  # served highest priority first, whatever the arrival order
    await asyncio.gather(*tasks)


async def test_smaller_reads_go_first_only_where_they_cannot_delay_a_waiting_order() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    await b.acquire(45, Lane.LEADER)
    await clock.advance(30)
    await b.acquire(45, Lane.LEADER)  # 90 used; the first 45 come back at t=60
    order: list[tuple[str, float]] = []

    async def request(name: str, weight: int, lane: Lane) -> None:
        await b.acquire(weight, lane)
        order.append((name, clock.monotonic()))

    big = asyncio.create_task(request("order", 50, Lane.ORDER))  # fits at t=60, leaving 5
    late = asyncio.create_task(request("read 8", 8, Lane.SCORING))  # fits now, but would delay it
    small = asyncio.create_task(request("read 4", 4, Lane.SCORING))  # fits in what it leaves
    await clock.advance(1)
    assert [name for name, _ in order] == ["read 4"]  # backfilled at once
    await clock.advance(29.001)
    assert [name for name, _ in order] == ["read 4", "order"]
    assert order[1][1] == pytest.approx(60, abs=0.01)  # not delayed by the read that went first
    await clock.advance(31)
    assert [name for name, _ in order] == ["read 4", "order", "read 8"]
    await asyncio.gather(big, late, small)


async def test_headroom_keeps_orders_flowing_while_reads_are_saturated() -> None:
    clock = VirtualClock()
    b = budget(clock)  # 1200 with 10% headroom: reads stop at 1080
    assert b.read_limit == 1080
    for _ in range(54):
        await b.acquire(20, Lane.SCORING)
    read = asyncio.create_task(b.acquire(2, Lane.FOLLOWER))
    await clock.settle()
    assert not read.done()  # reads are out of budget...
    await asyncio.wait_for(b.acquire(1, Lane.ORDER), 0.1)  # ...orders are not
    for _ in range(10):
        await asyncio.wait_for(b.acquire(10, Lane.ORDER), 0.1)
    assert b.used() == 1080 + 101
    await clock.advance(60.001)
    assert read.done()


async def test_while_orders_flow_reads_leave_their_room_free_for_the_next_ones() -> None:
    clock = VirtualClock()
    b = budget(clock, headroom=2.5)  # 1200: reads stop at 1170, 30 kept for orders
    await asyncio.wait_for(b.acquire(30, Lane.ORDER), 0.1)  # a read of the order path: no room
    for _ in range(30):
        await asyncio.wait_for(b.acquire(1, Lane.ORDER, action=True), 0.1)  # orders: the headroom
    # 30 orders at once: for a few seconds the reads leave room for a whole window of orders at
    # that pace (360, at most half the read limit): 810 for the reads.
    reads = [asyncio.create_task(b.acquire(20, Lane.SCORING)) for _ in range(60)]
    await clock.settle()
    assert sum(r.done() for r in reads) == 39
    assert b.used() == 60 + 780
    # Then they stop 30 lower than the headroom alone: the 30 the orders took stay free for the
    # orders to come (the order path's read of 30 does not count: only exchange actions keep room).
    await clock.advance(PACE_HORIZON_S + 0.01)
    assert sum(r.done() for r in reads) == 54
    assert b.used() == 60 + 1080
    for _ in range(60):
        await asyncio.wait_for(b.acquire(1, Lane.ORDER, action=True), 0.1)  # as many again
    assert b.used() == 1200
    # As the orders' weight expires, the reads get their room back.
    await clock.advance(60.001)
    assert all(r.done() for r in reads)


async def test_429_backs_off_the_read_lanes_only() -> None:
    clock = VirtualClock()
    b = WeightBudget(1200, 10, clock=clock, backoff_base_s=5, backoff_cap_s=60)
    b.rate_limited()
    read = asyncio.create_task(b.acquire(2, Lane.LEADER))
    await asyncio.wait_for(b.acquire(1, Lane.ORDER), 0.1)
    await clock.advance(4.9)
    assert not read.done()
    await clock.advance(0.2)
    assert read.done()
    lanes = b.stats()["lanes"]
    assert lanes["order"]["wait_s_max"] == 0  # the order went through the back-off at once
    assert lanes["leader"]["wait_s_max"] == pytest.approx(5, abs=0.01)

    b.rate_limited()  # a second 429 soon after: the back-off doubles
    b.rate_limited()
    assert b.stats()["read_backoff_s"] == pytest.approx(20, abs=0.01)
    assert b.stats()["rate_limited"] == 3
    await clock.advance(200)  # a quiet window later it starts small again
    b.rate_limited()
    assert b.stats()["read_backoff_s"] == pytest.approx(5, abs=0.01)


async def test_debited_extra_weight_delays_later_requests() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    await b.acquire(20, Lane.LEADER)
    b.debit(extra_weight(1500), Lane.LEADER)  # 1500 fills: +75
    assert b.used() == 95
    later = asyncio.create_task(b.acquire(20, Lane.LEADER))
    await clock.advance(59)
    assert not later.done()
    await clock.advance(1.001)
    assert later.done()
    assert b.stats()["lanes"]["leader"]["weight_total"] == 115


async def test_a_cancelled_waiter_lets_the_next_one_through() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    await b.acquire(60, Lane.LEADER)
    head = asyncio.create_task(b.acquire(70, Lane.FOLLOWER))  # at t=60, leaving 30
    behind = asyncio.create_task(b.acquire(35, Lane.LEADER))  # fits now, but would delay it
    await clock.settle()
    assert not behind.done()
    head.cancel()
    await clock.settle()
    assert behind.done()
    assert b.stats()["lanes"]["follower"]["waiting"] == 0


async def test_invalid_weights_are_refused() -> None:
    b = budget(VirtualClock(), limit=100, headroom=10)
    with pytest.raises(ValueError, match="outside"):
        await b.acquire(0, Lane.ORDER)
    with pytest.raises(ValueError, match="outside"):
        await b.acquire(91, Lane.LEADER)  # more than the read lanes may ever use
    await b.acquire(100, Lane.ORDER)


def test_extra_weight_rounds_up() -> None:
    assert [extra_weight(n) for n in (0, 1, 19, 20, 21, 2000)] == [0, 1, 1, 1, 2, 100]
    assert extra_weight(61, per=60) == 2


async def test_stats_report_use_and_waits() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    await b.acquire(100, Lane.ORDER)
    waiter = asyncio.create_task(b.acquire(10, Lane.GAPFILL))
    await clock.advance(60.001)
    await waiter
    stats = b.stats()
    assert stats["used_last_window"] == 10
    assert stats["lanes"]["order"]["requests"] == 1
    assert stats["lanes"]["gapfill"]["used_last_window"] == 10
    assert stats["waits"] == 1
    assert stats["wait_s_max"] == pytest.approx(60)
    assert stats["lanes"]["gapfill"]["wait_s_max"] == pytest.approx(60)
    assert stats["lanes"]["order"]["wait_s_max"] == 0
    assert stats["utilization"] == 0.1


async def test_a_reservation_refunded_leaves_only_what_was_used_and_lets_others_in() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=200, headroom=0)
    ticket = await b.acquire(120, Lane.SCORING)  # 20 base + up to 100 for the answer's size
    waiting = asyncio.create_task(b.acquire(90, Lane.SCORING))
    await clock.settle()
    assert not waiting.done()
    b.settle(ticket, 95)  # the answer held 100 items: 5 of the 100 were used
    await clock.settle()
    assert waiting.done()
    assert b.used() == 25 + 90
    assert b.stats()["lanes"]["scoring"]["weight_total"] == 115


async def test_a_read_stays_a_minute_past_its_answer_and_its_refund_comes_off_its_spend() -> None:
    """The exchange counted a read when it arrived, before its answer: kept a minute past the
    answer, it never leaves our window before the exchange's, however slow the answer. A quick
    answer changes nothing: the window's extra second already covers it."""
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    first = await b.acquire(60, Lane.SCORING)
    await clock.advance(2)  # the answer took two seconds (the exchange may have counted at 1.9)
    b.settle(first, 50)  # its 100 items: 10 of the 60 used
    await clock.advance(28)
    second = await b.acquire(30, Lane.SCORING)
    await clock.advance(0.5)
    b.settle(second)  # answered in half a second
    await clock.advance(31)  # 61.5 s after the first's acquire: it still counts
    assert b.used() == 40
    await clock.advance(0.6)  # a minute after its answer: gone; the second remains
    assert b.used() == 30
    b.settle(first, 10)  # already outside the window: nothing to give back or count again
    assert b.used() == 30
    await clock.advance(29)  # 61.1 s after the second's acquire: gone, as if never settled
    assert b.used() == 0


async def test_a_truth_reserve_keeps_room_for_leader_reads_while_scoring_is_saturated() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=1000, headroom=0)
    b.reserve_for_truth(100)
    async with saturated(b, Lane.SCORING) as scored:
        await clock.advance(1)
        assert scored[0] == 900  # the bulk lanes stop short of the reserve...
        await asyncio.wait_for(b.acquire(2, Lane.LEADER), 0.1)  # ...so a leader read goes at once
        await asyncio.wait_for(b.acquire(2, Lane.FOLLOWER), 0.1)
        assert b.stats()["truth_reserve"] == 100
        b.reserve_for_truth(10_000)
        assert b.stats()["truth_reserve"] == 500  # never more than half: scoring never stops


async def test_the_truth_reads_spend_comes_off_their_reserve_and_their_room_comes_back() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=1000, headroom=0)
    b.reserve_for_truth(100)  # a window's worth of truth reads
    for _ in range(3):  # spent early in the window: 60 of the 100 are used already
        await b.acquire(20, Lane.LEADER)
    await clock.advance(30)
    async with saturated(b, Lane.SCORING) as scored:
        await clock.advance(1)
        # Kept whole, the reserve would stop scoring at 840 and leave 100 idle beside the 60.
        assert scored[0] == 900
        assert b.stats()["truth_reserve_left"] == 40
        await asyncio.wait_for(b.acquire(20, Lane.LEADER), 0.1)  # the truth reads to come fit
        await asyncio.wait_for(b.acquire(20, Lane.FOLLOWER), 0.1)
        assert b.used() == 1000
        await clock.advance(30.5)  # the first truth reads leave the window: truth's room again
        assert scored[0] == 900
        assert b.stats()["truth_reserve_left"] == 60
        await asyncio.wait_for(b.acquire(20, Lane.LEADER), 0.1)


async def test_small_bulk_reads_pass_a_big_one_only_while_it_is_patient() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    await b.acquire(60, Lane.LEADER)  # back at t=60
    admitted: list[tuple[str, float]] = []

    async def request(name: str, weight: int) -> None:
        await b.acquire(weight, Lane.SCORING)
        admitted.append((name, clock.monotonic()))

    big = asyncio.create_task(request("big", 50))
    smalls = []
    for i in range(10):
        smalls.append(asyncio.create_task(request(f"small{i}", 10)))
        await clock.advance(1)
    # The big read cannot fit before t=60 anyway: the small ones that fit went first.
    assert [n for n, _ in admitted] == ["small0", "small1", "small2", "small3"]
    await clock.advance(60)
    names = [n for n, _ in admitted]
    # After 30 s of patience it keeps its place: in at t=60, ahead of the small ones left.
    assert names[4] == "big"
    assert dict(admitted)["big"] == pytest.approx(60, abs=0.01)
    await clock.advance(120)
    await asyncio.gather(big, *smalls)


async def test_a_large_reservation_goes_in_on_its_likely_cost_but_never_past_the_limit() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=1000, headroom=10)  # reads stop at 900
    await b.acquire(800, Lane.SCORING)
    # 120 reserved would pass the read cap (920 > 900), but it will likely cost 40 (840): in,
    # borrowing the headroom for the moment until its refund, still within the limit (920).
    ticket = await asyncio.wait_for(b.acquire(120, Lane.SCORING, likely=40), 0.1)
    assert b.used() == 920
    b.settle(ticket, 80)
    assert b.used() == 840
    # Whatever it is likely to cost, the whole of it must fit the exchange's limit.
    await b.acquire(100, Lane.ORDER)  # 940
    late = asyncio.create_task(b.acquire(120, Lane.SCORING, likely=10))  # 1060 > 1000: waits
    await clock.settle()
    assert not late.done()
    await clock.advance(60.001)
    assert late.done()


async def test_enrichment_never_overtakes_a_patient_scoring_read() -> None:
    """Smaller scoring reads may pass a big one while it is patient; exploration (enrichment)
    may not: it only backfills room the big read will not need."""
    clock = VirtualClock()
    b = budget(clock, limit=100, headroom=0)
    await b.acquire(40, Lane.LEADER)  # back at t=60
    await clock.advance(10)
    await b.acquire(20, Lane.LEADER)  # back at t=70
    admitted: list[tuple[str, float]] = []

    async def request(name: str, weight: int, lane: Lane) -> None:
        await b.acquire(weight, lane)
        admitted.append((name, clock.monotonic()))

    big = asyncio.create_task(request("big", 50, Lane.SCORING))
    await clock.advance(1)
    # 40 free now; the big read fits at t=60 with 30 to spare. Exploring 35 now would push it
    # to t=70, so it waits; a scoring read of 35 may pass (the big one is patient).
    explore = asyncio.create_task(request("explore", 35, Lane.ENRICHMENT))
    await clock.advance(1)
    assert admitted == []
    small = asyncio.create_task(request("small", 35, Lane.SCORING))
    await clock.advance(1)
    assert [n for n, _ in admitted] == ["small"]
    await clock.advance(200)
    await asyncio.gather(big, explore, small)
    assert [n for n, _ in admitted] == ["small", "big", "explore"]
    assert dict(admitted)["big"] == pytest.approx(70, abs=0.01)  # delayed by its own lane only


async def test_a_scoring_reserve_keeps_room_that_enrichment_cannot_take() -> None:
    clock = VirtualClock()
    b = budget(clock, limit=1000, headroom=0)
    b.reserve_for_truth(100)
    b.reserve_for_scoring(80)
    async with saturated(b, Lane.ENRICHMENT) as explored:
        await clock.advance(1)
        assert explored[0] == 820  # 1000 - 100 (truth) - 80 (scoring)
        await asyncio.wait_for(b.acquire(80, Lane.SCORING), 0.1)  # a candidate's read: at once
        await asyncio.wait_for(b.acquire(2, Lane.LEADER), 0.1)
        assert b.stats()["scoring_reserve"] == 80
        b.reserve_for_scoring(10_000)
        assert b.stats()["scoring_reserve"] == 225  # at most a quarter of the bulk lanes' room


async def test_reads_are_paced_after_a_burst() -> None:
    clock = VirtualClock()
    b = WeightBudget(1200, 2.5, clock=clock, window_s=60.0, read_burst_pct=25)
    assert (b.read_limit, b.read_burst) == (1170, 292)
    reads = [asyncio.create_task(b.acquire(20, Lane.SCORING)) for _ in range(40)]
    await clock.settle()
    assert sum(r.done() for r in reads) == 14  # the burst: 280 of 292
    await clock.advance(10.3)  # then 1170 a minute, evenly: 19.5 a second
    assert sum(r.done() for r in reads) == 24
    await asyncio.wait_for(b.acquire(1, Lane.ORDER, action=True), 0.1)  # orders are not paced
    for r in reads:
        r.cancel()


async def _saturating_reads(
    b: WeightBudget, clock: VirtualClock, rng: random.Random, admitted: list[float]
) -> None:
    """Always eight reads waiting, of the tracker's usual weights."""

    async def reader() -> None:
        while True:
            weight = rng.choice([2, 20, 20, 20, 60, 120])
            await b.acquire(weight, rng.choice([Lane.SCORING, Lane.LEADER]))
            admitted.append(clock.monotonic())

    async with asyncio.TaskGroup() as tg:
        for _ in range(8):
            tg.create_task(reader())


@pytest.mark.parametrize("seed", range(3))
async def test_a_burst_of_orders_into_a_window_full_of_reads_never_waits(seed: int) -> None:
    # The latency bench's load: the tracker keeps the reads at their limit, then copies go out
    # at 10 a second for a minute and a half. Unpaced, the window's reads came back in lumps and
    # a copy waited up to a minute for one; leaving room only for the orders already in the
    # window, reads admitted early in the burst took what its later orders needed.
    clock = VirtualClock()
    b = WeightBudget(1200, 2.5, clock=clock, window_s=61.0, read_burst_pct=10)
    reads: list[float] = []
    feeder = asyncio.create_task(_saturating_reads(b, clock, random.Random(seed), reads))
    await clock.advance(90)  # the reads at their limit
    assert b.used() >= 1050

    async def order() -> float:
        await b.acquire(1, Lane.ORDER, action=True)
        return clock.monotonic()

    orders: list[tuple[float, asyncio.Task[float]]] = []
    for _ in range(900):
        orders.append((clock.monotonic(), asyncio.create_task(order())))
        await clock.advance(0.1)
    await clock.advance(61)  # whatever still waits gets in
    waits = [task.result() - sent for sent, task in orders]
    during = sum(1 for t in reads if 90 < t < 180)
    feeder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feeder
    assert max(waits) == 0
    assert during > 10  # the reads go on beside the orders, in what the orders leave


def test_the_scoring_reserve_stays_within_what_the_truth_reserve_leaves() -> None:
    budget = WeightBudget(1200, 10)
    budget.reserve_for_scoring(600)
    assert budget.stats()["scoring_reserve"] == budget.read_limit // 4
    budget.reserve_for_truth(400)  # asked for later: the scoring reserve shrinks with it
    assert budget.stats()["scoring_reserve"] == (budget.read_limit - 400) // 4
