"""What the simulated exchange answers to ``/info``, in the shapes and number formats of the
recorded fixtures, the live market and the synthesized past merged.

Requests are validated at the edge: anything the exchange would not deserialise (a user that is
not an address, a time that is not a non-negative integer, an unknown type) raises ``BadInfo``
and the server answers HTTP 422, before any arithmetic.

The weight table is the server's own (HYPERLIQUID.md §2), written independently of the client's
budget so that a shared mistake cannot hide.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from hlcopy.sim import candles as candle_mod
from hlcopy.sim.candles import INTERVAL_MINUTES, MINUTE_MS, Bar, merge
from hlcopy.sim.engine import (
    FILL_TIME,
    SPOT_OFFSET,
    Account,
    Asset,
    Engine,
    FillRecord,
    fill_wire,
    funding_rate,
    funding_wire,
    ledger_wire,
    record_order,
    record_wire,
    trade_wire,
)
from hlcopy.sim.fmt import micro, num, rate, to_micro, usd
from hlcopy.sim.history import Pasts
from hlcopy.sim.market import BUILDER_DEX, SPOT_TOKENS
from hlcopy.sim.truth import WINDOWS, Point, chain, pnl_history, window

D = Decimal
ZERO = D(0)
PAGE = 2000
LEDGER_PAGE = 500
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MAX_MS = 2**53
MAX_USERS = 100
IMPACT_USD = {"BTC": 20_000, "ETH": 20_000}  # the impact notional; 6,000 for other coins
LIGHT = frozenset(
    {
        "l2Book",
        "allMids",
        "clearinghouseState",
        "orderStatus",
        "spotClearinghouseState",
        "exchangeStatus",
    }
)
PER_20 = frozenset(
    {
        "recentTrades",
        "historicalOrders",
        "userFills",
        "userFillsByTime",
        "fundingHistory",
        "userFunding",
        "userNonFundingLedgerUpdates",
        "nonUserFundingUpdates",
    }
)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CLOID = re.compile(r"0x[0-9a-fA-F]{32}")


class BadInfo(Exception):
    """The request cannot be deserialised (the exchange answers HTTP 422)."""


def base_weight(kind: str, body: dict[str, Any]) -> int:
    """The weight the exchange charges for one info request, before its answer is known."""
    if kind in LIGHT:
        return 2
    if kind == "userRole":
        return 60
    if kind == "batchClearinghouseStates":
        users = body.get("users")
        return 2 * max(1, min(MAX_USERS, len(users) if isinstance(users, list) else 1))
    return 20


def item_weight(kind: str, items: int) -> int:
    """The extra weight charged for the size of the answer."""
    if kind in PER_20:
        return math.ceil(items / 20)
    if kind == "candleSnapshot":
        return math.ceil(items / 60)
    return 0


# -- validation -------------------------------------------------------------------------------


def address(value: Any, what: str = "user") -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise BadInfo(f"{what} must be an address")
    return value.lower()


def _ms(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MS:
        raise BadInfo(f"{what} must be a non-negative integer (ms)")
    return value


def _opt_ms(value: Any, what: str) -> int | None:
    return None if value is None else _ms(value, what)


def _name(value: Any, what: str = "coin") -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise BadInfo(f"{what} must be a string")
    return value


def _flag(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadInfo("expected a boolean")
    return value


# -- the market -------------------------------------------------------------------------------


def _dex_assets(engine: Engine, dex: str) -> list[Asset]:
    return [a for a in engine.assets.values() if not a.is_spot and a.dex == dex]


def meta(engine: Engine, dex: str = "") -> dict[str, Any]:
    universe = []
    for a in _dex_assets(engine, dex):
        entry: dict[str, Any] = {
            "szDecimals": a.sz_decimals,
            "name": a.name,
            "maxLeverage": a.max_leverage,
            "marginTableId": a.max_leverage,
        }
        if a.delisted:
            entry["isDelisted"] = True
        if a.strict_isolated:
            entry["onlyIsolated"] = True
            entry["marginMode"] = "strictIsolated"
        universe.append(entry)
    tables = sorted({a.max_leverage for a in _dex_assets(engine, dex)})
    return {
        "universe": universe,
        "marginTables": [
            [t, {"description": "", "marginTiers": [{"lowerBound": "0.0", "maxLeverage": t}]}]
            for t in tables
        ],
    }


def spot_meta(engine: Engine) -> dict[str, Any]:
    tokens = [
        {
            "name": name,
            "szDecimals": szd,
            "weiDecimals": wei,
            "index": i,
            "tokenId": "0x" + f"{i:032x}",
            "isCanonical": True,
            "evmContract": None,
            "fullName": None,
        }
        for i, (name, szd, wei) in enumerate(SPOT_TOKENS)
    ]
    universe = [
        {
            "name": a.name,
            "tokens": [a.base_token, 0],
            "index": a.asset_id - SPOT_OFFSET,
            "isCanonical": a.name == "PURR/USDC",
        }
        for a in engine.assets.values()
        if a.is_spot
    ]
    return {"tokens": tokens, "universe": universe}


def perp_dexs(engine: Engine) -> list[Any]:
    return [
        None,
        {
            "name": BUILDER_DEX,
            "fullName": "test dex",
            "deployer": "0x" + "de" * 20,
            "oracleUpdater": None,
            "feeRecipient": None,
            "assetToStreamingOiCap": [],
            "assetToFundingMultiplier": [],
        },
    ]


def minute_bar(engine: Engine, pasts: Pasts | None, asset: Asset, minute: int) -> Bar | None:
    """One minute of the coin, from the past or the live market."""
    if minute >= asset.candles.first_minute:
        return asset.candles.minute(minute)
    past = pasts.coin(asset.name) if pasts is not None else None
    return past.minute_bar(minute) if past is not None else None


def hour_bar(engine: Engine, pasts: Pasts | None, asset: Asset, hour: int) -> Bar | None:
    live = asset.candles
    if hour * 60 >= live.first_minute:
        return live.hour(hour)
    past = pasts.coin(asset.name) if pasts is not None else None
    if hour * 60 + 60 <= live.first_minute:
        return past.hour_bar(hour) if past is not None else None
    # The hour the live market opened in: its minutes come from both.
    return merge(
        b for m in range(hour * 60, hour * 60 + 60) if (b := minute_bar(engine, pasts, asset, m))
    )


def _impact_px(engine: Engine, asset: Asset, is_buy: bool, notional: float) -> Decimal | None:
    """The average price of taking ``notional`` USD from the book (the exchange's impact
    price): a buy walks the asks."""
    levels: dict[Decimal, Decimal] = {}
    for px, left in engine.depth_levels(asset, is_ask=is_buy):
        levels[px] = levels.get(px, ZERO) + left
    side = asset.book.asks if is_buy else asset.book.bids
    for px, orders in side.walk():
        levels[px] = levels.get(px, ZERO) + sum((o.sz for o in orders), ZERO)
        if len(levels) > 60:
            break
    want = D(notional)
    got = ZERO
    qty = ZERO
    for px in sorted(levels, reverse=not is_buy):
        take = min(levels[px], (want - got) / px)
        got += take * px
        qty += take
        if got >= want:
            break
    if qty <= 0 or got < want:
        return None
    return asset.path.mid if qty == 0 else (got / qty)


def asset_ctx(engine: Engine, pasts: Pasts | None, a: Asset) -> dict[str, Any]:
    """An asset's context with its 24-hour figures computed from the market."""
    now = engine.now_ms
    mid = engine.mid(a)
    hour_now = now // HOUR_MS
    day_ntl = day_base = ZERO
    for h in range(hour_now - 23, hour_now + 1):
        bar = hour_bar(engine, pasts, a, h)
        if bar is not None:
            day_base += bar[4]
            day_ntl += bar[6]
    prev = minute_bar(engine, pasts, a, (now - DAY_MS) // MINUTE_MS)
    prev_day = prev[0] if prev is not None else a.path.mid
    oracle = a.path.oracle_px()
    if a.delisted:
        return {
            "dayNtlVlm": usd(day_ntl),
            "funding": "0.0",
            "impactPxs": None,
            "markPx": num(a.path.mid),
            "midPx": None,
            "openInterest": "0.0",
            "oraclePx": num(oracle),
            "premium": None,
            "prevDayPx": num(prev_day),
            "dayBaseVlm": num(day_base),
        }
    impact = IMPACT_USD.get(a.name, 6_000)
    bid = _impact_px(engine, a, False, impact)
    ask = _impact_px(engine, a, True, impact)
    premium: float | None = None
    if bid is not None and ask is not None:
        o = float(oracle)
        premium = (max(float(bid) - o, 0.0) - max(o - float(ask), 0.0)) / o
    hour_premium = a.premium_sum / a.premium_time if a.premium_time else 0.0
    open_interest = sum(
        (
            pos.szi
            for acct in engine.accounts.values()
            if (pos := acct.positions.get(a.name)) and pos.szi > 0
        ),
        ZERO,
    )
    return {
        "dayNtlVlm": usd(day_ntl),
        "funding": num(funding_rate(hour_premium)),
        "impactPxs": None if bid is None or ask is None else [num(_px(bid)), num(_px(ask))],
        "markPx": num(a.path.mid),
        "midPx": num(mid),
        "openInterest": num(open_interest),
        "oraclePx": num(oracle),
        "premium": None if premium is None else rate(premium),
        "prevDayPx": num(prev_day),
        "dayBaseVlm": num(day_base),
    }


def _px(value: Decimal) -> Decimal:
    """A computed price with no more precision than the exchange prints (8 decimals)."""
    return value.quantize(D("0.00000001")).normalize()


def meta_and_asset_ctxs(engine: Engine, pasts: Pasts | None, dex: str = "") -> list[Any]:
    return [meta(engine, dex), [asset_ctx(engine, pasts, a) for a in _dex_assets(engine, dex)]]


def spot_meta_and_asset_ctxs(engine: Engine, pasts: Pasts | None) -> list[Any]:
    ctxs = []
    for a in engine.assets.values():
        if not a.is_spot:
            continue
        ctx = asset_ctx(engine, pasts, a)
        ctxs.append(
            {
                "dayNtlVlm": ctx["dayNtlVlm"],
                "markPx": ctx["markPx"],
                "midPx": ctx["midPx"],
                "prevDayPx": ctx["prevDayPx"],
                "circulatingSupply": "1000000000.0",
                "coin": a.name,
            }
        )
    return [spot_meta(engine), ctxs]


def all_mids(engine: Engine, dex: str = "") -> dict[str, str]:
    """Mids as the exchange computes them: half a tick when the spread is an odd number of
    ticks."""
    out = {a.name: num(engine.mid(a)) for a in _dex_assets(engine, dex) if not a.delisted}
    if not dex:  # spot appears with the first dex only
        out.update({a.name: num(engine.mid(a)) for a in engine.assets.values() if a.is_spot})
    return out


def _bucket(px: Decimal, sig: int, mantissa: int | None, up: bool) -> Decimal:
    quantum = D(1).scaleb(px.adjusted() - (sig - 1))
    if mantissa is not None and mantissa > 1:
        quantum *= mantissa
    units = (px / quantum).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return units * quantum


def l2_book(
    engine: Engine, coin: str, n_sig_figs: int | None = None, mantissa: int | None = None
) -> dict[str, Any] | None:
    asset = engine.by_name.get(coin)
    if asset is None:
        return None
    sides: list[dict[Decimal, list[Any]]] = [{}, {}]
    for i in (0, 1):
        is_ask = i == 1
        raw: list[tuple[Decimal, Decimal, int]] = [
            (px, left, 1) for px, left in engine.depth_levels(asset, is_ask=is_ask)
        ]
        book_side = asset.book.asks if is_ask else asset.book.bids
        for px, orders in book_side.walk():
            raw.append((px, sum((o.sz for o in orders), ZERO), len(orders)))
            if len(raw) > 200:
                break
        for px, sz, n in raw:
            key = px if n_sig_figs is None else _bucket(px, n_sig_figs, mantissa, up=is_ask)
            level = sides[i].setdefault(key, [ZERO, 0])
            level[0] += sz
            level[1] += n
    out = []
    for i, side in enumerate(sides):
        prices = sorted(side, reverse=(i == 0))[:20]
        out.append([{"px": num(p), "sz": num(side[p][0]), "n": side[p][1]} for p in prices])
    return {"coin": coin, "time": engine.now_ms, "levels": out}


def bbo(engine: Engine, coin: str) -> dict[str, Any] | None:
    book = l2_book(engine, coin)
    if book is None:
        return None
    bid, ask = book["levels"]
    return {
        "coin": coin,
        "time": engine.now_ms,
        "bbo": [bid[0] if bid else None, ask[0] if ask else None],
    }


def recent_trades(engine: Engine, coin: str) -> list[dict[str, Any]]:
    return [trade_wire(t) for t in list(engine.trades.get(coin, ()))[-500:][::-1]]


def candle_snapshot(engine: Engine, pasts: Pasts | None, req: Any) -> list[dict[str, Any]]:
    if not isinstance(req, dict):
        raise BadInfo("req must be an object")
    coin = _name(req.get("coin"))
    interval = req.get("interval")
    if not isinstance(interval, str) or interval not in INTERVAL_MINUTES:
        raise BadInfo(f"unknown interval {interval!r}")
    start = _ms(req.get("startTime"), "startTime")
    end = _opt_ms(req.get("endTime"), "endTime")
    asset = engine.by_name.get(coin)
    if asset is None:
        return []
    past = pasts.coin(coin) if pasts is not None else None
    first = past.start_ms if past is not None else asset.candles.first_minute * MINUTE_MS
    start = max(start, first)
    end = min(engine.now_ms if end is None else end, engine.now_ms)
    if end < start:
        return []
    return candle_mod.snapshot(
        coin,
        interval,
        start,
        end,
        lambda m: minute_bar(engine, pasts, asset, m),
        lambda h: hour_bar(engine, pasts, asset, h),
    )


def funding_history(
    engine: Engine, pasts: Pasts | None, coin: str, start: int, end: int | None
) -> list[dict[str, Any]]:
    asset = engine.by_name.get(coin)
    if asset is None or asset.is_spot:
        return []
    end = engine.now_ms if end is None else end
    rows: list[dict[str, Any]] = []
    past = pasts.coin(coin) if pasts is not None else None
    if past is not None and start < engine.start_ms:
        first_hour = (past.start_ms // HOUR_MS + 1) * HOUR_MS
        hour = max(first_hour, (start + HOUR_MS - 1) // HOUR_MS * HOUR_MS)
        while hour <= min(end, engine.start_ms) and len(rows) < LEDGER_PAGE:
            rows.append(
                {
                    "coin": coin,
                    "fundingRate": num(past.funding_at(hour)),
                    "premium": "0.0",
                    "time": hour,
                }
            )
            hour += HOUR_MS
    for hour, r, premium in asset.funding_history:
        if start <= hour <= end and len(rows) < LEDGER_PAGE:
            rows.append(
                {"coin": coin, "fundingRate": num(r), "premium": rate(premium), "time": hour}
            )
    return rows


# -- one account --------------------------------------------------------------------------------


def _entry(px: Decimal) -> str:
    """An average price as the exchange prints it (6 significant figures)."""
    if not px:
        return "0.0"
    return num(
        px.quantize(
            D(1).scaleb(min(8, px.adjusted() - 5))
            if px.adjusted() > 5
            else D(1).scaleb(-min(8, 5 - px.adjusted()))
        )
    )


def _summary(value: Decimal, ntl: Decimal, signed: Decimal, used: Decimal) -> dict[str, str]:
    return {
        "accountValue": usd(value),
        "totalNtlPos": usd(ntl),
        "totalRawUsd": usd(value - signed),
        "totalMarginUsed": usd(used),
    }


def clearinghouse_state(engine: Engine, acct: Account | None, dex: str = "") -> dict[str, Any]:
    """The exchange's arithmetic: account value = totalRawUsd + signed notional, cross and
    isolated summed separately, maintenance from the assets' maintenance rates."""
    empty = {
        "accountValue": "0.0",
        "totalNtlPos": "0.0",
        "totalRawUsd": "0.0",
        "totalMarginUsed": "0.0",
    }
    if acct is None:
        return {
            "assetPositions": [],
            "crossMaintenanceMarginUsed": "0.0",
            "crossMarginSummary": empty,
            "marginSummary": dict(empty),
            "time": engine.now_ms,
            "withdrawable": "0.0",
        }
    state = engine.margin(acct)
    positions = []
    cash = acct.usdc if not dex else ZERO
    c_upnl = c_ntl = c_signed = c_margin = c_mm = ZERO
    i_eq = i_ntl = i_signed = ZERO
    for coin, pos in acct.positions.items():
        asset = engine.by_name[coin]
        if not pos.szi or asset.dex != dex or asset.is_spot:
            continue
        lev, cross = engine.leverage_of(acct, asset)
        mark = asset.path.mid
        signed = pos.szi * mark
        value = abs(signed)
        upnl = signed - pos.szi * pos.entry_px
        leverage: dict[str, Any] = {"type": "cross" if cross else "isolated", "value": lev}
        if cross:
            margin = value / lev
            c_upnl += upnl
            c_ntl += value
            c_signed += signed
            c_margin += margin
            c_mm += value * asset.mmr
        else:
            raw = pos.iso_margin - pos.szi * pos.entry_px
            leverage["rawUsd"] = usd(raw)
            margin = raw + signed
            i_eq += margin
            i_ntl += value
            i_signed += signed
        initial = abs(pos.szi) * pos.entry_px / lev
        liq = engine.liquidation_px(acct, coin, state)
        positions.append(
            {
                "type": "oneWay",
                "position": {
                    "coin": coin,
                    "szi": num(pos.szi),
                    "leverage": leverage,
                    "entryPx": _entry(pos.entry_px),
                    "positionValue": usd(value),
                    "unrealizedPnl": usd(upnl),
                    "returnOnEquity": num((upnl / initial).quantize(D("0.00000001")))
                    if initial
                    else "0.0",
                    "liquidationPx": None if liq is None else num(_px(liq)),
                    "marginUsed": usd(margin),
                    "maxLeverage": asset.max_leverage,
                    "cumFunding": {
                        "allTime": usd(acct.cum_funding.get(coin, ZERO)),
                        "sinceOpen": usd(pos.funding_open),
                        "sinceChange": usd(pos.funding_change),
                    },
                },
            }
        )
    cross_value = cash + c_upnl
    withdrawable = cross_value - c_margin - (engine._resting_margin(acct) if not dex else ZERO)
    return {
        "assetPositions": positions,
        "crossMaintenanceMarginUsed": usd(c_mm),
        "crossMarginSummary": _summary(cross_value, c_ntl, c_signed, c_margin),
        "marginSummary": _summary(
            cross_value + i_eq, c_ntl + i_ntl, c_signed + i_signed, c_margin + i_eq
        ),
        "time": engine.now_ms,
        "withdrawable": usd(max(ZERO, withdrawable)),
    }


def spot_state(acct: Account | None) -> dict[str, Any]:
    if acct is None:
        return {"balances": []}
    return {
        "balances": [
            {
                "coin": SPOT_TOKENS[t][0],
                "token": t,
                "hold": "0.0",
                "total": usd(v),
                "entryNtl": "0.0",
            }
            for t, v in sorted(acct.spot.items())
            if v
        ]
    }


def open_orders(
    engine: Engine, acct: Account | None, dex: str = "", frontend: bool = False
) -> list[dict[str, Any]]:
    if acct is None:
        return []
    out = []
    for r in sorted(acct.orders.values(), key=lambda r: -r.oid):
        if engine.by_name[r.coin].dex != dex:
            continue
        record = acct.records.get(r.oid)
        if record is None:
            continue
        order = record_order(record)
        if not frontend:
            order = {
                k: order[k]
                for k in (
                    "coin",
                    "side",
                    "limitPx",
                    "sz",
                    "oid",
                    "timestamp",
                    "origSz",
                    "reduceOnly",
                    "cloid",
                )
            }
        out.append(order)
    return out


def order_status(acct: Account | None, ref: Any) -> dict[str, Any]:
    if isinstance(ref, bool) or not (
        (isinstance(ref, int) and 0 <= ref < 2**63)
        or (isinstance(ref, str) and _CLOID.fullmatch(ref))
    ):
        raise BadInfo("oid must be an order id or a cloid")
    if acct is not None:
        oid = acct.cloids.get(ref.lower()) if isinstance(ref, str) else ref
        record = acct.records.get(oid) if isinstance(oid, int) else None
        if record is not None:
            return {"status": "order", "order": record_wire(record)}
    return {"status": "unknownOid"}


def historical_orders(acct: Account | None) -> list[dict[str, Any]]:
    return (
        [] if acct is None else [record_wire(r) for r in list(acct.records.values())[::-1][:PAGE]]
    )


def _aggregate(fills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge the partial fills of one crossing order in one block (aggregateByTime)."""
    out: list[dict[str, Any]] = []
    for f in fills:
        last = out[-1] if out else None
        if (
            last is not None
            and f["crossed"]
            and last["crossed"]
            and last["oid"] == f["oid"]
            and last["time"] == f["time"]
        ):
            sz = D(last["sz"]) + D(f["sz"])
            px = (D(last["px"]) * D(last["sz"]) + D(f["px"]) * D(f["sz"])) / sz
            last.update(
                sz=num(sz),
                px=num(_px(px)),
                fee=usd(D(last["fee"]) + D(f["fee"])),
                closedPnl=usd(D(last["closedPnl"]) + D(f["closedPnl"])),
            )
        else:
            out.append(dict(f))
    return out


def _fills(
    engine: Engine,
    pasts: Pasts | None,
    address: str,
    acct: Account | None,
    start: int,
    end: int | None,
) -> list[FillRecord]:
    """Fills in ``[start, end]`` (inclusive), oldest first: the past's, then the live ones."""
    out: list[FillRecord] = []
    if pasts is not None and pasts.has(address) and start < pasts.end_ms:
        out.extend(pasts.fills_between(address, start, end))
    if acct is not None:
        out.extend(
            f for f in acct.fills if f[FILL_TIME] >= start and (end is None or f[FILL_TIME] <= end)
        )
    return out


def user_fills(
    engine: Engine, pasts: Pasts | None, address: str, acct: Account | None, aggregate: bool = False
) -> list[dict[str, Any]]:
    live = list(acct.fills)[-PAGE:] if acct is not None else []
    records: list[FillRecord] = live
    if len(live) < PAGE and pasts is not None and pasts.has(address):
        detail = pasts.detail(address)
        if detail is not None:
            records = detail.fills[len(detail.fills) - (PAGE - len(live)) :] + live
    fills = [fill_wire(f) for f in records]
    if aggregate:
        fills = _aggregate(fills)
    return fills[::-1]  # newest first


def user_fills_by_time(
    engine: Engine,
    pasts: Pasts | None,
    address: str,
    acct: Account | None,
    start: int,
    end: int | None,
    aggregate: bool = False,
) -> list[dict[str, Any]]:
    records = _fills(engine, pasts, address, acct, start, end)
    if aggregate:
        return _aggregate([fill_wire(f) for f in records])[:PAGE]
    return [fill_wire(f) for f in records[:PAGE]]  # oldest first


def _between(rows: Iterable[Any], start: int, end: int | None) -> list[Any]:
    return [r for r in rows if r[0] >= start and (end is None or r[0] <= end)]


def user_funding(
    engine: Engine,
    pasts: Pasts | None,
    address: str,
    acct: Account | None,
    start: int,
    end: int | None,
) -> list[dict[str, Any]]:
    rows: list[Any] = []
    if pasts is not None and pasts.has(address) and start < pasts.end_ms:
        detail = pasts.detail(address)
        rows.extend(_between(detail.fundings if detail else (), start, end))
    if acct is not None:
        rows.extend(_between(acct.fundings, start, end))
    return [funding_wire(r) for r in rows[:LEDGER_PAGE]]


def ledger_updates(
    engine: Engine,
    pasts: Pasts | None,
    address: str,
    acct: Account | None,
    start: int,
    end: int | None,
) -> list[dict[str, Any]]:
    rows: list[Any] = []
    if pasts is not None and pasts.has(address) and start < pasts.end_ms:
        detail = pasts.detail(address)
        rows.extend(_between(detail.ledger if detail else (), start, end))
    if acct is not None:
        rows.extend(_between(acct.ledger, start, end))
    return [ledger_wire(r) for r in rows[:LEDGER_PAGE]]


def samples(engine: Engine, pasts: Pasts | None, acct: Account) -> list[Point]:
    """Every hourly sample of the account (its past's, then the live market's)."""
    past = pasts.account(acct.address) if pasts is not None and pasts.has(acct.address) else None
    if past is None:
        return list(acct.samples)
    flows_offset = past.end_flows - to_micro(acct.opening)
    volume_offset = past.final_volume
    out = [past.sample(i) for i in range(len(past.av))]
    out.extend(
        (t, av, dep + flows_offset, vol + volume_offset) for t, av, dep, vol in acct.samples[1:]
    )
    return out


def now_point(engine: Engine, pasts: Pasts | None, acct: Account) -> Point:
    past = pasts.account(acct.address) if pasts is not None and pasts.has(acct.address) else None
    flows_offset = past.end_flows - to_micro(acct.opening) if past is not None else 0
    volume_offset = past.final_volume if past is not None else 0
    return (
        engine.now_ms,
        to_micro(engine.account_value(acct)),
        to_micro(acct.deposits) + flows_offset,
        to_micro(acct.volume) + volume_offset,
    )


def windows(
    engine: Engine, pasts: Pasts | None, acct: Account, now: Point | None = None
) -> dict[str, list[Point]]:
    series = samples(engine, pasts, acct)
    if now is None:
        now = now_point(engine, pasts, acct)
    return {name: window(series, now, span, grid) for name, span, grid in WINDOWS}


def portfolio(engine: Engine, pasts: Pasts | None, acct: Account | None) -> list[Any]:
    out: list[Any] = []
    points: dict[str, list[Point]] = {}
    if acct is not None:
        now = now_point(engine, pasts, acct)
        acct.served.append(now)
        points = windows(engine, pasts, acct, now)
    for prefix in ("", "perp"):
        for name, _, _ in WINDOWS:
            period = prefix + (name[0].upper() + name[1:] if prefix else name)
            pts = points.get(name)
            if not pts:
                out.append([period, {"accountValueHistory": [], "pnlHistory": [], "vlm": "0.0"}])
                continue
            out.append(
                [
                    period,
                    {
                        "accountValueHistory": [[t, micro(av)] for t, av, _, _ in pts],
                        "pnlHistory": [[t, micro(p)] for t, p in pnl_history(pts)],
                        "vlm": micro(pts[-1][3] - pts[0][3]),
                    },
                ]
            )
    return out


def user_role(engine: Engine, user: str) -> dict[str, Any]:
    if user in engine.agents:
        return {"role": "agent", "data": {"user": engine.agents[user]}}
    role = engine.roles.get(user)
    if role is not None and user in engine.accounts:
        kind, master = role
        return {"role": kind} if master is None else {"role": kind, "data": {"master": master}}
    return {"role": "user"} if user in engine.accounts else {"role": "missing"}


def user_rate_limit(acct: Account | None) -> dict[str, Any]:
    vlm = acct.volume if acct else ZERO
    return {
        "cumVlm": usd(vlm),
        "nRequestsUsed": acct.requests if acct else 0,
        "nRequestsCap": 10_000 + int(vlm),
        "nRequestsSurplus": 0,
    }


def leaderboard(engine: Engine, pasts: Pasts | None) -> dict[str, Any]:
    """The stats leaderboard: every account but the market makers, with pnl, a naive roi
    (pnl over the window's first account value) and volume per window."""
    rows = []
    for acct in engine.accounts.values():
        if acct.address in engine.market_makers:
            continue
        perfs = []
        for name, pts in windows(engine, pasts, acct).items():
            hist = pnl_history(pts)
            pnl = hist[-1][1] if hist else 0
            start_value = pts[0][1] if pts and pts[0][1] > 0 else 1
            perfs.append(
                [
                    name,
                    {
                        "pnl": micro(pnl),
                        "roi": rate(pnl / start_value),
                        "vlm": micro(pts[-1][3] - pts[0][3]),
                    },
                ]
            )
        rows.append(
            {
                "ethAddress": acct.address,
                "accountValue": usd(engine.account_value(acct)),
                "displayName": None,
                "prize": 0,
                "windowPerformances": perfs,
            }
        )
    return {"leaderboardRows": rows}


def positions_at(engine: Engine, acct: Account, at_ms: int) -> dict[str, str]:
    """The account's perp positions right after its last fill at or before ``at_ms``: ground
    truth to check position events against, rebuilt from the fills as the exchange made them."""
    last: dict[str, Decimal] = {}
    first: dict[str, Decimal] = {}
    for coin, _, sz, is_buy, time_ms, start, *_ in acct.fills:
        if engine.by_name[coin].is_spot:
            continue
        first.setdefault(coin, start)
        if time_ms <= at_ms:
            last[coin] = start + (D(sz) if is_buy else -D(sz))
    out = {}
    for coin in set(first) | {c for c, p in acct.positions.items() if p.szi}:
        if coin in last:
            szi = last[coin]
        elif coin in first:
            szi = first[coin]  # every fill of it came later: where it stood before them
        else:
            szi = acct.positions[coin].szi  # never traded live: as it has been all along
        if szi:
            out[coin] = str(szi.normalize())
    return out


def account_truth(
    engine: Engine, pasts: Pasts | None, acct: Account, *, served: Point | None = None
) -> dict[str, Any]:
    """The simulator's own ledger of one account: money in and out, realised and unrealised
    PnL, fees and funding, and the deposit-independent return of each portfolio window —
    up to now, or up to a ``served`` portfolio's moment (what a client's figures were
    computed from, however long ago it asked)."""
    past = pasts.account(acct.address) if pasts is not None and pasts.has(acct.address) else None
    deposits = withdrawals = fees_out = ZERO
    n_dep = n_wd = 0
    for _, _, kind, amount, detail in acct.ledger:
        if kind == "deposit":
            deposits += amount
            n_dep += 1
        elif kind == "withdraw":
            withdrawals += amount
            fees_out += detail[1]
            n_wd += 1
    state = engine.margin(acct)
    unrealized = ZERO
    for coin, pos in acct.positions.items():
        if pos.szi and not engine.by_name[coin].is_spot:
            unrealized += pos.szi * (engine.by_name[coin].path.mid - pos.entry_px)
    realized, fees, funding = acct.realized, acct.fees, acct.funding
    fills, liquidations = len(acct.fills), acct.liquidations
    if past is not None:
        deposits += D(past.deposits).scaleb(-6)
        withdrawals += D(past.withdrawals).scaleb(-6)
        fees_out += past.n_withdrawals
        n_dep += past.n_deposits
        n_wd += past.n_withdrawals
        realized += D(past.realized).scaleb(-6)
        fees += D(past.fees).scaleb(-6)
        funding += D(past.funding).scaleb(-6)
        fills += past.fills
        liquidations += past.liquidations
    else:
        # A funded account's first money is a deposit like any other; a synthetic account
        # without a past started with its opening balance.
        deposits += acct.opening
    out_windows = {}
    for name, pts in windows(engine, pasts, acct, served).items():
        ret, drawdown = chain(pts)
        out_windows[name] = {
            "return": ret,
            "maxDrawdown": drawdown,
            "pnl": micro(pts[-1][1] - pts[-1][2] - (pts[0][1] - pts[0][2])),
            "points": len(pts),
            "start": pts[0][0],
            "end": pts[-1][0],
        }
    net = deposits - withdrawals - fees_out
    return {
        "address": acct.address,
        "accountValue": usd(state.value),
        "deposits": usd(deposits),
        "withdrawals": usd(withdrawals),
        "withdrawalFees": usd(fees_out),
        "netDeposits": usd(net),
        "depositCount": n_dep,
        "withdrawalCount": n_wd,
        "pnl": usd(state.value - net),
        "realizedPnl": usd(realized),
        "unrealizedPnl": usd(unrealized),
        "fees": usd(fees),
        "funding": usd(funding),
        "badDebtForgiven": usd(acct.forgiven),
        "fills": fills,
        "liquidations": liquidations,
        "windows": out_windows,
    }


# -- dispatch -----------------------------------------------------------------------------------


def answer(engine: Engine, body: dict[str, Any], pasts: Pasts | None = None) -> Any:
    """The reply to one /info request; BadInfo for what the exchange would not deserialise."""
    kind = body.get("type")
    dex = body.get("dex")
    dex = "" if dex is None else _name(dex, "dex")
    handlers: dict[str, Callable[[], Any]] = {
        "meta": lambda: meta(engine, dex),
        "spotMeta": lambda: spot_meta(engine),
        "perpDexs": lambda: perp_dexs(engine),
        "metaAndAssetCtxs": lambda: meta_and_asset_ctxs(engine, pasts, dex),
        "spotMetaAndAssetCtxs": lambda: spot_meta_and_asset_ctxs(engine, pasts),
        "allMids": lambda: all_mids(engine, dex),
        "recentTrades": lambda: recent_trades(engine, _name(body.get("coin"))),
        "exchangeStatus": lambda: {"time": engine.now_ms, "specialStatuses": None},
        "candleSnapshot": lambda: candle_snapshot(engine, pasts, body.get("req")),
    }
    if kind in handlers:
        return handlers[kind]()
    if kind == "l2Book":
        sig, mantissa = body.get("nSigFigs"), body.get("mantissa")
        if sig is not None and (isinstance(sig, bool) or sig not in (2, 3, 4, 5)):
            raise BadInfo("nSigFigs must be 2, 3, 4, 5 or null")
        if mantissa is not None and (
            isinstance(mantissa, bool) or mantissa not in (1, 2, 5) or sig != 5
        ):
            raise BadInfo("mantissa must be 1, 2 or 5, and only with nSigFigs 5")
        return l2_book(engine, _name(body.get("coin")), sig, mantissa)
    if kind == "fundingHistory":
        return funding_history(
            engine,
            pasts,
            _name(body.get("coin")),
            _ms(body.get("startTime"), "startTime"),
            _opt_ms(body.get("endTime"), "endTime"),
        )
    if kind == "batchClearinghouseStates":
        users = body.get("users")
        if not isinstance(users, list) or len(users) > MAX_USERS:
            raise BadInfo(f"users must be a list of at most {MAX_USERS} addresses")
        return [clearinghouse_state(engine, engine.accounts.get(address(u))) for u in users]
    if not isinstance(kind, str):
        raise BadInfo("no type")
    user = address(body.get("user"))
    acct = engine.accounts.get(user)
    if kind == "clearinghouseState":
        return clearinghouse_state(engine, acct, dex)
    if kind == "spotClearinghouseState":
        return spot_state(acct)
    if kind in ("openOrders", "frontendOpenOrders"):
        return open_orders(engine, acct, dex, frontend=kind == "frontendOpenOrders")
    if kind == "orderStatus":
        return order_status(acct, body.get("oid"))
    if kind == "userFills":
        return user_fills(engine, pasts, user, acct, _flag(body.get("aggregateByTime")))
    if kind == "userFillsByTime":
        return user_fills_by_time(
            engine,
            pasts,
            user,
            acct,
            _ms(body.get("startTime"), "startTime"),
            _opt_ms(body.get("endTime"), "endTime"),
            _flag(body.get("aggregateByTime")),
        )
    if kind == "historicalOrders":
        return historical_orders(acct)
    if kind in ("userFunding", "userNonFundingLedgerUpdates"):
        start = _opt_ms(body.get("startTime"), "startTime") or 0
        end = _opt_ms(body.get("endTime"), "endTime")
        fetch = user_funding if kind == "userFunding" else ledger_updates
        return fetch(engine, pasts, user, acct, start, end)
    if kind == "portfolio":
        return portfolio(engine, pasts, acct)
    if kind == "userRole":
        return user_role(engine, user)
    if kind == "userRateLimit":
        return user_rate_limit(acct)
    if kind == "extraAgents":
        return [
            {"name": name, "address": agent, "validUntil": None}
            for agent, name in engine.agent_names.get(user, {}).items()
            if name
        ]
    raise BadInfo(f"unknown info type {kind!r}")
