"""Resting limit orders of one coin, by price level and time priority.

Sorted price lists with a FIFO per level: the best price is an index away, matching walks
levels in order, and nothing is sorted per incoming order (a book with thousands of resting
orders costs a taker what a thin one does).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(slots=True, eq=False)
class Resting:
    oid: int
    user: str
    coin: str
    is_buy: bool
    px: Decimal
    sz: Decimal
    orig_sz: Decimal
    tif: str
    reduce_only: bool
    cloid: str | None
    timestamp: int
    trigger: dict[str, Any] | None = None
    triggered: bool = False  # a trigger order that fired and now rests in the book as a limit


class BookSide:
    """One side: prices ascending, orders per price in arrival order."""

    __slots__ = ("is_bid", "levels", "prices")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.prices: list[Decimal] = []
        self.levels: dict[Decimal, list[Resting]] = {}

    def __len__(self) -> int:
        return len(self.prices)

    def add(self, order: Resting) -> None:
        level = self.levels.get(order.px)
        if level is None:
            self.levels[order.px] = [order]
            bisect.insort(self.prices, order.px)
        else:
            level.append(order)

    def remove(self, order: Resting) -> None:
        level = self.levels.get(order.px)
        if level is None:
            return
        try:
            level.remove(order)
        except ValueError:
            return
        if not level:
            del self.levels[order.px]
            i = bisect.bisect_left(self.prices, order.px)
            if i < len(self.prices) and self.prices[i] == order.px:
                del self.prices[i]

    def best(self) -> Decimal | None:
        if not self.prices:
            return None
        return self.prices[-1] if self.is_bid else self.prices[0]

    def best_order(self) -> Resting | None:
        px = self.best()
        return None if px is None else self.levels[px][0]

    def walk(self) -> Iterator[tuple[Decimal, list[Resting]]]:
        """Levels from the best price outwards (a snapshot of prices: safe to remove while
        walking)."""
        prices = reversed(self.prices) if self.is_bid else iter(self.prices)
        for px in list(prices):
            level = self.levels.get(px)
            if level:
                yield px, level

    def orders(self) -> Iterator[Resting]:
        for level in self.levels.values():
            yield from level


class Book:
    """Both sides of one coin's resting orders (trigger orders join once they fired)."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids = BookSide(is_bid=True)
        self.asks = BookSide(is_bid=False)

    def side(self, is_buy: bool) -> BookSide:
        return self.bids if is_buy else self.asks

    def add(self, order: Resting) -> None:
        self.side(order.is_buy).add(order)

    def remove(self, order: Resting) -> None:
        self.side(order.is_buy).remove(order)
