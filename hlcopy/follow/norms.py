"""Each followed leader's own norm: its leverage over the past 30 days, so that a leader who
leaves its historical range puts its follows in reduce-only (risk's ``leader_leverage``).

Every ``clearinghouseState`` the tracker reads of a leader is a sample of its leverage (total
notional / account value). Samples are folded into one row per leader and UTC day (sum, count,
max), kept in PostgreSQL, so the history outlives restarts and stays small. The norm is the
mean of the daily means of the 30 days *before* today — today's jump must not raise its own
bar — and exists only once ``min_days`` days are known: a leader followed since this morning has
no norm, and is judged on nothing until it has one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.errors import StoreError
from hlcopy.model import AccountState
from hlcopy.store import Store
from hlcopy.store.norms import DayRow, NormStore

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
WINDOW_DAYS = 30
FLUSH_EVERY_S = 60.0


@dataclass(slots=True)
class Day:
    """One leader's samples of one day."""

    total: float = 0.0
    samples: int = 0
    most: float = 0.0

    def add(self, leverage: float, samples: int = 1, most: float | None = None) -> None:
        self.total += leverage
        self.samples += samples
        self.most = max(self.most, leverage if most is None else most)


def leverage_of(state: AccountState) -> float | None:
    """Total notional over account value; None for an account with nothing in it."""
    m = state.margin_summary
    if m.account_value <= 0:
        return None
    return float(m.total_ntl_pos / m.account_value)


def norm(days: Mapping[int, Day], today: int, min_days: int) -> float | None:
    """The mean of the daily mean leverages of the ``WINDOW_DAYS`` before ``today``; None
    with fewer than ``min_days`` such days."""
    means = [
        d.total / d.samples
        for day, d in days.items()
        if today - WINDOW_DAYS <= day < today and d.samples > 0
    ]
    if len(means) < max(1, min_days):
        return None
    return sum(means) / len(means)


class LeaderNorms(Component):
    """See the module docstring."""

    name = "norms"

    def __init__(self, store: Store, *, min_days: int = 7, clock: Clock = SYSTEM) -> None:
        self._db = NormStore(store)
        self._clock = clock
        self.min_days = min_days
        self._days: defaultdict[str, dict[int, Day]] = defaultdict(dict)
        self._latest: dict[str, float] = {}
        self._pending: dict[tuple[str, int], Day] = {}
        self._leaders: set[str] = set()
        self._loaded: set[str] = set()
        self._wake = asyncio.Event()
        self._draining = asyncio.Event()
        self.counters = {"samples": 0, "rows_written": 0, "write_failures": 0, "loads": 0}

    # -- what others tell it and ask of it --------------------------------------------------

    def set_leaders(self, addresses: Iterable[str]) -> None:
        """The followed leaders: their history is loaded, others' forgotten."""
        self._leaders = set(addresses)
        for gone in set(self._days) - self._leaders:
            del self._days[gone]
            self._latest.pop(gone, None)
        self._loaded &= self._leaders
        self._wake.set()

    def observe(self, leader: str, state: AccountState) -> None:
        """A fresh snapshot of a leader (no I/O: folded in memory, written within a minute)."""
        leverage = leverage_of(state)
        if leverage is None or leader not in self._leaders:
            return
        day = (state.time_ms or self._clock.time_ms()) // DAY_MS
        self._latest[leader] = leverage
        self._days[leader].setdefault(day, Day()).add(leverage)
        self._pending.setdefault((leader, day), Day()).add(leverage)
        self.counters["samples"] += 1

    def leverage(self, leader: str) -> tuple[Decimal, Decimal] | None:
        """(leverage now, 30-day norm) of a leader, or None while either is unknown."""
        now = self._latest.get(leader)
        if now is None or leader not in self._loaded:
            return None
        value = norm(self._days[leader], self._clock.time_ms() // DAY_MS, self.min_days)
        if value is None or value <= 0:
            return None
        return Decimal(repr(now)), Decimal(repr(value))

    # -- running ----------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        await self._load()
        ready.set()
        while not self._draining.is_set():
            # Woken early by new leaders, whose history must be in before they are judged.
            await sleep_unless(self._clock, self._wake, FLUSH_EVERY_S)
            try:
                await self._load()
            except StoreError as exc:
                log.warning("leader norms: history not loaded yet", error=str(exc))
            await self._flush()

    async def drain(self) -> None:
        self._draining.set()
        self._wake.set()

    async def _load(self) -> None:
        self._wake.clear()
        todo = self._leaders - self._loaded
        if not todo:
            return
        today = self._clock.time_ms() // DAY_MS
        rows = await self._db.load(todo, today - WINDOW_DAYS)
        for leader, day, total, samples, most in rows:
            self._days[leader].setdefault(day, Day()).add(total, samples, most)
        self._loaded |= todo
        self.counters["loads"] += 1

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        rows: list[DayRow] = [
            (leader, day, d.total, d.samples, d.most) for (leader, day), d in batch.items()
        ]
        try:
            await self._db.add(rows)
            await self._db.prune(self._clock.time_ms() // DAY_MS - WINDOW_DAYS - 1)
        except StoreError as exc:
            self.counters["write_failures"] += 1
            log.warning("leader norms: not saved, kept for the next try", error=str(exc))
            for key, d in batch.items():  # folded back, nothing lost
                self._pending.setdefault(key, Day()).add(d.total, d.samples, d.most)
            return
        self.counters["rows_written"] += len(rows)

    def stats(self) -> dict[str, Any]:
        today = self._clock.time_ms() // DAY_MS
        return {
            "leaders": len(self._leaders),
            "with_norm": sum(
                1
                for leader in self._leaders
                if norm(self._days.get(leader, {}), today, self.min_days) is not None
            ),
            "pending_rows": len(self._pending),
            **self.counters,
        }
