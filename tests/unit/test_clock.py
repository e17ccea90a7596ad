"""The virtual clock fires timers and sleepers in time order and never sleeps for real."""

from __future__ import annotations

import asyncio

import pytest
from hlcopy.clock import SYSTEM, VirtualClock, sleep_unless


async def test_sleepers_wake_in_time_order_without_real_waiting() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 30), ("a", 5), ("b", 10))]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await clock.advance(9)
    assert woke == [("a", 5.0)]
    await clock.advance(3600)
    assert woke == [("a", 5.0), ("b", 10.0), ("c", 30.0)]
    assert clock.monotonic() == 3609
    assert loop.time() - t0 < 1.0
    await asyncio.gather(*tasks)


async def test_chained_sleeps_play_out_like_real_time() -> None:
    clock = VirtualClock(start_s=100.0, epoch_ms=1_000_000)
    ticks: list[float] = []

    async def every_two_seconds() -> None:
        while True:
            await clock.sleep(2)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(every_two_seconds())
    await clock.advance(7)
    assert ticks == [102.0, 104.0, 106.0]
    assert clock.time_ms() == 1_007_000
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert clock.pending == 0


async def test_cancelled_timers_do_not_fire() -> None:
    clock = VirtualClock()
    fired: list[int] = []
    timer = clock.call_later(1, lambda: fired.append(1))
    clock.call_later(2, lambda: fired.append(2))
    timer.cancel()
    await clock.advance(5)
    assert fired == [2]


async def test_sleep_unless_returns_early_when_the_event_is_set() -> None:
    clock = VirtualClock()
    event = asyncio.Event()
    task = asyncio.create_task(sleep_unless(clock, event, 60))
    await clock.advance(1)
    assert not task.done()
    event.set()
    assert await task is True
    assert clock.pending == 0


async def test_sleep_unless_times_out_on_the_clock() -> None:
    clock = VirtualClock()
    task = asyncio.create_task(sleep_unless(clock, asyncio.Event(), 5))
    await clock.advance(4.9)
    assert not task.done()
    await clock.advance(0.2)
    assert await task is False


async def test_system_clock_reads_real_time() -> None:
    before = SYSTEM.monotonic()
    await SYSTEM.sleep(0.01)
    assert SYSTEM.monotonic() - before >= 0.009
    assert SYSTEM.time_ms() > 1_700_000_000_000


async def test_timeout_on_the_virtual_clock_raises_timeout_error() -> None:
    clock = VirtualClock()

    async def slow() -> str:
        async with clock.timeout(5):
            await clock.sleep(60)
        return "finished"

    task = asyncio.create_task(slow())
    await clock.advance(4)
    assert not task.done()
    await clock.advance(2)
    with pytest.raises(TimeoutError):
        await task


async def test_timeout_that_is_not_reached_changes_nothing() -> None:
    clock = VirtualClock()

    async def quick() -> str:
        async with clock.timeout(5):
            await clock.sleep(1)
        return "finished"

    task = asyncio.create_task(quick())
    await clock.advance(10)
    assert await task == "finished"
    assert clock.pending == 0


async def test_an_outer_cancel_inside_a_timeout_stays_a_cancel() -> None:
    clock = VirtualClock()

    async def waits() -> None:
        async with clock.timeout(5):
            await asyncio.Event().wait()

    task = asyncio.create_task(waits())
    await clock.settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
