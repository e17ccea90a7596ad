"""Domain types: frozen, slotted dataclasses with Decimal money. Parsed at the edge (``hl/``).

Times are exchange milliseconds (``*_ms``); sizes are signed where the exchange signs them
(``szi`` > 0 is long). Addresses are lowercase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

Side = Literal["B", "A"]  # bid (buy) / ask (sell), as on the wire


@dataclass(frozen=True, slots=True)
class AssetMeta:
    """One perp in a dex's universe; its index there is its asset id (plus the dex offset)."""

    name: str
    sz_decimals: int
    max_leverage: int
    delisted: bool = False
    margin_mode: str | None = None  # "strictIsolated" | "noCross" | None
    only_isolated: bool = False


@dataclass(frozen=True, slots=True)
class Meta:
    universe: tuple[AssetMeta, ...]


@dataclass(frozen=True, slots=True)
class SpotToken:
    name: str
    index: int
    sz_decimals: int
    wei_decimals: int
    token_id: str | None = None


@dataclass(frozen=True, slots=True)
class SpotPair:
    """A spot market: ``name`` is "PURR/USDC" or "@<index>"; asset id is 10000 + index."""

    name: str
    base: int
    quote: int
    index: int
    canonical: bool


@dataclass(frozen=True, slots=True)
class SpotMeta:
    tokens: tuple[SpotToken, ...]
    universe: tuple[SpotPair, ...]


@dataclass(frozen=True, slots=True)
class PerpDex:
    """A builder-deployed (HIP-3) dex; ``index`` is its position in perpDexs (0: the first dex)."""

    index: int
    name: str
    full_name: str | None = None
    deployer: str | None = None


@dataclass(frozen=True, slots=True)
class AssetCtx:
    mark_px: Decimal | None
    mid_px: Decimal | None
    oracle_px: Decimal | None
    funding: Decimal | None
    open_interest: Decimal | None
    day_ntl_vlm: Decimal | None
    prev_day_px: Decimal | None
    premium: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BookLevel:
    px: Decimal
    sz: Decimal
    n: int


@dataclass(frozen=True, slots=True)
class L2Book:
    coin: str
    time_ms: int
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]


@dataclass(frozen=True, slots=True)
class Leverage:
    type: str  # "cross" | "isolated"
    value: int
    raw_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Position:
    coin: str
    szi: Decimal
    entry_px: Decimal | None
    leverage: Leverage | None
    liquidation_px: Decimal | None
    margin_used: Decimal | None
    position_value: Decimal | None
    unrealized_pnl: Decimal | None
    return_on_equity: Decimal | None
    max_leverage: int | None = None
    cum_funding_all_time: Decimal | None = None


@dataclass(frozen=True, slots=True)
class MarginSummary:
    account_value: Decimal
    total_margin_used: Decimal
    total_ntl_pos: Decimal
    total_raw_usd: Decimal


@dataclass(frozen=True, slots=True)
class AccountState:
    """clearinghouseState: positions and margin of one account on one dex."""

    positions: tuple[Position, ...]
    margin_summary: MarginSummary
    cross_margin_summary: MarginSummary | None
    cross_maintenance_margin_used: Decimal | None
    withdrawable: Decimal | None
    time_ms: int | None

    def position(self, coin: str) -> Decimal:
        """Signed size in ``coin`` (0 when flat)."""
        for p in self.positions:
            if p.coin == coin:
                return p.szi
        return Decimal(0)


@dataclass(frozen=True, slots=True)
class SpotBalance:
    coin: str
    token: int
    hold: Decimal
    total: Decimal
    entry_ntl: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """An order as openOrders / frontendOpenOrders / orderStatus describe it."""

    coin: str
    side: Side
    limit_px: Decimal
    sz: Decimal
    oid: int
    timestamp_ms: int
    orig_sz: Decimal | None = None
    reduce_only: bool | None = None
    cloid: str | None = None
    is_trigger: bool | None = None
    trigger_px: Decimal | None = None
    trigger_condition: str | None = None
    order_type: str | None = None
    tif: str | None = None
    is_position_tpsl: bool | None = None
    children: tuple[Order, ...] = ()


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """orderStatus / historicalOrders: the order and its status (None: unknown to the exchange)."""

    order: Order | None
    status: str | None
    status_timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill of one user (userFills, userFillsByTime, the userFills stream)."""

    coin: str
    px: Decimal
    sz: Decimal
    side: Side
    time_ms: int
    start_position: Decimal | None
    dir: str | None
    closed_pnl: Decimal | None
    hash: str | None
    oid: int | None
    tid: int | None
    crossed: bool | None
    fee: Decimal | None
    fee_token: str | None = None
    builder_fee: Decimal | None = None
    cloid: str | None = None
    liquidation: bool = False
    twap_id: int | None = None


@dataclass(frozen=True, slots=True)
class Trade:
    """A public trade. ``users`` is (buyer, seller) per the docs; calibrated before relied on."""

    coin: str
    side: Side  # the aggressor's side
    px: Decimal
    sz: Decimal
    time_ms: int
    hash: str
    tid: int
    users: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Funding:
    time_ms: int
    coin: str
    usdc: Decimal
    szi: Decimal
    funding_rate: Decimal
    n_samples: int | None
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class PortfolioPeriod:
    account_value_history: tuple[tuple[int, Decimal], ...]
    pnl_history: tuple[tuple[int, Decimal], ...]
    vlm: Decimal


@dataclass(frozen=True, slots=True)
class Portfolio:
    """Account value and PnL histories per period ("day", "week", "month", "allTime", "perp…")."""

    periods: dict[str, PortfolioPeriod] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserRole:
    role: str  # user | agent | vault | subAccount | missing
    master: str | None = None  # the owner of an agent or sub-account


@dataclass(frozen=True, slots=True)
class UserRateLimit:
    cum_vlm: Decimal
    n_requests_used: int
    n_requests_cap: int
    n_requests_surplus: int | None = None


@dataclass(frozen=True, slots=True)
class ExtraAgent:
    name: str
    address: str
    valid_until_ms: int | None


@dataclass(frozen=True, slots=True)
class Candle:
    open_ms: int
    close_ms: int
    coin: str
    interval: str
    open: Decimal
    close: Decimal
    high: Decimal
    low: Decimal
    volume: Decimal
    trades: int


# --- /exchange outcomes -----------------------------------------------------------------------

OrderOutcome = Literal["resting", "filled", "error", "waitingForFill", "waitingForTrigger"]


@dataclass(frozen=True, slots=True)
class OrderStatus:
    """What the exchange said about one order of an order action."""

    outcome: OrderOutcome
    oid: int | None = None
    cloid: str | None = None
    total_sz: Decimal | None = None
    avg_px: Decimal | None = None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        """The order reached the book or filled (it was not refused)."""
        return self.outcome != "error"


@dataclass(frozen=True, slots=True)
class CancelStatus:
    ok: bool
    error: str | None = None
