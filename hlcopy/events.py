"""In-process fan-out of events to the live feed (``/ws/v1/updates``) and anyone else listening.

``publish`` never waits and never fails: each subscriber has a bounded buffer, and a subscriber
that falls behind is marked overflowed and cut off (its reader sees ``Overflowed``), so a slow
client can never slow the daemon. Subscribers choose what they hear by type and by address.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from hlcopy.errors import HlcopyError
from hlcopy.record import record


@record
class Event:
    """One update: ``type`` ("position", "copy", ...), JSON-ready ``data``, and the address it
    concerns, when it concerns one."""

    type: str
    data: Mapping[str, Any]
    timestamp_ms: int
    address: str | None = None


class Overflowed(HlcopyError):
    """The subscriber fell behind by more than its buffer and was cut off."""


class Subscriber:
    """One listener's bounded buffer. Iterate it (``async for``) or call ``next``."""

    def __init__(
        self,
        maxsize: int,
        types: Iterable[str] | None = None,
        addresses: Iterable[str] | None = None,
    ) -> None:
        self.maxsize = maxsize
        self.types = None if types is None else frozenset(types)
        self.addresses = None if addresses is None else frozenset(a.lower() for a in addresses)
        self._buffer: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.closed = False
        self.delivered = 0

    def accepts(self, event: Event) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        return self.addresses is None or event.address in self.addresses

    def _push(self, event: Event) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._buffer) >= self.maxsize:
            self.overflowed = True
            self._buffer.clear()
        else:
            self._buffer.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Event:
        """The next event; raises Overflowed once cut off, StopAsyncIteration once closed."""
        while not self._buffer:
            if self.overflowed:
                raise Overflowed(f"fell more than {self.maxsize} events behind")
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        self.delivered += 1
        return self._buffer.popleft()

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Event:
        return await self.next()


class EventBus:
    """Fan-out to subscribers. See the module docstring."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self.published = 0
        self.cut_off = 0

    def subscribe(
        self,
        maxsize: int = 1000,
        types: Iterable[str] | None = None,
        addresses: Iterable[str] | None = None,
    ) -> Subscriber:
        sub = Subscriber(maxsize, types, addresses)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.close()
        self._subscribers.discard(sub)

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber that wants it; never waits."""
        self.published += 1
        for sub in list(self._subscribers):
            if sub.accepts(event):
                sub._push(event)
                if sub.overflowed:
                    self.cut_off += 1
                    self._subscribers.discard(sub)

    def stats(self) -> dict[str, Any]:
        return {
            "subscribers": len(self._subscribers),
            "published": self.published,
            "cut_off": self.cut_off,
        }
