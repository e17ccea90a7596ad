"""What the simulated exchange answers to ``/info``, in the shapes of the recorded fixtures.

The weight table is the server's own (HYPERLIQUID.md §2), written independently of the client's
budget so that a shared mistake cannot hide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hlcopy.hl.wire import to_wire
from hlcopy.sim.engine import (
    FILL_TIME,
    SPOT_OFFSET,
    Account,
    Asset,
    Engine,
    fill_wire,
    record_order,
    record_wire,
)
from hlcopy.sim.market import BUILDER_DEX, SPOT_TOKENS

D = Decimal
ZERO = D(0)
PAGE = 2000
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
        "nonUserFundingUpdates",
    }
)
PERIODS_MS = {"day": 86_400_000, "week": 7 * 86_400_000, "month": 30 * 86_400_000}


class BadInfo(Exception):
    """The request cannot be deserialised (the exchange answers HTTP 422)."""


def base_weight(kind: str, body: dict[str, Any]) -> int:
    """The weight the exchange charges for one info request, before its answer is known."""
    if kind in LIGHT:
        return 2
    if kind == "userRole":
        return 60
    if kind == "batchClearinghouseStates":
        return 2 * max(1, len(body.get("users") or ()))
    return 20


def item_weight(kind: str, items: int) -> int:
    """The extra weight charged for the size of the answer."""
    if kind in PER_20:
        return math.ceil(items / 20)
    if kind == "candleSnapshot":
        return math.ceil(items / 60)
    return 0


USD = D("0.000001")


def _w(value: Decimal) -> str:
    """A USD amount as the exchange writes it: at most 6 decimals."""
    return to_wire(value.quantize(USD))


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
        if dex:
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


def _ctx(engine: Engine, a: Asset) -> dict[str, Any]:
    mid = a.path.mid
    trades = engine.trades[a.name]
    day_vlm = sum((D(t["px"]) * D(t["sz"]) for t in trades), ZERO)
    return {
        "dayNtlVlm": _w(day_vlm),
        "funding": "0.0000125",
        "impactPxs": None,
        "markPx": to_wire(mid),
        "midPx": None if a.delisted else to_wire(mid),
        "openInterest": "0.0",
        "oraclePx": to_wire(mid),
        "premium": "0.0",
        "prevDayPx": to_wire(mid),
        "dayBaseVlm": "0.0",
    }


def meta_and_asset_ctxs(engine: Engine, dex: str = "") -> list[Any]:
    return [meta(engine, dex), [_ctx(engine, a) for a in _dex_assets(engine, dex)]]


def all_mids(engine: Engine, dex: str = "") -> dict[str, str]:
    out = {a.name: to_wire(a.path.mid) for a in _dex_assets(engine, dex) if not a.delisted}
    if not dex:  # spot appears with the first dex only
        out.update({a.name: to_wire(a.path.mid) for a in engine.assets.values() if a.is_spot})
    return out


def l2_book(engine: Engine, coin: str) -> dict[str, Any] | None:
    asset = engine.by_name.get(coin)
    if asset is None:
        return None
    sides: list[dict[Decimal, list[Any]]] = [{}, {}]
    for i in (0, 1):
        for px, left in engine.depth_levels(asset, is_ask=i == 1):
            level = sides[i].setdefault(px, [ZERO, 0])
            level[0] += left
            level[1] += 1
    for acct in engine.accounts.values():
        for r in acct.orders.values():
            if r.asset is asset and r.trigger is None:
                level = sides[0 if r.is_buy else 1].setdefault(r.px, [ZERO, 0])
                level[0] += r.sz
                level[1] += 1
    out = []
    for i, side in enumerate(sides):
        prices = sorted(side, reverse=(i == 0))[:20]
        out.append([{"px": to_wire(p), "sz": to_wire(side[p][0]), "n": side[p][1]} for p in prices])
    return {"coin": coin, "time": engine.now_ms, "levels": out}


def _summary(engine: Engine, acct: Account) -> dict[str, str]:
    value = engine.account_value(acct)
    ntl = sum((abs(p.szi) * engine.by_name[c].path.mid for c, p in acct.positions.items()), ZERO)
    return {
        "accountValue": _w(value),
        "totalNtlPos": _w(ntl),
        "totalRawUsd": _w(
            acct.usdc
            - sum((p.szi * engine.by_name[c].path.mid for c, p in acct.positions.items()), ZERO)
        ),
        "totalMarginUsed": _w(engine.margin_used(acct)),
    }


def clearinghouse_state(engine: Engine, acct: Account | None, dex: str = "") -> dict[str, Any]:
    positions = []
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
            "marginSummary": empty,
            "time": engine.now_ms,
            "withdrawable": "0.0",
        }
    for coin, pos in acct.positions.items():
        asset = engine.by_name[coin]
        if not pos.szi or asset.dex != dex:
            continue
        lev, cross = engine.leverage_of(acct, asset)
        mark = asset.path.mid
        value = abs(pos.szi) * mark
        upnl = pos.szi * (mark - pos.entry_px)
        margin = value / lev
        leverage: dict[str, Any] = {"type": "cross" if cross else "isolated", "value": lev}
        if not cross:
            leverage["rawUsd"] = _w(-pos.szi * pos.entry_px + margin)
        positions.append(
            {
                "type": "oneWay",
                "position": {
                    "coin": coin,
                    "szi": to_wire(pos.szi),
                    "leverage": leverage,
                    "entryPx": to_wire(pos.entry_px.quantize(D("0.000001")).normalize()),
                    "positionValue": _w(value),
                    "unrealizedPnl": _w(upnl),
                    "returnOnEquity": _w(upnl / margin) if margin else "0.0",
                    "liquidationPx": None,
                    "marginUsed": _w(margin),
                    "maxLeverage": asset.max_leverage,
                    "cumFunding": {"allTime": "0.0", "sinceOpen": "0.0", "sinceChange": "0.0"},
                },
            }
        )
    summary = _summary(engine, acct)
    withdrawable = max(ZERO, engine.account_value(acct) - engine.margin_used(acct))
    return {
        "assetPositions": positions,
        "crossMaintenanceMarginUsed": _w(engine.margin_used(acct) / 2),
        "crossMarginSummary": summary,
        "marginSummary": summary,
        "time": engine.now_ms,
        "withdrawable": _w(withdrawable),
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
                "total": _w(v),
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
        if r.asset.dex != dex:
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
    if acct is not None:
        oid = acct.cloids.get(ref.lower()) if isinstance(ref, str) else ref
        record = acct.records.get(oid) if isinstance(oid, int) else None
        if record is not None:
            return {"status": "order", "order": record_wire(record)}
    return {"status": "unknownOid"}


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
                sz=to_wire(sz),
                px=to_wire(px.quantize(D("0.00000001")).normalize()),
                fee=to_wire(D(last["fee"]) + D(f["fee"])),
                closedPnl=to_wire(D(last["closedPnl"]) + D(f["closedPnl"])),
            )
        else:
            out.append(dict(f))
    return out


def user_fills(acct: Account | None, aggregate: bool = False) -> list[dict[str, Any]]:
    if acct is None:
        return []
    fills = [fill_wire(f) for f in list(acct.fills)[-PAGE:]]
    if aggregate:
        fills = _aggregate(fills)
    return fills[::-1]  # newest first


def user_fills_by_time(
    acct: Account | None, start: int, end: int | None, aggregate: bool = False
) -> list[dict[str, Any]]:
    if acct is None:
        return []
    fills = [
        fill_wire(f)
        for f in acct.fills
        if f[FILL_TIME] >= start and (end is None or f[FILL_TIME] <= end)
    ]
    if aggregate:
        fills = _aggregate(fills)
    return fills[:PAGE]  # oldest first


def historical_orders(acct: Account | None) -> list[dict[str, Any]]:
    return (
        [] if acct is None else [record_wire(r) for r in list(acct.records.values())[::-1][:PAGE]]
    )


def _window(
    acct: Account, now: int, span: int | None
) -> list[tuple[int, Decimal, Decimal, Decimal]]:
    samples = acct.samples if span is None else [s for s in acct.samples if s[0] >= now - span]
    return samples or acct.samples[-1:]


def portfolio(engine: Engine, acct: Account | None) -> list[Any]:
    out: list[Any] = []
    for prefix in ("", "perp"):
        for name, span in (
            ("day", PERIODS_MS["day"]),
            ("week", PERIODS_MS["week"]),
            ("month", PERIODS_MS["month"]),
            ("allTime", None),
        ):
            period = prefix + (name[0].upper() + name[1:] if prefix else name)
            if acct is None:
                out.append([period, {"accountValueHistory": [], "pnlHistory": [], "vlm": "0.0"}])
                continue
            window = _window(acct, engine.now_ms, span)
            base_pnl = window[0][2]
            out.append(
                [
                    period,
                    {
                        "accountValueHistory": [[t, _w(v)] for t, v, _, _ in window],
                        "pnlHistory": [[t, _w(p - base_pnl)] for t, _, p, _ in window],
                        "vlm": _w(window[-1][3] - window[0][3]),
                    },
                ]
            )
    return out


def user_role(engine: Engine, user: str) -> dict[str, Any]:
    if user in engine.agents:
        return {"role": "agent", "data": {"user": engine.agents[user]}}
    return {"role": "user"} if user in engine.accounts else {"role": "missing"}


def user_rate_limit(acct: Account | None) -> dict[str, Any]:
    vlm = acct.volume if acct else ZERO
    return {
        "cumVlm": _w(vlm),
        "nRequestsUsed": acct.requests if acct else 0,
        "nRequestsCap": 10_000 + int(vlm),
        "nRequestsSurplus": 0,
    }


def recent_trades(engine: Engine, coin: str) -> list[dict[str, Any]]:
    return list(engine.trades.get(coin, ()))[-500:][::-1]


def leaderboard(engine: Engine) -> dict[str, Any]:
    rows = []
    for acct in engine.accounts.values():
        if acct.address in engine.market_makers or not acct.samples:
            continue
        perfs = []
        for name, span in (
            ("day", PERIODS_MS["day"]),
            ("week", PERIODS_MS["week"]),
            ("month", PERIODS_MS["month"]),
            ("allTime", None),
        ):
            window = _window(acct, engine.now_ms, span)
            start_value = window[0][1] or D(1)
            pnl = window[-1][2] - window[0][2]
            perfs.append(
                [
                    name,
                    {
                        "pnl": _w(pnl),
                        "roi": _w(pnl / start_value),
                        "vlm": _w(window[-1][3] - window[0][3]),
                    },
                ]
            )
        rows.append(
            {
                "ethAddress": acct.address,
                "accountValue": _w(engine.account_value(acct)),
                "displayName": None,
                "prize": 0,
                "windowPerformances": perfs,
            }
        )
    return {"leaderboardRows": rows}


def _user(body: dict[str, Any]) -> str:
    user = body.get("user")
    if not isinstance(user, str) or len(user) != 42 or not user.startswith("0x"):
        raise BadInfo("user must be an address")
    return user.lower()


def answer(engine: Engine, body: dict[str, Any]) -> Any:
    """The reply to one /info request; BadInfo for what the exchange would not deserialise."""
    kind = body.get("type")
    dex = body.get("dex") or ""
    if not isinstance(dex, str):
        raise BadInfo("dex must be a string")
    handlers: dict[str, Callable[[], Any]] = {
        "meta": lambda: meta(engine, dex),
        "spotMeta": lambda: spot_meta(engine),
        "perpDexs": lambda: perp_dexs(engine),
        "metaAndAssetCtxs": lambda: meta_and_asset_ctxs(engine, dex),
        "spotMetaAndAssetCtxs": lambda: [
            spot_meta(engine),
            [
                {
                    "dayNtlVlm": "0.0",
                    "markPx": to_wire(a.path.mid),
                    "midPx": to_wire(a.path.mid),
                    "prevDayPx": to_wire(a.path.mid),
                    "circulatingSupply": "0.0",
                    "coin": a.name,
                }
                for a in engine.assets.values()
                if a.is_spot
            ],
        ],
        "allMids": lambda: all_mids(engine, dex),
        "l2Book": lambda: l2_book(engine, str(body.get("coin"))),
        "recentTrades": lambda: recent_trades(engine, str(body.get("coin"))),
        "exchangeStatus": lambda: {"time": engine.now_ms, "specialStatuses": None},
    }
    if kind in handlers:
        return handlers[kind]()
    if kind == "batchClearinghouseStates":
        users = body.get("users")
        if not isinstance(users, list):
            raise BadInfo("users must be a list")
        return [clearinghouse_state(engine, engine.accounts.get(str(u).lower())) for u in users]
    user = _user(body)
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
        return user_fills(acct, bool(body.get("aggregateByTime")))
    if kind == "userFillsByTime":
        start = body.get("startTime")
        if not isinstance(start, int):
            raise BadInfo("startTime must be an integer")
        end = body.get("endTime")
        return user_fills_by_time(
            acct, start, end if isinstance(end, int) else None, bool(body.get("aggregateByTime"))
        )
    if kind == "historicalOrders":
        return historical_orders(acct)
    if kind == "userFunding":
        return []
    if kind == "portfolio":
        return portfolio(engine, acct)
    if kind == "userRole":
        return user_role(engine, user)
    if kind == "userRateLimit":
        return user_rate_limit(acct)
    if kind == "extraAgents":
        return [
            {"name": name, "address": agent, "validUntil": None}
            for agent, name in engine.agent_names.get(user, {}).items()
        ]
    raise BadInfo(f"unknown info type {kind!r}")
