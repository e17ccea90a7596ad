"""The WebSocket pacer: an exact window on the virtual clock, urgent messages first."""

from __future__ import annotations

import asyncio
import random

import pytest
from hlcopy.clock import VirtualClock
from hlcopy.hl.pacer import Pacer


@pytest.mark.parametrize("seed", range(10))
async def test_no_window_ever_holds_more_than_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    clock = VirtualClock()
    pacer = Pacer(limit=20, window_s=60, clock=clock)
    stamps: list[float] = []

    async def sender(delay: float) -> None:
        await clock.sleep(delay)
        await pacer.acquire(urgent=rng.random() < 0.3)
        stamps.append(clock.monotonic())

    tasks = [asyncio.create_task(sender(rng.uniform(0, 120))) for _ in range(100)]
    await clock.advance(1000)
    await asyncio.gather(*tasks)
    stamps.sort()
    assert len(stamps) == 100
    for i, t in enumerate(stamps):
        assert sum(1 for u in stamps[i:] if u < t + 60) <= 20, t


async def test_urgent_messages_go_before_routine_ones() -> None:
    clock = VirtualClock()
    pacer = Pacer(limit=2, window_s=10, clock=clock)
    await pacer.acquire()
    await pacer.acquire()  # the window is full now
    order: list[str] = []

    async def send(name: str, urgent: bool) -> None:
        await pacer.acquire(urgent)
        order.append(name)

    tasks = [
        asyncio.create_task(send("subscribe-1", False)),
        asyncio.create_task(send("subscribe-2", False)),
        asyncio.create_task(send("order", True)),
    ]
    await clock.settle()
    assert order == []
    await clock.advance(10.01)  # the two slots free up 10 s after they were taken
    assert order == ["order", "subscribe-1"]
    await clock.advance(10)
    assert order == ["order", "subscribe-1", "subscribe-2"]
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_lets_the_next_one_through() -> None:
    clock = VirtualClock()
    pacer = Pacer(limit=1, window_s=5, clock=clock)
    await pacer.acquire()
    first = asyncio.create_task(pacer.acquire())
    second = asyncio.create_task(pacer.acquire())
    await clock.settle()
    first.cancel()
    await clock.advance(5.01)
    assert second.done()
    assert pacer.used() == 1
