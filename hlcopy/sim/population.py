"""Synthetic traders with known archetypes, trading through the engine like anyone else.

* skilled: enter with the coin's current trend regime most of the time (positive expectancy);
* unskilled: mostly against it, and often (negative expectancy: the counter-trade targets);
* market makers: own the quoted depth, so they take the other side of many small fills;
* whales: large and rare, mildly skilled;
* noise: random direction.

Every decision comes from one seeded generator; addresses derive from the seed, so a run is
reproducible and the ground truth (who is what) can be served to tests.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal

from hlcopy.hl.wire import round_size
from hlcopy.sim.engine import Engine

D = Decimal
SLIPPAGE = D("0.01")  # takers cross the book with a 1% limit


@dataclass(frozen=True, slots=True)
class Archetype:
    name: str
    share: float  # of the population
    activity: float  # relative chance of acting in a given action slot
    skill: float  # probability of trading with the trend
    size_usd: tuple[float, float]
    hold_ticks: tuple[int, int]
    balance_usd: float


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("skilled", 0.15, 1.0, 0.72, (2_000, 12_000), (150, 600), 150_000),
    Archetype("unskilled", 0.30, 2.5, 0.28, (800, 6_000), (40, 250), 30_000),
    Archetype("market_maker", 0.05, 0.0, 0.5, (0, 0), (0, 0), 50_000_000),
    Archetype("whale", 0.05, 0.15, 0.6, (80_000, 400_000), (300, 1500), 5_000_000),
    Archetype("noise", 0.45, 1.5, 0.5, (300, 3_000), (20, 400), 15_000),
)
BY_NAME = {a.name: a for a in ARCHETYPES}


def address_for(seed: int, i: int) -> str:
    return "0x" + hashlib.blake2b(f"hlcopy-sim:{seed}:{i}".encode(), digest_size=20).hexdigest()


@dataclass(slots=True)
class Trader:
    address: str
    kind: Archetype
    coins: tuple[str, ...]
    open: dict[str, int] = field(default_factory=dict)  # coin -> tick to close at


class Population:
    """The traders and their decisions. ``step`` acts for one engine tick."""

    def __init__(self, engine: Engine, n: int, seed: int = 1) -> None:
        self.engine = engine
        self.rng = random.Random(seed * 7919 + 1)
        self.traders: list[Trader] = []
        coins = [
            a.name for a in engine.assets.values() if not a.is_spot and not a.delisted and not a.dex
        ]
        counts = self._counts(n)
        i = 0
        for kind in ARCHETYPES:
            for _ in range(counts[kind.name]):
                address = address_for(seed, i)
                i += 1
                engine.open_account(address, D(int(kind.balance_usd)))
                if kind.name == "market_maker":
                    engine.market_makers.append(address)
                picks = tuple(self.rng.sample(coins, k=min(len(coins), self.rng.randint(2, 6))))
                self.traders.append(Trader(address, kind, picks))
        self._active = [t for t in self.traders if t.kind.activity > 0]
        self._cum_weights = list(itertools.accumulate(t.kind.activity for t in self._active))
        self._due: list[tuple[int, int, str]] = []  # (tick, trader index, coin) to close
        self._index = {t.address: i for i, t in enumerate(self.traders)}
        self.actions = 0

    @staticmethod
    def _counts(n: int) -> dict[str, int]:
        counts = {a.name: int(n * a.share) for a in ARCHETYPES}
        if n >= len(ARCHETYPES):  # every archetype present when there is room for it
            for a in ARCHETYPES:
                counts[a.name] = max(1, counts[a.name])
        counts["noise"] += max(0, n - sum(counts.values()))
        return counts

    def archetypes(self) -> dict[str, str]:
        return {t.address: t.kind.name for t in self.traders}

    def step(self, actions_per_tick: float) -> None:
        """Take about ``actions_per_tick`` actions (Poisson), then close what is due."""
        for _ in range(self.plan(actions_per_tick)):
            self.act_random()
        self.close_due()

    def plan(self, actions_per_tick: float) -> int:
        """How many actions this tick takes (Poisson around ``actions_per_tick``)."""
        return self._poisson(actions_per_tick) if self._active and actions_per_tick > 0 else 0

    def act_random(self) -> None:
        """One trader, drawn by activity, acts."""
        self.act(self.rng.choices(self._active, cum_weights=self._cum_weights)[0])

    def close_due(self, limit: int | None = None) -> bool:
        """Close positions whose holding time is over (at most ``limit``); True if more wait."""
        tick = self.engine.ticks
        done = 0
        while self._due and self._due[0][0] <= tick:
            if limit is not None and done >= limit:
                return True
            done += 1
            due, i, coin = heapq.heappop(self._due)
            trader = self.traders[i]
            if trader.open.get(coin) == due:  # not re-armed by a later open
                self.close(trader, coin)
        return False

    def _poisson(self, lam: float) -> int:
        if lam > 30:  # normal approximation: fast and close enough for large rates
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        threshold, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= threshold:
                return k
            k += 1

    def act(
        self,
        trader: Trader,
        coin: str | None = None,
        is_buy: bool | None = None,
        usd: float | None = None,
    ) -> None:
        """Open (or add to) a position now."""
        coin = coin or self.rng.choice(trader.coins)
        asset = self.engine.by_name[coin]
        if is_buy is None:
            regime = asset.path.regime or self.rng.choice((-1, 1))
            with_trend = self.rng.random() < trader.kind.skill
            is_buy = (regime > 0) == with_trend
        lo, hi = trader.kind.size_usd
        usd = usd or self.rng.uniform(lo, hi)
        self._take(trader, coin, is_buy, usd, reduce_only=False)
        lo_h, hi_h = trader.kind.hold_ticks
        due = self.engine.ticks + self.rng.randint(lo_h, max(lo_h, hi_h))
        trader.open[coin] = due
        heapq.heappush(self._due, (due, self._index[trader.address], coin))
        self.actions += 1

    def close(self, trader: Trader, coin: str) -> None:
        trader.open.pop(coin, None)
        pos = self.engine.accounts[trader.address].positions.get(coin)
        if pos is None or pos.szi == 0:
            return
        asset = self.engine.by_name[coin]
        self._take(
            trader,
            coin,
            pos.szi < 0,
            float(abs(pos.szi) * asset.path.mid),
            reduce_only=True,
            size=abs(pos.szi),
        )

    def _take(
        self,
        trader: Trader,
        coin: str,
        is_buy: bool,
        usd: float,
        reduce_only: bool,
        size: Decimal | None = None,
    ) -> None:
        mid = self.engine.by_name[coin].path.mid
        sz = (
            size
            if size is not None
            else round_size(D(repr(usd)) / mid, self.engine.by_name[coin].sz_decimals)
        )
        if sz > 0:
            self.engine.market_order(trader.address, coin, is_buy, sz, SLIPPAGE, reduce_only)
