"""The simulated exchange: accounts, positions, orders, matching, margin, funding, liquidations
and the records they leave.

Pure and synchronous: every operation takes the time it happens at, randomness comes from one
seeded generator, and the same seed and inputs give the same trades. It speaks the exchange's
data shapes (fills, statuses, states are built as the wire dicts the exchange sends) and enforces
its rules with its messages (HYPERLIQUID.md §6.5, §8, §11): tick and lot, the $10 minimum except
full closes, reduce-only, margin, 80% from the reference price, IOC with nothing to match,
post-only crossing, delisted assets, leverage changes.

Margin as on the exchange: cross positions share the account's cash; an isolated position holds
its own margin. Maintenance margin is half the initial margin at the asset's maximum leverage;
an account (cross) or position (isolated) below it is liquidated by a market order through the
book, what the book cannot take goes to the liquidator vault at the mark (backstop). Funding is
paid every hour from the average premium of the book over the oracle.

Simplifications, stated: one margin table tier per asset; one USDC balance backs every perp
dex (the builder dex's positions are isolated, their margin taken from it); the mark is the
book's fair price; margin checks run on a schedule set by how far each account is from its
maintenance margin (a jump can land a liquidation past the bankruptcy price: the liquidator
vault absorbs the difference, recorded as bad debt); spot balances do not count as perp
collateral.

Trigger orders (stop and take-profit) rest off the book, indexed per coin by trigger price, until
the mark crosses them at a tick: a stop on a long (a sell) fires at mark <= triggerPx, a stop on a
short (a buy) at mark >= triggerPx, a take-profit the other way round. A fired order keeps its oid
and its record goes "triggered", then what became of it: a market trigger is an IOC limited 10%
from the mark (the exchange's slippage for market TP/SL), a limit trigger a GTC at its limit price
that rests in the book while it does not fill; fills are the taker's (crossed). A reduce-only
trigger is checked against the position when it fires: cut to the position, or, with no position
left to reduce, cancelled ("reduceOnlyCanceled") without trading. A trigger that does not reduce
needs the margin when it fires ("marginCanceled" otherwise). Simplification: the grouping of an
order action (normalTpsl, positionTpsl) is not modelled; every trigger stands alone.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from hlcopy.hl.wire import Rounding, is_valid_price, is_valid_size, round_price
from hlcopy.record import record
from hlcopy.sim.book import Book, Resting
from hlcopy.sim.candles import LiveCandles
from hlcopy.sim.fmt import USD, num, to_micro, usd
from hlcopy.sim.market import (
    BUILDER_DEX,
    BUILDER_PERPS,
    LEVELS,
    PERPS,
    SPOT_DAILY_VOL,
    SPOT_PAIRS,
    SPOT_TOKENS,
    Depth,
    PricePath,
)

D = Decimal
ZERO = D(0)
ONE = D(1)
TAKER_FEE = D("0.00045")
MAKER_FEE = D("0.00015")
MIN_NOTIONAL = D(10)
REFERENCE_BAND = D("0.8")
RECORDS_KEPT = 2000  # order records per user (orderStatus forgets older ones)
FILLS_KEPT = 10_000  # live fills per user kept for userFills / userFillsByTime
SPOT_OFFSET = 10_000
BUILDER_OFFSET = 110_000  # 100000 + 1 * 10000: the builder dex is second in perpDexs
SCHEDULE_CANCEL_VOLUME = D(1_000_000)
DEFAULT_LEVERAGE = 20
HOUR_MS = 3_600_000
INTEREST_8H = 0.0001  # the exchange's interest component: 0.01% per 8 hours
FUNDING_CLAMP = 0.0005
FUNDING_CAP_HOURLY = 0.04
WITHDRAW_FEE = D(1)
LIQUIDATION_SLIPPAGE = D("0.1")
TRIGGER_SLIPPAGE = D("0.1")  # market TP/SL: 10% slippage tolerance (exchange docs, TP/SL FAQ)
LIQUIDATOR = "0x" + "4c" * 20  # the liquidator vault: takes what the book cannot (backstop)
HOUSE_MAKER = "0x" + "00" * 19 + "01"
BASE_RATE = D("0.0000125")  # the hourly rate when the premium is small: interest / 8

MSG_TICK = "Price must be divisible by tick size."
MSG_PRICE = "Order has invalid price."
MSG_SIZE = "Order has invalid size."
MSG_MIN = "Order must have minimum value of $10."
MSG_MIN_SPOT = "Order must have minimum value of 10 USDC."
MSG_REDUCE = "Reduce only order would increase position."
MSG_MARGIN = "Insufficient margin to place order."
MSG_SPOT_BALANCE = "Order has insufficient spot balance to trade"
MSG_REFERENCE = "Order price cannot be more than 80% away from the reference price"
MSG_IOC = "Order could not immediately match against any resting orders."
MSG_NO_LIQUIDITY = "No liquidity available for market order."
MSG_MISSING = "Order was never placed, already canceled, or filled."
MSG_TRIGGER = "Invalid TP/SL price."
MSG_SWITCH = "Cannot switch leverage type with open position."
MSG_NO_CROSS = "Cross margin is not allowed for this asset."
MSG_CROSS_DECREASE = (
    "Cross position does not have sufficient margin available to decrease leverage. "
    "To decrease leverage, deposit more collateral."
)
MSG_ISOLATED_DECREASE = (
    "Isolated position does not have sufficient margin available to decrease leverage. "
    "To decrease leverage, add margin to the position."
)

_MASK_50 = 2**50 - 1
_MASK_256 = 2**256 - 1


def _tid(buy_oid: int, sell_oid: int) -> int:
    """A 50-bit trade id from the two order ids, as the exchange derives one (deterministic)."""
    return ((buy_oid * 0x9E3779B97F4A7C15) ^ (sell_oid * 0xC2B2AE3D27D4EB4F)) & _MASK_50


def tx_hash(n: int) -> str:
    """A transaction hash for action ``n`` (deterministic, hash-like)."""
    return "0x%064x" % (
        (n * 0x9E3779B97F4A7C15C2B2AE3D27D4EB4F165667B19E3779F9 + 0x27D4EB2F) & _MASK_256
    )


@dataclass(slots=True)
class Asset:
    asset_id: int
    name: str
    sz_decimals: int
    max_leverage: int
    is_spot: bool
    dex: str
    path: PricePath
    candles: LiveCandles
    delisted: bool = False
    strict_isolated: bool = False
    base_token: int = 0  # spot only
    lot: Decimal = ONE
    mmr: Decimal = ZERO  # maintenance margin rate
    depth: Depth | None = None
    depth_tick: int = -1
    maker: str = ""  # the market maker quoting this tick
    level_oids: dict[tuple[bool, int], int] = field(default_factory=dict)
    book: Book = field(default_factory=Book)
    triggers: dict[int, Resting] = field(default_factory=dict)
    # Unfired triggers by (trigger price, oid), ascending: those that fire when the mark falls
    # to their price (stops of longs, take-profits of shorts) and those that fire when it rises.
    fires_below: list[tuple[Decimal, int]] = field(default_factory=list)
    fires_above: list[tuple[Decimal, int]] = field(default_factory=list)
    premium_sum: float = 0.0  # premium x seconds this hour
    premium_time: float = 0.0
    funding_rate: Decimal = BASE_RATE  # the last hourly rate paid
    open_price: float = 0.0  # the mid the live market opened at (where the past ends)
    # (hour, rate, premium) of every funding hour of the live market
    funding_history: list[tuple[int, Decimal, float]] = field(default_factory=list)


@dataclass(slots=True)
class Position:
    szi: Decimal = ZERO
    entry_px: Decimal = ZERO
    iso_margin: Decimal = ZERO  # isolated positions: the USD set aside for this position
    funding_open: Decimal = ZERO  # funding paid since opened (positive = paid)
    funding_change: Decimal = ZERO  # ... since the size last changed


@dataclass(slots=True)
class Account:
    address: str
    usdc: Decimal  # cash of the cross account (isolated margins are held by their positions)
    deposits: Decimal  # net USD put in: the balance the live market found, plus deposits,
    # minus withdrawals since; account value - deposits is the PnL made here
    opened_ms: int
    opening: Decimal = ZERO  # the balance the live market found (its past is elsewhere)
    positions: dict[str, Position] = field(default_factory=dict)
    spot: dict[int, Decimal] = field(default_factory=dict)
    leverage: dict[str, tuple[int, bool]] = field(default_factory=dict)  # coin -> (lev, cross)
    orders: dict[int, Resting] = field(default_factory=dict)
    records: OrderedDict[int, Record] = field(default_factory=OrderedDict)
    cloids: dict[str, int] = field(default_factory=dict)
    fills: deque[FillRecord] = field(default_factory=lambda: deque(maxlen=FILLS_KEPT))
    volume: Decimal = ZERO
    requests: int = 0
    # Hourly samples (ms, account value, deposits, volume), all integer micro-USD.
    samples: list[tuple[int, int, int, int]] = field(default_factory=list)
    # The "now" point of the last few portfolio answers: ground truth as a client saw it.
    served: deque[tuple[int, int, int, int]] = field(default_factory=lambda: deque(maxlen=16))
    schedule_cancel_ms: int | None = None
    ledger: list[LedgerRecord] = field(default_factory=list)
    fundings: list[FundingRecord] = field(default_factory=list)
    cum_funding: dict[str, Decimal] = field(default_factory=dict)  # coin -> paid, all time
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO  # received (negative: paid)
    forgiven: Decimal = ZERO  # losses past zero a liquidation left to the liquidator vault
    liquidations: int = 0


# Order records, fills and ledger rows are plain tuples of atomic values. The exchange keeps
# thousands of each per account; CPython's cyclic GC skips such tuples, while it would scan every
# object of a class on each full collection (hundreds of milliseconds at a few million objects).

# An order record: (coin, is_buy, px, sz_left, orig_sz, tif, reduce_only, cloid, trigger,
# timestamp, oid, status, status_ms), trigger being None or (is_market, trigger_px, tpsl).
Record = tuple[
    str,
    bool,
    Decimal,
    Decimal,
    Decimal,
    str | None,
    bool,
    str | None,
    tuple[bool, Decimal, str] | None,
    int,
    int,
    str,
    int,
]
REC_CLOID: Final = 7

# A fill: (coin, px, sz, is_buy, time, start_position, dir, closed_pnl, hash, oid, crossed, fee,
# tid, cloid, liquidation); px and sz are wire strings (shared with the trade); liquidation is
# None or (liquidated user, mark price string, method).
FillRecord = tuple[
    str,
    str,
    str,
    bool,
    int,
    Decimal,
    str,
    Decimal,
    str,
    int,
    bool,
    Decimal,
    int,
    str | None,
    tuple[str, str, str] | None,
]
FILL_TIME: Final = 4
# A trade: (coin, buyer took, px, sz, time, hash, tid, buyer, seller).
TradeRecord = tuple[str, bool, str, str, int, str, int, str, str]
FILL_CROSSED: Final = 10
FILL_LIQUIDATION: Final = 14

# A non-funding ledger row: (time, hash, kind, usdc, detail) where detail is a tuple of
# atomic values depending on the kind (withdraw: (nonce, fee); liquidation: (account value,
# leverage type, ((coin, szi), ...))).
LedgerRecord = tuple[int, str, str, Decimal, tuple[Any, ...]]
# A funding payment: (time, coin, usdc received, szi, rate).
FundingRecord = tuple[int, str, Decimal, Decimal, Decimal]


def record_order(r: Record) -> dict[str, Any]:
    """The frontendOpenOrders / orderStatus fields of a record."""
    coin, is_buy, px, sz, orig, tif, reduce_only, cloid, t, timestamp, oid, _, _ = r
    return {
        "coin": coin,
        "side": "B" if is_buy else "A",
        "limitPx": num(px),
        "sz": num(sz),
        "oid": oid,
        "timestamp": timestamp,
        "triggerCondition": "N/A"
        if t is None
        else (f"Price {'above' if (t[2] == 'tp') != is_buy else 'below'} {num(t[1])}"),
        "isTrigger": t is not None,
        "triggerPx": "0.0" if t is None else num(t[1]),
        "children": [],
        "isPositionTpsl": False,
        "reduceOnly": reduce_only,
        "orderType": "Limit"
        if t is None
        else (("Take Profit" if t[2] == "tp" else "Stop") + (" Market" if t[0] else " Limit")),
        "origSz": num(orig),
        "tif": tif if t is None else None,
        "cloid": cloid,
    }


def record_wire(r: Record) -> dict[str, Any]:
    """An orderStatus / historicalOrders item."""
    return {"order": record_order(r), "status": r[11], "statusTimestamp": r[12]}


def record_update(r: Record) -> dict[str, Any]:
    """An orderUpdates item."""
    coin, is_buy, px, sz, orig, _, reduce_only, cloid, _, timestamp, oid, status, status_ms = r
    order: dict[str, Any] = {
        "coin": coin,
        "side": "B" if is_buy else "A",
        "limitPx": num(px),
        "sz": num(sz),
        "oid": oid,
        "timestamp": timestamp,
        "origSz": num(orig),
        "reduceOnly": reduce_only,
    }
    if cloid is not None:
        order["cloid"] = cloid
    return {"order": order, "status": status, "statusTimestamp": status_ms}


def trade_wire(t: TradeRecord) -> dict[str, Any]:
    """The exchange's trade object (``side`` is the taker's)."""
    coin, is_buy, px, sz, time, tx, tid, buyer, seller = t
    return {
        "coin": coin,
        "side": "B" if is_buy else "A",
        "px": px,
        "sz": sz,
        "time": time,
        "hash": tx,
        "tid": tid,
        "users": [buyer, seller],
    }


def fill_wire(f: FillRecord) -> dict[str, Any]:
    """The exchange's fill object."""
    coin, px, sz, is_buy, time, start, direction, pnl, tx, oid, crossed, fee, tid, cloid, liq = f
    out: dict[str, Any] = {
        "coin": coin,
        "px": px,
        "sz": sz,
        "side": "B" if is_buy else "A",
        "time": time,
        "startPosition": num(start),
        "dir": direction,
        "closedPnl": usd(pnl),
        "hash": tx,
        "oid": oid,
        "crossed": crossed,
        "fee": usd(fee),
        "tid": tid,
        "feeToken": "USDC",
    }
    if cloid is not None:
        out["cloid"] = cloid
    if liq is not None:
        out["liquidation"] = {"liquidatedUser": liq[0], "markPx": liq[1], "method": liq[2]}
    return out


def ledger_wire(row: LedgerRecord) -> dict[str, Any]:
    """A userNonFundingLedgerUpdates item."""
    time, tx, kind, amount, detail = row
    delta: dict[str, Any]
    if kind == "deposit":
        delta = {"type": "deposit", "usdc": usd(amount)}
    elif kind == "withdraw":
        delta = {"type": "withdraw", "usdc": usd(amount), "nonce": detail[0], "fee": usd(detail[1])}
    else:  # liquidation
        delta = {
            "type": "liquidation",
            "liquidatedNtlPos": usd(amount),
            "accountValue": usd(detail[0]),
            "leverageType": detail[1],
            "liquidatedPositions": [{"coin": c, "szi": s} for c, s in detail[2]],
        }
    return {"time": time, "hash": tx, "delta": delta}


def funding_wire(row: FundingRecord) -> dict[str, Any]:
    """A userFunding item."""
    time, coin, amount, szi, rate = row
    return {
        "time": time,
        "hash": tx_hash(time // 1000 * 1009 + zlib.crc32(coin.encode())),  # the hour's, per coin
        "delta": {
            "type": "funding",
            "coin": coin,
            "usdc": usd(amount),
            "szi": num(szi),
            "fundingRate": num(rate),
            "nSamples": None,
        },
    }


def _trigger(t: dict[str, Any] | None) -> tuple[bool, Decimal, str] | None:
    return None if t is None else (bool(t["isMarket"]), t["triggerPx"], str(t["tpsl"]))


def _trigger_index(asset: Asset, r: Resting) -> list[tuple[Decimal, int]]:
    """The index a trigger order waits in: a stop that sells (on a long) and a take-profit that
    buys (on a short) fire when the mark falls to their price, the other two when it rises."""
    assert r.trigger is not None
    return asset.fires_below if (r.trigger["tpsl"] == "sl") != r.is_buy else asset.fires_above


@record
class OrderRequest:
    """An order as parsed from the wire (Decimal price and size)."""

    asset: int
    is_buy: bool
    px: Decimal
    sz: Decimal
    reduce_only: bool
    tif: str | None  # None for a trigger order
    cloid: str | None = None
    trigger: dict[str, Any] | None = None


@dataclass(slots=True)
class MarginState:
    """One account's margin, as clearinghouseState adds it up."""

    value: Decimal  # account value, everything
    cross_value: Decimal
    cross_ntl: Decimal
    cross_signed: Decimal  # sum of szi x mark over cross positions
    cross_margin: Decimal  # initial margin of cross positions
    cross_maintenance: Decimal
    ntl: Decimal
    signed: Decimal
    iso_equity: Decimal  # sum of isolated positions' equity


@dataclass
class Events:
    """What happened since the last drain, for the stream."""

    trades: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fills: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    updates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    user: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # userEvents non-fills
    fundings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ledger: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)  # whose clearinghouseState changed


class Engine:
    """See the module docstring."""

    def __init__(
        self, seed: int = 1, start_ms: int = 1_700_000_000_000, tick_ms: int = 100
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.start_ms = start_ms
        self.now_ms = start_ms
        self.tick_ms = tick_ms
        self.ticks = 0
        self._oid = 1_000_000
        self._lid = 0
        self.accounts: dict[str, Account] = {}
        self.agents: dict[str, str] = {}  # agent address -> master
        self.agent_names: dict[str, dict[str, str]] = {}  # master -> {agent: name}
        self.roles: dict[str, tuple[str, str | None]] = {}  # vaults and sub-accounts
        self.assets: dict[int, Asset] = {}
        self.by_name: dict[str, Asset] = {}
        self.market_makers: list[str] = []
        self._with_orders: set[str] = set()  # accounts with resting orders or a dead man's switch
        self._books: set[int] = set()  # assets with resting orders in their book
        self._triggered: set[int] = set()  # assets with unfired trigger orders
        self._risk: list[tuple[int, str]] = []  # (due ms, address): margin checks
        self._risk_due: dict[str, int] = {}
        self._next_hour = (start_ms // HOUR_MS + 1) * HOUR_MS
        self.trades: dict[str, deque[TradeRecord]] = {}  # the last 2000 of each coin
        self.counters = {
            "orders_accepted": 0,
            "orders_rejected": 0,
            "trades": 0,
            "fills": 0,
            "liquidations": 0,
            "deposits": 0,
            "withdrawals": 0,
            "funding_hours": 0,
        }
        self.watched: set[str] = set()  # users someone streams (fills, updates, events)
        self.events = Events()
        self._list_assets()

    # -- listing ----------------------------------------------------------------------------

    def _list_assets(self) -> None:
        for i, spec in enumerate(PERPS):
            self._add(
                i,
                spec.name,
                spec.sz_decimals,
                spec.max_leverage,
                False,
                "",
                spec.price,
                spec.daily_vol,
                delisted=spec.delisted,
            )
        for i, (name, base, price) in enumerate(SPOT_PAIRS):
            self._add(
                SPOT_OFFSET + i,
                name,
                SPOT_TOKENS[base][1],
                1,
                True,
                "",
                price,
                SPOT_DAILY_VOL,
                base_token=base,
            )
        for i, spec in enumerate(BUILDER_PERPS):
            self._add(
                BUILDER_OFFSET + i,
                spec.name,
                spec.sz_decimals,
                spec.max_leverage,
                False,
                BUILDER_DEX,
                spec.price,
                spec.daily_vol,
            )

    def _add(
        self,
        asset_id: int,
        name: str,
        szd: int,
        max_leverage: int,
        spot: bool,
        dex: str,
        price: str,
        daily_vol: float,
        delisted: bool = False,
        base_token: int = 0,
    ) -> None:
        path = PricePath(name, szd, spot, daily_vol)
        path.set_mid(float(price))
        asset = Asset(
            asset_id,
            name,
            szd,
            max_leverage,
            spot,
            dex,
            path,
            LiveCandles(self.start_ms, szd, spot),
            delisted=delisted,
            strict_isolated=bool(dex),
            base_token=base_token,
            lot=D(1).scaleb(-szd),
            mmr=ONE / (2 * max_leverage),
            open_price=float(price),
        )
        asset.candles.on_mid(self.start_ms, path.fair)
        self.assets[asset_id] = asset
        self.by_name[name] = asset
        self.trades[name] = deque(maxlen=2000)

    # -- accounts ---------------------------------------------------------------------------

    def open_account(
        self, address: str, usdc: Decimal, spot_usdc: Decimal = ZERO, *, opening: bool = False
    ) -> Account:
        """Fund ``address`` (opening its account if it has none): a deposit to the perp
        balance, listed in its ledger; ``spot_usdc`` goes to the spot balance. ``opening``
        marks the balance a synthetic trader had when the live market opened (its past, and
        the deposits in it, live elsewhere)."""
        address = address.lower()
        acct = self.accounts.get(address)
        if acct is None:
            acct = Account(address, ZERO, ZERO, self.now_ms)
            self.accounts[address] = acct
            if opening:
                acct.usdc = acct.deposits = acct.opening = usdc
                usdc = ZERO
        if usdc:
            self.deposit(acct, usdc)
        if spot_usdc:
            acct.spot[0] = acct.spot.get(0, ZERO) + spot_usdc
        if not acct.samples:
            self._sample(acct, self.now_ms)
        return acct

    def deposit(self, acct: Account, usdc: Decimal) -> None:
        acct.usdc += usdc
        acct.deposits += usdc
        self._ledger(acct, "deposit", usdc, ())
        self.counters["deposits"] += 1

    def withdraw(self, acct: Account, usdc: Decimal) -> str | None:
        """Withdraw ``usdc`` (a $1 fee on top); the exchange's refusal when it cannot."""
        total = usdc + WITHDRAW_FEE
        if usdc <= 0 or total > self.withdrawable(acct):
            return "Insufficient balance for withdrawal."
        acct.usdc -= total
        acct.deposits -= total
        self._ledger(acct, "withdraw", usdc, (self.now_ms, WITHDRAW_FEE))
        self.counters["withdrawals"] += 1
        return None

    def _ledger(self, acct: Account, kind: str, usdc: Decimal, detail: tuple[Any, ...]) -> None:
        row: LedgerRecord = (self.now_ms, tx_hash(self.next_oid()), kind, usdc, detail)
        acct.ledger.append(row)
        if acct.address in self.watched:
            self.events.ledger.setdefault(acct.address, []).append(ledger_wire(row))
            self.events.changed.add(acct.address)

    def leverage_of(self, acct: Account, asset: Asset) -> tuple[int, bool]:
        """(leverage, is_cross) for ``asset``: what the account set, or the default."""
        setting = acct.leverage.get(asset.name)
        if setting is not None:
            return setting
        return min(DEFAULT_LEVERAGE, asset.max_leverage), not asset.strict_isolated

    def margin(self, acct: Account) -> MarginState:
        cross_upnl = cross_ntl = cross_signed = cross_margin = cross_mm = ZERO
        iso_eq = iso_ntl = iso_signed = ZERO
        by_name = self.by_name
        for coin, pos in acct.positions.items():
            szi = pos.szi
            if not szi:
                continue
            asset = by_name[coin]
            mark = asset.path.mid
            signed = szi * mark
            ntl = abs(signed)
            upnl = signed - szi * pos.entry_px
            lev, cross = acct.leverage.get(coin) or self.leverage_of(acct, asset)
            if cross:
                cross_upnl += upnl
                cross_ntl += ntl
                cross_signed += signed
                cross_margin += ntl / lev
                cross_mm += ntl * asset.mmr
            else:
                iso_eq += pos.iso_margin + upnl
                iso_ntl += ntl
                iso_signed += signed
        cross_value = acct.usdc + cross_upnl
        return MarginState(
            cross_value + iso_eq,
            cross_value,
            cross_ntl,
            cross_signed,
            cross_margin,
            cross_mm,
            cross_ntl + iso_ntl,
            cross_signed + iso_signed,
            iso_eq,
        )

    def account_value(self, acct: Account) -> Decimal:
        return self.margin(acct).value

    def withdrawable(self, acct: Account) -> Decimal:
        m = self.margin(acct)
        return max(ZERO, m.cross_value - m.cross_margin - self._resting_margin(acct))

    def _resting_margin(self, acct: Account) -> Decimal:
        total = ZERO
        for r in acct.orders.values():
            if (r.trigger is None or r.triggered) and not r.reduce_only:
                asset = self.by_name[r.coin]
                if not asset.is_spot:
                    total += r.sz * r.px / self.leverage_of(acct, asset)[0]
        return total

    def liquidation_px(
        self, acct: Account, coin: str, state: MarginState | None = None
    ) -> Decimal | None:
        """Where the position in ``coin`` would be liquidated, others held still (the
        exchange's formula: px - side * margin available / size / (1 - mmr * side))."""
        pos = acct.positions.get(coin)
        if pos is None or not pos.szi:
            return None
        asset = self.by_name[coin]
        mark = asset.path.mid
        _, cross = self.leverage_of(acct, asset)
        if cross:
            st = state or self.margin(acct)
            available = st.cross_value - st.cross_maintenance
        else:
            ntl = abs(pos.szi) * mark
            available = pos.iso_margin + pos.szi * (mark - pos.entry_px) - ntl * asset.mmr
        side = ONE if pos.szi > 0 else -ONE
        px = mark - side * available / abs(pos.szi) / (ONE - asset.mmr * side)
        return px if px > 0 else None

    # -- time -------------------------------------------------------------------------------

    def step(self, now_ms: int | None = None) -> None:
        """Advance one tick: move the market, refill depth, fill resting orders the market
        crossed, fire the trigger orders the mark crossed, pay funding and take samples on the
        hour, check margins that are due."""
        now = now_ms if now_ms is not None else self.now_ms + self.tick_ms
        dt = max(0.0, (now - self.now_ms) / 1000)
        self.ticks += 1
        self.now_ms = now
        rng = self.rng
        for asset in self.assets.values():
            if asset.delisted:
                continue
            path = asset.path
            path.step(rng, dt)
            fair = path.fair
            if not asset.is_spot:
                oracle = path.oracle
                spread = fair * 0.00025
                premium = max(fair - spread - oracle, 0.0) - max(oracle - fair - spread, 0.0)
                asset.premium_sum += premium / oracle * dt
                asset.premium_time += dt
            asset.candles.on_mid(now, fair)
        for asset_id in list(self._books):
            self._cross_resting(self.assets[asset_id])
        if self._triggered:
            self._fire_triggers()
        for address in list(self._with_orders):
            acct = self.accounts[address]
            if acct.schedule_cancel_ms is not None and now >= acct.schedule_cancel_ms:
                acct.schedule_cancel_ms = None
                for oid in list(acct.orders):
                    self._finish(acct, self._unrest(acct, oid), "scheduledCancel")
            if not acct.orders and acct.schedule_cancel_ms is None:
                self._with_orders.discard(address)
        while now >= self._next_hour:
            self._on_hour(self._next_hour)
            self._next_hour += HOUR_MS
        self.check_risk(now)

    def _on_hour(self, hour_ms: int) -> None:
        """Funding on the hour, then every account's hourly sample."""
        self.counters["funding_hours"] += 1
        rates: dict[str, tuple[Decimal, Decimal]] = {}
        for asset in self.assets.values():
            if asset.is_spot or asset.delisted:
                continue
            premium = asset.premium_sum / asset.premium_time if asset.premium_time else 0.0
            asset.premium_sum = asset.premium_time = 0.0
            asset.funding_rate = funding_rate(premium)
            asset.funding_history.append((hour_ms, asset.funding_rate, premium))
            rates[asset.name] = (asset.funding_rate, asset.path.oracle_px())
        for acct in self.accounts.values():
            if acct.positions:
                self._pay_funding(acct, hour_ms, rates)
            self._sample(acct, hour_ms)

    def _pay_funding(
        self, acct: Account, hour_ms: int, rates: dict[str, tuple[Decimal, Decimal]]
    ) -> None:
        paid_any = False
        for coin, pos in acct.positions.items():
            if not pos.szi or coin not in rates:
                continue
            rate, oracle = rates[coin]
            received = (-pos.szi * oracle * rate).quantize(USD, rounding=ROUND_HALF_EVEN)
            if not received:
                continue
            paid_any = True
            _, cross = self.leverage_of(acct, self.by_name[coin])
            if cross:
                acct.usdc += received
            else:
                pos.iso_margin += received
            acct.funding += received
            pos.funding_open -= received
            pos.funding_change -= received
            acct.cum_funding[coin] = acct.cum_funding.get(coin, ZERO) - received
            row: FundingRecord = (hour_ms, coin, received, pos.szi, rate)
            acct.fundings.append(row)
            if acct.address in self.watched:
                self.events.fundings.setdefault(acct.address, []).append(
                    {
                        "time": hour_ms,
                        "coin": coin,
                        "usdc": usd(received),
                        "szi": num(pos.szi),
                        "fundingRate": num(rate),
                        "nSamples": None,
                    }
                )
                self.events.user.setdefault(acct.address, []).append(
                    {
                        "funding": {
                            "coin": coin,
                            "usdc": usd(received),
                            "szi": num(pos.szi),
                            "fundingRate": num(rate),
                            "nSamples": None,
                        }
                    }
                )
        if paid_any:
            self.events.changed.add(acct.address)
            self.watch_risk(acct.address, self.now_ms)

    def _sample(self, acct: Account, t: int) -> None:
        acct.samples.append(
            (t, to_micro(self.account_value(acct)), to_micro(acct.deposits), to_micro(acct.volume))
        )

    def set_price(self, asset: Asset, price: float) -> None:
        """Move a coin to ``price`` now (the control API): everyone holding it gets a margin
        check at once, the quoted depth is rebuilt there."""
        asset.path.set_mid(price)
        asset.depth = None
        for acct in self.accounts.values():
            pos = acct.positions.get(asset.name)
            if pos is not None and pos.szi:
                self.watch_risk(acct.address, self.now_ms)

    # -- margin checks and liquidations --------------------------------------------------------

    def watch_risk(self, address: str, due_ms: int) -> None:
        """Check ``address``'s margin at ``due_ms`` (or earlier, if already due earlier)."""
        current = self._risk_due.get(address)
        if current is None or due_ms < current:
            self._risk_due[address] = due_ms
            heapq.heappush(self._risk, (due_ms, address))
            if len(self._risk) > 4 * len(self._risk_due) + 1024:  # drop superseded entries
                self._risk = [(due, a) for a, due in self._risk_due.items()]
                heapq.heapify(self._risk)

    def check_risk(self, now: int) -> None:
        heap = self._risk
        while heap and heap[0][0] <= now:
            due, address = heapq.heappop(heap)
            if self._risk_due.get(address) != due:
                continue  # superseded by an earlier check
            del self._risk_due[address]
            acct = self.accounts.get(address)
            if acct is None or address in self.market_makers or address == LIQUIDATOR:
                continue
            wait_s = self._check_margin(acct)
            if wait_s is not None:
                self.watch_risk(address, now + max(1000, int(wait_s * 1000)))

    def _check_margin(self, acct: Account) -> float | None:
        """Liquidate what is under maintenance margin; how long until the next look (None
        when nothing is at risk)."""
        cross_coins: list[str] = []
        isolated: list[str] = []
        for coin, pos in acct.positions.items():
            if pos.szi and not self.by_name[coin].is_spot:
                (cross_coins if self.leverage_of(acct, self.by_name[coin])[1] else isolated).append(
                    coin
                )
        if not cross_coins and not isolated:
            return None
        wait = 3600.0
        if cross_coins:
            st = self.margin(acct)
            if st.cross_value < st.cross_maintenance:
                self._liquidate(acct, cross_coins, "Cross", st.cross_value)
            elif st.cross_ntl:
                buffer = float((st.cross_value - st.cross_maintenance) / st.cross_ntl)
                vol = max(self.by_name[c].path.daily_vol for c in cross_coins)
                wait = min(wait, _time_to_move(buffer, vol))
        for coin in isolated:
            pos = acct.positions[coin]
            asset = self.by_name[coin]
            mark = asset.path.mid
            ntl = abs(pos.szi) * mark
            equity = pos.iso_margin + pos.szi * (mark - pos.entry_px)
            if equity < ntl * asset.mmr:
                self._liquidate(acct, [coin], "Isolated", equity)
            elif ntl:
                buffer = float((equity - ntl * asset.mmr) / ntl)
                wait = min(wait, _time_to_move(buffer, asset.path.daily_vol))
        return wait

    def _liquidate(self, acct: Account, coins: list[str], kind: str, value: Decimal) -> None:
        """Close ``coins`` by market orders through the book (the rest to the liquidator
        vault at the mark); the account's orders on them are cancelled first."""
        self.counters["liquidations"] += 1
        acct.liquidations += 1
        self._lid += 1
        cancelled = []
        for oid, r in list(acct.orders.items()):
            if kind == "Cross" or r.coin in coins:
                self._finish(acct, self._unrest(acct, oid), "liquidatedCanceled")
                cancelled.append({"coin": r.coin, "oid": oid})
        ntl_total = ZERO
        positions = []
        for coin in coins:
            pos = acct.positions[coin]
            asset = self.by_name[coin]
            mark = asset.path.mid
            szi = pos.szi
            ntl_total += abs(szi) * mark
            positions.append((coin, num(szi)))
            liq = (acct.address, num(mark), "market")
            is_buy = szi < 0
            limit = round_price(
                mark * (ONE + LIQUIDATION_SLIPPAGE if is_buy else ONE - LIQUIDATION_SLIPPAGE),
                asset.sz_decimals,
                False,
                Rounding.DOWN if is_buy else Rounding.UP,
            )
            o = OrderRequest(asset.asset_id, is_buy, limit, abs(szi), True, "Ioc")
            oid = self.next_oid()
            filled, _ = self._match(acct, asset, o, oid, abs(szi), liq)
            left = abs(szi) - filled
            if left > 0:  # backstop: the liquidator vault takes the rest at the mark
                vault = self._liquidator()
                self._trade(
                    asset,
                    acct,
                    o,
                    oid,
                    vault,
                    self.next_oid(),
                    None,
                    mark,
                    left,
                    tx_hash(oid),
                    (acct.address, num(mark), "backstop"),
                )
        if acct.usdc < 0:  # bad debt: the liquidator vault absorbs it
            vault = self._liquidator()
            vault.usdc += acct.usdc
            vault.forgiven += acct.usdc
            acct.forgiven -= acct.usdc
            acct.usdc = ZERO
        self._ledger(acct, "liquidation", ntl_total, (value, kind, tuple(positions)))
        if acct.address in self.watched:
            events = self.events.user.setdefault(acct.address, [])
            if cancelled:
                events.append({"nonUserCancel": cancelled})
            events.append(
                {
                    "liquidation": {
                        "lid": self._lid,
                        "liquidator": LIQUIDATOR,
                        "liquidated_user": acct.address,
                        "liquidated_ntl_pos": usd(ntl_total),
                        "liquidated_account_value": usd(max(ZERO, value)),
                    }
                }
            )
            self.events.changed.add(acct.address)

    def _liquidator(self) -> Account:
        vault = self.accounts.get(LIQUIDATOR)
        if vault is None:
            vault = self.open_account(LIQUIDATOR, D(100_000_000), opening=True)
            self.roles[LIQUIDATOR] = ("vault", None)
        return vault

    # -- depth ------------------------------------------------------------------------------

    def depth(self, asset: Asset) -> Depth:
        """This tick's quoted depth for ``asset`` (levels are priced on demand)."""
        if asset.depth_tick != self.ticks or asset.depth is None:
            path = asset.path
            if asset.depth is None or asset.depth.stale(path):
                asset.depth = Depth.build(path)
            else:
                asset.depth.quote(path)
            asset.depth_tick = self.ticks
            asset.maker = self._maker(asset)
            asset.level_oids.clear()
        return asset.depth

    def depth_levels(self, asset: Asset, is_ask: bool) -> list[tuple[Decimal, Decimal]]:
        """What is left of one side of the quoted depth: (price, size), best first."""
        dep = self.depth(asset)
        out = []
        for i in range(LEVELS):
            px = dep.price(asset.path, is_ask, i)
            if px is None:
                break
            left = dep.left(is_ask, i, self.now_ms, asset.lot)
            if left > 0:
                out.append((px, left))
        return out

    def _depth_best(self, asset: Asset, is_ask: bool) -> Decimal | None:
        dep = self.depth(asset)
        for i in range(LEVELS):
            if dep.left(is_ask, i, self.now_ms, asset.lot) > 0:
                return dep.price(asset.path, is_ask, i)
        return None

    def best(self, asset: Asset) -> tuple[Decimal | None, Decimal | None]:
        """Best bid and ask over the quoted depth and resting orders."""
        best_bid = self._depth_best(asset, False)
        best_ask = self._depth_best(asset, True)
        book_bid, book_ask = asset.book.bids.best(), asset.book.asks.best()
        if book_bid is not None and (best_bid is None or book_bid > best_bid):
            best_bid = book_bid
        if book_ask is not None and (best_ask is None or book_ask < best_ask):
            best_ask = book_ask
        return best_bid, best_ask

    def mid(self, asset: Asset) -> Decimal:
        """The mid as the exchange computes it: halfway between the best bid and ask, which can
        be half a tick (and is then not a valid order price)."""
        bid, ask = self.best(asset)
        if bid is None or ask is None:
            return asset.path.mid
        return (bid + ask) / 2

    def _maker(self, asset: Asset) -> str:
        if not self.market_makers:
            self.open_account(HOUSE_MAKER, D(10) ** 9, opening=True)
            self.market_makers.append(HOUSE_MAKER)
        turn = asset.asset_id + self.now_ms // 5000
        return self.market_makers[turn % len(self.market_makers)]

    def next_oid(self) -> int:
        self._oid += 1
        return self._oid

    # -- orders -----------------------------------------------------------------------------

    def place_orders(self, user: str, orders: list[OrderRequest]) -> list[dict[str, Any] | str]:
        """Execute an order action; one status per order (or a single batch-wide error)."""
        acct = self.accounts[user]
        acct.requests += len(orders)
        for o in orders:  # errors that depend only on the payload reject the whole batch
            asset = self.assets.get(o.asset)
            if (
                asset is not None
                and not asset.delisted
                and o.px > 0
                and abs(o.px - asset.path.mid) > REFERENCE_BAND * asset.path.mid
            ):
                self.counters["orders_rejected"] += len(orders)
                return [{"error": MSG_REFERENCE}]
        return [self._place(acct, o) for o in orders]

    def market_order(
        self,
        user: str,
        coin: str,
        is_buy: bool,
        sz: Decimal,
        slippage: Decimal,
        reduce_only: bool = False,
    ) -> dict[str, Any] | str:
        """Cross the book now: an IOC limited ``slippage`` away from the mid (what the SDK's
        market orders do)."""
        asset = self.by_name[coin]
        mid = asset.path.mid
        px = round_price(
            mid * (1 + slippage if is_buy else 1 - slippage),
            asset.sz_decimals,
            asset.is_spot,
            Rounding.DOWN if is_buy else Rounding.UP,
        )
        (status,) = self.place_orders(
            user, [OrderRequest(asset.asset_id, is_buy, px, sz, reduce_only, "Ioc")]
        )
        return status

    def _place(self, acct: Account, o: OrderRequest) -> dict[str, Any] | str:
        asset = self.assets.get(o.asset)
        if asset is None:
            self.counters["orders_rejected"] += 1
            return {"error": f"Invalid asset {o.asset}"}
        if asset.delisted:
            self.counters["orders_rejected"] += 1
            return {"error": f"{asset.name} is delisted: trading is halted. asset={o.asset}"}
        oid = self.next_oid()
        if o.px <= 0:
            return self._reject(acct, asset, o, oid, "rejected", MSG_PRICE)
        if not is_valid_price(o.px, asset.sz_decimals, asset.is_spot):
            return self._reject(acct, asset, o, oid, "tickRejected", MSG_TICK)
        if not is_valid_size(o.sz, asset.sz_decimals):
            return self._reject(acct, asset, o, oid, "rejected", MSG_SIZE)
        if o.trigger is not None:
            return self._place_trigger(acct, asset, o, oid)
        pos = acct.positions.get(asset.name)
        szi = pos.szi if pos else ZERO
        sz = o.sz
        if o.reduce_only:
            if asset.is_spot or szi == 0 or (szi > 0) == o.is_buy:
                return self._reject(acct, asset, o, oid, "reduceOnlyRejected", MSG_REDUCE)
            sz = min(sz, abs(szi))  # shrunk to the position, never flips it
        # Closing the whole position is exempt from the minimum, reduce-only or not.
        closes_all = szi != 0 and (szi > 0) != o.is_buy and sz == abs(szi)
        if o.px * sz < MIN_NOTIONAL and not closes_all:
            return self._reject(
                acct,
                asset,
                o,
                oid,
                "minTradeNtlRejected",
                MSG_MIN_SPOT if asset.is_spot else MSG_MIN,
            )
        if asset.is_spot:
            if not self._spot_affordable(acct, asset, o.is_buy, o.px, sz):
                return self._reject(
                    acct, asset, o, oid, "insufficientSpotBalanceRejected", MSG_SPOT_BALANCE
                )
        elif not self._margin_ok(acct, asset, o.is_buy, o.px, sz, szi):
            return self._reject(acct, asset, o, oid, "perpMarginRejected", MSG_MARGIN)
        if o.tif == "Alo":
            best_bid, best_ask = self.best(asset)
            crosses = (o.is_buy and best_ask is not None and o.px >= best_ask) or (
                not o.is_buy and best_bid is not None and o.px <= best_bid
            )
            if crosses:
                bid = num(best_bid) if best_bid else ""
                ask = num(best_ask) if best_ask else ""
                return self._reject(
                    acct,
                    asset,
                    o,
                    oid,
                    "badAloPxRejected",
                    f"Post only order would have immediately matched, bbo was {bid}@{ask}.",
                )
            return self._rest(acct, asset, o, oid, sz)
        filled, cost = self._match(acct, asset, o, oid, sz)
        left = sz - filled
        if o.tif == "Ioc":
            if filled == 0:
                return self._reject(acct, asset, o, oid, "iocCancelRejected", MSG_IOC)
            self._record(acct, asset, o, oid, "filled" if left == 0 else "canceled", sz, left)
            self.counters["orders_accepted"] += 1
            return self._filled(oid, o.cloid, filled, cost)
        if left == 0:
            self._record(acct, asset, o, oid, "filled", sz, ZERO)
            self.counters["orders_accepted"] += 1
            return self._filled(oid, o.cloid, filled, cost)
        return self._rest(acct, asset, o, oid, left, orig=sz)

    @staticmethod
    def _filled(oid: int, cloid: str | None, filled: Decimal, cost: Decimal) -> dict[str, Any]:
        avg = (cost / filled).quantize(D("0.00000001")).normalize()
        body: dict[str, Any] = {"totalSz": num(filled), "avgPx": num(avg), "oid": oid}
        if cloid is not None:
            body["cloid"] = cloid
        return {"filled": body}

    def _place_trigger(
        self, acct: Account, asset: Asset, o: OrderRequest, oid: int
    ) -> dict[str, Any] | str:
        assert o.trigger is not None
        trigger_px = o.trigger["triggerPx"]
        if not is_valid_price(trigger_px, asset.sz_decimals, asset.is_spot):
            return self._reject(acct, asset, o, oid, "badTriggerPxRejected", MSG_TRIGGER)
        # A trigger order on its own rests and says so with its oid; "waitingForTrigger" is the
        # reply for the TP/SL children of a grouped order (not modelled).
        return self._rest(acct, asset, o, oid, o.sz)

    def _reject(
        self, acct: Account, asset: Asset, o: OrderRequest, oid: int, status: str, message: str
    ) -> dict[str, Any]:
        self._record(acct, asset, o, oid, status, o.sz, o.sz)
        self.counters["orders_rejected"] += 1
        return {"error": f"{message} asset={asset.asset_id}"}

    def _rest(
        self,
        acct: Account,
        asset: Asset,
        o: OrderRequest,
        oid: int,
        sz: Decimal,
        orig: Decimal | None = None,
    ) -> dict[str, Any]:
        resting = Resting(
            oid,
            acct.address,
            asset.name,
            o.is_buy,
            o.px,
            sz,
            orig or sz,
            o.tif or "Gtc",
            o.reduce_only,
            o.cloid,
            self.now_ms,
            o.trigger,
        )
        acct.orders[oid] = resting
        if o.trigger is None:
            asset.book.add(resting)
            self._books.add(asset.asset_id)
        else:
            asset.triggers[oid] = resting
            bisect.insort(_trigger_index(asset, resting), (o.trigger["triggerPx"], oid))
            self._triggered.add(asset.asset_id)
        self._with_orders.add(acct.address)
        self._record(acct, asset, o, oid, "open", orig or sz, sz)
        self.counters["orders_accepted"] += 1
        body: dict[str, Any] = {"oid": oid}
        if o.cloid is not None:
            body["cloid"] = o.cloid
        return {"resting": body}

    def _unrest(self, acct: Account, oid: int) -> Resting:
        """Take a resting order off the book (the caller records why)."""
        r = acct.orders.pop(oid)
        asset = self.by_name[r.coin]
        if r.trigger is None or r.triggered:
            asset.book.remove(r)
        elif asset.triggers.pop(oid, None) is not None:
            index = _trigger_index(asset, r)
            key = (r.trigger["triggerPx"], oid)
            i = bisect.bisect_left(index, key)
            if i < len(index) and index[i] == key:
                del index[i]
        return r

    def _margin_ok(
        self, acct: Account, asset: Asset, is_buy: bool, px: Decimal, sz: Decimal, szi: Decimal
    ) -> bool:
        after = szi + (sz if is_buy else -sz)
        if abs(after) <= abs(szi):
            return True  # reducing never needs margin
        lev = self.leverage_of(acct, asset)[0]
        added = abs(after) - (abs(szi) if (after > 0) == (szi > 0) else ZERO)
        st = self.margin(acct)
        available = st.cross_value - st.cross_margin - self._resting_margin(acct)
        return added * px / lev <= available

    def _spot_affordable(
        self, acct: Account, asset: Asset, is_buy: bool, px: Decimal, sz: Decimal
    ) -> bool:
        if is_buy:
            return acct.spot.get(0, ZERO) >= px * sz
        return acct.spot.get(asset.base_token, ZERO) >= sz

    def _match(
        self,
        taker: Account,
        asset: Asset,
        o: OrderRequest,
        oid: int,
        sz: Decimal,
        liq: tuple[str, str, str] | None = None,
    ) -> tuple[Decimal, Decimal]:
        """Sweep resting orders and quoted depth within the limit; return (filled, cost)."""
        dep = self.depth(asset)
        path = asset.path
        is_buy = o.is_buy
        is_ask = is_buy  # a buy takes the asks
        limit = o.px
        levels = (asset.book.asks if is_buy else asset.book.bids).walk()
        rest_level = next(levels, None)
        filled = ZERO
        cost = ZERO
        from_depth = ZERO
        tx = tx_hash(oid)
        li = 0
        level_px = dep.price(path, is_ask, 0)
        taker_address = taker.address
        while filled < sz:
            rest_px = rest_level[0] if rest_level is not None else None
            if rest_px is not None and (
                level_px is None or (rest_px <= level_px if is_buy else rest_px >= level_px)
            ):
                assert rest_level is not None
                if (is_buy and rest_px > limit) or (not is_buy and rest_px < limit):
                    break
                for rest in list(rest_level[1]):
                    if filled >= sz:
                        break
                    owner = self.accounts[rest.user]
                    if rest.user == taker_address:  # self-trade: the resting order is cancelled
                        self._finish(owner, self._unrest(owner, rest.oid), "selfTradeCanceled")
                        continue
                    qty = min(sz - filled, rest.sz)
                    self._trade(
                        asset, taker, o, oid, owner, rest.oid, rest.cloid, rest_px, qty, tx, liq
                    )
                    rest.sz -= qty
                    filled += qty
                    cost += qty * rest_px
                    if rest.sz == 0:
                        self._finish(owner, self._unrest(owner, rest.oid), "filled")
                if filled < sz:
                    rest_level = next(levels, None)
            elif level_px is not None:
                if (is_buy and level_px > limit) or (not is_buy and level_px < limit):
                    break
                available = dep.left(is_ask, li, self.now_ms, asset.lot)
                level = li
                px = level_px
                li += 1
                level_px = dep.price(path, is_ask, li)
                maker_address = asset.maker
                if available <= 0 or maker_address == taker_address:
                    continue
                maker_oid = asset.level_oids.get((is_ask, level))
                if maker_oid is None:
                    maker_oid = asset.level_oids[(is_ask, level)] = self.next_oid()
                qty = min(sz - filled, available)
                dep.take((is_ask, level), qty, self.now_ms, asset.lot)
                self._trade(
                    asset,
                    taker,
                    o,
                    oid,
                    self.accounts[maker_address],
                    maker_oid,
                    None,
                    px,
                    qty,
                    tx,
                    liq,
                )
                filled += qty
                cost += qty * px
                from_depth += qty * px
            else:
                break
        if from_depth:
            fraction = float(from_depth) / dep.total_usd
            path.push(fraction if is_buy else -fraction)
        return filled, cost

    def _trade(
        self,
        asset: Asset,
        taker: Account,
        o: OrderRequest,
        taker_oid: int,
        maker: Account,
        maker_oid: int,
        maker_cloid: str | None,
        px: Decimal,
        sz: Decimal,
        tx: str,
        liq: tuple[str, str, str] | None = None,
    ) -> None:
        buy_oid, sell_oid = (taker_oid, maker_oid) if o.is_buy else (maker_oid, taker_oid)
        tid = _tid(buy_oid, sell_oid)
        buyer, seller = (taker, maker) if o.is_buy else (maker, taker)
        px_w, sz_w = num(px), num(sz)
        record: TradeRecord = (
            asset.name,
            o.is_buy,
            px_w,
            sz_w,
            self.now_ms,
            tx,
            tid,
            buyer.address,
            seller.address,
        )
        self.trades[asset.name].append(record)
        self.events.trades.setdefault(asset.name, []).append(trade_wire(record))
        self.counters["trades"] += 1
        asset.candles.on_trade(px, sz)
        self._fill(
            taker, asset, o.is_buy, px, sz, px_w, sz_w, tx, taker_oid, tid, True, o.cloid, liq
        )
        self._fill(
            maker,
            asset,
            not o.is_buy,
            px,
            sz,
            px_w,
            sz_w,
            tx,
            maker_oid,
            tid,
            False,
            maker_cloid,
            liq,
        )

    def _fill(
        self,
        acct: Account,
        asset: Asset,
        is_buy: bool,
        px: Decimal,
        sz: Decimal,
        px_w: str,
        sz_w: str,
        tx: str,
        oid: int,
        tid: int,
        crossed: bool,
        cloid: str | None,
        liq: tuple[str, str, str] | None,
    ) -> None:
        notional = px * sz
        fee = (notional * (TAKER_FEE if crossed else MAKER_FEE)).quantize(USD)
        acct.volume += notional
        acct.fees += fee
        if asset.is_spot:
            start = acct.spot.get(asset.base_token, ZERO)
            acct.spot[asset.base_token] = start + (sz if is_buy else -sz)
            acct.spot[0] = acct.spot.get(0, ZERO) - (notional if is_buy else -notional) - fee
            direction, closed_pnl = ("Buy" if is_buy else "Sell"), ZERO
        else:
            pos = acct.positions.get(asset.name)
            if pos is None:
                pos = acct.positions[asset.name] = Position()
            start = pos.szi
            after = start + sz if is_buy else start - sz
            closed_pnl = ZERO
            lev, cross = acct.leverage.get(asset.name) or self.leverage_of(acct, asset)
            if start == 0 or (start > 0) == is_buy:  # opening or adding
                pos.entry_px = (abs(start) * pos.entry_px + notional) / abs(after)
                if start == 0:
                    pos.funding_open = ZERO
                direction = "Open Long" if is_buy else "Open Short"
                if not cross:
                    margin = notional / lev
                    pos.iso_margin += margin
                    acct.usdc -= margin
                if acct.address not in self.market_makers:
                    self.watch_risk(acct.address, self.now_ms)
            else:
                closed = sz if sz < abs(start) else abs(start)
                closed_pnl = (
                    closed * (px - pos.entry_px) if start > 0 else closed * (pos.entry_px - px)
                )
                if not cross:
                    release = (
                        pos.iso_margin
                        if closed == abs(start)
                        else pos.iso_margin * closed / abs(start)
                    )
                    pos.iso_margin -= release
                    acct.usdc += release
                if after == 0 or (after > 0) == (start > 0):
                    direction = "Close Short" if is_buy else "Close Long"
                    if after == 0:
                        pos.entry_px = ZERO
                else:
                    direction = "Short > Long" if is_buy else "Long > Short"
                    pos.entry_px = px
                    pos.funding_open = ZERO
                    if not cross:
                        margin = abs(after) * px / lev
                        pos.iso_margin += margin
                        acct.usdc -= margin
                    if acct.address not in self.market_makers:
                        self.watch_risk(acct.address, self.now_ms)
            pos.funding_change = ZERO
            pos.szi = after
            acct.usdc += closed_pnl - fee
            acct.realized += closed_pnl
        fill: FillRecord = (
            asset.name,
            px_w,
            sz_w,
            is_buy,
            self.now_ms,
            start,
            direction,
            closed_pnl,
            tx,
            oid,
            crossed,
            fee,
            tid,
            cloid,
            liq,
        )
        acct.fills.append(fill)
        if acct.address in self.watched:
            self.events.fills.setdefault(acct.address, []).append(fill_wire(fill))
            self.events.changed.add(acct.address)
        self.counters["fills"] += 1

    def _cross_resting(self, asset: Asset) -> None:
        """Resting orders the market makers' quotes moved through fill at their price: the
        market maker takes them."""
        book = asset.book
        if not book.bids.prices and not book.asks.prices:
            self._books.discard(asset.asset_id)
            return
        # Cheap first: the quotes sit a few basis points around the fair price.
        fair = asset.path.fair
        bid, ask = book.bids.best(), book.asks.best()
        if (bid is None or float(bid) < fair) and (ask is None or float(ask) > fair):
            return
        dep = self.depth(asset)
        for resting_side, is_bid in ((book.bids, True), (book.asks, False)):
            while True:
                r = resting_side.best_order()
                if r is None:
                    break
                crossed = r.px >= dep.ask0 if is_bid else r.px <= dep.bid0
                if not crossed:
                    break
                owner = self.accounts[r.user]
                maker_address = asset.maker
                if maker_address == r.user:
                    self._finish(owner, self._unrest(owner, r.oid), "canceled")
                    continue
                o = OrderRequest(asset.asset_id, not r.is_buy, r.px, r.sz, False, "Ioc")
                taker_oid = self.next_oid()
                self._trade(
                    asset,
                    self.accounts[maker_address],
                    o,
                    taker_oid,
                    owner,
                    r.oid,
                    r.cloid,
                    r.px,
                    r.sz,
                    tx_hash(taker_oid),
                )
                self._finish(owner, self._unrest(owner, r.oid), "filled")

    # -- trigger orders -----------------------------------------------------------------------

    def _fire_triggers(self) -> None:
        """Fire every trigger order the mark crossed, coin by coin, in the order they were
        placed. Only coins with triggers are looked at, and each costs two comparisons unless
        something fires."""
        for asset_id in sorted(self._triggered):
            asset = self.assets[asset_id]
            below, above = asset.fires_below, asset.fires_above
            if not below and not above:
                self._triggered.discard(asset_id)
                continue
            if asset.delisted:
                continue  # trading is halted
            mark = asset.path.mid
            fire_below = bool(below) and below[-1][0] >= mark
            fire_above = bool(above) and above[0][0] <= mark
            if not fire_below and not fire_above:
                continue
            due: list[int] = []
            if fire_below:
                i = bisect.bisect_left(below, mark, key=lambda t: t[0])
                due += [oid for _, oid in below[i:]]
                del below[i:]
            if fire_above:
                i = bisect.bisect_right(above, mark, key=lambda t: t[0])
                due += [oid for _, oid in above[:i]]
                del above[:i]
            for oid in sorted(due):
                r = asset.triggers.pop(oid, None)
                if r is not None:
                    self._fire(asset, r)

    def _fire(self, asset: Asset, r: Resting) -> None:
        """A trigger order the mark crossed (already out of the trigger index): it becomes the
        order it stood for, under the same oid."""
        assert r.trigger is not None
        acct = self.accounts[r.user]
        del acct.orders[r.oid]
        if acct.address in self.watched:
            self.events.changed.add(acct.address)  # its open orders changed
        pos = acct.positions.get(asset.name)
        szi = pos.szi if pos is not None else ZERO
        if r.reduce_only:
            if asset.is_spot or szi == 0 or (szi > 0) == r.is_buy:
                self._finish(acct, r, "reduceOnlyCanceled")  # nothing left to reduce
                return
            r.sz = min(r.sz, abs(szi))  # cut to the position, never flips it
        self._finish(acct, r, "triggered")
        if r.trigger["isMarket"]:
            mark = asset.path.mid
            px = round_price(
                mark * (ONE + TRIGGER_SLIPPAGE if r.is_buy else ONE - TRIGGER_SLIPPAGE),
                asset.sz_decimals,
                asset.is_spot,
                Rounding.DOWN if r.is_buy else Rounding.UP,
            )
            tif = "Ioc"
        else:
            px, tif = r.px, "Gtc"
        if asset.is_spot:
            affordable = self._spot_affordable(acct, asset, r.is_buy, px, r.sz)
        else:
            affordable = self._margin_ok(acct, asset, r.is_buy, px, r.sz, szi)
        if not affordable:
            self._finish(acct, r, "marginCanceled")
            return
        o = OrderRequest(asset.asset_id, r.is_buy, px, r.sz, r.reduce_only, tif, r.cloid)
        filled, _ = self._match(acct, asset, o, r.oid, r.sz)
        r.sz -= filled
        if r.sz == 0:
            self._finish(acct, r, "filled")
        elif tif == "Ioc":
            self._finish(acct, r, "canceled")  # what the book could not take within 10%
        else:  # a limit trigger rests in the book at its price; its record stays "triggered"
            r.triggered = True
            acct.orders[r.oid] = r
            asset.book.add(r)
            self._books.add(asset.asset_id)
            self._with_orders.add(acct.address)

    # -- records ----------------------------------------------------------------------------

    def _record(
        self,
        acct: Account,
        asset: Asset,
        o: OrderRequest,
        oid: int,
        status: str,
        orig: Decimal,
        sz: Decimal,
    ) -> None:
        rec: Record = (
            asset.name,
            o.is_buy,
            o.px,
            sz,
            orig,
            o.tif,
            o.reduce_only,
            o.cloid,
            _trigger(o.trigger),
            self.now_ms,
            oid,
            status,
            self.now_ms,
        )
        acct.records[oid] = rec
        if o.cloid is not None:
            acct.cloids[o.cloid] = oid
        while len(acct.records) > RECORDS_KEPT:
            _, old = acct.records.popitem(last=False)
            if old[REC_CLOID] is not None:
                acct.cloids.pop(old[REC_CLOID], None)
        if acct.address in self.watched:
            self.events.updates.setdefault(acct.address, []).append(record_update(rec))

    def _finish(self, acct: Account, r: Resting, status: str) -> None:
        left = ZERO if status == "filled" else r.sz
        rec: Record = (
            r.coin,
            r.is_buy,
            r.px,
            left,
            r.orig_sz,
            r.tif,
            r.reduce_only,
            r.cloid,
            _trigger(r.trigger),
            r.timestamp,
            r.oid,
            status,
            self.now_ms,
        )
        if r.oid in acct.records:  # a record past the last 2000 stays forgotten
            acct.records[r.oid] = rec
        if acct.address in self.watched:
            self.events.updates.setdefault(acct.address, []).append(record_update(rec))

    # -- other actions ----------------------------------------------------------------------

    def cancel(self, user: str, cancels: Iterable[tuple[int, int | str]]) -> list[Any]:
        """Cancel by (asset, oid) or (asset, cloid)."""
        acct = self.accounts[user]
        out: list[Any] = []
        for asset_id, ref in cancels:
            acct.requests += 1
            oid = acct.cloids.get(ref) if isinstance(ref, str) else ref
            r = acct.orders.get(oid) if oid is not None else None
            if r is None or self.by_name[r.coin].asset_id != asset_id:
                out.append({"error": f"{MSG_MISSING} asset={asset_id}"})
                continue
            self._finish(acct, self._unrest(acct, r.oid), "canceled")
            out.append("success")
        return out

    def modify(self, user: str, ref: int | str, order: OrderRequest) -> dict[str, Any] | str:
        """Cancel a resting order and place its replacement."""
        acct = self.accounts[user]
        oid = acct.cloids.get(ref) if isinstance(ref, str) else ref
        r = acct.orders.get(oid) if oid is not None else None
        if r is None:
            return {"error": "Cannot modify canceled or filled order"}
        self._finish(acct, self._unrest(acct, r.oid), "canceled")
        return self._place(acct, order)

    def update_leverage(
        self, user: str, asset_id: int, is_cross: bool, leverage: int
    ) -> str | None:
        """The exchange's rules: a valid leverage, no margin-type switch with a position open,
        and a lower leverage only with the margin to carry it."""
        asset = self.assets.get(asset_id)
        if asset is None or asset.is_spot:
            return f"Invalid asset {asset_id}"
        if not 1 <= leverage <= asset.max_leverage:
            return f"Invalid leverage value. asset={asset_id}"
        if is_cross and asset.strict_isolated:
            return MSG_NO_CROSS
        acct = self.accounts[user]
        acct.requests += 1
        pos = acct.positions.get(asset.name)
        old_lev, old_cross = self.leverage_of(acct, asset)
        if pos is not None and pos.szi:
            if is_cross != old_cross:
                return MSG_SWITCH
            ntl = abs(pos.szi) * asset.path.mid
            if leverage < old_lev:
                if is_cross:
                    st = self.margin(acct)
                    needed = ntl / leverage - ntl / old_lev
                    if needed > st.cross_value - st.cross_margin - self._resting_margin(acct):
                        return MSG_CROSS_DECREASE
                else:
                    equity = pos.iso_margin + pos.szi * (asset.path.mid - pos.entry_px)
                    if equity < ntl / leverage:
                        return MSG_ISOLATED_DECREASE
        acct.leverage[asset.name] = (leverage, is_cross)
        if pos is not None and pos.szi:
            self.events.changed.add(acct.address)
            self.watch_risk(acct.address, self.now_ms)
        return None

    def schedule_cancel(self, user: str, time_ms: int | None) -> str | None:
        acct = self.accounts[user]
        if acct.volume < SCHEDULE_CANCEL_VOLUME:
            return (
                "Cannot set scheduled cancel time until enough volume traded. "
                f"Required: $1000000. Traded: ${acct.volume.quantize(D('0.01'))}."
            )
        if time_ms is not None and time_ms < self.now_ms + 5000:
            return "Scheduled cancel time too early, must be at least 5 seconds from now."
        acct.schedule_cancel_ms = time_ms
        if time_ms is not None:
            self._with_orders.add(acct.address)
        return None

    def drain_events(self) -> Events:
        out = self.events
        self.events = Events()
        return out


def funding_rate(premium: float) -> Decimal:
    """The hourly rate from an hour's average premium: the 8-hour rate is the premium plus the
    interest term clamped to +-0.05% of it, paid an eighth each hour (capped at 4%/hour)."""
    eight_hours = premium + max(-FUNDING_CLAMP, min(FUNDING_CLAMP, INTEREST_8H - premium))
    hourly = max(-FUNDING_CAP_HOURLY, min(FUNDING_CAP_HOURLY, eight_hours / 8))
    return D(f"{hourly:.8f}")


def _time_to_move(buffer: float, daily_vol: float) -> float:
    """Seconds before a price move of ``buffer`` (a fraction) becomes plausible (4 standard
    deviations), between a second and an hour."""
    if buffer <= 0:
        return 1.0
    per_s = max(daily_vol, 1e-9) / math.sqrt(86_400)
    return max(1.0, min(3600.0, (buffer / (4 * per_s)) ** 2))
