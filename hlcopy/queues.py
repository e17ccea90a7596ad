"""Bounded queues with a written overflow policy and depth statistics.

``block``: the producer waits (leader fills, order intents: never dropped).
``drop_oldest``: under overload the oldest item makes room and is counted (firehose persistence).
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Policy = Literal["block", "drop_oldest"]


class BoundedQueue(asyncio.Queue[T], Generic[T]):
    """An ``asyncio.Queue`` with a maximum size, an overflow policy and counters."""

    def __init__(self, name: str, maxsize: int, policy: Policy = "block") -> None:
        if maxsize <= 0:
            raise ValueError("a bounded queue needs maxsize > 0")
        super().__init__(maxsize)
        self.name = name
        self.policy: Policy = policy
        self.dropped = 0
        self.high_water = 0
        self.total_in = 0

    def offer(self, item: T) -> bool:
        """Put without waiting. Under ``drop_oldest`` always succeeds; under ``block`` returns
        False when full (the caller must then ``await put``)."""
        if self.full():
            if self.policy == "block":
                return False
            self.get_nowait()
            self.task_done()
            self.dropped += 1
        self.put_nowait(item)
        return True

    def put_nowait(self, item: T) -> None:  # asyncio.Queue.put ends here too
        super().put_nowait(item)
        self.total_in += 1
        depth = self.qsize()
        if depth > self.high_water:
            self.high_water = depth

    def stats(self) -> dict[str, Any]:
        return {
            "depth": self.qsize(),
            "maxsize": self.maxsize,
            "policy": self.policy,
            "dropped": self.dropped,
            "high_water": self.high_water,
            "total_in": self.total_in,
        }
