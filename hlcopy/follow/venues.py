"""The live venue: the executor shell's intents become signed IOC orders on the exchange.

Per intent (its copy row already committed as ``sending`` by the shell, ``follow/executor.py``):

1. **Check once more**, once the order's weight fits in the IP budget's order lane (a burst of
   orders beyond the room the reads leave for them waits there; signed first, one arrived
   expired). The risk state is read again right before signing: HALTED sends nothing,
   REDUCING only an order that ``permits`` (it shrinks the position without crossing zero), and
   then as reduce-only, so the exchange refuses it too if our view of the position is stale.
2. **Sign.** The cloid is the intent's (derived by the copier), the nonce comes from the
   signer's ``NonceSource``, ``expiresAfter`` = now + ``expires_after_s``; an IOC limit at the
   intent's limit price, rounded in the safe direction inside ``hl/``.
3. **Send** through the exchange client (a WebSocket post when a connection is up, REST
   otherwise) and read the answer: ``filled`` (size, average price; the fee from our own fills
   seen on the stream, else the taker rate), ``rejected`` with the exchange's message (the
   order's own error, or the whole action refused), ``never_arrived`` when it certainly never
   left (the connection was refused), and anything ambiguous — a timeout, a 5xx, a lost or
   unreadable reply, a 429 — is ``unknown``: its row says so, and it is settled by
   ``orderStatus(cloid)`` on the account once ``expiresAfter`` has passed, never by sending
   again. Unknown to the exchange then means it never arrived, so the copier may decide again
   with a new attempt (a new cloid).
4. The shell books what comes back (shielded) and hands the outcome to the engine, whose risk
   breakers count permanent rejections.

Before the first order that can add exposure in a coin, where the follows cap leverage
(``leverage_cap``), the venue sets the coin's leverage once per run (``updateLeverage``, cross
margin unless told otherwise, at most the asset's maximum). A failure is logged and counted and
the order still goes: the follow's leverage cap is kept by the copier's sizing (notional over
equity) whatever the exchange's setting, which only decides the margin an order takes; refusing
would stall copying on a settings call. A definite refusal (say, a margin-mode switch with a
position open) is not asked again this run; an ambiguous one is, before the next order.

The account's per-address action budget (``userRateLimit``) is read at start and then every
``rate_limit_every_s`` (FOLLOWER lane), less what we sent since. When what is left falls under
the reserve (``rate_limit_reserve`` requests or ``rate_limit_reserve_pct`` of the cap, the
larger), exposure-increasing orders are refused before signing, with a message the engine
records, while reductions go on (as reduce-only): new entries slow down before the budget runs
out, and the rest of it is kept for closes.

Our own fills come back through a ``userFills`` subscription on the account: the shell dedupes
them against the replies (``PaperExecutor.own_fills``). Every query names the account address,
never the agent's (an agent's address has no positions: it would read as flat).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

import structlog

from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock
from hlcopy.crash import crash_point
from hlcopy.errors import (
    BadRequest,
    ExchangeError,
    Rejected,
    StreamError,
    Unavailable,
    WireError,
)
from hlcopy.follow.executor import (
    DEFAULT_TAKER_FEE_RATE,
    NO_MATCH,
    PaperExecutor,
    VenueResult,
)
from hlcopy.follow.risk import REFUSED_BEFORE_SENDING, TradingState, permits
from hlcopy.hl import ExchangeClient, InfoClient, StreamPool, Subscription
from hlcopy.model import (
    AccountRead,
    Asset,
    Fill,
    OrderIntent,
    OrderSpec,
    UserFills,
    UserRateLimit,
)

log = structlog.get_logger()

ZERO: Final = Decimal(0)
FEE_QUANTUM: Final = Decimal("0.000001")
#: orderStatus states of an order that ended without (more) filling.
_UNFILLED_ENDS: Final = frozenset({"canceled", "iocCancelRejected", "filled"})

#: The start of every refusal the venue makes without sending anything.
REFUSED: Final = REFUSED_BEFORE_SENDING


class _OwnFills:
    """The account's userFills, handed to the shell in the stream reader's turn."""

    def __init__(self, host: PaperExecutor) -> None:
        self._host = host

    def offer(self, item: UserFills) -> bool:
        self._host.own_fills(item)
        return True

    async def put(self, item: UserFills) -> None:
        self.offer(item)


class LiveVenue:
    """Signs and sends the shell's intents. See the module docstring."""

    paper = False

    def __init__(
        self,
        exchange: ExchangeClient,
        info: InfoClient,
        account: str,
        assets: Callable[[str], Asset | None],
        *,
        stream: StreamPool | None = None,
        risk: Callable[[OrderIntent], TradingState] | None = None,
        follower_state: Callable[[], AccountRead | None] | None = None,
        clock: Clock = SYSTEM,
        expires_after_s: float = 5.0,
        settle_margin_s: float = 0.5,
        settle_tries: int = 5,
        settle_retry_s: float = 1.0,
        taker_fee_rate: Decimal = DEFAULT_TAKER_FEE_RATE,
        own_fills: bool = True,
        leverage_cap: Callable[[OrderIntent], Decimal | None] | None = None,
        cross_margin: bool = True,
        rate_limit_every_s: float = 60.0,
        rate_limit_reserve: int = 500,
        rate_limit_reserve_pct: Decimal = Decimal(10),
    ) -> None:
        self._exchange = exchange
        self._info = info
        self.account = account.lower()
        self._assets = assets
        self._stream = stream
        self._risk = risk
        self._follower_state = follower_state
        self._clock = clock
        self.expires_after_ms = int(expires_after_s * 1000)
        self._settle_margin_s = settle_margin_s
        self._settle_tries = max(1, settle_tries)
        self._settle_retry_s = settle_retry_s
        self._fee_rate = taker_fee_rate
        self._subscribe_own = own_fills
        self._state: AccountRead | None = None
        self._sub: Subscription[UserFills] | None = None
        self._leverage_cap = leverage_cap
        self._cross = cross_margin
        #: Coins whose leverage this run has settled: the leverage set (0: the exchange refused).
        self.leverage: dict[str, int] = {}
        self._leverage_locks: dict[str, asyncio.Lock] = {}
        self._rate_every_s = rate_limit_every_s
        self._reserve = rate_limit_reserve
        self._reserve_pct = rate_limit_reserve_pct
        self._rate: UserRateLimit | None = None
        self._rate_read_ms: int | None = None
        self._sent_since_read = 0
        self._rate_task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {
            "sent": 0,
            "filled": 0,
            "rejected": 0,
            "refused_by_risk": 0,
            "never_arrived": 0,
            "ambiguous": 0,
            "settled_by_cloid": 0,
            "status_errors": 0,
            "fees_from_fills": 0,
            "leverage_set": 0,
            "leverage_errors": 0,
            "refused_by_rate_limit": 0,
            "waited_for_weight": 0,  # orders that waited a second or more for the IP's weight
            "rate_limit_reads": 0,
            "rate_limit_errors": 0,
        }

    # -- the seam -------------------------------------------------------------------------

    async def start(self, host: PaperExecutor) -> AccountRead | None:
        """Read the account's state (raises when it cannot: unknown is never flat) and
        subscribe to its fills."""
        self._state = await self.read_state()
        if self._stream is not None and self._subscribe_own and self._sub is None:
            try:
                self._sub = await self._stream.user_fills(self.account, _OwnFills(host), wait=False)
            except (StreamError, ExchangeError) as exc:
                log.warning("executor: no userFills of our own account", error=str(exc))
        await self.refresh_rate_limit()
        if self._rate_task is None and self._rate_every_s > 0:
            self._rate_task = asyncio.create_task(
                self._watch_rate_limit(), name="executor:rate-limit"
            )
        return self._state

    async def read_state(self) -> AccountRead:
        """The account's state read now (FOLLOWER lane), with when; raises when it cannot be
        read."""
        sent_ms = self._clock.time_ms()
        state = await self._info.clearinghouse_state(self.account, lane=Lane.FOLLOWER)
        read = AccountRead(state, sent_ms, self._clock.time_ms())
        if self._state is None or read.sent_ms >= self._state.sent_ms:
            self._state = read
        return read

    def state(self) -> AccountRead | None:
        """The newest (by when it was asked for) of our own read and the tracker's."""
        mine = self._state
        theirs = None if self._follower_state is None else self._follower_state()
        if theirs is None:
            return mine
        if mine is None or theirs.sent_ms >= mine.sent_ms:
            return theirs
        return mine

    async def stop(self) -> None:
        task, self._rate_task = self._rate_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._stream is not None and self._sub is not None:
            sub, self._sub = self._sub, None
            await self._stream.unsubscribe(sub)

    def stats(self) -> dict[str, Any]:
        rate = self._rate
        return {
            "venue": "live",
            "account": self.account,
            **self.counters,
            "leverage": dict(self.leverage),
            "rate_limit": None
            if rate is None
            else {
                "used": rate.n_requests_used,
                "cap": rate.n_requests_cap,
                "sent_since_read": self._sent_since_read,
                "left": self.actions_left(),
                "reserve": self._reserve_floor(rate),
                "low": self.budget_low(),
                "read_ms": self._rate_read_ms,
            },
        }

    # -- the per-address action budget ----------------------------------------------------------

    async def refresh_rate_limit(self) -> UserRateLimit | None:
        """Read the account's ``userRateLimit`` now (FOLLOWER lane); on an error the last
        reading stays (less what was sent since)."""
        try:
            rate = await self._info.user_rate_limit(self.account, lane=Lane.FOLLOWER)
        except (ExchangeError, StreamError) as exc:
            self.counters["rate_limit_errors"] += 1
            log.warning("executor: userRateLimit not read", error=str(exc))
            return None
        self.counters["rate_limit_reads"] += 1
        self._rate = rate
        self._rate_read_ms = self._clock.time_ms()
        self._sent_since_read = 0
        if self.budget_low():
            log.warning(
                "executor: action budget low; only reductions go",
                left=self.actions_left(),
                cap=rate.n_requests_cap,
            )
        return rate

    async def _watch_rate_limit(self) -> None:
        while True:
            await self._clock.sleep(self._rate_every_s)
            await self.refresh_rate_limit()

    def actions_left(self) -> int | None:
        """Requests left in the account's budget: the last reading less what we sent since
        (None: never read)."""
        rate = self._rate
        if rate is None:
            return None
        return rate.n_requests_cap - rate.n_requests_used - self._sent_since_read

    def _reserve_floor(self, rate: UserRateLimit) -> int:
        pct = (Decimal(rate.n_requests_cap) * self._reserve_pct / 100).to_integral_value(
            ROUND_FLOOR
        )
        return max(self._reserve, int(pct))

    def budget_low(self) -> bool:
        """Whether what is left is under the reserve kept for reductions (unknown: not low,
        the exchange still refuses what goes over)."""
        left = self.actions_left()
        return (
            self._rate is not None and left is not None and left < self._reserve_floor(self._rate)
        )

    # -- leverage per coin ----------------------------------------------------------------------

    async def _ensure_leverage(self, intent: OrderIntent, asset: Asset) -> None:
        """Once per coin per run, before its first exposure-increasing order: the follows' cap
        as the exchange's leverage (whole, 1 to the asset's maximum), cross margin unless told
        otherwise. Errors are logged and counted; the order goes anyway (module docstring)."""
        if self._leverage_cap is None or intent.coin in self.leverage or asset.is_spot:
            return
        cap = self._leverage_cap(intent)
        if cap is None:
            return
        async with self._leverage_locks.setdefault(intent.coin, asyncio.Lock()):
            if intent.coin in self.leverage:
                return
            limit = asset.max_leverage if asset.max_leverage > 0 else 1
            leverage = max(1, min(int(cap.to_integral_value(ROUND_FLOOR)), limit))
            cross = self._cross and not asset.only_isolated
            self._sent_since_read += 1
            try:
                await self._exchange.update_leverage(asset, leverage, is_cross=cross)
            except (Rejected, BadRequest, WireError) as exc:
                # Definite: not asked again this run.
                self.counters["leverage_errors"] += 1
                self.leverage[intent.coin] = 0
                log.warning(
                    "executor: leverage not set",
                    coin=intent.coin,
                    leverage=leverage,
                    error=str(exc),
                )
                return
            except (ExchangeError, StreamError, ValueError) as exc:
                # Ambiguous or transient: asked again before the next order in the coin.
                self.counters["leverage_errors"] += 1
                log.warning(
                    "executor: leverage not set; again next time",
                    coin=intent.coin,
                    leverage=leverage,
                    error=str(exc),
                )
                return
            self.counters["leverage_set"] += 1
            self.leverage[intent.coin] = leverage
            log.info("executor: leverage set", coin=intent.coin, leverage=leverage, cross=cross)

    # -- one order --------------------------------------------------------------------------

    async def execute(self, intent: OrderIntent, host: PaperExecutor) -> VenueResult:
        now = self._clock.time_ms()
        asset = self._assets(intent.coin)
        if asset is None:
            return self._rejected(now, f"{intent.coin} is not in the exchange's universe")
        if intent.tif != "Ioc":
            return self._rejected(now, f"copies are IOC orders, not {intent.tif}")
        # The order's weight first, then the checks, its time, nonce and signature: a burst
        # of orders can wait behind reads already in the IP's window (signed first, one
        # arrived expired), and the risk state is read after that wait, right before signing.
        asked = self._clock.monotonic()
        await self._exchange.admit(1)
        if self._clock.monotonic() - asked >= 1.0:
            self.counters["waited_for_weight"] += 1
        now = self._clock.time_ms()
        reduce_only = intent.reduce_only
        if self._risk is not None:
            state = self._risk(intent)
            if state != TradingState.ACTIVE:
                position = host.positions().get(intent.coin, ZERO)
                if not permits(state, position, intent.is_buy, intent.sz):
                    self.counters["refused_by_risk"] += 1
                    return self._rejected(now, f"{REFUSED}trading is {state.value.upper()}")
                reduce_only = True  # the exchange refuses it too if our position is stale
        position = host.positions().get(intent.coin, ZERO)
        adds = not reduce_only and not permits(
            TradingState.REDUCING, position, intent.is_buy, intent.sz
        )
        if not adds and not reduce_only and self.budget_low():
            reduce_only = True  # budget kept for closes: send reductions as such
        if adds:
            if self.budget_low():
                self.counters["refused_by_rate_limit"] += 1
                return self._rejected(
                    now,
                    f"{REFUSED}the account's action budget is low ({self.actions_left()} of "
                    f"{self._rate.n_requests_cap if self._rate else '?'} requests left); "
                    "only reductions go until it recovers",
                )
            await self._ensure_leverage(intent, asset)
            now = self._clock.time_ms()
        expires_ms = now + self.expires_after_ms
        spec = OrderSpec(
            asset, intent.is_buy, intent.limit_px, intent.sz, reduce_only, "Ioc", intent.cloid
        )
        try:
            prepared = self._exchange.actions.orders(
                [spec], nonce=self._exchange.nonces.next(), expires_after=expires_ms
            )
        except WireError as exc:
            return self._rejected(now, str(exc))
        self.counters["sent"] += 1
        self._sent_since_read += 1
        try:
            (status,) = await self._exchange.send_orders(prepared, admitted=True)
        except (Rejected, BadRequest) as exc:
            # The whole action was refused, with the exchange's message: definite.
            return self._rejected(self._clock.time_ms(), str(exc))
        except Unavailable as exc:
            # Refused before a byte was sent: it cannot have landed.
            self.counters["never_arrived"] += 1
            return VenueResult("never_arrived", self._clock.time_ms(), error=str(exc))
        except (ExchangeError, StreamError, ValueError) as exc:
            # A timeout, a 5xx, a 429, a lost or unreadable reply: it may have landed.
            return await self._unknown(intent, host, expires_ms, str(exc))
        crash_point("after_ack")
        if status.outcome == "filled" and status.total_sz and status.avg_px is not None:
            self.counters["filled"] += 1
            fee = self._fee(host, intent.cloid, status.oid, status.total_sz, status.avg_px)
            return VenueResult(
                "filled",
                self._clock.time_ms(),
                status.total_sz,
                status.avg_px,
                fee,
                oid=status.oid,
            )
        if status.outcome == "error":
            return self._rejected(self._clock.time_ms(), status.error or "refused", status.oid)
        # An IOC never rests: anything else is not an answer we can book.
        return await self._unknown(intent, host, expires_ms, f"unexpected status {status}")

    def _rejected(self, now_ms: int, error: str, oid: int | None = None) -> VenueResult:
        self.counters["rejected"] += 1
        return VenueResult("rejected", now_ms, oid=oid, error=error)

    async def _unknown(
        self, intent: OrderIntent, host: PaperExecutor, expires_ms: int, why: str
    ) -> VenueResult:
        self.counters["ambiguous"] += 1
        log.warning("executor: order outcome unknown", cloid=intent.cloid, error=why)
        await host.mark_unknown(intent, why)
        return await self.settle(intent, host, expires_ms, why)

    async def settle(
        self, intent: OrderIntent, host: PaperExecutor, expires_ms: int, why: str
    ) -> VenueResult:
        """Settle an order of unknown fate by ``orderStatus(cloid)`` on the account, once its
        ``expiresAfter`` has passed (it cannot land after that): never by sending it again."""
        wait_s = max(0.0, (expires_ms - self._clock.time_ms()) / 1000) + self._settle_margin_s
        await self._clock.sleep(wait_s)
        last = why
        for attempt in range(self._settle_tries):
            if attempt:
                await self._clock.sleep(self._settle_retry_s)
            try:
                record = await self._info.order_status(self.account, intent.cloid, lane=Lane.ORDER)
            except (ExchangeError, StreamError) as exc:
                self.counters["status_errors"] += 1
                last = f"orderStatus failed: {exc}"
                continue
            now = self._clock.time_ms()
            order = record.order
            if order is None:
                self.counters["never_arrived"] += 1
                return VenueResult(
                    "never_arrived",
                    now,
                    error=f"{why}; unknown to the exchange after expiresAfter",
                )
            status = record.status or ""
            if status == "open":
                last = "still open"  # an IOC never rests; ask again
                continue
            self.counters["settled_by_cloid"] += 1
            filled = (order.orig_sz if order.orig_sz is not None else intent.sz) - order.sz
            if filled <= 0:
                error = NO_MATCH if status in _UNFILLED_ENDS else f"{status} (orderStatus)"
                return self._rejected(now, error, order.oid)
            avg_px, fee = await self._fill_prices(intent, host, order.oid, filled, expires_ms)
            self.counters["filled"] += 1
            return VenueResult("filled", now, filled, avg_px, fee, oid=order.oid)
        return VenueResult(
            "unknown", self._clock.time_ms(), error=f"{why}; not settled by cloid: {last}"
        )

    # -- prices and fees ----------------------------------------------------------------------

    def _fee(
        self,
        host: PaperExecutor,
        cloid: str,
        oid: int | None,
        total_sz: Decimal,
        avg_px: Decimal,
    ) -> Decimal:
        """The fee of a filled order: from our own fills when the stream already brought all
        of them, else at the taker rate (an IOC always takes)."""
        fills = [f for f in host.stashed_fills(cloid) if oid is None or f.oid in (None, oid)]
        if fills and sum((f.sz for f in fills), ZERO) == total_sz:
            self.counters["fees_from_fills"] += 1
            return sum((f.fee or ZERO for f in fills), ZERO)
        return self._taker_fee(total_sz, avg_px)

    def _taker_fee(self, sz: Decimal, px: Decimal) -> Decimal:
        """The fee an IOC of ``sz`` at ``px`` pays when our own fills do not say (it takes)."""
        return (sz * px * self._fee_rate).quantize(FEE_QUANTUM)

    async def _fill_prices(
        self,
        intent: OrderIntent,
        host: PaperExecutor,
        oid: int,
        filled: Decimal,
        expires_ms: int,
    ) -> tuple[Decimal, Decimal]:
        """Average price and fee of an order settled by cloid: from our own fills (the
        stream's, else the account's recent fills over REST), else the limit price (the worst
        it can have been) and the taker rate."""
        fills: list[Fill] = [f for f in host.stashed_fills(intent.cloid) if f.oid in (None, oid)]
        if sum((f.sz for f in fills), ZERO) != filled:
            start_ms = expires_ms - self.expires_after_ms - 60_000
            try:
                recent = await self._info.user_fills_by_time(
                    self.account, start_ms, lane=Lane.ORDER, max_pages=2
                )
                fills = [f for f in recent if f.oid == oid]
            except (ExchangeError, StreamError) as exc:
                log.warning("executor: fills of a settled order not read", error=str(exc))
                fills = []
        size = sum((f.sz for f in fills), ZERO)
        if fills and size == filled:
            avg = sum((f.px * f.sz for f in fills), ZERO) / size
            return avg, sum((f.fee or ZERO for f in fills), ZERO)
        px = intent.limit_px
        return px, self._taker_fee(filled, px)
