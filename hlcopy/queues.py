"""Typed bounded queues with a written overflow policy, depth statistics, and a close.

``block``: a full queue makes the producer wait (leader fills, order intents: never dropped).
``drop_oldest``: under overload the oldest item makes room and is counted (firehose persistence).

``close()`` ends a queue: producers then get ``QueueClosed``, while the consumer still receives
everything already queued and then sees the end (``get`` raises ``QueueClosed``; ``async for``
stops). That is how a pipeline shuts down without losing what was in flight.

A ``Handler`` is a sink without a queue: it handles each item in the producer's own turn. It is
for short synchronous consumers on a latency path (a followed leader's fills), where waiting for
the loop to come round to a consumer task would be most of the latency.

Stream readers hand off with ``offer`` (never waits) and fall back to ``await put`` only for a
full ``block`` queue, so a slow consumer holds back only its own feed, and only when the policy
says nothing may be dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

import structlog

from hlcopy.errors import HlcopyError

log = structlog.get_logger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
Policy = Literal["block", "drop_oldest"]


class QueueClosed(HlcopyError):
    """The queue was closed: nothing more can be put, and (once drained) nothing more comes."""


class Sink(Protocol[T_contra]):
    """Where a producer hands items off: what the stream pool needs of a queue."""

    def offer(self, item: T_contra) -> bool: ...

    async def put(self, item: T_contra) -> None: ...


class BoundedQueue(Generic[T]):
    """A FIFO of at most ``maxsize`` items with an overflow policy. See the module docstring."""

    def __init__(self, name: str, maxsize: int, policy: Policy = "block") -> None:
        if maxsize <= 0:
            raise ValueError("a bounded queue needs maxsize > 0")
        self.name = name
        self.maxsize = maxsize
        self.policy: Policy = policy
        self._items: deque[T] = deque()
        self._closed = False
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self.dropped = 0
        self.high_water = 0
        self.total_in = 0

    # -- state ----------------------------------------------------------------------------

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more puts; the consumer drains what is left, then sees the end."""
        if self._closed:
            return
        self._closed = True
        for waiters in (self._getters, self._putters):
            while waiters:
                w = waiters.popleft()
                if not w.done():
                    w.set_result(None)

    # -- producing ------------------------------------------------------------------------

    def offer(self, item: T) -> bool:
        """Put without waiting. Under ``drop_oldest`` always succeeds (dropping the oldest when
        full); under ``block`` returns False when full (the caller then ``await put``)."""
        if self._closed:
            raise QueueClosed(f"queue {self.name} is closed")
        if len(self._items) >= self.maxsize:
            if self.policy == "block":
                return False
            self._items.popleft()
            self.dropped += 1
        self._append(item)
        return True

    def put_nowait(self, item: T) -> None:
        if not self.offer(item):
            raise asyncio.QueueFull(self.name)

    async def put(self, item: T) -> None:
        """Put, waiting for room when a ``block`` queue is full."""
        while not self.offer(item):
            await self._wait(self._putters)

    def _append(self, item: T) -> None:
        self._items.append(item)
        self.total_in += 1
        if len(self._items) > self.high_water:
            self.high_water = len(self._items)
        self._wake(self._getters)

    # -- consuming ------------------------------------------------------------------------

    def get_nowait(self) -> T:
        if not self._items:
            if self._closed:
                raise QueueClosed(f"queue {self.name} is closed and drained")
            raise asyncio.QueueEmpty(self.name)
        item = self._items.popleft()
        self._wake(self._putters)
        return item

    async def get(self) -> T:
        """The next item; raises QueueClosed once the queue is closed and drained."""
        while not self._items:
            if self._closed:
                raise QueueClosed(f"queue {self.name} is closed and drained")
            await self._wait(self._getters)
        return self.get_nowait()

    async def get_batch(self, max_items: int) -> list[T]:
        """At least one item (waiting for it), and whatever else is queued, up to
        ``max_items``: consumers that write in batches take everything that piled up."""
        first = await self.get()
        batch = [first]
        while self._items and len(batch) < max_items:
            batch.append(self._items.popleft())
        self._wake(self._putters)
        return batch

    def drain_nowait(self, max_items: int | None = None) -> list[T]:
        """Everything queued now (up to ``max_items``), without waiting."""
        n = len(self._items) if max_items is None else min(max_items, len(self._items))
        out = [self._items.popleft() for _ in range(n)]
        if out:
            self._wake(self._putters)
        return out

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.get()
            except QueueClosed:
                return

    # -- waiting --------------------------------------------------------------------------

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            # Our wake-up may have been meant for us: pass it on so nobody waits forever.
            if future.done() and not future.cancelled():
                self._wake(waiters)
            raise
        finally:
            if not future.done():
                future.cancel()
            with contextlib.suppress(ValueError):  # already taken off by a wake-up
                waiters.remove(future)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def stats(self) -> dict[str, Any]:
        return {
            "depth": len(self._items),
            "maxsize": self.maxsize,
            "policy": self.policy,
            "dropped": self.dropped,
            "high_water": self.high_water,
            "total_in": self.total_in,
            "closed": self._closed,
        }


class Handler(Generic[T]):
    """A sink that handles each item at once, in the producer's turn (see the module
    docstring). The handler must be short and must not block. An exception it raises is
    logged and counted here, so a consumer's bug never takes down the producer's feed."""

    def __init__(self, name: str, handle: Callable[[T], None]) -> None:
        self.name = name
        self._handle = handle
        self.total_in = 0
        self.errors = 0

    def offer(self, item: T) -> bool:
        self.total_in += 1
        try:
            self._handle(item)
        except Exception:
            self.errors += 1
            log.exception("handler failed", handler=self.name)
        return True

    async def put(self, item: T) -> None:
        self.offer(item)

    def stats(self) -> dict[str, Any]:
        return {"total_in": self.total_in, "errors": self.errors}
