"""A virtual clock for code that takes a ``Clock``: tests move time, nothing sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class _Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """``now()`` and ``call_later()`` on virtual time, moved only by ``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self._timers: list[tuple[float, int, _Timer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer()
        heapq.heappush(self._timers, (self.t + max(0.0, delay), next(self._seq), timer, callback))
        return timer

    async def settle(self) -> None:
        """Let every task that can run now run."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order and letting tasks react to each."""
        await self.settle()
        target = self.t + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer, callback = heapq.heappop(self._timers)
            self.t = max(self.t, when)
            if not timer.cancelled:
                callback()
                await self.settle()
        self.t = target
        await self.settle()
