"""The simulated market: listed assets, seeded mid-price paths and the depth around them.

Mids follow a log random walk whose drift switches between trending regimes, with rare jumps.
The current regime is the "future" skilled traders get to peek at; unskilled ones fade it. Depth
is synthetic (market makers quote both sides around the mid, thicker further out) and is
regenerated every tick, so takers see price impact within a tick but cannot drain the book.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal

from hlcopy.hl.wire import Rounding, price_decimals, round_price

D = Decimal
ZERO = D(0)


@dataclass(frozen=True, slots=True)
class PerpSpec:
    name: str
    sz_decimals: int
    max_leverage: int
    price: str  # starting mid
    vol_bps: float = 2.0  # typical move per tick, basis points
    delisted: bool = False


# Realistic names, size decimals and leverage caps (mainnet, 2025-2026), plus one delisted slot.
PERPS: tuple[PerpSpec, ...] = (
    PerpSpec("BTC", 5, 40, "97250", 1.5),
    PerpSpec("ETH", 4, 25, "3420.5", 2.0),
    PerpSpec("ATOM", 2, 5, "7.482", 3.0),
    PerpSpec("MATIC", 1, 20, "0.4127", 3.0, delisted=True),
    PerpSpec("DYDX", 1, 10, "1.1845", 3.0),
    PerpSpec("SOL", 2, 20, "187.35", 2.5),
    PerpSpec("AVAX", 2, 10, "36.84", 3.0),
    PerpSpec("BNB", 3, 10, "648.2", 2.0),
    PerpSpec("APE", 1, 5, "1.2376", 3.5),
    PerpSpec("OP", 1, 10, "1.8763", 3.0),
    PerpSpec("LTC", 2, 10, "101.24", 2.5),
    PerpSpec("ARB", 1, 10, "0.7921", 3.0),
    PerpSpec("DOGE", 0, 10, "0.37215", 3.0),
    PerpSpec("INJ", 1, 10, "23.871", 3.0),
    PerpSpec("SUI", 1, 10, "4.1237", 3.5),
    PerpSpec("kPEPE", 0, 10, "0.019874", 4.0),
    PerpSpec("CRV", 1, 10, "0.8312", 3.5),
    PerpSpec("LINK", 1, 10, "22.345", 3.0),
    PerpSpec("XRP", 0, 20, "2.3412", 3.0),
    PerpSpec("HYPE", 2, 10, "24.812", 4.0),
    PerpSpec("TIA", 1, 10, "5.2341", 3.5),
    PerpSpec("WIF", 0, 10, "2.1834", 4.0),
    PerpSpec("AAVE", 2, 10, "312.45", 2.5),
    PerpSpec("ENA", 0, 10, "0.88123", 4.0),
    PerpSpec("TRX", 0, 10, "0.24518", 2.0),
    PerpSpec("NEAR", 1, 10, "5.3124", 3.0),
)

# Spot: tokens and pairs as spotMeta lists them. PURR/USDC keeps its name; others are "@<index>".
SPOT_TOKENS: tuple[tuple[str, int, int], ...] = (  # name, szDecimals, weiDecimals
    ("USDC", 8, 8),
    ("PURR", 0, 5),
    ("HFUN", 2, 8),
    ("HYPE", 2, 8),
)
SPOT_PAIRS: tuple[tuple[str, int, str], ...] = (  # name, base token index, starting mid
    ("PURR/USDC", 1, "0.21345"),
    ("@1", 2, "8.1234"),
    ("@2", 3, "24.801"),
)

# One builder-deployed (HIP-3) dex, second in perpDexs: asset ids 110000 + index.
BUILDER_DEX = "test"
BUILDER_PERPS: tuple[PerpSpec, ...] = (
    PerpSpec("test:ABC", 2, 10, "12.345", 4.0),
    PerpSpec("test:XYZ", 1, 5, "3.2101", 4.0),
)

LEVELS = 20  # per side, as l2Book returns


@dataclass(slots=True)
class PricePath:
    """One coin's mid: a float log-price (the model) and its tick-rounded Decimal (what trades)."""

    name: str
    sz_decimals: int
    is_spot: bool
    log_mid: float
    vol: float  # per-tick standard deviation of log returns
    drift: float = 0.0  # per-tick drift of the current regime
    regime: int = 0  # -1 down, 0 flat, 1 up
    mid: Decimal = ZERO

    def set_mid(self, price: float) -> None:
        self.log_mid = math.log(price)
        self.mid = self._round(price)

    def _round(self, price: float) -> Decimal:
        # Integer arithmetic on the tick grid: 5 significant figures, at most the decimals the
        # asset allows. A carry into the next decade only removes significant figures.
        max_dec = (8 if self.is_spot else 6) - self.sz_decimals
        decimals = max(0, min(max_dec, 4 - math.floor(math.log10(price))))
        return D(max(1, round(price * 10**decimals))).scaleb(-decimals)

    def step(self, rng: random.Random) -> None:
        if rng.random() < 0.002:  # a regime lasts ~500 ticks (50 s at 100 ms ticks)
            self.regime = rng.choice((-1, 0, 1))
            self.drift = self.regime * self.vol * 0.25
        shock = rng.gauss(self.drift, self.vol)
        if rng.random() < 0.0005:  # a rare jump of a few percent
            shock += rng.choice((-1, 1)) * rng.uniform(0.01, 0.04)
        self.log_mid += shock
        self.mid = self._round(math.exp(self.log_mid))

    def tick(self) -> Decimal:
        """The price step at the current mid (the grid is finer below powers of ten)."""
        return D(1).scaleb(-price_decimals(self.mid, self.sz_decimals, self.is_spot))


@dataclass(slots=True)
class Depth:
    """Quoted depth around a reference mid: offsets (multiples of the tick) and sizes.

    Rebuilt when the mid drifts more than 2% from the reference, so most ticks only shift the
    levels by the mid: Decimal additions instead of 40 roundings.
    """

    ref_mid: Decimal
    tick: Decimal
    top: Decimal  # the next power of ten above the mid: asks at or past it need re-rounding
    offsets: list[Decimal]
    sizes: list[Decimal]

    @classmethod
    def build(cls, path: PricePath, spread_bps: float = 2.0, level_usd: float = 10_000.0) -> Depth:
        mid = float(path.mid)
        tick = path.tick()
        tick_f = float(tick)
        half = max(1, math.ceil(mid * spread_bps / 20_000 / tick_f))
        step = max(1, round(mid * 0.0002 / tick_f))
        lot = D(1).scaleb(-path.sz_decimals)
        offsets = [tick * (half + i * step) for i in range(LEVELS)]
        sizes = [D(repr(level_usd * (1 + 0.35 * i) / mid)).quantize(lot) for i in range(LEVELS)]
        top = D(10) ** (math.floor(math.log10(mid)) + 1)
        return cls(path.mid, tick, top, offsets, sizes)

    def stale(self, path: PricePath) -> bool:
        return (
            abs(path.mid - self.ref_mid) * 50 > self.ref_mid
            or path.tick() != self.tick
            or path.mid >= self.top
        )

    def price(self, path: PricePath, is_ask: bool, i: int) -> Decimal | None:
        """Level ``i`` (0 = best) on one side at the current mid; None past the book's end."""
        if i >= LEVELS or self.sizes[i] <= 0:
            return None
        if not is_ask:
            px = path.mid - self.offsets[i]
            return px if px > 0 else None
        px = path.mid + self.offsets[i]
        if px >= self.top:  # past a power of ten the grid is coarser: round up onto it
            px = round_price(px, path.sz_decimals, path.is_spot, Rounding.UP)
        return px
