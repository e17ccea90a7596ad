"""Bounded queues: the written overflow policies, batching, and a close that loses nothing."""

from __future__ import annotations

import asyncio

import pytest
from hlcopy.queues import BoundedQueue, QueueClosed


async def test_block_policy_never_drops_and_makes_the_producer_wait() -> None:
    q = BoundedQueue[int]("fills", 2)
    assert q.offer(1)
    assert q.offer(2)
    assert not q.offer(3)  # full: the caller must wait instead
    putter = asyncio.create_task(q.put(3))
    await asyncio.sleep(0)
    assert not putter.done()
    assert await q.get() == 1
    await asyncio.wait_for(putter, 1)
    assert [q.get_nowait(), q.get_nowait()] == [2, 3]
    assert q.dropped == 0
    assert q.stats()["high_water"] == 2


async def test_drop_oldest_keeps_the_newest_and_counts_what_it_dropped() -> None:
    q = BoundedQueue[int]("firehose", 3, "drop_oldest")
    for i in range(10):
        assert q.offer(i)
    assert q.drain_nowait() == [7, 8, 9]
    assert q.dropped == 7
    assert q.stats()["total_in"] == 10


async def test_close_wakes_a_waiting_consumer_only_after_what_is_queued() -> None:
    q = BoundedQueue[str]("intents", 4)
    got: list[str] = []

    async def consume() -> None:
        async for item in q:
            got.append(item)

    consumer = asyncio.create_task(consume())
    await q.put("a")
    await asyncio.sleep(0)
    await q.put("b")
    q.put_nowait("c")
    q.close()
    await asyncio.wait_for(consumer, 1)
    assert got == ["a", "b", "c"]
    with pytest.raises(QueueClosed):
        q.offer("d")
    with pytest.raises(QueueClosed):
        await q.get()


async def test_close_releases_a_blocked_producer_with_an_error() -> None:
    q = BoundedQueue[int]("intents", 1)
    q.put_nowait(1)
    putter = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(putter, 1)
    assert q.drain_nowait() == [1]


async def test_get_batch_takes_everything_that_piled_up_up_to_a_limit() -> None:
    q = BoundedQueue[int]("persist", 100)
    batch_task = asyncio.create_task(q.get_batch(5))
    await asyncio.sleep(0)
    for i in range(8):
        q.put_nowait(i)
    assert await asyncio.wait_for(batch_task, 1) == [0, 1, 2, 3, 4]
    assert await q.get_batch(5) == [5, 6, 7]


async def test_a_cancelled_getter_does_not_swallow_the_wake_up_meant_for_another() -> None:
    q = BoundedQueue[int]("q", 4)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_nowait(1)  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == 1


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize > 0"):
        BoundedQueue[int]("q", 0)
