"""Paces what the WebSocket pool sends: at most ``limit`` events in any ``window_s`` seconds.

The exchange caps messages sent per minute and new connections per minute per IP (HYPERLIQUID.md
§3). The window is exact (an event at t frees its slot at t + window), so no 60-second span ever
holds more than the limit. Urgent events — order posts, pings that keep a connection alive —
are served before routine ones such as subscribe messages.
"""

from __future__ import annotations

import asyncio
from collections import deque

from hlcopy.clock import SYSTEM, TIMER_SLACK_S, Clock, Timer


class Pacer:
    """See the module docstring."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Clock = SYSTEM) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("a pacer needs a positive limit and window")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._routine: deque[asyncio.Future[None]] = deque()
        self._timer: Timer | None = None
        self.waits = 0

    async def acquire(self, urgent: bool = False) -> None:
        """Wait until one more event fits in the window, then count it."""
        if not self._urgent and not self._routine and self._room():
            self._times.append(self._clock.monotonic())
            return
        self.waits += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._routine).append(future)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            self._dispatch()  # the next waiter may go now (a slot already granted stays counted)
            raise

    def used(self) -> int:
        """Events within the current window."""
        self._expire()
        return len(self._times)

    def _room(self) -> bool:
        self._expire()
        return len(self._times) < self.limit

    def _expire(self) -> None:
        horizon = self._clock.monotonic() - self.window_s
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiters in (self._urgent, self._routine):
            while waiters and self._room():
                future = waiters.popleft()
                if not future.done():
                    self._times.append(self._clock.monotonic())
                    future.set_result(None)
        if (self._urgent or self._routine) and self._times:
            delay = self._times[0] + self.window_s - self._clock.monotonic()
            # A hair late: exactly on time, rounding can leave the slot a hair unexpired, and
            # the timer would fire again and again at the same instant.
            self._timer = self._clock.call_later(max(0.0, delay) + TIMER_SLACK_S, self._dispatch)
