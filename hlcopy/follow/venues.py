"""The live venue: the executor shell's intents become signed IOC orders on the exchange.

Per intent (its copy row already committed as ``sending`` by the shell, ``follow/executor.py``):

1. **Check once more.** The risk state is read again right before signing: HALTED sends nothing,
   REDUCING only an order that ``permits`` (it shrinks the position without crossing zero), and
   then as reduce-only, so the exchange refuses it too if our view of the position is stale.
2. **Sign.** The cloid is the intent's (derived by the copier), the nonce comes from the
   signer's ``NonceSource``, ``expiresAfter`` = now + ``expires_after_s``; an IOC limit at the
   intent's limit price, rounded in the safe direction inside ``hl/``.
3. **Send** through ``send`` (the exchange client's REST post unless told otherwise) and read
   the answer: ``filled`` (size, average price; the fee from our own fills seen on the stream,
   else the taker rate), ``rejected`` with the exchange's message (the order's own error, or the
   whole action refused), ``never_arrived`` when it certainly never left (the connection was
   refused), and anything ambiguous — a timeout, a 5xx, a lost or unreadable reply, a 429 — is
   ``unknown``: its row says so, and it is settled by ``orderStatus(cloid)`` on the account
   once ``expiresAfter`` has passed, never by sending again. Unknown to the exchange then means
   it never arrived, so the copier may decide again with a new attempt (a new cloid).
4. The shell books what comes back (shielded) and hands the outcome to the engine, whose risk
   breakers count permanent rejections.

Our own fills come back through a ``userFills`` subscription on the account: the shell dedupes
them against the replies (``PaperExecutor.own_fills``). Every query names the account address,
never the agent's (an agent's address has no positions: it would read as flat).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final

import structlog

from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock
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
from hlcopy.follow.risk import TradingState, permits
from hlcopy.hl import ExchangeClient, InfoClient, PreparedAction, StreamPool, Subscription
from hlcopy.model import (
    AccountState,
    Asset,
    Fill,
    OrderIntent,
    OrderSpec,
    OrderStatus,
    UserFills,
)

log = structlog.get_logger()

ZERO: Final = Decimal(0)
FEE_QUANTUM: Final = Decimal("0.000001")
#: orderStatus states of an order that ended without (more) filling.
_UNFILLED_ENDS: Final = frozenset({"canceled", "iocCancelRejected", "filled"})

Send = Callable[[PreparedAction], Awaitable[list[OrderStatus]]]


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
        follower_state: Callable[[], AccountState | None] | None = None,
        send: Send | None = None,
        clock: Clock = SYSTEM,
        expires_after_s: float = 5.0,
        settle_margin_s: float = 0.5,
        settle_tries: int = 5,
        settle_retry_s: float = 1.0,
        taker_fee_rate: Decimal = DEFAULT_TAKER_FEE_RATE,
        own_fills: bool = True,
    ) -> None:
        self._exchange = exchange
        self._info = info
        self.account = account.lower()
        self._assets = assets
        self._stream = stream
        self._risk = risk
        self._follower_state = follower_state
        self._send: Send = send or exchange.send_orders
        self._clock = clock
        self.expires_after_ms = int(expires_after_s * 1000)
        self._settle_margin_s = settle_margin_s
        self._settle_tries = max(1, settle_tries)
        self._settle_retry_s = settle_retry_s
        self._fee_rate = taker_fee_rate
        self._subscribe_own = own_fills
        self._state: AccountState | None = None
        self._sub: Subscription[UserFills] | None = None
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
        }

    # -- the seam -------------------------------------------------------------------------

    async def start(self, host: PaperExecutor) -> AccountState | None:
        """Read the account's state (raises when it cannot: unknown is never flat) and
        subscribe to its fills."""
        self._state = await self._info.clearinghouse_state(self.account, lane=Lane.FOLLOWER)
        if self._stream is not None and self._subscribe_own and self._sub is None:
            try:
                self._sub = await self._stream.user_fills(self.account, _OwnFills(host), wait=False)
            except (StreamError, ExchangeError) as exc:
                log.warning("executor: no userFills of our own account", error=str(exc))
        return self._state

    def state(self) -> AccountState | None:
        """The newest of our own read and the tracker's (``follower_state``)."""
        mine = self._state
        theirs = None if self._follower_state is None else self._follower_state()
        if theirs is None:
            return mine
        if mine is None or (theirs.time_ms or 0) >= (mine.time_ms or 0):
            return theirs
        return mine

    async def stop(self) -> None:
        if self._stream is not None and self._sub is not None:
            sub, self._sub = self._sub, None
            await self._stream.unsubscribe(sub)

    def stats(self) -> dict[str, Any]:
        return {"venue": "live", "account": self.account, **self.counters}

    # -- one order --------------------------------------------------------------------------

    async def execute(self, intent: OrderIntent, host: PaperExecutor) -> VenueResult:
        now = self._clock.time_ms()
        asset = self._assets(intent.coin)
        if asset is None:
            return self._rejected(now, f"{intent.coin} is not in the exchange's universe")
        if intent.tif != "Ioc":
            return self._rejected(now, f"copies are IOC orders, not {intent.tif}")
        reduce_only = intent.reduce_only
        if self._risk is not None:
            state = self._risk(intent)
            if state != TradingState.ACTIVE:
                position = host.positions().get(intent.coin, ZERO)
                if not permits(state, position, intent.is_buy, intent.sz):
                    self.counters["refused_by_risk"] += 1
                    return self._rejected(
                        now, f"refused before sending: trading is {state.value.upper()}"
                    )
                reduce_only = True  # the exchange refuses it too if our position is stale
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
        try:
            (status,) = await self._send(prepared)
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
        return (total_sz * avg_px * self._fee_rate).quantize(FEE_QUANTUM)

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
        return px, (filled * px * self._fee_rate).quantize(FEE_QUANTUM)
