"""The one clock: monotonic seconds, exchange-time milliseconds, sleeping and timers.

Everything that waits or stamps time takes a ``Clock`` from its constructor, so the same code runs
on the system clock in the daemon and on a ``VirtualClock`` in tests and the backtest, where time
moves only when ``advance`` is called and nothing sleeps for real. This module (and the simulator,
which models the exchange's own time) are the only places that read the system's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What hlcopy needs from time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and deadlines)."""
        ...

    def time_ms(self) -> int:
        """Wall-clock milliseconds since the epoch, comparable with exchange timestamps."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay_s`` seconds from now."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Like ``asyncio.timeout``: TimeoutError when the block outlasts ``seconds``."""
        ...


class SystemClock:
    """Real time: the event loop's monotonic clock, the system's wall clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay_s, callback)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


SYSTEM = SystemClock()


def thread_cpu_ns() -> int:
    """The calling thread's CPU time in ns: not a time of day, for a benchmark to tell the time
    its code ran from the time the thread waited off the CPU."""
    return time.thread_time_ns()


# Timers that wait for a window to free up fire this much late: on time to the last bit,
# floating-point rounding can find the slot not quite free and re-arm at the same instant.
TIMER_SLACK_S = 1e-6


class _VirtualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Time that moves only when ``advance`` (or ``advance_to``) is awaited.

    Timers and sleepers fire in time order; after each one the tasks it woke get to run before
    the next fires, so a chain "sleep, then do, then sleep again" plays out exactly as it would in
    real time, only without waiting.
    """

    def __init__(self, start_s: float = 0.0, epoch_ms: int = 1_700_000_000_000) -> None:
        self._t = start_s
        self._epoch_ms = epoch_ms - round(start_s * 1000)
        self._timers: list[tuple[float, int, _VirtualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._t

    def time_ms(self) -> int:
        return self._epoch_ms + round(self._t * 1000)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = _VirtualTimer()
        when = self._t + max(0.0, delay_s)
        heapq.heappush(self._timers, (when, next(self._seq), timer, callback))
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return _timeout(self, seconds)

    @property
    def pending(self) -> int:
        """Timers (and sleepers) not yet fired or cancelled."""
        return sum(1 for _, _, timer, _ in self._timers if not timer.cancelled)

    async def settle(self, rounds: int = 50) -> None:
        """Let every task that can run at the current instant run."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing what falls due in order."""
        await self.advance_to(self._t + seconds)

    def run_due(self, target_s: float, max_timers: int | None = None) -> int:
        """Fire the timers due up to ``target_s`` in time order, moving time with them, without
        yielding to the event loop: for a synchronous simulation on this clock (the backtest),
        whose callbacks schedule what follows them. Stops after ``max_timers`` (time then stays
        at the last one fired, so a caller can do the rest in slices); returns how many fired."""
        fired = 0
        while self._timers and self._timers[0][0] <= target_s:
            if max_timers is not None and fired >= max_timers:
                return fired
            when, _, timer, callback = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._t = max(self._t, when)
            callback()
            fired += 1
        self._t = max(self._t, target_s)
        return fired

    async def advance_to(self, target_s: float) -> None:
        await self.settle()
        while self._timers and self._timers[0][0] <= target_s:
            when, _, timer, callback = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._t = max(self._t, when)
            callback()
            await self.settle()
        self._t = max(self._t, target_s)
        await self.settle()


async def sleep_unless(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` on ``clock`` unless ``event`` is set first; True when it was."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()


@contextlib.asynccontextmanager
async def _timeout(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """``asyncio.timeout`` on any clock: cancel the task when time is up, then turn that
    cancellation (and only that one) into TimeoutError."""
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = clock.call_later(seconds, fire)
    try:
        yield
    except asyncio.CancelledError:
        if fired and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
