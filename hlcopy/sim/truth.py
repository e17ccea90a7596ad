"""Portfolio windows at the exchange's sampling, and the returns a ledger implies over them.

The exchange keeps a bounded number of account samples per window (the recorded fixture
``info_portfolio.json``: ``day`` 13 points about two hours apart, ``week`` 64 about 2.7 hours
apart, ``month`` 45 about 16 hours apart, ``allTime`` 76 however far apart the account's age
makes them), always ending with a point for *now*. The simulator samples every account every
hour of market time and picks its window points from those on the same grids.

The ground truth for tests is computed here from the same points: for consecutive points,
``r = (pnl_i - pnl_{i-1}) / accountValue_{i-1}`` (skipped when that value is not positive),
``return = prod(1 + r) - 1``, and the maximum drawdown of that index; pnl is account value minus
net deposits, so deposits and withdrawals never count as performance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
ALL_TIME_POINTS = 75

# A sample: (ms, account value, net deposits, volume), amounts in integer micro-USD.
Point = tuple[int, int, int, int]

# name, span, grid between points (None: all time, grid from the account's age)
WINDOWS: tuple[tuple[str, int | None, int | None], ...] = (
    ("day", DAY_MS, 2 * HOUR_MS),
    ("week", 7 * DAY_MS, 3 * HOUR_MS),
    ("month", 30 * DAY_MS, 16 * HOUR_MS),
    ("allTime", None, None),
)


def window(samples: Sequence[Point], now: Point, span: int | None, grid: int | None) -> list[Point]:
    """The points of one window: samples on the window's grid (and the account's first
    sample), from the last one at or before the window's start, then ``now``."""
    if not samples:
        return [now]
    first = samples[0]
    if grid is None:
        age_hours = max(1, (now[0] - first[0]) // HOUR_MS)
        grid = HOUR_MS * max(1, math.ceil(age_hours / ALL_TIME_POINTS))
    eligible = [first] + [s for s in samples[1:] if s[0] % grid == 0]
    if span is not None:
        start = now[0] - span
        before = [s for s in eligible if s[0] <= start]
        eligible = before[-1:] + [s for s in eligible if s[0] > start]
    return [s for s in eligible if s[0] < now[0]] + [now]


def pnl_history(points: Sequence[Point]) -> list[tuple[int, int]]:
    """PnL since the window's first point: (ms, micro-USD)."""
    if not points:
        return []
    base = points[0][1] - points[0][2]
    return [(t, av - nf - base) for t, av, nf, _ in points]


def chain(points: Sequence[Point]) -> tuple[float, float]:
    """(deposit-independent return, maximum drawdown) over consecutive points."""
    index = peak = 1.0
    drawdown = 0.0
    for (_, av0, nf0, _), (_, av1, nf1, _) in pairwise(points):
        if av0 <= 0:
            continue
        index *= 1 + ((av1 - nf1) - (av0 - nf0)) / av0
        peak = max(peak, index)
        if peak > 0:
            drawdown = max(drawdown, 1 - index / peak)
    return index - 1, drawdown
