"""Domain types: frozen, slotted dataclasses with Decimal money. Parsed at the edge (``hl/``).

Times are exchange milliseconds (``*_ms``); sizes are signed where the exchange signs them
(``szi`` > 0 is long). Addresses are lowercase. Two groups: what the exchange says (markets,
accounts, orders, fills, trades, and the stream's messages) and what flows through the copy
pipeline (``LeaderFill`` -> ``TargetPosition`` -> ``OrderIntent`` -> ``OrderOutcome``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from decimal import Decimal
from typing import Literal

from hlcopy.record import record

Side = Literal["B", "A"]  # bid (buy) / ask (sell), as on the wire
Tif = Literal["Gtc", "Ioc", "Alo"]
Tpsl = Literal["tp", "sl"]
ZERO = Decimal(0)


@record
class Asset:
    """What an order needs to know about a market (see ``hl/universe.py`` for the ids)."""

    name: str
    asset_id: int
    sz_decimals: int
    max_leverage: int
    is_spot: bool = False
    dex: str = ""
    delisted: bool = False
    only_isolated: bool = False

    @property
    def tradable(self) -> bool:
        return not self.delisted


@record
class AssetMeta:
    """One perp in a dex's universe; its index there is its asset id (plus the dex offset)."""

    name: str
    sz_decimals: int
    max_leverage: int
    delisted: bool = False
    margin_mode: str | None = None  # "strictIsolated" | "noCross" | None
    only_isolated: bool = False


@record
class Meta:
    universe: tuple[AssetMeta, ...]


@record
class SpotToken:
    name: str
    index: int
    sz_decimals: int
    wei_decimals: int
    token_id: str | None = None


@record
class SpotPair:
    """A spot market: ``name`` is "PURR/USDC" or "@<index>"; asset id is 10000 + index."""

    name: str
    base: int
    quote: int
    index: int
    canonical: bool


@record
class SpotMeta:
    tokens: tuple[SpotToken, ...]
    universe: tuple[SpotPair, ...]


@record
class PerpDex:
    """A builder-deployed (HIP-3) dex; ``index`` is its position in perpDexs (0: the first dex)."""

    index: int
    name: str
    full_name: str | None = None
    deployer: str | None = None


@record
class AssetCtx:
    mark_px: Decimal | None
    mid_px: Decimal | None
    oracle_px: Decimal | None
    funding: Decimal | None
    open_interest: Decimal | None
    day_ntl_vlm: Decimal | None
    prev_day_px: Decimal | None
    premium: Decimal | None = None


@record
class BookLevel:
    px: Decimal
    sz: Decimal
    n: int


@record
class L2Book:
    coin: str
    time_ms: int
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]


@record
class Leverage:
    type: str  # "cross" | "isolated"
    value: int
    raw_usd: Decimal | None = None


@record
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


@record
class MarginSummary:
    account_value: Decimal
    total_margin_used: Decimal
    total_ntl_pos: Decimal
    total_raw_usd: Decimal


@record
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


@record
class AccountRead:
    """An ``AccountState`` with when we asked for it and when it came, on our own clock: the
    exchange's ``time`` in it is another clock, useless for telling whether a fill of ours was
    in it (the live executor's view, ``PaperExecutor._sync_live``)."""

    state: AccountState
    sent_ms: int
    done_ms: int


@record
class SpotBalance:
    coin: str
    token: int
    hold: Decimal
    total: Decimal
    entry_ntl: Decimal | None = None


@record
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


@record
class OrderRecord:
    """orderStatus / historicalOrders: the order and its status (None: unknown to the exchange)."""

    order: Order | None
    status: str | None
    status_timestamp_ms: int | None


@record
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


@record
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


@record
class Funding:
    time_ms: int
    coin: str
    usdc: Decimal
    szi: Decimal
    funding_rate: Decimal
    n_samples: int | None
    hash: str | None = None


@record
class FundingRate:
    """One hour of a coin's funding (``fundingHistory``): the rate paid at ``time_ms``."""

    coin: str
    time_ms: int
    rate: Decimal
    premium: Decimal | None = None


@record
class FillsDocument:
    """Fills saved from the exchange (a file): the fills, oldest first, and every account the
    document names (an envelope's ``user``, or a ``user`` field on the fills)."""

    fills: tuple[Fill, ...]
    users: frozenset[str] = frozenset()


@record
class PortfolioPeriod:
    account_value_history: tuple[tuple[int, Decimal], ...]
    pnl_history: tuple[tuple[int, Decimal], ...]
    vlm: Decimal


@record
class Portfolio:
    """Account value and PnL histories per period ("day", "week", "month", "allTime", "perp…")."""

    periods: dict[str, PortfolioPeriod] = field(default_factory=dict)


@record
class UserRole:
    role: str  # user | agent | vault | subAccount | missing
    master: str | None = None  # the owner of an agent or sub-account


@record
class UserRateLimit:
    cum_vlm: Decimal
    n_requests_used: int
    n_requests_cap: int
    n_requests_surplus: int | None = None


@record
class ExtraAgent:
    name: str
    address: str
    valid_until_ms: int | None


@record
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


# --- the stream's messages, parsed -----------------------------------------------------------
# ``recv_ns`` is a perf-counter reading taken when the frame arrived (for latency figures only);
# ``recv_ms`` is the wall clock at that moment, comparable with exchange timestamps.


@record
class Trades:
    """One frame of a coin's public trades."""

    coin: str
    trades: tuple[Trade, ...]
    recv_ns: int = 0
    recv_ms: int = 0


@record
class UserFills:
    """One message of a user's fills; a snapshot (``is_snapshot``) replays history."""

    user: str
    is_snapshot: bool
    fills: tuple[Fill, ...]
    recv_ns: int = 0
    recv_ms: int = 0


@record
class OrderUpdate:
    order: Order
    status: str
    status_timestamp_ms: int


@record
class OrderUpdates:
    """One message of a user's order status changes."""

    user: str
    updates: tuple[OrderUpdate, ...]
    recv_ns: int = 0
    recv_ms: int = 0


@record
class AllMids:
    """Mid prices by coin; a mid may be half a tick and is then not a valid order price."""

    mids: Mapping[str, Decimal]
    dex: str = ""
    recv_ms: int = 0


# --- /exchange: what we send and what comes back -----------------------------------------------


@record
class OrderSpec:
    """An order in domain terms; ``hl/`` rounds it and puts it on the wire.

    ``px`` is the worst price acceptable: a buy's limit is rounded down and a sell's up, so
    rounding never pays more than asked. ``sz`` is rounded down to the lot. With ``trigger_px``
    it is a stop (``tpsl="sl"``) or take-profit (``"tp"``) trigger order instead of a limit.
    """

    asset: Asset
    is_buy: bool
    px: Decimal
    sz: Decimal
    reduce_only: bool = False
    tif: Tif = "Ioc"
    cloid: str | None = None
    trigger_px: Decimal | None = None
    tpsl: Tpsl | None = None
    trigger_is_market: bool = True


OrderStatusKind = Literal["resting", "filled", "error", "waitingForFill", "waitingForTrigger"]


@record
class OrderStatus:
    """What the exchange said about one order of an order action."""

    outcome: OrderStatusKind
    oid: int | None = None
    cloid: str | None = None
    total_sz: Decimal | None = None
    avg_px: Decimal | None = None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        """The order reached the book or filled (it was not refused)."""
        return self.outcome != "error"


@record
class CancelStatus:
    ok: bool
    error: str | None = None


# --- the copy pipeline --------------------------------------------------------------------------

FillSource = Literal["userFills", "firehose", "rest"]


@record
class LeaderFill:
    """A fill of a followed leader, from whichever source saw it first.

    ``(leader, tid)`` identifies it across sources. ``start_position`` is known from userFills and
    REST (exact), not from the trades firehose, whose fills are also ``confirmed=False`` until the
    meaning of a trade's ``users`` pair is calibrated.
    """

    leader: str
    coin: str
    side: Side
    sz: Decimal
    px: Decimal
    time_ms: int
    tid: int
    source: FillSource
    start_position: Decimal | None = None
    confirmed: bool = True
    recv_ns: int = 0

    @property
    def delta(self) -> Decimal:
        """The signed change of the leader's position."""
        return self.sz if self.side == "B" else -self.sz

    @property
    def end_position(self) -> Decimal | None:
        return None if self.start_position is None else self.start_position + self.delta


@record
class TargetPosition:
    """Where one follow wants the follower to be in one coin (signed size)."""

    follow_id: str
    coin: str
    szi: Decimal
    leader_szi: Decimal
    time_ms: int


@record
class OrderIntent:
    """One order the copier decided on, before anything is sent.

    ``attribution`` says which follows caused it and how much of ``sz`` is each one's (the shares
    sum to ``sz``). ``cloid`` is derived from (follow, leader, tid, attempt), so deciding the same
    thing twice yields the same id.
    """

    cloid: str
    coin: str
    is_buy: bool
    sz: Decimal
    limit_px: Decimal
    reduce_only: bool
    reason: str
    attribution: tuple[tuple[str, Decimal], ...]
    leader: str | None = None
    source_tid: int | None = None
    attempt: int = 0
    decided_ms: int = 0
    tif: Tif = "Ioc"

    @property
    def follow_ids(self) -> tuple[str, ...]:
        return tuple(follow for follow, _ in self.attribution)


OutcomeStatus = Literal[
    "filled",  # completely
    "partial",  # partly filled; the IOC rest was cancelled
    "resting",  # on the book (not for IOC)
    "rejected",  # refused by the exchange: definite
    "unknown",  # sent, no answer: settle by cloid once expiresAfter has passed
    "never_arrived",  # settled: the exchange never saw it
]


@record
class OrderOutcome:
    """What became of an intent."""

    cloid: str
    status: OutcomeStatus
    filled_sz: Decimal = ZERO
    avg_px: Decimal | None = None
    fee: Decimal = ZERO
    oid: int | None = None
    error: str | None = None
    time_ms: int = 0


# --- what tracking observes -----------------------------------------------------------------------

PositionEventKind = Literal["open", "increase", "decrease", "close", "flip", "liquidated"]


@record
class PositionEvent:
    """A change of one trader's position in one coin, seen between two snapshots (or fills)."""

    address: str
    coin: str
    kind: PositionEventKind
    prev_szi: Decimal
    new_szi: Decimal
    time_ms: int
    entry_px: Decimal | None = None
    px: Decimal | None = None  # the mark (or fill) price when it was seen
    notional: Decimal | None = None  # |new size| x price
    leverage: Decimal | None = None


@record
class WindowPerformance:
    pnl: Decimal
    roi: Decimal
    vlm: Decimal


@record
class SeedTrader:
    """One row of the exchange's public leaderboard document (survivors only, self-reported
    windows): a seed for tracking priorities, never a ranking of its own."""

    address: str
    account_value: Decimal
    windows: Mapping[str, WindowPerformance]
