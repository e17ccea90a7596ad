"""``POST /api/v1/close-all``: the operator's kill switch on what hlcopy opened.

Authenticated (a mutating route), with a JSON body ``{"confirm": "close-all", "reason": ...}``;
anything else is a 400 naming the field. In order:

1. **Stop new exposure first**: the global scope goes to REDUCING through the risk keeper
   (persisted before anything is sent). REDUCING, not HALTED: HALTED sends nothing at all, so
   the live venue's last check would refuse our own closes too; REDUCING lets exactly the
   orders through that shrink a position without crossing zero, which is what the closes are,
   and stops every exposure-increasing copy at once. An operator who wants silence after the
   closes halts on top. If another trip already holds the account HALTED, nothing is sent
   (409): the closes would be refused anyway.
2. **Close what hlcopy opened**: each follow's attributed position (the executor's
   attribution), netted per coin — follows on opposite sides of one coin are first netted
   inside the account by a transfer at the mid, as the copier does — and the remainder capped
   by the account's actual position, so a close never flips it and never touches the part of
   a position opened outside hlcopy (nor a coin hlcopy holds nothing of). A coin whose
   follows include one that is HALTED on its own scope is reported, not sent.
3. Each close is a reduce-only IOC at mid x (1 -/+ ``slippage_bps``) on the tick grid,
   with a deterministic cloid (``close-all|<request>|<coin>|<attempt>``: the same request
   decided twice is one order, by the executor's write-ahead), submitted through the same
   executor ``submit`` as every copy, paper or live. The exchange's $10 minimum is not applied
   here: a close of the whole position is exempt from it.

The answer (202) lists what was submitted per coin with its cloid; the outcomes follow on the
copies feed and ``/api/v1/copies``. Orders already in flight when the switch is thrown are not
in the attribution yet: what they leave behind is closed by calling again (a new request id).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol

import orjson
import structlog
from aiohttp import web

from hlcopy.api.params import ApiError, Args, Route, invalid
from hlcopy.api.responses import json_response
from hlcopy.clock import SYSTEM, Clock
from hlcopy.errors import ExchangeError, StoreError, StreamError
from hlcopy.follow.copier import Transfer, attribute_fill, limit_price
from hlcopy.follow.risk import TradingState
from hlcopy.follow.riskkeeper import GLOBAL, RiskKeeper, follow_scope
from hlcopy.hl import derive_cloid
from hlcopy.model import Asset, L2Book, LeaderFill, OrderIntent
from hlcopy.record import record

log = structlog.get_logger()

ZERO: Final = Decimal(0)
CONFIRM: Final = "close-all"
REASON_PREFIX: Final = "close-all"
_REASON = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


class Closable(Protocol):
    """What close-all needs of the executor shell (``follow/executor.py``)."""

    def attributed(self) -> dict[str, dict[str, Decimal]]: ...

    def positions(self) -> Mapping[str, Decimal]: ...

    def mids(self) -> Mapping[str, Decimal]: ...

    async def book(self, coin: str) -> L2Book: ...

    async def transfer(self, moves: Sequence[Transfer]) -> None: ...

    def submit(self, intent: OrderIntent, trigger: LeaderFill | None = None) -> None: ...


@record
class ClosePlan:
    """What close-all does in one coin: transfers that net opposite follows, then one
    reduce-only close of ``sz`` (zero: nothing to send, ``why`` says why)."""

    coin: str
    attributed: Decimal  # hlcopy's net part of the position, before the close
    position: Decimal  # the account's position
    transfers: tuple[Transfer, ...]
    is_buy: bool
    sz: Decimal
    attribution: tuple[tuple[str, Decimal], ...]
    why: str | None = None


def plan_close(
    coin: str,
    parts: Mapping[str, Decimal],
    position: Decimal,
    mid: Decimal,
    sz_decimals: int | None = None,
) -> ClosePlan:
    """Pure: the close of hlcopy's parts of ``coin`` (follow -> signed size) against the
    account's ``position``. Opposite follows are netted by transfers (long to short, at
    ``mid``); the net is closed, capped by the position so it never flips it (the cap is
    shared pro rata, on the coin's lot when ``sz_decimals`` is known); a position on the other
    side from hlcopy's net (something outside hlcopy moved it) is left alone."""
    longs = sorted((f, s) for f, s in parts.items() if s > 0)
    shorts = sorted((f, -s) for f, s in parts.items() if s < 0)
    transfers: list[Transfer] = []
    li = si = 0
    long_left = [s for _, s in longs]
    short_left = [s for _, s in shorts]
    while li < len(longs) and si < len(shorts):
        sz = min(long_left[li], short_left[si])
        transfers.append(Transfer(coin, longs[li][0], shorts[si][0], sz, mid))
        long_left[li] -= sz
        short_left[si] -= sz
        if long_left[li] == 0:
            li += 1
        if short_left[si] == 0:
            si += 1
    net = sum(parts.values(), ZERO)
    remaining = [(f, s) for (f, _), s in zip(longs, long_left, strict=True) if s > 0] + [
        (f, s) for (f, _), s in zip(shorts, short_left, strict=True) if s > 0
    ]
    is_buy = net < 0
    if net == 0:
        return ClosePlan(coin, net, position, tuple(transfers), is_buy, ZERO, (), "netted")
    if position == 0 or (position > 0) != (net > 0):
        return ClosePlan(
            coin, net, position, tuple(transfers), is_buy, ZERO, (), "no position on that side"
        )
    sz = min(abs(net), abs(position))
    attribution = tuple(
        (f, s) for f, s in attribute_fill(sorted(remaining), abs(net), sz, sz_decimals) if s > 0
    )
    return ClosePlan(coin, net, position, tuple(transfers), is_buy, sz, attribution)


def close_cloid(request_id: str, coin: str, attempt: int = 0) -> str:
    return derive_cloid(f"close-all|{request_id}|{coin}|{attempt}")


class CloseAll:
    """Close-all's shell: the risk switch, the plan per coin, the submits."""

    def __init__(
        self,
        executor: Closable,
        risk: RiskKeeper,
        assets: Callable[[str], Asset | None],
        *,
        slippage_bps: int = 50,
        clock: Clock = SYSTEM,
    ) -> None:
        self._executor = executor
        self._risk = risk
        self._assets = assets
        self._slippage_bps = slippage_bps
        self._clock = clock
        self.counters = {"requests": 0, "closes": 0, "transfers": 0}

    async def close_all(self, reason: str, request_id: str | None = None) -> dict[str, Any]:
        """Switch to REDUCING, then submit the closes; what was done, for the answer."""
        self.counters["requests"] += 1
        now = self._clock.time_ms()
        request = request_id or str(now)
        done = await self._risk.halt(GLOBAL, f"close-all: {reason}", TradingState.REDUCING)
        if done.state == TradingState.HALTED:
            raise ApiError(
                409,
                "trading is HALTED by another trip: reduce-only closes would be refused; "
                "resume or switch to reducing first",
                "halted",
            )
        ex = self._executor
        positions = dict(ex.positions())
        attributed = ex.attributed()
        by_coin: dict[str, dict[str, Decimal]] = {}
        for follow, coins in attributed.items():
            for coin, szi in coins.items():
                if szi:
                    by_coin.setdefault(coin, {})[follow] = szi
        closes: list[dict[str, Any]] = []
        for coin in sorted(by_coin):
            closes.append(await self._close_coin(coin, by_coin[coin], positions, request, now))
        outside = {
            coin: str(szi - sum(by_coin.get(coin, {}).values(), ZERO))
            for coin, szi in sorted(positions.items())
            if szi != sum(by_coin.get(coin, {}).values(), ZERO)
        }
        log.warning(
            "close-all", reason=reason, request=request, closes=len(closes), left=list(outside)
        )
        return {
            "request_id": request,
            "state": done.state.value,
            "closes": closes,
            "left_alone": outside,
        }

    async def _close_coin(
        self,
        coin: str,
        parts: Mapping[str, Decimal],
        positions: Mapping[str, Decimal],
        request: str,
        now: int,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"coin": coin, "cloid": None, "sent": False}
        asset = self._assets(coin)
        mid = await self._mid(coin)
        if asset is None or mid is None:
            return {**out, "error": f"no {'asset' if asset is None else 'price'} for {coin}"}
        plan = plan_close(coin, parts, positions.get(coin, ZERO), mid, asset.sz_decimals)
        out.update(attributed=str(plan.attributed), position=str(plan.position))
        if plan.transfers:
            try:
                await self._executor.transfer(plan.transfers)
            except StoreError as exc:
                return {**out, "error": f"the netting transfer could not be stored: {exc}"}
            self.counters["transfers"] += len(plan.transfers)
        if plan.sz <= 0:
            return {**out, "error": plan.why}
        state = self._risk.trading_state(*(follow_scope(f) for f, _ in plan.attribution))
        if state == TradingState.HALTED:
            # HALTED sends nothing, closes included (the live venue would refuse it anyway).
            return {**out, "error": "a follow of it is HALTED: resume it or switch to reducing"}
        px = limit_price(mid, 1 if plan.is_buy else -1, self._slippage_bps, asset)
        if px is None:
            return {**out, "error": f"{coin}: no limit price on the tick grid from mid {mid}"}
        intent = OrderIntent(
            cloid=close_cloid(request, coin),
            coin=coin,
            is_buy=plan.is_buy,
            sz=plan.sz,
            limit_px=px,
            reduce_only=True,
            reason=REASON_PREFIX,
            attribution=plan.attribution,
            decided_ms=now,
        )
        self._executor.submit(intent)
        self.counters["closes"] += 1
        return {
            **out,
            "cloid": intent.cloid,
            "sent": True,
            "side": "B" if intent.is_buy else "A",
            "sz": str(intent.sz),
            "limit_px": str(px),
            "follows": [f for f, _ in intent.attribution],
        }

    async def _mid(self, coin: str) -> Decimal | None:
        mid = self._executor.mids().get(coin)
        if mid is not None:
            return mid
        try:
            book = await self._executor.book(coin)
        except (ExchangeError, StreamError) as exc:
            log.warning("close-all: no price", coin=coin, error=str(exc))
            return None
        if not book.bids or not book.asks:
            return None
        return (book.bids[0].px + book.asks[0].px) / 2

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)


CLOSER: Final = web.AppKey("close_all", CloseAll)


def _body_field(body: Any, name: str) -> Any:
    if not isinstance(body, dict):
        raise invalid(name, f'the body must be a JSON object with "{name}"')
    return body.get(name)


async def close_all_route(request: web.Request, args: Args) -> web.Response:
    raw = await request.read()
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise invalid("confirm", f"the body is not valid JSON: {exc}") from exc
    confirm = _body_field(body, "confirm")
    if confirm != CONFIRM:
        raise invalid("confirm", f'confirm must be "{CONFIRM}"')
    reason = _body_field(body, "reason")
    if reason is None:
        reason = "operator"
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise invalid("reason", "reason must be 1 to 200 printable characters")
    unknown = sorted(set(body) - {"confirm", "reason"})
    if unknown:
        raise invalid(unknown[0][:64], f"unknown field {unknown[0][:64]!r}")
    closer = request.app.get(CLOSER)
    if closer is None:
        raise ApiError(
            503, "close-all needs the executor and risk, not running here", "unavailable"
        )
    try:
        done = await closer.close_all(reason)
    except StoreError as exc:
        raise ApiError(
            503, f"the reduce-only switch could not be stored: {exc}", "unavailable"
        ) from exc
    return json_response(done, 202)


_CLOSE = {
    "type": "object",
    "required": ["coin", "cloid", "sent"],
    "properties": {
        "coin": {"type": "string"},
        "cloid": {"type": ["string", "null"]},
        "sent": {"type": "boolean"},
        "side": {"type": "string", "enum": ["B", "A"]},
        "sz": {"type": "string"},
        "limit_px": {"type": "string"},
        "attributed": {"type": "string"},
        "position": {"type": "string"},
        "follows": {"type": "array", "items": {"type": "string"}},
        "error": {"type": ["string", "null"]},
    },
}

ROUTE: Final = Route(
    "POST",
    "/api/v1/close-all",
    close_all_route,
    "Switch to reduce-only and close every position hlcopy opened",
    "risk",
    response={
        "type": "object",
        "required": ["request_id", "state", "closes", "left_alone"],
        "properties": {
            "request_id": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in TradingState]},
            "closes": {"type": "array", "items": _CLOSE},
            "left_alone": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    status=202,
    errors=(400, 401, 409, 503),
    description="The global scope goes to REDUCING first (persisted), then one reduce-only "
    "IOC per coin closes hlcopy's attributed part, capped by the account's position; "
    "positions opened outside hlcopy are left alone. Answers what was submitted (cloids); "
    "the outcomes follow on the copies feed.",
    body={
        "type": "object",
        "required": ["confirm"],
        "properties": {
            "confirm": {"type": "string", "enum": [CONFIRM]},
            "reason": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "pattern": "^[^\\x00-\\x1f\\x7f]+$",
            },
        },
        "additionalProperties": False,
    },
)
