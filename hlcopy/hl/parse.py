"""Wire JSON to domain types, at the edge.

Lenient where the exchange has grown its field sets over the years (unknown fields ignored,
missing optional fields become None), strict where a value is needed to act (a missing or
malformed required field raises WireError naming it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from hlcopy.errors import WireError
from hlcopy.model import (
    AccountState,
    AssetCtx,
    AssetMeta,
    BookLevel,
    CancelStatus,
    Candle,
    ExtraAgent,
    Fill,
    FillsDocument,
    Funding,
    FundingRate,
    L2Book,
    Leverage,
    MarginSummary,
    Meta,
    Order,
    OrderRecord,
    OrderStatus,
    OrderUpdate,
    PerpDex,
    Portfolio,
    PortfolioPeriod,
    Position,
    SeedTrader,
    SpotBalance,
    SpotMeta,
    SpotPair,
    SpotToken,
    Trade,
    UserRateLimit,
    UserRole,
    WindowPerformance,
)

_ASSET_SUFFIX = re.compile(r" asset=\d+$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def dec(value: Any, key: str = "value") -> Decimal:
    """A Decimal from the exchange's string (or integer); never through float."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            out = Decimal(value)
        except InvalidOperation:
            pass
        else:
            if out.is_finite():
                return out
    raise WireError(f"{key}: expected a decimal string, got {value!r}")


def opt_dec(value: Any, key: str = "value") -> Decimal | None:
    return None if value is None else dec(value, key)


def req(obj: Mapping[str, Any], key: str) -> Any:
    """A required field."""
    try:
        return obj[key]
    except KeyError:
        raise WireError(f"missing field {key!r}") from None
    except TypeError:
        raise WireError(f"expected an object with {key!r}, got {type(obj).__name__}") from None


def _int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise WireError(f"{key}: expected an integer, got {value!r}")


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def _side(value: Any) -> Any:
    if value not in ("B", "A"):
        raise WireError(f"side: expected 'B' or 'A', got {value!r}")
    return value


def parse_meta(obj: Any) -> Meta:
    return Meta(
        tuple(
            AssetMeta(
                name=str(req(a, "name")),
                sz_decimals=_int(req(a, "szDecimals"), "szDecimals"),
                max_leverage=_int(a.get("maxLeverage", 1), "maxLeverage"),
                delisted=bool(a.get("isDelisted", False)),
                margin_mode=a.get("marginMode"),
                only_isolated=bool(a.get("onlyIsolated", False)),
            )
            for a in _list(req(obj, "universe"), "universe")
        )
    )


def parse_spot_meta(obj: Any) -> SpotMeta:
    tokens = tuple(
        SpotToken(
            name=str(req(t, "name")),
            index=_int(req(t, "index"), "index"),
            sz_decimals=_int(req(t, "szDecimals"), "szDecimals"),
            wei_decimals=_int(t.get("weiDecimals", 0), "weiDecimals"),
            token_id=t.get("tokenId"),
        )
        for t in _list(req(obj, "tokens"), "tokens")
    )
    pairs = []
    for p in _list(req(obj, "universe"), "universe"):
        base, quote = _list(req(p, "tokens"), "tokens")
        pairs.append(
            SpotPair(
                str(req(p, "name")),
                _int(base, "tokens"),
                _int(quote, "tokens"),
                _int(req(p, "index"), "index"),
                bool(p.get("isCanonical", False)),
            )
        )
    return SpotMeta(tokens, tuple(pairs))


def parse_perp_dexs(obj: Any) -> tuple[PerpDex, ...]:
    """The builder-deployed dexes; index 0 (``null``, the first dex) is not one of them."""
    out = []
    for i, d in enumerate(_list(obj, "perpDexs")):
        if d is not None:
            out.append(PerpDex(i, str(req(d, "name")), d.get("fullName"), d.get("deployer")))
    return tuple(out)


def parse_asset_ctx(obj: Any) -> AssetCtx:
    return AssetCtx(
        mark_px=opt_dec(obj.get("markPx"), "markPx"),
        mid_px=opt_dec(obj.get("midPx"), "midPx"),
        oracle_px=opt_dec(obj.get("oraclePx"), "oraclePx"),
        funding=opt_dec(obj.get("funding"), "funding"),
        open_interest=opt_dec(obj.get("openInterest"), "openInterest"),
        day_ntl_vlm=opt_dec(obj.get("dayNtlVlm"), "dayNtlVlm"),
        prev_day_px=opt_dec(obj.get("prevDayPx"), "prevDayPx"),
        premium=opt_dec(obj.get("premium"), "premium"),
    )


def parse_meta_and_ctxs(obj: Any) -> tuple[Meta, tuple[AssetCtx, ...]]:
    meta, ctxs = _list(obj, "metaAndAssetCtxs")
    return parse_meta(meta), tuple(parse_asset_ctx(c) for c in _list(ctxs, "assetCtxs"))


def parse_all_mids(obj: Any) -> dict[str, Decimal]:
    if not isinstance(obj, dict):
        raise WireError("allMids: expected an object")
    return {coin: dec(px, coin) for coin, px in obj.items()}


def _level(obj: Any) -> BookLevel:
    return BookLevel(dec(req(obj, "px"), "px"), dec(req(obj, "sz"), "sz"), _int(req(obj, "n"), "n"))


def parse_l2_book(obj: Any) -> L2Book:
    bids, asks = _list(req(obj, "levels"), "levels")
    return L2Book(
        coin=str(req(obj, "coin")),
        time_ms=_int(obj.get("time", 0), "time"),
        bids=tuple(_level(x) for x in bids),
        asks=tuple(_level(x) for x in asks),
    )


def _margin(obj: Any) -> MarginSummary:
    return MarginSummary(
        account_value=dec(req(obj, "accountValue"), "accountValue"),
        total_margin_used=dec(req(obj, "totalMarginUsed"), "totalMarginUsed"),
        total_ntl_pos=dec(req(obj, "totalNtlPos"), "totalNtlPos"),
        total_raw_usd=dec(req(obj, "totalRawUsd"), "totalRawUsd"),
    )


def _position(obj: Any) -> Position:
    lev = obj.get("leverage")
    cum = obj.get("cumFunding")
    return Position(
        coin=str(req(obj, "coin")),
        szi=dec(req(obj, "szi"), "szi"),
        entry_px=opt_dec(obj.get("entryPx"), "entryPx"),
        leverage=None
        if lev is None
        else Leverage(
            str(req(lev, "type")),
            _int(req(lev, "value"), "leverage.value"),
            opt_dec(lev.get("rawUsd"), "rawUsd"),
        ),
        liquidation_px=opt_dec(obj.get("liquidationPx"), "liquidationPx"),
        margin_used=opt_dec(obj.get("marginUsed"), "marginUsed"),
        position_value=opt_dec(obj.get("positionValue"), "positionValue"),
        unrealized_pnl=opt_dec(obj.get("unrealizedPnl"), "unrealizedPnl"),
        return_on_equity=opt_dec(obj.get("returnOnEquity"), "returnOnEquity"),
        max_leverage=obj.get("maxLeverage"),
        cum_funding_all_time=None if cum is None else opt_dec(cum.get("allTime"), "cumFunding"),
    )


def parse_account_state(obj: Any) -> AccountState:
    if not isinstance(obj, dict):
        raise WireError(f"clearinghouseState: expected an object, got {type(obj).__name__}")
    cross = obj.get("crossMarginSummary")
    return AccountState(
        positions=tuple(
            _position(req(p, "position"))
            for p in _list(req(obj, "assetPositions"), "assetPositions")
        ),
        margin_summary=_margin(req(obj, "marginSummary")),
        cross_margin_summary=None if cross is None else _margin(cross),
        cross_maintenance_margin_used=opt_dec(obj.get("crossMaintenanceMarginUsed")),
        withdrawable=opt_dec(obj.get("withdrawable"), "withdrawable"),
        time_ms=obj.get("time"),
    )


def parse_spot_balances(obj: Any) -> tuple[SpotBalance, ...]:
    return tuple(
        SpotBalance(
            str(req(b, "coin")),
            _int(req(b, "token"), "token"),
            dec(req(b, "hold"), "hold"),
            dec(req(b, "total"), "total"),
            opt_dec(b.get("entryNtl"), "entryNtl"),
        )
        for b in _list(req(obj, "balances"), "balances")
    )


def parse_order(obj: Any) -> Order:
    return Order(
        coin=str(req(obj, "coin")),
        side=_side(req(obj, "side")),
        limit_px=dec(req(obj, "limitPx"), "limitPx"),
        sz=dec(req(obj, "sz"), "sz"),
        oid=_int(req(obj, "oid"), "oid"),
        timestamp_ms=_int(req(obj, "timestamp"), "timestamp"),
        orig_sz=opt_dec(obj.get("origSz"), "origSz"),
        reduce_only=obj.get("reduceOnly"),
        cloid=obj.get("cloid"),
        is_trigger=obj.get("isTrigger"),
        trigger_px=opt_dec(obj.get("triggerPx"), "triggerPx"),
        trigger_condition=obj.get("triggerCondition"),
        order_type=obj.get("orderType"),
        tif=obj.get("tif"),
        is_position_tpsl=obj.get("isPositionTpsl"),
        children=tuple(parse_order(c) for c in obj.get("children") or ()),
    )


def parse_order_record(obj: Any) -> OrderRecord:
    """One historicalOrders item: ``{"order": {...}, "status", "statusTimestamp"}``."""
    return OrderRecord(
        parse_order(req(obj, "order")), str(req(obj, "status")), obj.get("statusTimestamp")
    )


def parse_order_status(obj: Any) -> OrderRecord:
    """orderStatus: the record, or an empty one for ``{"status": "unknownOid"}``."""
    if req(obj, "status") != "order":
        return OrderRecord(None, None, None)
    return parse_order_record(req(obj, "order"))


def parse_fill(obj: Any) -> Fill:
    return Fill(
        coin=str(req(obj, "coin")),
        px=dec(req(obj, "px"), "px"),
        sz=dec(req(obj, "sz"), "sz"),
        side=_side(req(obj, "side")),
        time_ms=_int(req(obj, "time"), "time"),
        start_position=opt_dec(obj.get("startPosition"), "startPosition"),
        dir=obj.get("dir"),
        closed_pnl=opt_dec(obj.get("closedPnl"), "closedPnl"),
        hash=obj.get("hash"),
        oid=obj.get("oid"),
        tid=obj.get("tid"),
        crossed=obj.get("crossed"),
        fee=opt_dec(obj.get("fee"), "fee"),
        fee_token=obj.get("feeToken"),
        builder_fee=opt_dec(obj.get("builderFee"), "builderFee"),
        cloid=obj.get("cloid"),
        liquidation=obj.get("liquidation") is not None,
        twap_id=obj.get("twapId"),
    )


def parse_trades(data: Any) -> tuple[Trade, ...]:
    """A trades message's data. The firehose's hot path: plain lookups, one Trade per item."""
    if not isinstance(data, list):
        raise WireError(f"trades: expected a list, got {type(data).__name__}")
    out = []
    for obj in data:
        try:
            side = obj["side"]
            px = Decimal(obj["px"])
            sz = Decimal(obj["sz"])
            time_ms = obj["time"]
            tid = obj["tid"]
            users = obj.get("users")
            trade = Trade(
                obj["coin"],
                side,
                px,
                sz,
                time_ms,
                obj["hash"],
                tid,
                None if users is None else (users[0].lower(), users[1].lower()),
            )
        except (KeyError, TypeError, IndexError, AttributeError, InvalidOperation) as exc:
            raise WireError(f"trades: malformed trade {str(obj)[:200]}") from exc
        if (
            side not in ("B", "A")
            or type(time_ms) is not int
            or type(tid) is not int
            or not (px.is_finite() and sz.is_finite())
            or (users is not None and len(users) != 2)
        ):
            raise WireError(f"trades: malformed trade {str(obj)[:200]}")
        out.append(trade)
    return tuple(out)


def parse_ws_user_fills(data: Any) -> tuple[str, bool, tuple[Fill, ...]]:
    """A userFills message's data: (user, is_snapshot, fills). A followed leader's fills come
    this way, on the copy engine's latency path: plain lookups first, and the checking parser
    only for a fill that does not fit (it says what is wrong)."""
    fills = tuple(_fast_fill(f) for f in _list(req(data, "fills"), "fills"))
    return str(req(data, "user")).lower(), bool(data.get("isSnapshot", False)), fills


def _fast_fill(obj: Any) -> Fill:
    try:
        get = obj.get
        coin, side, time_ms, px, sz = obj["coin"], obj["side"], obj["time"], obj["px"], obj["sz"]
        start, closed, fee, builder = (
            get("startPosition"),
            get("closedPnl"),
            get("fee"),
            get("builderFee"),
        )
        if not (
            (side == "B" or side == "A")
            and type(time_ms) is int
            and type(coin) is str
            and type(px) is str
            and type(sz) is str
            and (start is None or type(start) is str)
            and (closed is None or type(closed) is str)
            and (fee is None or type(fee) is str)
            and (builder is None or type(builder) is str)
        ):
            return parse_fill(obj)
        px, sz = Decimal(px), Decimal(sz)
        start = None if start is None else Decimal(start)
        closed = None if closed is None else Decimal(closed)
        fee = None if fee is None else Decimal(fee)
        builder = None if builder is None else Decimal(builder)
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
        return parse_fill(obj)  # raises WireError naming the field
    if not (
        px.is_finite()
        and sz.is_finite()
        and (start is None or start.is_finite())
        and (closed is None or closed.is_finite())
        and (fee is None or fee.is_finite())
        and (builder is None or builder.is_finite())
    ):
        return parse_fill(obj)  # NaN or Infinity: the checking parser says which field
    return Fill(
        coin,
        px,
        sz,
        side,
        time_ms,
        start,
        get("dir"),
        closed,
        get("hash"),
        get("oid"),
        get("tid"),
        get("crossed"),
        fee,
        get("feeToken"),
        builder,
        get("cloid"),
        get("liquidation") is not None,
        get("twapId"),
    )


def parse_ws_order_updates(data: Any) -> tuple[OrderUpdate, ...]:
    """An orderUpdates message's data (it does not name the user)."""
    return tuple(
        OrderUpdate(
            parse_order(req(u, "order")),
            str(req(u, "status")),
            _int(req(u, "statusTimestamp"), "statusTimestamp"),
        )
        for u in _list(data, "orderUpdates")
    )


def parse_trade(obj: Any) -> Trade:
    users = obj.get("users")
    if users is not None:
        if not (isinstance(users, list) and len(users) == 2):
            raise WireError(f"users: expected two addresses, got {users!r}")
        users = (str(users[0]).lower(), str(users[1]).lower())
    return Trade(
        coin=str(req(obj, "coin")),
        side=_side(req(obj, "side")),
        px=dec(req(obj, "px"), "px"),
        sz=dec(req(obj, "sz"), "sz"),
        time_ms=_int(req(obj, "time"), "time"),
        hash=str(req(obj, "hash")),
        tid=_int(req(obj, "tid"), "tid"),
        users=users,
    )


def parse_funding(obj: Any) -> Funding:
    delta = req(obj, "delta")
    return Funding(
        time_ms=_int(req(obj, "time"), "time"),
        coin=str(req(delta, "coin")),
        usdc=dec(req(delta, "usdc"), "usdc"),
        szi=dec(req(delta, "szi"), "szi"),
        funding_rate=dec(req(delta, "fundingRate"), "fundingRate"),
        n_samples=delta.get("nSamples"),
        hash=obj.get("hash"),
    )


def _history(obj: Any, key: str) -> tuple[tuple[int, Decimal], ...]:
    return tuple((_int(t, key), dec(v, key)) for t, v in _list(obj, key))


def parse_portfolio(obj: Any) -> Portfolio:
    periods = {}
    for name, data in _list(obj, "portfolio"):
        periods[str(name)] = PortfolioPeriod(
            account_value_history=_history(req(data, "accountValueHistory"), "accountValueHistory"),
            pnl_history=_history(req(data, "pnlHistory"), "pnlHistory"),
            vlm=dec(data.get("vlm", "0"), "vlm"),
        )
    return Portfolio(periods)


def parse_user_role(obj: Any) -> UserRole:
    data = obj.get("data") or {}
    master = data.get("user") or data.get("master")
    return UserRole(str(req(obj, "role")), None if master is None else str(master).lower())


def parse_user_rate_limit(obj: Any) -> UserRateLimit:
    return UserRateLimit(
        cum_vlm=dec(req(obj, "cumVlm"), "cumVlm"),
        n_requests_used=_int(req(obj, "nRequestsUsed"), "nRequestsUsed"),
        n_requests_cap=_int(req(obj, "nRequestsCap"), "nRequestsCap"),
        n_requests_surplus=obj.get("nRequestsSurplus"),
    )


def parse_extra_agents(obj: Any) -> tuple[ExtraAgent, ...]:
    return tuple(
        ExtraAgent(str(req(a, "name")), str(req(a, "address")).lower(), a.get("validUntil"))
        for a in _list(obj, "extraAgents")
    )


def parse_funding_rate(obj: Any) -> FundingRate:
    """One ``fundingHistory`` item: ``{"coin","fundingRate","premium","time"}``."""
    return FundingRate(
        coin=str(req(obj, "coin")),
        time_ms=_int(req(obj, "time"), "time"),
        rate=dec(req(obj, "fundingRate"), "fundingRate"),
        premium=opt_dec(obj.get("premium"), "premium"),
    )


def _user_of(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise WireError(f"{where}: not an address: {str(value)[:60]!r}")
    return value.lower()


def parse_fills_document(data: Any) -> FillsDocument:
    """Fills as the exchange returns them, saved to a file: a JSON list of fills
    (``userFills`` / ``userFillsByTime``), a recorded request ``{"request", "response"}``, or a
    ``userFills`` stream message's data ``{"user", "fills"}``. Sorted oldest first (stable, so
    the order of one millisecond is kept); WireError names the first bad item."""
    users: set[str] = set()
    items = data
    if isinstance(data, dict):
        if "response" in data:
            request = data.get("request")
            if isinstance(request, dict) and request.get("user") is not None:
                users.add(_user_of(request["user"], "request.user"))
            items = data["response"]
        elif "fills" in data:
            if data.get("user") is not None:
                users.add(_user_of(data["user"], "user"))
            items = data["fills"]
    if not isinstance(items, list):
        raise WireError(f"expected a JSON list of fills, got {type(items).__name__}")
    fills = []
    for i, obj in enumerate(items):
        try:
            fills.append(parse_fill(obj))
            if isinstance(obj, dict) and obj.get("user") is not None:
                users.add(_user_of(obj["user"], "user"))
        except WireError as exc:
            raise WireError(f"fill {i}: {exc}") from None
    fills.sort(key=lambda f: f.time_ms)
    return FillsDocument(tuple(fills), frozenset(users))


def read_fills(raw: bytes) -> FillsDocument:
    """A saved fills document (see ``parse_fills_document``) from its bytes; WireError when it
    is not JSON or not fills."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc}") from None
    return parse_fills_document(data)


def parse_candle(obj: Any) -> Candle:
    return Candle(
        open_ms=_int(req(obj, "t"), "t"),
        close_ms=_int(req(obj, "T"), "T"),
        coin=str(req(obj, "s")),
        interval=str(req(obj, "i")),
        open=dec(req(obj, "o"), "o"),
        close=dec(req(obj, "c"), "c"),
        high=dec(req(obj, "h"), "h"),
        low=dec(req(obj, "l"), "l"),
        volume=dec(req(obj, "v"), "v"),
        trades=_int(req(obj, "n"), "n"),
    )


def strip_asset_suffix(message: str) -> str:
    """Per-order errors end in `` asset=<id>``; match on the message without it."""
    return _ASSET_SUFFIX.sub("", message)


def parse_order_statuses(data: Any, n_orders: int) -> list[OrderStatus]:
    """The ``statuses`` of an order action, one per order sent.

    A payload-only error can come back once for a whole batch: it is fanned out to every order.
    """
    statuses = _list(req(data, "statuses"), "statuses")
    out = [_order_status(s) for s in statuses]
    if len(out) == n_orders:
        return out
    if len(out) == 1 and out[0].outcome == "error":
        return out * n_orders
    raise WireError(f"{len(out)} statuses for {n_orders} orders")


def _order_status(obj: Any) -> OrderStatus:
    if obj == "waitingForFill" or obj == "waitingForTrigger":
        return OrderStatus(obj)
    if not isinstance(obj, dict):
        raise WireError(f"unknown order status {obj!r}")
    if "resting" in obj:
        r = obj["resting"]
        return OrderStatus("resting", oid=_int(req(r, "oid"), "oid"), cloid=r.get("cloid"))
    if "filled" in obj:
        f = obj["filled"]
        return OrderStatus(
            "filled",
            oid=_int(req(f, "oid"), "oid"),
            cloid=f.get("cloid"),
            total_sz=dec(req(f, "totalSz"), "totalSz"),
            avg_px=dec(req(f, "avgPx"), "avgPx"),
        )
    if "error" in obj:
        return OrderStatus("error", error=strip_asset_suffix(str(obj["error"])))
    raise WireError(f"unknown order status {obj!r}")


def parse_cancel_statuses(data: Any, n: int) -> list[CancelStatus]:
    out = [
        CancelStatus(True)
        if s == "success"
        else CancelStatus(False, strip_asset_suffix(str(req(s, "error"))))
        for s in _list(req(data, "statuses"), "statuses")
    ]
    if len(out) == n:
        return out
    if len(out) == 1 and not out[0].ok:
        return out * n
    raise WireError(f"{len(out)} statuses for {n} cancels")


def parse_public_leaderboard(obj: Any) -> tuple[SeedTrader, ...]:
    """The public leaderboard document; rows that cannot be read are skipped, not fatal."""
    out = []
    for row in _list(req(obj, "leaderboardRows"), "leaderboardRows"):
        try:
            windows = {
                str(name): WindowPerformance(
                    dec(req(p, "pnl"), "pnl"), dec(req(p, "roi"), "roi"), dec(req(p, "vlm"), "vlm")
                )
                for name, p in _list(req(row, "windowPerformances"), "windowPerformances")
            }
            address = str(req(row, "ethAddress")).lower()
            out.append(SeedTrader(address, dec(req(row, "accountValue"), "accountValue"), windows))
        except (WireError, TypeError, ValueError):
            continue
    return tuple(out)
