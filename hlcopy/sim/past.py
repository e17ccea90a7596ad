"""The market before the live market opened: ninety days of each coin, minute by minute.

The same model as the live path (trending regimes lasting hours, diffusion, rare jumps, a basis
that funding is paid on), generated from a seed per coin and run *backwards* from the price the
live market opens at, so the past ends where the present begins. Built on first use, then kept:
a coin is about a megabyte. Candles of every interval, the funding rates of every hour, and the
prices the synthetic traders' pasts trade at all come from here.
"""

from __future__ import annotations

import math
import random
from array import array
from decimal import Decimal

from hlcopy.sim.archetypes import seed_for
from hlcopy.sim.candles import Bar
from hlcopy.sim.market import (
    BASIS_SD,
    BASIS_TAU_S,
    JUMP_EVERY_S,
    REGIME_MEAN_S,
    TREND_PER_DAY,
    tick_round,
)

D = Decimal
ZERO = D(0)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MINUTES = 1440
PAST_DAYS = 90
MINUTE_USD = 40_000.0  # typical traded notional per minute in the past, before activity swings
_MASK = 2**64 - 1


def _unit(k: int, salt: int) -> float:
    """A deterministic number in [0, 1) for minute ``k`` (cheap: no generator state)."""
    x = (k * 0x9E3779B97F4A7C15 + salt) & _MASK
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 29
    return (x & 0xFFFFFFFF) / 4294967296.0


class CoinPast:
    """One coin's past: log prices at the end of each minute, the trend regime of each minute,
    and the funding rate of each hour, for ``days`` days up to ``end_ms``."""

    def __init__(
        self,
        name: str,
        sz_decimals: int,
        is_spot: bool,
        daily_vol: float,
        end_price: float,
        end_ms: int,
        seed: int,
        days: int = PAST_DAYS,
    ) -> None:
        from hlcopy.sim.engine import funding_rate  # the engine's formula, one definition

        self.name = name
        self.sz_decimals = sz_decimals
        self.is_spot = is_spot
        self.daily_vol = daily_vol
        self.end_minute = end_ms // MINUTE_MS  # the minute the live market opens in
        self.n = days * DAY_MINUTES
        self.first_minute = self.end_minute - self.n
        self._salt = seed_for(seed, f"wiggle:{name}") & _MASK
        rng = random.Random(seed_for(seed, f"coin-past:{name}"))
        dt = 60.0
        switch = 1.0 - math.exp(-dt / REGIME_MEAN_S)
        diffusion = daily_vol * math.sqrt(dt / 86_400)
        jump = dt / JUMP_EVERY_S
        trend = TREND_PER_DAY * daily_vol / 86_400 * dt
        gauss, uniform = rng.gauss, rng.random
        n = self.n
        increments = array("d", bytes(8 * n))
        regimes = array("b", bytes(n))
        regime, drift = 0, 0.0
        for k in range(n):
            if uniform() < switch:
                regime = int(uniform() * 3) - 1
                drift = regime * trend
            shock = drift + diffusion * gauss(0.0, 1.0)
            if uniform() < jump:
                shock += (1 if uniform() < 0.5 else -1) * daily_vol * (0.5 + uniform())
            increments[k] = shock
            regimes[k] = regime
        # Run backwards from the opening price: close[k] is the log price at the end of minute k.
        close = array("d", bytes(8 * n))
        x = math.log(end_price)
        for k in range(n - 1, -1, -1):
            close[k] = x
            x -= increments[k]
        self._open0 = x
        self.close = close
        self.regime = regimes
        # Hourly funding from an hourly basis (the same reverting process as the live one).
        hours = n // 60
        keep = math.exp(-3600.0 / BASIS_TAU_S)
        sd = BASIS_SD * math.sqrt(1.0 - keep * keep)
        basis = 0.0
        self.funding: list[Decimal] = []
        for _ in range(hours):
            basis = basis * keep + sd * gauss(0.0, 1.0)
            self.funding.append(funding_rate(basis))
        self._hours: dict[int, Bar] = {}
        self._marks: dict[int, Decimal] = {}

    # -- prices -----------------------------------------------------------------------------

    def index(self, t_ms: int) -> int:
        """The minute (index into this past) holding ``t_ms``, clamped to the past."""
        return max(0, min(self.n - 1, t_ms // MINUTE_MS - self.first_minute))

    def price(self, t_ms: int) -> float:
        """The price at ``t_ms`` (the close of the minute before it)."""
        k = t_ms // MINUTE_MS - self.first_minute - 1
        return math.exp(self.close[max(0, min(self.n - 1, k))]) if k >= 0 else math.exp(self._open0)

    def mark(self, t_ms: int) -> Decimal:
        """The price at ``t_ms`` on the tick grid (cached: every account values its positions
        at the same hours)."""
        px = self._marks.get(t_ms)
        if px is None:
            px = tick_round(self.price(t_ms), self.sz_decimals, self.is_spot)
            if len(self._marks) < 50_000:
                self._marks[t_ms] = px
        return px

    def regime_at(self, t_ms: int) -> int:
        return int(self.regime[self.index(t_ms)])

    def funding_at(self, hour_ms: int) -> Decimal:
        """The rate paid at the hour ``hour_ms`` (the hour that just ended)."""
        h = (hour_ms // MINUTE_MS - self.first_minute) // 60 - 1
        return self.funding[max(0, min(len(self.funding) - 1, h))]

    def turn_against(self, start_ms: int, end_ms: int, is_long: bool) -> int | None:
        """The first minute in ``[start_ms, end_ms)`` whose trend runs against a position."""
        against = -1 if is_long else 1
        regime = self.regime
        for k in range(self.index(start_ms), self.index(end_ms)):
            if regime[k] == against:
                return (self.first_minute + k) * MINUTE_MS
        return None

    def first_cross(self, start_ms: int, end_ms: int, level: float, below: bool) -> int | None:
        """The first minute-end in ``(start_ms, end_ms]`` where the price is at or beyond
        ``level`` (below it when ``below``); its time, or None."""
        target = math.log(level)
        k0 = self.index(start_ms)
        k1 = self.index(end_ms)
        close = self.close
        for k in range(k0, k1 + 1):
            x = close[k]
            if (x <= target) if below else (x >= target):
                return (self.first_minute + k + 1) * MINUTE_MS
        return None

    # -- candles ----------------------------------------------------------------------------

    def _minute(self, k: int) -> tuple[float, float, float, float, float]:
        """Minute ``k`` as floats: open, high, low, close, traded notional."""
        c = math.exp(self.close[k])
        o = math.exp(self.close[k - 1]) if k else math.exp(self._open0)
        wiggle = self.daily_vol * 0.012  # about a third of a minute's move, each way
        hi = max(o, c) * (1 + wiggle * _unit(k, self._salt))
        lo = min(o, c) * (1 - wiggle * _unit(k, self._salt ^ 0x5555))
        activity = 0.3 + 1.4 * _unit(k, self._salt ^ 0xAAAA) + abs(math.log(c / o)) / wiggle
        return o, hi, lo, c, MINUTE_USD * activity

    def _bar(
        self, o: float, hi: float, lo: float, c: float, notional: float, base: float, n: int
    ) -> Bar:
        szd, spot = self.sz_decimals, self.is_spot
        return (
            tick_round(o, szd, spot),
            tick_round(hi, szd, spot, 1),
            tick_round(lo, szd, spot, -1),
            tick_round(c, szd, spot),
            D(repr(round(base, szd))),
            n,
            D(repr(round(notional, 2))),
        )

    def minute_bar(self, minute: int) -> Bar | None:
        k = minute - self.first_minute
        if not 0 <= k < self.n:
            return None
        o, hi, lo, c, notional = self._minute(k)
        return self._bar(o, hi, lo, c, notional, notional / c, max(1, int(notional / 2500)))

    def hour_bar(self, hour: int) -> Bar | None:
        """An hour: the same numbers its minutes add up to."""
        bar = self._hours.get(hour)
        if bar is None:
            k0 = hour * 60 - self.first_minute
            if k0 < 0 or k0 + 60 > self.n:
                return None
            minutes = [self._minute(k) for k in range(k0, k0 + 60)]
            szd = self.sz_decimals
            bar = self._bar(
                minutes[0][0],
                max(m[1] for m in minutes),
                min(m[2] for m in minutes),
                minutes[-1][3],
                sum(round(m[4], 2) for m in minutes),
                sum(round(m[4] / m[3], szd) for m in minutes),
                sum(max(1, int(m[4] / 2500)) for m in minutes),
            )
            self._hours[hour] = bar
        return bar

    @property
    def start_ms(self) -> int:
        return self.first_minute * MINUTE_MS
