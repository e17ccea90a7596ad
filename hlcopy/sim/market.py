"""The simulated market: listed assets, seeded price paths and the quoted depth around them.

Each coin has an *oracle* price (what other venues say): a log random walk in continuous time
whose drift switches between trending regimes lasting hours, with rare jumps. The book's *fair*
price is the oracle moved by a slow basis (what funding is paid on) and by the impact of recent
taker flow, which decays. The current regime is the "future" skilled traders get to peek at;
unskilled ones fade it.

Depth belongs to the market makers: 20 levels a side around the fair price, thicker further out.
What takers consume is gone until it refills (exponentially, over seconds of market time), so a
burst of flow walks the book and moves the price.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import Decimal

from hlcopy.hl.wire import Rounding, price_decimals, round_price
from hlcopy.record import record

D = Decimal
ZERO = D(0)
DAY_S = 86_400.0
REGIME_MEAN_S = 3 * 3600.0  # a trend (or a lull) lasts about three hours
TREND_PER_DAY = 1.2  # drift during a trend, in daily volatilities per day
JUMP_EVERY_S = 2 * DAY_S  # a jump of about a day's volatility every couple of days
BASIS_TAU_S = 6 * 3600.0  # the basis (book vs oracle) reverts over hours ...
BASIS_SD = 0.0005  # ... around zero with this spread: funding moves when it passes 0.05%
IMPACT_TAU_S = 45.0  # taker impact decays over tens of seconds
IMPACT_PER_DEPTH = 0.5  # taking one side's whole quoted depth moves the price half its span
IMPACT_CAP = 0.02
REFILL_TAU_S = 4.0  # consumed depth comes back over a few seconds
SPREAD_BPS = 1.5  # market makers' half spread around the fair price
LEVEL_STEP = 0.0002  # distance between levels, fraction of the price
LEVEL_USD = 10_000.0  # size of the best level; deeper levels grow by 35% each
LEVELS = 20  # per side, as l2Book returns


@record
class PerpSpec:
    name: str
    sz_decimals: int
    max_leverage: int
    price: str  # the mid when the live market opens
    daily_vol: float = 0.05
    delisted: bool = False


# Realistic names, size decimals and leverage caps (mainnet, 2025-2026), plus one delisted slot.
PERPS: tuple[PerpSpec, ...] = (
    PerpSpec("BTC", 5, 40, "97250", 0.025),
    PerpSpec("ETH", 4, 25, "3420.5", 0.035),
    PerpSpec("ATOM", 2, 5, "7.482", 0.05),
    PerpSpec("MATIC", 1, 20, "0.4127", 0.05, delisted=True),
    PerpSpec("DYDX", 1, 10, "1.1845", 0.06),
    PerpSpec("SOL", 2, 20, "187.35", 0.045),
    PerpSpec("AVAX", 2, 10, "36.84", 0.05),
    PerpSpec("BNB", 3, 10, "648.2", 0.03),
    PerpSpec("APE", 1, 5, "1.2376", 0.06),
    PerpSpec("OP", 1, 10, "1.8763", 0.055),
    PerpSpec("LTC", 2, 10, "101.24", 0.04),
    PerpSpec("ARB", 1, 10, "0.7921", 0.055),
    PerpSpec("DOGE", 0, 10, "0.37215", 0.05),
    PerpSpec("INJ", 1, 10, "23.871", 0.055),
    PerpSpec("SUI", 1, 10, "4.1237", 0.06),
    PerpSpec("kPEPE", 0, 10, "0.019874", 0.07),
    PerpSpec("CRV", 1, 10, "0.8312", 0.06),
    PerpSpec("LINK", 1, 10, "22.345", 0.045),
    PerpSpec("XRP", 0, 20, "2.3412", 0.045),
    PerpSpec("HYPE", 2, 10, "24.812", 0.06),
    PerpSpec("TIA", 1, 10, "5.2341", 0.06),
    PerpSpec("WIF", 0, 10, "2.1834", 0.08),
    PerpSpec("AAVE", 2, 10, "312.45", 0.05),
    PerpSpec("ENA", 0, 10, "0.88123", 0.07),
    PerpSpec("TRX", 0, 10, "0.24518", 0.025),
    PerpSpec("NEAR", 1, 10, "5.3124", 0.055),
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
SPOT_DAILY_VOL = 0.05

# One builder-deployed (HIP-3) dex, second in perpDexs: asset ids 110000 + index.
BUILDER_DEX = "test"
BUILDER_PERPS: tuple[PerpSpec, ...] = (
    PerpSpec("test:ABC", 2, 10, "12.345", 0.05),
    PerpSpec("test:XYZ", 1, 5, "3.2101", 0.05),
)


def tick_round(price: float, sz_decimals: int, is_spot: bool, mode: int = 0) -> Decimal:
    """``price`` on the tick grid (5 significant figures, the asset's decimals): 0 nearest,
    -1 down, 1 up. Integer arithmetic: a float is only the input."""
    max_dec = (8 if is_spot else 6) - sz_decimals
    decimals = max(0, min(max_dec, 4 - math.floor(math.log10(price))))
    scaled = price * 10**decimals
    units = math.floor(scaled) if mode < 0 else math.ceil(scaled) if mode > 0 else round(scaled)
    return D(max(1, units)).scaleb(-decimals)


@dataclass(slots=True)
class PricePath:
    """One coin's prices. Floats are the model; Decimals on the tick grid are what trades."""

    name: str
    sz_decimals: int
    is_spot: bool
    daily_vol: float
    log_oracle: float = 0.0
    regime: int = 0  # -1 down, 0 flat, 1 up
    drift: float = 0.0  # log drift per second of the current regime
    basis: float = 0.0  # log(fair / oracle) before impact
    impact: float = 0.0  # log move from recent taker flow
    basis_sd: float = BASIS_SD
    fair: float = 0.0
    _mid: Decimal | None = None  # the fair price on the tick grid (computed when asked for)
    _dt: float = -1.0
    _factors: tuple[float, float, float, float, float, float] = (0.0,) * 6

    def set_mid(self, price: float) -> None:
        """Put the market at ``price`` now (start-up, tests, the control API)."""
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"a price must be positive and finite, got {price!r}")
        self.log_oracle = math.log(price)
        self.basis = self.impact = 0.0
        self._reprice()

    @property
    def oracle(self) -> float:
        return math.exp(self.log_oracle)

    def oracle_px(self) -> Decimal:
        return tick_round(self.oracle, self.sz_decimals, self.is_spot)

    @property
    def mid(self) -> Decimal:
        """The fair price on the tick grid: the mark."""
        mid = self._mid
        if mid is None:
            mid = self._mid = tick_round(self.fair, self.sz_decimals, self.is_spot)
        return mid

    def _reprice(self) -> None:
        self.fair = math.exp(self.log_oracle + self.basis + self.impact)
        self._mid = None

    def _coefficients(self, dt: float) -> tuple[float, float, float, float, float, float]:
        if dt != self._dt:
            basis_keep = math.exp(-dt / BASIS_TAU_S)
            self._factors = (
                1.0 - math.exp(-dt / REGIME_MEAN_S),  # regime switch probability
                self.daily_vol * math.sqrt(dt / DAY_S),  # diffusion
                dt / JUMP_EVERY_S,  # jump probability
                basis_keep,
                self.basis_sd * math.sqrt(1.0 - basis_keep * basis_keep),
                math.exp(-dt / IMPACT_TAU_S),
            )
            self._dt = dt
        return self._factors

    def step(self, rng: random.Random, dt: float) -> None:
        """Move ``dt`` seconds of market time on."""
        switch, diffusion, jump, basis_keep, basis_sd, impact_keep = self._coefficients(dt)
        if rng.random() < switch:
            self.regime = rng.choice((-1, 0, 1))
            self.drift = self.regime * TREND_PER_DAY * self.daily_vol / DAY_S
        shock = self.drift * dt + diffusion * rng.gauss(0.0, 1.0)
        if rng.random() < jump:
            shock += rng.choice((-1, 1)) * self.daily_vol * rng.uniform(0.5, 1.5)
        self.log_oracle += shock
        self.basis = self.basis * basis_keep + basis_sd * rng.gauss(0.0, 1.0)
        self.impact *= impact_keep
        self._reprice()

    def push(self, signed_fraction: float) -> None:
        """Taker flow moved the book: ``signed_fraction`` of one side's depth was taken."""
        move = IMPACT_PER_DEPTH * LEVEL_STEP * LEVELS * signed_fraction
        self.impact = max(-IMPACT_CAP, min(IMPACT_CAP, self.impact + move))
        self._reprice()

    def tick(self) -> Decimal:
        """The price step at the current mid (the grid is finer below powers of ten)."""
        return D(1).scaleb(-price_decimals(self.mid, self.sz_decimals, self.is_spot))


@dataclass(slots=True)
class Depth:
    """The market makers' quotes: level sizes, what takers have consumed, and where the best
    levels sit this tick. Level prices are derived on demand from the best bid and ask."""

    tick: Decimal
    step: Decimal  # distance between levels
    top: Decimal  # the next power of ten above the mid: asks at or past it need re-rounding
    sizes: list[Decimal]
    total_usd: float
    bid0: Decimal = ZERO
    ask0: Decimal = ZERO
    # What takers took from each level, and when that was last brought up to date.
    consumed: dict[tuple[bool, int], tuple[Decimal, int]] = field(default_factory=dict)

    @classmethod
    def build(cls, path: PricePath) -> Depth:
        mid = float(path.mid)
        tick = path.tick()
        step = tick * max(1, round(mid * LEVEL_STEP / float(tick)))
        lot = D(1).scaleb(-path.sz_decimals)
        sizes = [
            max(lot, D(repr(LEVEL_USD * (1 + 0.35 * i) / mid)).quantize(lot)) for i in range(LEVELS)
        ]
        top = D(10) ** (math.floor(math.log10(mid)) + 1)
        total = sum(float(s) for s in sizes) * mid
        depth = cls(tick, step, top, sizes, total)
        depth.quote(path)
        return depth

    def stale(self, path: PricePath) -> bool:
        """The grid changed under the quotes (a power of ten crossed, or a large move)."""
        return path.tick() != self.tick or path.mid >= self.top or path.mid * 10 < self.top

    def quote(self, path: PricePath) -> None:
        """Place the best levels around the fair price: the spread is whole ticks, so the mid
        between them lands on half a tick about half of the time."""
        half = path.fair * SPREAD_BPS / 10_000
        bid = tick_round(path.fair - half, path.sz_decimals, path.is_spot, -1)
        ask = tick_round(path.fair + half, path.sz_decimals, path.is_spot, 1)
        if ask <= bid:
            ask = bid + self.tick
        self.bid0, self.ask0 = bid, ask

    def taken(self, key: tuple[bool, int], now_ms: int, lot: Decimal) -> Decimal:
        """What is still missing from a level: consumed depth refills exponentially."""
        entry = self.consumed.get(key)
        if entry is None:
            return ZERO
        amount, since = entry
        if now_ms > since:
            keep = math.exp((since - now_ms) / (REFILL_TAU_S * 1000))
            amount = (amount * D(repr(round(keep, 6)))).quantize(lot) if keep > 1e-4 else ZERO
            if amount > 0:
                self.consumed[key] = (amount, now_ms)
            else:
                del self.consumed[key]
        return amount

    def take(self, key: tuple[bool, int], qty: Decimal, now_ms: int, lot: Decimal) -> None:
        self.consumed[key] = (self.taken(key, now_ms, lot) + qty, now_ms)

    def price(self, path: PricePath, is_ask: bool, i: int) -> Decimal | None:
        """Level ``i`` (0 = best) on one side; None past the book's end."""
        if i >= LEVELS:
            return None
        if not is_ask:
            px = self.bid0 - self.step * i
            return px if px > 0 else None
        px = self.ask0 + self.step * i
        if px >= self.top:  # past a power of ten the grid is coarser: round up onto it
            px = round_price(px, path.sz_decimals, path.is_spot, Rounding.UP)
        return px

    def left(self, is_ask: bool, i: int, now_ms: int, lot: Decimal) -> Decimal:
        """What level ``i`` still offers."""
        if not self.consumed:
            return self.sizes[i]
        return self.sizes[i] - self.taken((is_ask, i), now_ms, lot)
