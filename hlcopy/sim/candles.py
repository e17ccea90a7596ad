"""Candles: one-minute bars recorded from the live market, and bars of any interval built from
minute and hour bars (of the past and the live market alike, so every interval shows one price
path).

A bar is a tuple ``(open, high, low, close, base volume, trades, notional)``: prices Decimal on
the tick grid, volumes Decimal. Intervals align as the exchange's do: on the epoch (so weeks
start on Thursday) and, for ``1M``, on calendar months.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hlcopy.sim.fmt import num
from hlcopy.sim.market import tick_round

D = Decimal
ZERO = D(0)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MAX_CANDLES = 5000
INTERVAL_MINUTES: dict[str, int] = {
    "1m": 1,
    "3m": 3,
    "5m": 5,
    "15m": 15,
    "30m": 30,
    "1h": 60,
    "2h": 120,
    "4h": 240,
    "8h": 480,
    "12h": 720,
    "1d": 1440,
    "3d": 4320,
    "1w": 10080,
    "1M": 0,  # calendar months
}

Bar = tuple[Decimal, Decimal, Decimal, Decimal, Decimal, int, Decimal]


def merge(bars: Iterable[Bar]) -> Bar | None:
    """One bar spanning consecutive bars."""
    out: Bar | None = None
    for b in bars:
        if out is None:
            out = b
        else:
            out = (
                out[0],
                b[1] if b[1] > out[1] else out[1],
                b[2] if b[2] < out[2] else out[2],
                b[3],
                out[4] + b[4],
                out[5] + b[5],
                out[6] + b[6],
            )
    return out


class LiveCandles:
    """Minute bars of one coin since the live market opened: prices from the fair price each
    tick (kept as floats while the minute runs, put on the tick grid when it is read),
    volume and trade counts from trades."""

    __slots__ = ("_cur", "_cur_minute", "first_minute", "hours", "is_spot", "minutes", "szd")

    def __init__(self, start_ms: int, sz_decimals: int, is_spot: bool) -> None:
        self.first_minute = start_ms // MINUTE_MS
        self.szd = sz_decimals
        self.is_spot = is_spot
        self.minutes: list[Bar] = []  # finished minutes from first_minute on
        self.hours: dict[int, Bar] = {}  # finished whole hours, by hour index
        self._cur_minute = self.first_minute
        self._cur: list[Any] | None = None

    def on_mid(self, now_ms: int, price: float) -> None:
        minute = now_ms // MINUTE_MS
        cur = self._cur
        if cur is None:
            self._cur = [price, price, price, price, ZERO, 0, ZERO]
            self._cur_minute = minute
            return
        if minute != self._cur_minute:
            self._roll(minute, price)
            return
        if price > cur[1]:
            cur[1] = price
        elif price < cur[2]:
            cur[2] = price
        cur[3] = price

    def on_trade(self, px: Decimal, sz: Decimal) -> None:
        cur = self._cur
        if cur is not None:
            cur[4] += sz
            cur[5] += 1
            cur[6] += px * sz

    def _roll(self, minute: int, price: float) -> None:
        assert self._cur is not None
        self._finish(self._bar(self._cur))
        close = self._cur[3]
        # Minutes the market skipped over (long ticks) are flat at the last price.
        if self.first_minute + len(self.minutes) < minute:
            flat = self._bar([close, close, close, close, ZERO, 0, ZERO])
            while self.first_minute + len(self.minutes) < minute:
                self._finish(flat)
        lo, hi = (close, price) if close <= price else (price, close)
        self._cur = [close, hi, lo, price, ZERO, 0, ZERO]
        self._cur_minute = minute

    def _bar(self, cur: list[Any]) -> Bar:
        szd, spot = self.szd, self.is_spot
        return (
            tick_round(cur[0], szd, spot),
            tick_round(cur[1], szd, spot, 1),
            tick_round(cur[2], szd, spot, -1),
            tick_round(cur[3], szd, spot),
            cur[4],
            cur[5],
            cur[6],
        )

    def _finish(self, bar: Bar) -> None:
        self.minutes.append(bar)
        index = self.first_minute + len(self.minutes)  # the minute after the one finished
        if index % 60 == 0:
            hour = index // 60 - 1
            start = hour * 60 - self.first_minute
            if start >= 0:
                merged = merge(self.minutes[start : start + 60])
                if merged is not None:
                    self.hours[hour] = merged

    def minute(self, minute: int) -> Bar | None:
        """The bar of ``minute`` (the running one included), None outside the live market."""
        i = minute - self.first_minute
        if 0 <= i < len(self.minutes):
            return self.minutes[i]
        if minute == self._cur_minute and self._cur is not None:
            return self._bar(self._cur)
        return None

    def hour(self, hour: int) -> Bar | None:
        """A whole hour of live minutes (merged on demand while it runs or straddles the
        opening)."""
        done = self.hours.get(hour)
        if done is not None:
            return done
        return merge(b for m in range(hour * 60, hour * 60 + 60) if (b := self.minute(m)))

    @property
    def last_minute(self) -> int:
        return self._cur_minute


def bucket_bounds(interval: str, t_ms: int) -> tuple[int, int]:
    """The ``[start, end)`` of the bucket of ``interval`` holding ``t_ms``."""
    size = INTERVAL_MINUTES[interval]
    if size:
        span = size * MINUTE_MS
        start = t_ms - t_ms % span
        return start, start + span
    day = datetime.fromtimestamp(t_ms / 1000, tz=UTC)
    start_dt = datetime(day.year, day.month, 1, tzinfo=UTC)
    days = calendar.monthrange(day.year, day.month)[1]
    start = int(start_dt.timestamp()) * 1000
    return start, start + days * 86_400_000


def buckets(interval: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """The buckets overlapping ``[start_ms, end_ms]``, newest ``MAX_CANDLES`` only."""
    out: list[tuple[int, int]] = []
    b0, b1 = bucket_bounds(interval, end_ms)
    while b1 > start_ms and len(out) < MAX_CANDLES:
        out.append((b0, b1))
        b0, b1 = bucket_bounds(interval, b0 - 1)
    return out[::-1]


def candle_wire(coin: str, interval: str, start: int, end: int, bar: Bar) -> dict[str, Any]:
    o, h, low, c, v, n, _ = bar
    return {
        "t": start,
        "T": end - 1,
        "s": coin,
        "i": interval,
        "o": num(o),
        "c": num(c),
        "h": num(h),
        "l": num(low),
        "v": num(v),
        "n": n,
    }


def snapshot(
    coin: str,
    interval: str,
    start_ms: int,
    end_ms: int,
    minute_bar: Callable[[int], Bar | None],
    hour_bar: Callable[[int], Bar | None],
) -> list[dict[str, Any]]:
    """candleSnapshot: the bars of ``interval`` in ``[start_ms, end_ms]`` (newest 5000), oldest
    first; buckets the market has no bar for are left out."""
    out = []
    for b0, b1 in buckets(interval, start_ms, end_ms):
        if INTERVAL_MINUTES[interval] and INTERVAL_MINUTES[interval] < 60:
            parts: Iterable[Bar | None] = (
                minute_bar(m) for m in range(b0 // MINUTE_MS, b1 // MINUTE_MS)
            )
        else:
            parts = (hour_bar(h) for h in range(b0 // HOUR_MS, b1 // HOUR_MS))
        bar = merge(p for p in parts if p is not None)
        if bar is not None:
            out.append(candle_wire(coin, interval, b0, b1, bar))
    return out
