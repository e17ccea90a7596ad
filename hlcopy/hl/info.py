"""The typed ``/info`` client: one aiohttp session, every call charged to the weight budget.

What each request costs is in one table, ``WEIGHTS`` (HYPERLIQUID.md §2); the per-item part is
debited after the response, when the number of items is known. Reads are safe to repeat, so
transient failures retry with jittered, bounded backoff.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from hlcopy.budget import Lane, WeightBudget, extra_weight
from hlcopy.errors import (
    BadRequest,
    ExchangeTransient,
    RateLimited,
    Timeout,
    Unavailable,
    WireError,
)
from hlcopy.hl import parse
from hlcopy.model import (
    AccountState,
    AssetCtx,
    Candle,
    ExtraAgent,
    Fill,
    Funding,
    FundingRate,
    L2Book,
    Meta,
    Order,
    OrderRecord,
    PerpDex,
    Portfolio,
    SeedTrader,
    SpotBalance,
    SpotMeta,
    Trade,
    UserRateLimit,
    UserRole,
)

log = structlog.get_logger()
T = TypeVar("T")
FILLS_PAGE = 2000  # userFillsByTime returns at most this many fills per response
FUNDING_PAGE = 500  # fundingHistory (a time-range endpoint) pages at 500
HEADERS = {"Content-Type": "application/json"}

# Weight of each info request: (base, items per extra unit of weight or None). Requests not
# listed cost the default; batchClearinghouseStates, undocumented upstream, is assumed to cost
# what the same clearinghouseState requests would (2 per user). A request with a per-item part
# reserves what its largest answer (MAX_ITEMS) would cost and is refunded the rest.
WEIGHTS: dict[str, tuple[int, int | None]] = {
    "l2Book": (2, None),
    "allMids": (2, None),
    "clearinghouseState": (2, None),
    "spotClearinghouseState": (2, None),
    "orderStatus": (2, None),
    "exchangeStatus": (2, None),
    "userRole": (60, None),
    "recentTrades": (20, 20),
    "historicalOrders": (20, 20),
    "userFills": (20, 20),
    "userFillsByTime": (20, 20),
    "userFunding": (20, 20),
    "fundingHistory": (20, 20),
    "nonUserFundingUpdates": (20, 20),
    "userNonFundingLedgerUpdates": (20, 20),
    "twapHistory": (20, 20),
    "userTwapSliceFills": (20, 20),
    "candleSnapshot": (20, 60),
}
DEFAULT_WEIGHT = (20, None)
# The most items one answer can hold (HYPERLIQUID.md §4): fills and orders 2000, candles 5000,
# time-range endpoints 500; recentTrades is undocumented, so a generous 2000.
MAX_ITEMS: dict[str, int] = {
    "userFills": 2000,
    "userFillsByTime": 2000,
    "historicalOrders": 2000,
    "recentTrades": 2000,
    "candleSnapshot": 5000,
}
DEFAULT_MAX_ITEMS = 500


def request_weight(body: dict[str, Any]) -> tuple[int, int | None]:
    """(base weight, items per extra weight) of an info request body."""
    kind = str(body.get("type"))
    if kind == "batchClearinghouseStates":
        return max(2, 2 * len(body.get("users") or ())), None
    return WEIGHTS.get(kind, DEFAULT_WEIGHT)


def new_session(timeout_s: float = 10.0) -> aiohttp.ClientSession:
    """One session per process for REST. Idle keep-alive connections are dropped after 15 s,
    before the exchange's side does (python-sdk#293), so a request rarely meets a dead socket."""
    connector = aiohttp.TCPConnector(keepalive_timeout=15, limit=32)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


def _fill_key(f: Fill) -> tuple[Any, ...]:
    # tid identifies a fill; very old fills have none, so fall back to what makes them unique.
    return (
        (f.tid,) if f.tid is not None else (f.hash, f.oid, f.time_ms, f.px, f.sz, f.start_position)
    )


class InfoClient:
    """Typed ``/info`` requests. ``lane`` says on whose behalf a request is made."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        budget: WeightBudget,
        *,
        batch_clearinghouse_states: bool = False,
        attempts: int = 3,
        retry_max_wait_s: float = 2.0,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/info"
        self._budget = budget
        self._batch_enabled = batch_clearinghouse_states
        self._attempts = attempts
        self._retry_max_wait_s = retry_max_wait_s
        self.requests = 0
        self.failures = 0
        self.timeouts = 0
        self._typical_extra: dict[str, float] = {}  # per request kind: recent per-item weight

    async def _request(self, body: dict[str, Any], lane: Lane) -> Any:
        """POST one info request (retrying transient failures) and return the decoded JSON."""
        base, per = request_weight(body)
        kind = str(body.get("type"))
        reserved = 0 if per is None else extra_weight(MAX_ITEMS.get(kind, DEFAULT_MAX_ITEMS), per)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.25, max=self._retry_max_wait_s),
            retry=retry_if_exception_type(ExchangeTransient),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                data = await self._once(body, base, reserved, lane)
        return data

    async def _once(self, body: dict[str, Any], weight: int, reserved: int, lane: Lane) -> Any:
        kind = str(body.get("type"))
        likely = None
        if reserved:
            # Twice what answers of this kind have cost lately (a running average).
            typical = self._typical_extra.get(kind, reserved / 4)
            likely = weight + math.ceil(2 * typical)
        ticket = await self._budget.acquire(weight + reserved, lane, likely=likely)
        self.requests += 1
        try:
            data = await self._post(body)
        except (RateLimited, BadRequest):
            # Refused with a status and no items: nothing charged for an answer's size.
            self._budget.settle(ticket, reserved)
            raise
        except BaseException:
            # Timed out, cut off or cancelled: the exchange may still have answered and charged
            # per item returned. The whole reservation stays for a minute: refunded, the
            # exchange's window could hold more than ours, and the next full window draw a 429.
            self._budget.settle(ticket, 0)
            raise
        per = request_weight(body)[1]
        used = extra_weight(len(data), per) if per is not None and isinstance(data, list) else 0
        if reserved:
            self._typical_extra[kind] = 0.8 * self._typical_extra.get(kind, used) + 0.2 * used
        self._budget.settle(ticket, max(0, reserved - used))
        if used > reserved:
            self._budget.debit(used - reserved, lane)
        return data

    async def _post(self, body: dict[str, Any]) -> Any:
        what = str(body.get("type"))
        try:
            async with self._session.post(self._url, data=orjson.dumps(body), headers=HEADERS) as r:
                raw = await r.read()
                status = r.status
        except TimeoutError as exc:
            self.failures += 1
            self.timeouts += 1
            raise Timeout(f"info {what} timed out", request=what) from exc
        except aiohttp.ClientError as exc:
            self.failures += 1
            raise Unavailable(f"info {what}: {exc}", request=what) from exc
        if status == 429:
            self.failures += 1
            # The budget should never let this happen: the exchange's count and ours differ.
            log.warning(
                "exchange answered 429",
                request=what,
                our_window=self._budget.stats()["used_last_window"],
                timeouts=self.timeouts,
            )
            self._budget.rate_limited()
            raise RateLimited(f"info {what}: HTTP 429", status=429, request=what)
        if status >= 500:
            self.failures += 1
            raise Unavailable(f"info {what}: HTTP {status}", status=status, request=what)
        if status >= 400:
            self.failures += 1
            raise BadRequest(
                f"info {what}: HTTP {status}: {raw[:200]!r}", status=status, request=what
            )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.failures += 1
            raise Unavailable(
                f"info {what}: reply is not JSON", status=status, request=what
            ) from exc

    async def _typed(self, body: dict[str, Any], lane: Lane, parser: Callable[[Any], T]) -> T:
        data = await self._request(body, lane)
        try:
            return parser(data)
        except WireError as exc:
            raise WireError(f"info {body.get('type')}: {exc}") from exc

    async def _typed_list(
        self, body: dict[str, Any], lane: Lane, parser: Callable[[Any], T]
    ) -> list[T]:
        def parse_all(data: Any) -> list[T]:
            if not isinstance(data, list):
                raise WireError(f"expected a list, got {type(data).__name__}")
            return [parser(x) for x in data]

        return await self._typed(body, lane, parse_all)

    # -- metadata and market data ---------------------------------------------------------

    async def meta(self, dex: str = "", lane: Lane = Lane.ENRICHMENT) -> Meta:
        return await self._typed({"type": "meta", "dex": dex}, lane, parse.parse_meta)

    async def spot_meta(self, lane: Lane = Lane.ENRICHMENT) -> SpotMeta:
        return await self._typed({"type": "spotMeta"}, lane, parse.parse_spot_meta)

    async def perp_dexs(self, lane: Lane = Lane.ENRICHMENT) -> tuple[PerpDex, ...]:
        return await self._typed({"type": "perpDexs"}, lane, parse.parse_perp_dexs)

    async def meta_and_asset_ctxs(
        self, dex: str = "", lane: Lane = Lane.ENRICHMENT
    ) -> tuple[Meta, tuple[AssetCtx, ...]]:
        return await self._typed(
            {"type": "metaAndAssetCtxs", "dex": dex}, lane, parse.parse_meta_and_ctxs
        )

    async def all_mids(self, dex: str = "", lane: Lane = Lane.LEADER) -> dict[str, Decimal]:
        return await self._typed({"type": "allMids", "dex": dex}, lane, parse.parse_all_mids)

    async def l2_book(
        self,
        coin: str,
        n_sig_figs: int | None = None,
        mantissa: int | None = None,
        lane: Lane = Lane.LEADER,
    ) -> L2Book:
        body = {"type": "l2Book", "coin": coin, "nSigFigs": n_sig_figs, "mantissa": mantissa}
        return await self._typed(body, lane, parse.parse_l2_book)

    async def recent_trades(self, coin: str, lane: Lane = Lane.ENRICHMENT) -> list[Trade]:
        return await self._typed_list(
            {"type": "recentTrades", "coin": coin}, lane, parse.parse_trade
        )

    async def candle_snapshot(
        self, coin: str, interval: str, start_ms: int, end_ms: int, lane: Lane = Lane.ENRICHMENT
    ) -> list[Candle]:
        req = {"coin": coin, "interval": interval, "startTime": start_ms, "endTime": end_ms}
        return await self._typed_list(
            {"type": "candleSnapshot", "req": req},
            lane,
            parse.parse_candle,
        )

    # -- one user's state -----------------------------------------------------------------

    async def clearinghouse_state(
        self, user: str, dex: str = "", lane: Lane = Lane.LEADER
    ) -> AccountState:
        body = {"type": "clearinghouseState", "user": user, "dex": dex}
        return await self._typed(body, lane, parse.parse_account_state)

    async def batch_clearinghouse_states(
        self, users: Sequence[str], lane: Lane = Lane.LEADER
    ) -> list[AccountState | None]:
        """Several accounts in one request (undocumented upstream; weight assumed 2 per user)."""
        if not self._batch_enabled:
            raise BadRequest(
                "batchClearinghouseStates is off: set network.batch_clearinghouse_states"
            )

        def parse_all(data: Any) -> list[AccountState | None]:
            if not isinstance(data, list) or len(data) != len(users):
                raise WireError("expected one state per user")
            return [None if s is None else parse.parse_account_state(s) for s in data]

        body = {"type": "batchClearinghouseStates", "users": list(users)}
        return await self._typed(body, lane, parse_all)

    async def spot_clearinghouse_state(
        self, user: str, lane: Lane = Lane.FOLLOWER
    ) -> tuple[SpotBalance, ...]:
        body = {"type": "spotClearinghouseState", "user": user}
        return await self._typed(body, lane, parse.parse_spot_balances)

    async def open_orders(
        self, user: str, dex: str = "", lane: Lane = Lane.FOLLOWER
    ) -> list[Order]:
        return await self._typed_list(
            {"type": "openOrders", "user": user, "dex": dex}, lane, parse.parse_order
        )

    async def frontend_open_orders(
        self, user: str, dex: str = "", lane: Lane = Lane.FOLLOWER
    ) -> list[Order]:
        body = {"type": "frontendOpenOrders", "user": user, "dex": dex}
        return await self._typed_list(body, lane, parse.parse_order)

    async def order_status(self, user: str, oid: int | str, lane: Lane = Lane.ORDER) -> OrderRecord:
        """By exchange oid or by cloid; an empty record when the exchange does not know it."""
        body = {"type": "orderStatus", "user": user, "oid": oid}
        return await self._typed(body, lane, parse.parse_order_status)

    async def historical_orders(self, user: str, lane: Lane = Lane.ENRICHMENT) -> list[OrderRecord]:
        return await self._typed_list(
            {"type": "historicalOrders", "user": user}, lane, parse.parse_order_record
        )

    async def user_fills(
        self, user: str, aggregate_by_time: bool = False, lane: Lane = Lane.LEADER
    ) -> list[Fill]:
        """The most recent fills (at most 2000), newest first."""
        body = {"type": "userFills", "user": user, "aggregateByTime": aggregate_by_time}
        return await self._typed_list(body, lane, parse.parse_fill)

    async def user_fills_by_time(
        self,
        user: str,
        start_ms: int,
        end_ms: int | None = None,
        aggregate_by_time: bool = False,
        max_pages: int = 10,
        lane: Lane = Lane.GAPFILL,
        on_page: Callable[[int, int], None] | None = None,
    ) -> list[Fill]:
        """Fills from ``start_ms`` on, oldest first, paging forward until exhausted or
        ``max_pages``. Fills that reappear at a page boundary are returned once. ``on_page``
        hears (fills so far, newest time reached) after each page (a progress bar)."""
        out: list[Fill] = []
        seen: set[tuple[Any, ...]] = set()
        start = start_ms
        for _ in range(max_pages):
            body: dict[str, Any] = {
                "type": "userFillsByTime",
                "user": user,
                "startTime": start,
                "aggregateByTime": aggregate_by_time,
            }
            if end_ms is not None:
                body["endTime"] = end_ms
            page = await self._typed_list(body, lane, parse.parse_fill)
            fresh = [f for f in page if _fill_key(f) not in seen]
            seen.update(_fill_key(f) for f in fresh)
            out.extend(fresh)
            if on_page is not None:
                on_page(len(out), max((f.time_ms for f in page), default=start))
            if len(page) < FILLS_PAGE or not fresh:
                break
            last = max(f.time_ms for f in page)
            # A full page inside one millisecond would repeat forever: step past it.
            start = last if last > start else start + 1
        return out

    async def user_funding(
        self, user: str, start_ms: int, end_ms: int | None = None, lane: Lane = Lane.ENRICHMENT
    ) -> list[Funding]:
        body: dict[str, Any] = {"type": "userFunding", "user": user, "startTime": start_ms}
        if end_ms is not None:
            body["endTime"] = end_ms
        return await self._typed_list(body, lane, parse.parse_funding)

    async def funding_history(
        self,
        coin: str,
        start_ms: int,
        end_ms: int,
        max_pages: int = 50,
        lane: Lane = Lane.ENRICHMENT,
    ) -> list[FundingRate]:
        """A coin's hourly funding rates in ``[start_ms, end_ms]``, oldest first, paging
        forward (500 per answer) until exhausted or ``max_pages``."""
        out: list[FundingRate] = []
        start = start_ms
        for _ in range(max_pages):
            body = {"type": "fundingHistory", "coin": coin, "startTime": start, "endTime": end_ms}
            page = await self._typed_list(body, lane, parse.parse_funding_rate)
            fresh = [r for r in page if not out or r.time_ms > out[-1].time_ms]
            out.extend(fresh)
            if len(page) < FUNDING_PAGE or not fresh:
                break
            start = out[-1].time_ms + 1
        return out

    async def portfolio(self, user: str, lane: Lane = Lane.SCORING) -> Portfolio:
        return await self._typed({"type": "portfolio", "user": user}, lane, parse.parse_portfolio)

    async def user_role(self, user: str, lane: Lane = Lane.ENRICHMENT) -> UserRole:
        return await self._typed({"type": "userRole", "user": user}, lane, parse.parse_user_role)

    async def user_rate_limit(self, user: str, lane: Lane = Lane.FOLLOWER) -> UserRateLimit:
        return await self._typed(
            {"type": "userRateLimit", "user": user}, lane, parse.parse_user_rate_limit
        )

    async def extra_agents(self, user: str, lane: Lane = Lane.ENRICHMENT) -> tuple[ExtraAgent, ...]:
        return await self._typed(
            {"type": "extraAgents", "user": user}, lane, parse.parse_extra_agents
        )

    async def public_leaderboard(self, url: str) -> tuple[SeedTrader, ...]:
        """The exchange's public leaderboard document (a plain GET on another host, outside the
        per-IP weight budget as far as is known; ~40 MB on mainnet, so fetch it rarely)."""
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=300)) as r:
                status = r.status
                raw = await r.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable(f"public leaderboard: {exc}", request="leaderboard") from exc
        if status != 200:
            raise Unavailable(f"public leaderboard: HTTP {status}", status=status)
        try:
            return parse.parse_public_leaderboard(orjson.loads(raw))
        except (orjson.JSONDecodeError, WireError) as exc:
            raise WireError(f"public leaderboard: {exc}") from exc

    @property
    def budget_window_s(self) -> float:
        """The budget's window: how far ahead a reserve must look."""
        return self._budget.window_s

    def reserve_state_reads(self, reads: int) -> None:
        """Keep room in every budget window for ``reads`` clearinghouseState reads of the
        truth lanes (follower, leaders, watched traders), out of reach of scoring."""
        self._budget.reserve_for_truth(reads * WEIGHTS["clearinghouseState"][0])

    def reserve_scoring_weight(self, weight: int) -> None:
        """Keep ``weight`` of every budget window out of reach of the enrichment lane, for the
        scoring lane's reads (see the budget)."""
        self._budget.reserve_for_scoring(weight)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "timeouts": self.timeouts}
