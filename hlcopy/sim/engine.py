"""The simulated exchange: accounts, positions, orders, matching and the records they leave.

Pure and synchronous: every operation takes the time it happens at, randomness comes from one
seeded generator, and the same seed and inputs give the same trades. It speaks the exchange's
data shapes (fills, statuses, states are built as the wire dicts the exchange sends) and enforces
its rules with its messages (HYPERLIQUID.md §6.5, §8): tick and lot, the $10 minimum except full
closes, reduce-only, margin, 80% from the reference price, IOC with nothing to match, post-only
crossing, delisted assets.

Simplifications, stated: one cross-margin pool per account across every dex; no liquidations,
no funding, no trigger execution (trigger orders are accepted and rest as triggers); depth
comes from market makers' synthetic quotes, regenerated each tick.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from hlcopy.hl.wire import Rounding, is_valid_price, is_valid_size, round_price, to_wire
from hlcopy.sim.market import (
    BUILDER_DEX,
    BUILDER_PERPS,
    PERPS,
    SPOT_PAIRS,
    SPOT_TOKENS,
    Depth,
    PricePath,
)

D = Decimal
ZERO = D(0)
TAKER_FEE = D("0.00045")
MAKER_FEE = D("0.00015")
MIN_NOTIONAL = D(10)
USD = D("0.000001")  # the exchange's USD precision
REFERENCE_BAND = D("0.8")
RECORDS_KEPT = 2000  # order records per user (orderStatus forgets older ones)
FILLS_KEPT = 10_000  # fills per user reachable by userFills / userFillsByTime
SPOT_OFFSET = 10_000
BUILDER_OFFSET = 110_000  # 100000 + 1 * 10000: the builder dex is second in perpDexs
SCHEDULE_CANCEL_VOLUME = D(1_000_000)
DEFAULT_LEVERAGE = 20

MSG_TICK = "Price must be divisible by tick size."
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


def num(value: Decimal) -> str:
    """A number as the exchange prints amounts: plain digits, no trailing zeros ("0.0" for 0)."""
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0.0" if text in ("0", "-0") else text


_MASK_50 = 2**50 - 1
_MASK_256 = 2**256 - 1


def _tid(buy_oid: int, sell_oid: int) -> int:
    """A 50-bit trade id from the two order ids, as the exchange derives one (deterministic)."""
    return ((buy_oid * 0x9E3779B97F4A7C15) ^ (sell_oid * 0xC2B2AE3D27D4EB4F)) & _MASK_50


def _tx(oid: int) -> str:
    """A transaction hash for the action that placed ``oid`` (deterministic, hash-like)."""
    return "0x%064x" % (
        (oid * 0x9E3779B97F4A7C15C2B2AE3D27D4EB4F165667B19E3779F9 + 0x27D4EB2F) & _MASK_256
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
    delisted: bool = False
    base_token: int = 0  # spot only
    depth: Depth | None = None
    depth_tick: int = -1
    maker: str = ""  # the market maker quoting this tick
    level_oids: dict[tuple[bool, int], int] = field(default_factory=dict)
    resting: dict[int, Resting] = field(default_factory=dict)  # every account's, by oid


@dataclass(slots=True)
class Position:
    szi: Decimal = ZERO
    entry_px: Decimal = ZERO


@dataclass(slots=True)
class Resting:
    oid: int
    user: str
    asset: Asset
    is_buy: bool
    px: Decimal
    sz: Decimal
    orig_sz: Decimal
    tif: str
    reduce_only: bool
    cloid: str | None
    timestamp: int
    trigger: dict[str, Any] | None = None


@dataclass(slots=True)
class Account:
    address: str
    usdc: Decimal
    deposits: Decimal
    positions: dict[str, Position] = field(default_factory=dict)
    spot: dict[int, Decimal] = field(default_factory=dict)
    leverage: dict[str, tuple[int, bool]] = field(default_factory=dict)
    orders: dict[int, Resting] = field(default_factory=dict)
    records: OrderedDict[int, Record] = field(default_factory=OrderedDict)
    cloids: dict[str, int] = field(default_factory=dict)
    fills: deque[FillRecord] = field(default_factory=lambda: deque(maxlen=FILLS_KEPT))
    volume: Decimal = ZERO
    requests: int = 0
    samples: list[tuple[int, Decimal, Decimal, Decimal]] = field(default_factory=list)
    schedule_cancel_ms: int | None = None


# Order records and fills are kept as plain tuples of atomic values. The exchange keeps thousands
# of each per account; CPython's cyclic GC skips such tuples, while it would scan every object
# of a class on each full collection (hundreds of milliseconds at a few million objects).

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


def record_order(r: Record) -> dict[str, Any]:
    """The frontendOpenOrders / orderStatus fields of a record."""
    coin, is_buy, px, sz, orig, tif, reduce_only, cloid, t, timestamp, oid, _, _ = r
    return {
        "coin": coin,
        "side": "B" if is_buy else "A",
        "limitPx": to_wire(px),
        "sz": to_wire(sz),
        "oid": oid,
        "timestamp": timestamp,
        "triggerCondition": "N/A"
        if t is None
        else (f"Price {'above' if (t[2] == 'tp') != is_buy else 'below'} {to_wire(t[1])}"),
        "isTrigger": t is not None,
        "triggerPx": "0.0" if t is None else to_wire(t[1]),
        "children": [],
        "isPositionTpsl": False,
        "reduceOnly": reduce_only,
        "orderType": "Limit"
        if t is None
        else (("Take Profit" if t[2] == "tp" else "Stop") + (" Market" if t[0] else " Limit")),
        "origSz": to_wire(orig),
        "tif": tif if t is None else None,
        "cloid": cloid,
    }


def record_wire(r: Record) -> dict[str, Any]:
    """An orderStatus / historicalOrders item."""
    return {"order": record_order(r), "status": r[11], "statusTimestamp": r[12]}


def record_update(r: Record) -> dict[str, Any]:
    """An orderUpdates item."""
    coin, is_buy, px, sz, orig, _, _, cloid, _, timestamp, oid, status, status_ms = r
    return {
        "order": {
            "coin": coin,
            "side": "B" if is_buy else "A",
            "limitPx": to_wire(px),
            "sz": to_wire(sz),
            "oid": oid,
            "timestamp": timestamp,
            "origSz": to_wire(orig),
            "cloid": cloid,
        },
        "status": status,
        "statusTimestamp": status_ms,
    }


# A fill: (coin, px, sz, is_buy, time, start_position, dir, closed_pnl, hash, oid, crossed, fee,
# tid, cloid); px and sz are already wire strings (shared with the trade).
FillRecord = tuple[
    str, str, str, bool, int, Decimal, str, Decimal, str, int, bool, Decimal, int, str | None
]
FILL_TIME: Final = 4


def fill_wire(f: FillRecord) -> dict[str, Any]:
    """The exchange's fill object."""
    coin, px, sz, is_buy, time, start, direction, pnl, tx, oid, crossed, fee, tid, cloid = f
    out: dict[str, Any] = {
        "coin": coin,
        "px": px,
        "sz": sz,
        "side": "B" if is_buy else "A",
        "time": time,
        "startPosition": num(start),
        "dir": direction,
        "closedPnl": num(pnl.quantize(USD)),
        "hash": tx,
        "oid": oid,
        "crossed": crossed,
        "fee": num(fee),
        "tid": tid,
        "feeToken": "USDC",
    }
    if cloid is not None:
        out["cloid"] = cloid
    return out


def _trigger(t: dict[str, Any] | None) -> tuple[bool, Decimal, str] | None:
    return None if t is None else (bool(t["isMarket"]), t["triggerPx"], str(t["tpsl"]))


@dataclass(frozen=True, slots=True)
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


class Engine:
    """See the module docstring."""

    def __init__(
        self,
        seed: int = 1,
        start_ms: int = 1_700_000_000_000,
        tick_ms: int = 100,
        sample_every_ms: int = 60_000,
    ) -> None:
        self.rng = random.Random(seed)
        self.now_ms = start_ms
        self.tick_ms = tick_ms
        self.ticks = 0
        self.sample_every_ms = sample_every_ms
        self._next_sample = start_ms
        self._oid = 1_000_000
        self.accounts: dict[str, Account] = {}
        self.agents: dict[str, str] = {}  # agent address -> master
        self.agent_names: dict[str, dict[str, str]] = {}  # master -> {agent: name}
        self.assets: dict[int, Asset] = {}
        self.by_name: dict[str, Asset] = {}
        self.market_makers: list[str] = []
        self._consumed: dict[tuple[int, bool, int], Decimal] = {}  # synthetic depth taken this tick
        self._with_orders: set[str] = set()  # accounts with resting orders or a dead man's switch
        self.trades: dict[str, deque[dict[str, Any]]] = {}
        self.counters = {"orders_accepted": 0, "orders_rejected": 0, "trades": 0, "fills": 0}
        # Events for the stream, drained by the server after every step and every action.
        self.watched: set[str] = set()  # users whose fills and order updates are streamed
        self.out_trades: dict[str, list[dict[str, Any]]] = {}
        self.out_fills: dict[str, list[dict[str, Any]]] = {}
        self.out_updates: dict[str, list[dict[str, Any]]] = {}
        self._list_assets()

    # -- listing ----------------------------------------------------------------------------

    def _list_assets(self) -> None:
        for i, spec in enumerate(PERPS):
            self._add(
                Asset(
                    i,
                    spec.name,
                    spec.sz_decimals,
                    spec.max_leverage,
                    False,
                    "",
                    self._path(spec.name, spec.sz_decimals, False, spec.price, spec.vol_bps),
                    delisted=spec.delisted,
                )
            )
        for i, (name, base, price) in enumerate(SPOT_PAIRS):
            szd = SPOT_TOKENS[base][1]
            self._add(
                Asset(
                    SPOT_OFFSET + i,
                    name,
                    szd,
                    1,
                    True,
                    "",
                    self._path(name, szd, True, price, 3.0),
                    base_token=base,
                )
            )
        for i, spec in enumerate(BUILDER_PERPS):
            self._add(
                Asset(
                    BUILDER_OFFSET + i,
                    spec.name,
                    spec.sz_decimals,
                    spec.max_leverage,
                    False,
                    BUILDER_DEX,
                    self._path(spec.name, spec.sz_decimals, False, spec.price, spec.vol_bps),
                )
            )

    def _path(self, name: str, szd: int, spot: bool, price: str, vol_bps: float) -> PricePath:
        path = PricePath(name, szd, spot, 0.0, vol_bps / 10_000)
        path.set_mid(float(price))
        return path

    def _add(self, asset: Asset) -> None:
        self.assets[asset.asset_id] = asset
        self.by_name[asset.name] = asset
        self.trades[asset.name] = deque(maxlen=2000)

    # -- accounts ---------------------------------------------------------------------------

    def open_account(self, address: str, usdc: Decimal, spot_usdc: Decimal = ZERO) -> Account:
        """Create (or top up) an account. A deposit lands in the perp balance, as on the
        exchange; ``spot_usdc`` goes to the spot balance. Deposits are the PnL baseline."""
        address = address.lower()
        acct = self.accounts.get(address)
        if acct is None:
            acct = Account(address, ZERO, ZERO)
            self.accounts[address] = acct
        acct.usdc += usdc
        acct.deposits += usdc
        if spot_usdc:
            acct.spot[0] = acct.spot.get(0, ZERO) + spot_usdc
        if not acct.samples:
            self._sample(acct)
        return acct

    def account_value(self, acct: Account) -> Decimal:
        upnl = ZERO
        for coin, pos in acct.positions.items():
            if pos.szi:
                upnl += pos.szi * (self.by_name[coin].path.mid - pos.entry_px)
        return acct.usdc + upnl

    def leverage_of(self, acct: Account, asset: Asset) -> tuple[int, bool]:
        return acct.leverage.get(asset.name, (min(DEFAULT_LEVERAGE, asset.max_leverage), True))

    def margin_used(self, acct: Account) -> Decimal:
        used = ZERO
        for coin, pos in acct.positions.items():
            if pos.szi:
                asset = self.by_name[coin]
                used += abs(pos.szi) * asset.path.mid / self.leverage_of(acct, asset)[0]
        return used

    # -- time -------------------------------------------------------------------------------

    def step(self, now_ms: int | None = None) -> None:
        """Advance one tick: move every mid, fill resting orders the market crossed, sample."""
        self.ticks += 1
        self.now_ms = now_ms if now_ms is not None else self.now_ms + self.tick_ms
        self._consumed.clear()
        for asset in self.assets.values():
            if not asset.delisted:
                asset.path.step(self.rng)
        for address in list(self._with_orders):
            acct = self.accounts[address]
            if acct.orders:
                self._cross_resting(acct)
            if acct.schedule_cancel_ms is not None and self.now_ms >= acct.schedule_cancel_ms:
                acct.schedule_cancel_ms = None
                for oid in list(acct.orders):
                    self._finish(acct, self._unrest(acct, oid), "scheduledCancel")
            if not acct.orders and acct.schedule_cancel_ms is None:
                self._with_orders.discard(address)
        if self.now_ms >= self._next_sample:
            self._next_sample = self.now_ms + self.sample_every_ms
            for acct in self.accounts.values():
                self._sample(acct)

    def _sample(self, acct: Account) -> None:
        value = self.account_value(acct)
        acct.samples.append((self.now_ms, value, value - acct.deposits, acct.volume))
        if len(acct.samples) > 5000:  # keep a long, thinned history
            del acct.samples[1:2500:2]

    def depth(self, asset: Asset) -> Depth:
        """This tick's quoted depth for ``asset`` (levels are priced on demand)."""
        if asset.depth_tick != self.ticks:
            if asset.depth is None or asset.depth.stale(asset.path):
                asset.depth = Depth.build(asset.path)
            asset.depth_tick = self.ticks
            asset.maker = self._maker(asset)
            asset.level_oids.clear()
        assert asset.depth is not None
        return asset.depth

    def depth_levels(self, asset: Asset, is_ask: bool) -> list[tuple[Decimal, Decimal]]:
        """What is left of one side of the quoted depth this tick: (price, size), best first."""
        dep = self.depth(asset)
        out = []
        for i in range(len(dep.sizes)):
            px = dep.price(asset.path, is_ask, i)
            if px is None:
                break
            left = dep.sizes[i] - self._consumed.get((asset.asset_id, is_ask, i), ZERO)
            if left > 0:
                out.append((px, left))
        return out

    def _maker(self, asset: Asset) -> str:
        if not self.market_makers:
            house = "0x" + "00" * 19 + "01"
            self.open_account(house, D(10) ** 9)
            self.market_makers.append(house)
        return self.market_makers[(asset.asset_id + self.ticks // 50) % len(self.market_makers)]

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
        elif not self._margin_ok(acct, asset, o.is_buy, o.px, sz):
            return self._reject(acct, asset, o, oid, "perpMarginRejected", MSG_MARGIN)
        if o.tif == "Alo":
            best_bid, best_ask = self._best(asset)
            crosses = (o.is_buy and best_ask is not None and o.px >= best_ask) or (
                not o.is_buy and best_bid is not None and o.px <= best_bid
            )
            if crosses:
                bid = to_wire(best_bid) if best_bid else ""
                ask = to_wire(best_ask) if best_ask else ""
                bbo = f"{bid}@{ask}"
                return self._reject(
                    acct,
                    asset,
                    o,
                    oid,
                    "badAloPxRejected",
                    f"Post only order would have immediately matched, bbo was {bbo}.",
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
        body: dict[str, Any] = {"totalSz": to_wire(filled), "avgPx": to_wire(avg), "oid": oid}
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
        self._rest(acct, asset, o, oid, o.sz)
        return "waitingForTrigger"

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
            asset,
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
        asset.resting[oid] = resting
        self._with_orders.add(acct.address)
        self._record(acct, asset, o, oid, "open", orig or sz, sz)
        self.counters["orders_accepted"] += 1
        body: dict[str, Any] = {"oid": oid}
        if o.cloid is not None:
            body["cloid"] = o.cloid
        return {"resting": body}

    def _best(self, asset: Asset) -> tuple[Decimal | None, Decimal | None]:
        dep = self.depth(asset)
        best_bid = dep.price(asset.path, False, 0)
        best_ask = dep.price(asset.path, True, 0)
        for r in asset.resting.values():
            if r.trigger is None:
                if r.is_buy and (best_bid is None or r.px > best_bid):
                    best_bid = r.px
                if not r.is_buy and (best_ask is None or r.px < best_ask):
                    best_ask = r.px
        return best_bid, best_ask

    def _unrest(self, acct: Account, oid: int) -> Resting:
        """Take a resting order off the book (the caller records why)."""
        r = acct.orders.pop(oid)
        r.asset.resting.pop(oid, None)
        return r

    def _margin_ok(
        self, acct: Account, asset: Asset, is_buy: bool, px: Decimal, sz: Decimal
    ) -> bool:
        pos = acct.positions.get(asset.name)
        szi = pos.szi if pos else ZERO
        after = szi + (sz if is_buy else -sz)
        if abs(after) <= abs(szi):
            return True  # reducing never needs margin
        lev = self.leverage_of(acct, asset)[0]
        other = self.margin_used(acct) - abs(szi) * asset.path.mid / lev
        resting = sum(
            (
                r.sz * r.px / self.leverage_of(acct, r.asset)[0]
                for r in acct.orders.values()
                if not r.reduce_only and not r.asset.is_spot
            ),
            ZERO,
        )
        return other + resting + abs(after) * px / lev <= self.account_value(acct)

    def _spot_affordable(
        self, acct: Account, asset: Asset, is_buy: bool, px: Decimal, sz: Decimal
    ) -> bool:
        if is_buy:
            return acct.spot.get(0, ZERO) >= px * sz
        return acct.spot.get(asset.base_token, ZERO) >= sz

    def _match(
        self, taker: Account, asset: Asset, o: OrderRequest, oid: int, sz: Decimal
    ) -> tuple[Decimal, Decimal]:
        """Sweep resting orders and quoted depth within the limit; return (filled, cost)."""
        dep = self.depth(asset)
        is_ask = o.is_buy  # a buy takes the asks
        resting = sorted(
            (r for r in asset.resting.values() if r.is_buy != o.is_buy and r.trigger is None),
            key=lambda r: ((r.px if o.is_buy else -r.px), r.timestamp, r.oid),
        )
        filled = ZERO
        cost = ZERO
        tx = _tx(oid)
        li = ri = 0
        level_px = dep.price(asset.path, is_ask, 0)
        while filled < sz:
            rest = resting[ri] if ri < len(resting) else None
            use_rest = rest is not None and (
                level_px is None or (rest.px <= level_px if o.is_buy else rest.px >= level_px)
            )
            if use_rest:
                assert rest is not None
                px = rest.px
                if (o.is_buy and px > o.px) or (not o.is_buy and px < o.px):
                    break
                ri += 1
                if rest.user == taker.address:  # self-trade: the resting order is cancelled
                    self._finish(taker, self._unrest(taker, rest.oid), "selfTradeCanceled")
                    continue
                qty = min(sz - filled, rest.sz)
                self._trade(
                    asset,
                    taker,
                    o,
                    oid,
                    self.accounts[rest.user],
                    rest.oid,
                    rest.cloid,
                    px,
                    qty,
                    tx,
                )
                rest.sz -= qty
                if rest.sz == 0:
                    owner = self.accounts[rest.user]
                    self._finish(owner, self._unrest(owner, rest.oid), "filled")
            elif level_px is not None:
                px = level_px
                if (o.is_buy and px > o.px) or (not o.is_buy and px < o.px):
                    break
                key = (asset.asset_id, is_ask, li)
                available = dep.sizes[li] - self._consumed.get(key, ZERO)
                level = li
                li += 1
                level_px = dep.price(asset.path, is_ask, li)
                maker = self.accounts[asset.maker]
                if available <= 0 or maker.address == taker.address:
                    continue
                maker_oid = asset.level_oids.get((is_ask, level))
                if maker_oid is None:
                    maker_oid = asset.level_oids[(is_ask, level)] = self.next_oid()
                qty = min(sz - filled, available)
                self._consumed[key] = self._consumed.get(key, ZERO) + qty
                self._trade(asset, taker, o, oid, maker, maker_oid, None, px, qty, tx)
            else:
                break
            filled += qty
            cost += qty * px
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
    ) -> None:
        buy_oid, sell_oid = (taker_oid, maker_oid) if o.is_buy else (maker_oid, taker_oid)
        tid = _tid(buy_oid, sell_oid)
        buyer, seller = (taker, maker) if o.is_buy else (maker, taker)
        px_w, sz_w = to_wire(px), to_wire(sz)
        trade = {
            "coin": asset.name,
            "side": "B" if o.is_buy else "A",
            "px": px_w,
            "sz": sz_w,
            "time": self.now_ms,
            "hash": tx,
            "tid": tid,
            "users": [buyer.address, seller.address],
        }
        self.trades[asset.name].append(trade)
        self.out_trades.setdefault(asset.name, []).append(trade)
        self.counters["trades"] += 1
        self._fill(taker, asset, o.is_buy, px, sz, px_w, sz_w, tx, taker_oid, tid, True, o.cloid)
        self._fill(
            maker, asset, not o.is_buy, px, sz, px_w, sz_w, tx, maker_oid, tid, False, maker_cloid
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
    ) -> None:
        notional = px * sz
        fee = (notional * (TAKER_FEE if crossed else MAKER_FEE)).quantize(USD)
        acct.volume += notional
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
            delta = sz if is_buy else -sz
            after = start + delta
            closed_pnl = ZERO
            if start == 0 or (start > 0) == is_buy:  # opening or adding
                pos.entry_px = (abs(start) * pos.entry_px + sz * px) / abs(after)
                direction = "Open Long" if is_buy else "Open Short"
            else:
                closed = min(sz, abs(start))
                closed_pnl = closed * (px - pos.entry_px) * (1 if start > 0 else -1)
                if after == 0 or (after > 0) == (start > 0):
                    direction = "Close Short" if is_buy else "Close Long"
                    if after == 0:
                        pos.entry_px = ZERO
                else:
                    direction = "Short > Long" if is_buy else "Long > Short"
                    pos.entry_px = px
            pos.szi = after
            acct.usdc += closed_pnl - fee
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
        )
        acct.fills.append(fill)
        if acct.address in self.watched:
            self.out_fills.setdefault(acct.address, []).append(fill_wire(fill))
        self.counters["fills"] += 1

    def _cross_resting(self, acct: Account) -> None:
        """Resting limit orders the market moved through fill at their price."""
        for oid in list(acct.orders):
            r = acct.orders.get(oid)
            if r is None or r.trigger is not None:
                continue
            mid = r.asset.path.mid
            if (r.is_buy and mid <= r.px) or (not r.is_buy and mid >= r.px):
                self.depth(r.asset)
                maker = self.accounts[r.asset.maker]
                if maker.address == acct.address:
                    continue
                o = OrderRequest(r.asset.asset_id, not r.is_buy, r.px, r.sz, False, "Ioc")
                taker_oid = self.next_oid()
                # The market maker crosses into the order: the order is the maker side.
                self._trade(
                    r.asset,
                    maker,
                    o,
                    taker_oid,
                    acct,
                    r.oid,
                    r.cloid,
                    r.px,
                    r.sz,
                    _tx(taker_oid),
                )
                self._finish(acct, self._unrest(acct, oid), "filled")

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
            self.out_updates.setdefault(acct.address, []).append(record_update(rec))

    def _finish(self, acct: Account, r: Resting, status: str) -> None:
        left = ZERO if status == "filled" else r.sz
        rec: Record = (
            r.asset.name,
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
            self.out_updates.setdefault(acct.address, []).append(record_update(rec))

    # -- other actions ----------------------------------------------------------------------

    def cancel(self, user: str, cancels: Iterable[tuple[int, int | str]]) -> list[Any]:
        """Cancel by (asset, oid) or (asset, cloid)."""
        acct = self.accounts[user]
        out: list[Any] = []
        for asset_id, ref in cancels:
            acct.requests += 1
            oid = acct.cloids.get(ref) if isinstance(ref, str) else ref
            r = acct.orders.get(oid) if oid is not None else None
            if r is None or r.asset.asset_id != asset_id:
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
        asset = self.assets.get(asset_id)
        if asset is None:
            return f"Invalid asset {asset_id}"
        if not 1 <= leverage <= asset.max_leverage:
            return f"Invalid leverage value. asset={asset_id}"
        self.accounts[user].leverage[asset.name] = (leverage, is_cross)
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

    def drain_events(
        self,
    ) -> tuple[
        dict[str, list[dict[str, Any]]],
        dict[str, list[dict[str, Any]]],
        dict[str, list[dict[str, Any]]],
    ]:
        out = (self.out_trades, self.out_fills, self.out_updates)
        self.out_trades, self.out_fills, self.out_updates = {}, {}, {}
        return out
