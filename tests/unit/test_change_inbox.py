"""The copy engine's inbox: a change is decided in the producer's turn only when nothing of its
coin waits in the queue (so a direct decision never overtakes an earlier change), and a change
the engine declines, or that comes while the engine is not running, queues in order."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hlcopy.follow.engine import ChangeInbox
from hlcopy.follow.leaders import LeaderChange
from hlcopy.queues import BoundedQueue

L = "0x" + "1" * 40


def change(coin: str, szi: int) -> LeaderChange:
    return LeaderChange(L, coin, None, 0, Decimal(szi))


def test_without_an_engine_changes_queue_in_order() -> None:
    inbox = ChangeInbox(BoundedQueue[LeaderChange]("changes", 10))
    for i in range(3):
        assert inbox.offer(change("BTC", i))
    assert [c.szi for c in inbox.queue.drain_nowait()] == [0, 1, 2]
    assert inbox.direct_count == 0


def test_a_coin_with_a_queued_change_is_not_decided_directly_until_it_is_done() -> None:
    inbox = ChangeInbox(BoundedQueue[LeaderChange]("changes", 10))
    decided: list[LeaderChange] = []
    accept = {"BTC": False, "ETH": True}

    def direct(c: LeaderChange) -> bool:
        if not accept[c.coin]:
            return False  # e.g. its decision has a transfer to store first
        decided.append(c)
        return True

    inbox.direct = direct
    assert inbox.offer(change("BTC", 1))  # declined: queued
    accept["BTC"] = True
    assert inbox.offer(change("BTC", 2))  # BTC has one queued: queued behind it, not direct
    assert inbox.offer(change("ETH", 5))  # another coin: decided now
    assert [c.szi for c in decided] == [5]
    queued = inbox.queue.drain_nowait()
    assert [c.szi for c in queued] == [1, 2]
    inbox.done(queued[0])
    assert inbox.offer(change("BTC", 3))  # one BTC change still being dealt with
    assert [c.szi for c in decided] == [5]
    inbox.done(queued[1])
    inbox.done(inbox.queue.drain_nowait()[0])
    assert inbox.offer(change("BTC", 4))  # nothing of BTC left: direct
    assert [c.szi for c in decided] == [5, 4]
    assert inbox.direct_count == 2


async def test_a_full_queue_declines_and_put_waits_for_room() -> None:
    inbox = ChangeInbox(BoundedQueue[LeaderChange]("changes", 1))
    assert inbox.offer(change("BTC", 1))
    assert not inbox.offer(change("BTC", 2))  # full: the leader books keep it and put later
    inbox.queue.drain_nowait()
    await inbox.put(change("BTC", 2))
    assert [c.szi for c in inbox.queue.drain_nowait()] == [2]


@pytest.mark.parametrize("n", [1, 3])
def test_done_forgets_a_coin_once_all_its_changes_are_done(n: int) -> None:
    inbox = ChangeInbox(BoundedQueue[LeaderChange]("changes", 10))
    for i in range(n):
        inbox.offer(change("SOL", i))
    for c in inbox.queue.drain_nowait():
        inbox.done(c)
    calls: list[LeaderChange] = []

    def direct(c: LeaderChange) -> bool:
        calls.append(c)
        return True

    inbox.direct = direct
    inbox.offer(change("SOL", 9))
    assert len(calls) == 1
