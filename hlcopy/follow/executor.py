"""Execution: order intents become orders, paper or live, through one shell.

The shell here does everything that does not depend on the mode: the write-ahead copy row, the
per-coin order, attribution, booking into the ledger, outcomes, ``copy`` events and figures,
skips and transfers. What differs sits behind a small seam, the ``Venue``: ``PaperVenue``
(below) fills an IOC against the live order book; ``LiveVenue`` (``follow/venues.py``) signs and
sends it. Live mode therefore sends exactly what paper mode would have simulated.

Paper mode, per intent, in order per coin (a flip's close runs before its open), concurrently
across coins:

1. **Write ahead.** The copy row (status ``planned``, unique on the cloid) is committed before
   anything else; a cloid already there is the same order decided twice and is not run again.
   No row, no order: if PostgreSQL cannot take it, the intent is refused.
2. **Send.** The row becomes ``sending``; then the latency allowance passes on the clock, as a
   real order's round trip would, and the coin's book *after* it is used: the ``l2Book`` stream
   (subscribed on first use, or ahead with ``watch``), or one REST ``l2Book`` when the stream
   has nothing fresh.
3. **Fill.** ``simulate_ioc`` walks the book up to the IOC limit price (part or all may not
   fill; nothing filled is the exchange's "could not immediately match" rejection); the taker fee
   is charged; a reduce-only order is cut to the position and refused when it would increase it.
   Our own paper fills do not deplete the book.
4. **Book.** The ``PaperAccount``, the paper fill and the copy row's settlement are written in one
   transaction, then the account and the in-flight sizes change together in memory, so the copy
   engine never sees an order in neither place. The ``OrderOutcome`` goes to the outcomes sink
   and a ``copy`` event to the bus.

Funding: on every hour, each open paper position receives ``-szi x oracle x rate`` (longs pay when
the rate is positive), with the rate and oracle price of ``metaAndAssetCtxs``. Hours missed while
the daemon was down are paid at the current rate when it comes back (the paper account keeps
paying while nobody watches, as a real one does).

The account, the per-follow attribution of its positions and the copy log live in PostgreSQL; a
restart picks them up, and intents a previous run left unsettled are marked ``never_arrived``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

import structlog

from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, MetricFamily, Ready
from hlcopy.config import HlcopyConfig
from hlcopy.crash import crash_point
from hlcopy.errors import ExchangeError, StoreError, StreamError
from hlcopy.events import Event, EventBus
from hlcopy.follow.copier import Transfer, attribute_fill
from hlcopy.follow.fills import PaperAccount, PaperFill, gross_notional, simulate_ioc
from hlcopy.follow.performance import CopyRecord, FollowLedger, FundingRecord, TransferRecord
from hlcopy.follow.risk import REFUSED_BEFORE_SENDING
from hlcopy.hl import InfoClient, StreamPool, Subscription
from hlcopy.model import (
    AccountRead,
    AccountState,
    AllMids,
    Fill,
    L2Book,
    LeaderFill,
    OrderIntent,
    OrderOutcome,
    OutcomeStatus,
    UserFills,
)
from hlcopy.queues import BoundedQueue, QueueClosed, Sink
from hlcopy.record import record
from hlcopy.store import Store
from hlcopy.store.copies import (
    CopyRow,
    CopyStore,
    FundingRow,
    PaperFillRow,
    Settlement,
    StoredOutcome,
)
from hlcopy.store.performance import PerformanceStore

log = structlog.get_logger()

HOUR_MS: Final = 3_600_000
ZERO: Final = Decimal(0)
BPS: Final = Decimal(10_000)
#: Hyperliquid's base taker fee (tier 0, no staking discount): 0.045% of the notional.
DEFAULT_TAKER_FEE_RATE: Final = Decimal("0.00045")
#: What the exchange answers when an IOC finds nothing within its limit price.
NO_MATCH: Final = "Order could not immediately match against any resting orders."
REJECTION_KEY: Final = 60  # how much of a rejection's message groups it in ``rejections``
REDUCE_ONLY_REFUSED: Final = "Reduce only order would increase position."
#: Hours of funding paid at once after a downtime, at most (a month).
MAX_CATCH_UP_HOURS: Final = 24 * 30


_STORED_STATUS: Final[dict[str, OutcomeStatus]] = {
    "filled": "filled",
    "partial": "partial",
    "rejected": "rejected",
    "unknown": "unknown",
    "never_arrived": "never_arrived",
}


class _Latest:
    """A sink that keeps only the newest item per key and wakes whoever waits for one."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.books: dict[str, tuple[L2Book, float]] = {}
        self.mids: dict[str, Decimal] = {}
        self.mids_version = 0  # counts the allMids updates: figures made at the mids are kept by it
        self._waiters: dict[str, asyncio.Event] = {}

    def waiter(self, coin: str) -> asyncio.Event:
        return self._waiters.setdefault(coin, asyncio.Event())


class _BookSink:
    def __init__(self, latest: _Latest) -> None:
        self._latest = latest

    def offer(self, item: L2Book) -> bool:
        self._latest.books[item.coin] = (item, self._latest.clock.monotonic())
        self._latest.waiter(item.coin).set()
        return True

    async def put(self, item: L2Book) -> None:
        self.offer(item)


class _MidsSink:
    def __init__(self, latest: _Latest) -> None:
        self._latest = latest

    def offer(self, item: AllMids) -> bool:
        latest = self._latest
        latest.mids.update(item.mids)
        latest.mids_version += 1
        return True

    async def put(self, item: AllMids) -> None:
        self.offer(item)


@dataclass(slots=True)
class _InFlight:
    intent: OrderIntent
    trigger: LeaderFill | None


class NoMarketData(ExchangeError):
    """No market data (order book, funding rates) for paper execution."""


VenueStatus = Literal["filled", "rejected", "never_arrived", "unknown"]


@record
class VenueResult:
    """What a venue made of one order: ``filled`` (all or part: ``filled_sz`` > 0), ``rejected``
    (definite, with the exchange's message), ``never_arrived`` (settled: the exchange never saw
    it, so the copier may decide again with a new attempt) or ``unknown`` (still ambiguous)."""

    status: VenueStatus
    time_ms: int
    filled_sz: Decimal = ZERO
    avg_px: Decimal | None = None
    fee: Decimal = ZERO
    oid: int | None = None
    error: str | None = None


class Venue(Protocol):
    """Where an intent's order goes. See the module docstring."""

    @property
    def paper(self) -> bool: ...

    @property
    def expires_after_ms(self) -> int:
        """How long after sending an order can still land (live: its ``expiresAfter``)."""
        ...

    async def start(self, host: PaperExecutor) -> AccountRead | None:
        """Before the first intent: live, the follower's account from the exchange (raises when
        it cannot be read: unknown is never flat); paper, None."""
        ...

    async def execute(self, intent: OrderIntent, host: PaperExecutor) -> VenueResult:
        """Send ``intent`` (its copy row is committed as ``sending``) and settle it."""
        ...

    def state(self) -> AccountRead | None:
        """The newest account state the exchange gave (live), or None (paper)."""
        ...

    async def read_state(self) -> AccountRead | None:
        """Live: the account's state read from the exchange now (raises when it cannot be
        read); paper: None."""
        ...

    async def settle(
        self, intent: OrderIntent, host: PaperExecutor, expires_ms: int, why: str
    ) -> VenueResult:
        """Settle an order of unknown fate (a previous run's, sent but never settled): live, by
        ``orderStatus(cloid)`` once ``expires_ms`` has passed, never by sending it again."""
        ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class PaperVenue:
    """Paper mode: the latency allowance on the clock, then ``simulate_ioc`` against the
    coin's book after it (see the module docstring, steps 2 and 3)."""

    paper = True
    expires_after_ms = 0

    async def start(self, host: PaperExecutor) -> AccountRead | None:
        return None

    async def execute(self, intent: OrderIntent, host: PaperExecutor) -> VenueResult:
        if host.latency_ms > 0:
            await host.clock.sleep(host.latency_ms / 1000)
        fill_ms = host.clock.time_ms()
        error: str | None = None
        fill: PaperFill | None = None
        try:
            sz = reduce_only_size(intent, host.account().position(intent.coin))
            if sz is None:
                error = REDUCE_ONLY_REFUSED
            elif intent.tif != "Ioc":
                error = f"paper execution fills IOC orders only, not {intent.tif}"
            else:
                book = await host.book(intent.coin)
                fill = simulate_ioc(book, intent.is_buy, sz, intent.limit_px, host.taker_fee_rate)
                if fill.filled_sz == 0:
                    error = NO_MATCH
        except (ExchangeError, StreamError) as exc:
            error = f"no order book for {intent.coin}: {exc}"
        if fill is None or fill.filled_sz == 0 or fill.avg_px is None:
            return VenueResult("rejected", fill_ms, error=error or NO_MATCH)
        return VenueResult("filled", fill_ms, fill.filled_sz, fill.avg_px, fill.fee)

    def state(self) -> AccountRead | None:
        return None

    async def read_state(self) -> AccountRead | None:
        return None

    async def settle(
        self, intent: OrderIntent, host: PaperExecutor, expires_ms: int, why: str
    ) -> VenueResult:
        # A paper order that was not booked never reached the (paper) book.
        return VenueResult("never_arrived", host.clock.time_ms(), error=why)

    async def stop(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"venue": "paper"}


def reduce_only_size(intent: OrderIntent, position: Decimal) -> Decimal | None:
    """The size a reduce-only order can fill against ``position``: cut to it, None if it
    cannot reduce it (a plain order: its size)."""
    if not intent.reduce_only:
        return intent.sz
    if (position > 0 and not intent.is_buy) or (position < 0 and intent.is_buy):
        return min(intent.sz, abs(position))
    return None


def account_from_state(state: AccountState) -> PaperAccount:
    """The follower's account as the exchange reported it, in the shell's terms: positions at
    their entry prices, cash = account value minus the unrealised PnL."""
    unrealized = sum((p.unrealized_pnl or ZERO for p in state.positions), ZERO)
    account = PaperAccount(cash=state.margin_summary.account_value - unrealized)
    for p in state.positions:
        if p.szi:
            account = account.with_position(p.coin, p.szi, p.entry_px or ZERO)
    return account


@record
class _BookedFill:
    """A live fill booked by the shell, kept until an exchange snapshot surely includes it
    (``_sync_live``): ``sent_ms`` when its order was sent, ``time_ms`` when the reply came."""

    sent_ms: int
    time_ms: int
    coin: str
    is_buy: bool
    sz: Decimal
    px: Decimal
    fee: Decimal


@record
class AccountFigures:
    """The account's whole-book figures at the latest mids, kept until the account, the
    follows' parts or a mid changes. A copy decision reads them rather than summing every held
    coin: the sums are made once per change, by the first reader after it, not per decision."""

    positions: Mapping[str, Decimal]  # signed size per coin (``positions()``)
    equity: Decimal | None  # None: a held coin has no mid yet (unknown, not zero)
    notional: Decimal  # gross, at the mids (a coin without one counts zero)
    follow_notional: Mapping[str, Decimal]  # each follow's parts, gross, at the mids


def slippage_bps(is_buy: bool, avg_px: Decimal, leader_px: Decimal) -> Decimal:
    """How much worse than the leader's price we traded, in basis points of it (negative:
    better). A buy is worse above, a sell below, whatever side the leader took."""
    diff = avg_px - leader_px if is_buy else leader_px - avg_px
    return (diff / leader_px * BPS).quantize(Decimal("0.01"))


class PaperExecutor(Component):
    """Intents in (``intents``, block), orders filled by the venue (paper by default) and
    booked, outcomes out. See the module docstring; ``Executor`` is the same class."""

    name = "executor"

    def __init__(
        self,
        intents: BoundedQueue[OrderIntent],
        outcomes: Sink[OrderOutcome],
        stream: StreamPool | None,
        info: InfoClient | None,
        store: Store,
        bus: EventBus | None,
        config: HlcopyConfig,
        clock: Clock = SYSTEM,
        *,
        latency_ms: int = 200,
        taker_fee_rate: Decimal = DEFAULT_TAKER_FEE_RATE,
        book_wait_s: float = 2.0,
        book_max_age_s: float = 5.0,
        max_in_flight: int = 64,
        skip_buffer: int = 10_000,
        funding: bool = True,
        funding_retry_s: float = 60.0,
        subscribe_mids: bool = True,
        venue: Venue | None = None,
        own_fills_kept: int = 10_000,
        sz_decimals: Callable[[str], int | None] | None = None,
    ) -> None:
        self._venue: Venue = venue or PaperVenue()
        # A coin's lot, for splitting a partial fill over its follows on the grid.
        self._sz_decimals = sz_decimals or (lambda coin: None)
        self.paper = self._venue.paper
        self._intents = intents
        self._outcomes = outcomes
        self._stream = stream
        self._info = info
        self._copies = CopyStore(store)
        self._performance = PerformanceStore(store)
        #: Each follow's PnL, kept with the account (risk reads it: ``ledger.figures``).
        self.ledger = FollowLedger()
        self._bus = bus
        self._clock = clock
        self.clock = clock
        self.latency_ms = latency_ms
        self.taker_fee_rate = taker_fee_rate
        self._book_wait_s = book_wait_s
        self._book_max_age_s = book_max_age_s
        self._max_in_flight = max_in_flight
        self._funding_enabled = funding
        self._funding_retry_s = funding_retry_s
        self._own_mids = subscribe_mids
        self._initial_cash = config.account.paper_equity_usd
        self._account = PaperAccount(cash=self._initial_cash)
        # positions() of one account (immutable, replaced whole on every change), kept with it;
        # figures() with the account, the follows' parts and the mids' version they were made at.
        self._sizes: tuple[PaperAccount | None, Mapping[str, Decimal]] = (None, {})
        self._kept: tuple[object, object, int, AccountFigures] | None = None
        self._attributed: dict[str, dict[str, Decimal]] = {}
        self._funded_hour_ms: int | None = None
        self._loaded = False
        self._in_flight: dict[str, _InFlight] = {}
        self._waiting: deque[OrderIntent] = deque()  # submitted while the queue was full
        self._waiting_ready = asyncio.Event()
        self._triggers: dict[str, LeaderFill] = {}
        self._latest = _Latest(clock)
        self._mids_view = MappingProxyType(self._latest.mids)
        self._book_subs: dict[str, Subscription[L2Book]] = {}
        self._mids_sub: Subscription[AllMids] | None = None
        self._coin_locks: dict[str, asyncio.Lock] = {}
        self._account_lock = asyncio.Lock()
        self._skips: deque[CopyRow] = deque()
        self._skip_buffer = skip_buffer
        self._skips_waiting = asyncio.Event()
        self._skip_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._figures = CopyFigures()
        # Live: the exchange's snapshot the account was rebuilt from, the fills booked since,
        # and what dedupes our own fills (userFills) against the order replies.
        self._base_read: AccountRead | None = None
        self._recent: deque[_BookedFill] = deque()
        self._sent_at: dict[str, tuple[str, int]] = {}  # live: cloid -> (coin, sent ms)
        self._refresh: asyncio.Task[None] | None = None
        self._own_kept = own_fills_kept
        self._own_tids: set[int] = set()
        self._own_tid_order: deque[int] = deque()
        self._booked_cloids: set[str] = set()
        self._booked_oids: set[int] = set()
        self._booked_order: deque[tuple[str, int | None]] = deque()
        self._own_stash: dict[str, dict[int, Fill]] = {}
        #: Per coin, a count of what changed hlcopy's books or the account there (intents,
        #: booked fills, fills of orders placed outside hlcopy): the reconciler looks at the
        #: exchange only where it did not move while the read ran.
        self.activity: Counter[str] = Counter()
        #: Rejections by message (its start): what the exchange, or hlcopy, refused and why.
        self.rejections: Counter[str] = Counter()
        #: The newest fills of the account's orders that were not hlcopy's copies (live).
        self.foreign: deque[Fill] = deque(maxlen=1_000)
        self.counters: dict[str, int] = {
            "intents": 0,
            "duplicates": 0,
            "filled": 0,
            "partial": 0,
            "rejected": 0,
            "refused": 0,
            "never_arrived": 0,
            "settled_at_start": 0,
            "unknown": 0,
            "own_fills": 0,
            "own_fills_deduped": 0,
            "own_fills_foreign": 0,
            "skips": 0,
            "skips_written": 0,
            "skips_dropped": 0,
            "skip_write_errors": 0,
            "book_rest": 0,
            "funding_hours": 0,
            "funding_errors": 0,
            "transfers": 0,
        }

    # -- what the copy engine uses -------------------------------------------------------------

    def submit(self, intent: OrderIntent, trigger: LeaderFill | None = None) -> None:
        """Take ``intent``, with the leader fill that triggered it (for the copy log's prices
        and delays): counted in ``pending()`` from this call on, so the copy engine's next
        decision sees it without any await in between. Queued for execution; when the queue is
        full it waits here, in order, and one task hands it over (never dropped). Raises
        ``QueueClosed`` when the executor's queue is closed."""
        if self._intents.closed:
            raise QueueClosed(f"queue {self._intents.name} is closed")
        self._in_flight[intent.cloid] = _InFlight(intent, trigger)
        self.activity[intent.coin] += 1
        if trigger is not None:
            self._triggers[intent.cloid] = trigger
        if self._waiting or not self._intents.offer(intent):
            self._waiting.append(intent)
            self._waiting_ready.set()

    def pending(self) -> dict[tuple[str, str], Decimal]:
        """Signed size of the orders in flight (submitted, not yet booked), per (follow, coin)."""
        out: dict[tuple[str, str], Decimal] = {}
        for entry in self._in_flight.values():
            intent = entry.intent
            sign = 1 if intent.is_buy else -1
            for follow, share in intent.attribution:
                key = (follow, intent.coin)
                out[key] = out.get(key, ZERO) + sign * share
        return out

    def pending_in(self, coin: str) -> dict[str, Decimal]:
        """``pending()`` of one coin, per follow (a copy decision's share of it)."""
        out: dict[str, Decimal] = {}
        for entry in self._in_flight.values():
            intent = entry.intent
            if intent.coin == coin:
                sign = 1 if intent.is_buy else -1
                for follow, share in intent.attribution:
                    out[follow] = out.get(follow, ZERO) + sign * share
        return out

    async def transfer(self, moves: Sequence[Transfer]) -> None:
        """Move attribution between follows without a trade (the copier netted their opposite
        wishes inside the account), stored before it counts."""
        if not moves:
            return
        async with self._account_lock:
            attributed = {f: dict(c) for f, c in self._attributed.items()}
            for m in moves:
                give = attributed.setdefault(m.from_follow, {})
                take = attributed.setdefault(m.to_follow, {})
                give[m.coin] = give.get(m.coin, ZERO) - m.sz
                take[m.coin] = take.get(m.coin, ZERO) + m.sz
                for book in (give, take):
                    if book[m.coin] == 0:
                        del book[m.coin]
            attributed = {f: c for f, c in attributed.items() if c}
            now = self._clock.time_ms()
            if self.paper:
                await self._copies.save_paper(
                    self._account.to_dict(), attributed, self._funded_hour_ms, now
                )
            else:
                await self._copies.save_live(attributed)
            self._attributed = attributed
            for m in moves:
                self.ledger.transfer(
                    TransferRecord(m.coin, m.from_follow, m.to_follow, m.sz, m.px, now)
                )
            try:
                await self._performance.record_transfers(moves, now)
            except StoreError as exc:
                log.warning("executor: transfers not recorded", error=str(exc))
        self.counters["transfers"] += len(moves)

    def busy_coins(self) -> set[str]:
        """The coins with an order in flight."""
        return {entry.intent.coin for entry in self._in_flight.values()}

    async def read_state(self) -> AccountState | None:
        """Live: the account as the exchange has it now (raises when it cannot be read), and
        the books rebuilt from it; paper: None."""
        read = await self._venue.read_state()
        if read is None:
            return None
        self._sync_live(read)
        return read.state

    async def restate(self, coins: Mapping[str, Mapping[str, Decimal]]) -> None:
        """Live: set every follow's attributed size in each coin of ``coins`` (coin -> follow ->
        signed size; zero or absent: nothing), stored before it counts (the reconciler's
        correction of drift). Raises ``StoreError`` when it cannot be stored: nothing changes."""
        async with self._account_lock:
            attributed = {f: dict(c) for f, c in self._attributed.items()}
            for held in attributed.values():
                for coin in coins:
                    held.pop(coin, None)
            for coin, parts in coins.items():
                for follow, szi in parts.items():
                    if szi != 0:
                        attributed.setdefault(follow, {})[coin] = szi
            attributed = {f: c for f, c in attributed.items() if c}
            await self._copies.save_live(attributed)
            self._attributed = attributed
            for coin in coins:
                self.activity[coin] += 1

    def positions(self) -> Mapping[str, Decimal]:
        """The account's signed size per coin (open positions only). Live: the exchange's
        latest snapshot plus the fills booked since; orders in flight are in ``pending()``. Read
        only, and made once per account: a change of the account makes a new one."""
        self._sync_live()
        return self._sizes_of(self._account)

    def _sizes_of(self, account: PaperAccount) -> Mapping[str, Decimal]:
        kept, sizes = self._sizes
        if kept is not account:
            sizes = MappingProxyType({coin: p.szi for coin, p in account.positions.items()})
            self._sizes = account, sizes
        return sizes

    def attributed(self) -> dict[str, dict[str, Decimal]]:
        """Each follow's part of the paper positions: {follow_id: {coin: szi}}."""
        return {f: dict(coins) for f, coins in self._attributed.items()}

    def attributed_view(self) -> Mapping[str, Mapping[str, Decimal]]:
        """``attributed()`` without the copy, for a reader that does not await while it reads:
        the books are replaced whole on every change, never edited in place."""
        return self._attributed

    def account(self) -> PaperAccount:
        """The account now (immutable): the paper account, or live the exchange's view of the
        follower's (see ``positions``)."""
        self._sync_live()
        return self._account

    def mids(self) -> Mapping[str, Decimal]:
        """The latest mid prices from the stream (empty until the first allMids): a read-only
        live view, not a copy (a copy touches every coin's price in each copy decision); copy
        it to keep it across an await."""
        return self._mids_view

    def equity(self, mids: Mapping[str, Decimal] | None = None) -> Decimal:
        """Cash plus unrealised PnL at ``mids`` (default: the stream's latest); raises
        ValueError when an open position has no mid."""
        self._sync_live()
        return self._account.equity(self._latest.mids if mids is None else mids)

    def figures(self) -> AccountFigures:
        """The account's figures at the latest mids (see ``AccountFigures``); made again only
        when the account, the follows' parts or the mids changed since."""
        self._sync_live()
        account, attributed, version = self._account, self._attributed, self._latest.mids_version
        kept = self._kept
        if kept is not None and kept[0] is account and kept[1] is attributed and kept[2] == version:
            return kept[3]
        mids = self._latest.mids
        positions = self._sizes_of(account)
        try:
            equity: Decimal | None = account.equity(mids)
        except ValueError:
            equity = None
        figures = AccountFigures(
            positions,
            equity,
            gross_notional(positions, mids),
            MappingProxyType({f: gross_notional(parts, mids) for f, parts in attributed.items()}),
        )
        self._kept = account, attributed, version, figures
        return figures

    @property
    def loaded(self) -> bool:
        """Whether the stored paper account has been read (``run`` does it first)."""
        return self._loaded

    def record_skip(
        self,
        follow_ids: str | Sequence[str],
        coin: str,
        reason: str,
        sz: Decimal | None = None,
        fill: LeaderFill | None = None,
        *,
        is_buy: bool | None = None,
        leader: str | None = None,
        decided_ms: int | None = None,
    ) -> None:
        """Record a copy the engine decided not to make, with its reason. Never waits: the row
        is written in the next batch (the same skip of the same leader fill once), and a
        ``copy`` event goes out now."""
        follows = (follow_ids,) if isinstance(follow_ids, str) else tuple(follow_ids)
        now = self._clock.time_ms()
        decided = now if decided_ms is None else decided_ms
        row = CopyRow(
            status="skipped",
            paper=self.paper,
            attribution=tuple((f, ZERO if sz is None else abs(sz)) for f in sorted(follows)),
            coin=coin,
            decided_ms=decided,
            leader=leader or (fill.leader if fill is not None else None),
            is_buy=is_buy,
            sz=None if sz is None else abs(sz),
            skip_reason=reason,
            **_leader_fields(fill, decided),
        )
        if len(self._skips) >= self._skip_buffer:
            self._skips.popleft()
            self.counters["skips_dropped"] += 1
        self._skips.append(row)
        self._skips_waiting.set()
        self.counters["skips"] += 1
        self._publish(_event_data(row, None, None), row.leader, now)

    async def watch(self, coins: Sequence[str]) -> None:
        """Subscribe to the books of ``coins`` ahead of their first intent."""
        for coin in coins:
            await self._subscribe_book(coin)

    # -- component -------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._stopping.clear()
        try:
            await self._load()
            await self._subscribe_mids()
            slots = asyncio.Semaphore(self._max_in_flight)
            async with asyncio.TaskGroup() as tg:
                if self.paper and self._funding_enabled and self._info is not None:
                    tg.create_task(self._funding_loop(), name="executor:funding")
                tg.create_task(self._skip_writer(), name="executor:skips")
                hand_over = tg.create_task(self._hand_over(), name="executor:hand-over")
                ready.set()
                try:
                    await self._consume(tg, slots)
                finally:
                    self._stopping.set()  # the loops end; the group waits for intents in flight
                    hand_over.cancel()
        finally:
            # Also on failure or cancellation: the venue's own task (the live venue's
            # userRateLimit watch) and its subscription end with the executor, and the
            # write-ahead connection goes back to the pool.
            refresh, self._refresh = self._refresh, None
            if refresh is not None and not refresh.done():
                refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh
            try:
                await self._venue.stop()
            finally:
                await self._copies.release()

    async def _hand_over(self) -> None:
        """Intents submitted while the queue was full go in as room comes, in order."""
        while True:
            await self._waiting_ready.wait()
            self._waiting_ready.clear()
            while self._waiting:
                try:
                    await self._intents.put(self._waiting[0])
                except QueueClosed:
                    return  # shutting down: they stay in flight, as queued ones do
                self._waiting.popleft()

    async def drain(self) -> None:
        self._stopping.set()

    async def _load(self) -> None:
        if not self.paper:
            await self._load_live()
            return
        stored = await self._copies.load_paper()
        now = self._clock.time_ms()
        if stored is None:
            self._account = PaperAccount(cash=self._initial_cash)
            self._attributed = {}
            self._funded_hour_ms = now // HOUR_MS * HOUR_MS
            await self._copies.save_paper(
                self._account.to_dict(), self._attributed, self._funded_hour_ms, now
            )
        else:
            self._account = PaperAccount.from_dict(stored.account)
            self._attributed = {
                f: {c: Decimal(s) for c, s in coins.items()}
                for f, coins in stored.attributed.items()
            }
            self._funded_hour_ms = stored.funded_hour_ms
        copies, transfers, funding = await self._performance.history()
        self.ledger = FollowLedger.replay(copies, transfers, funding)
        self._loaded = True
        for cloid in await self._copies.abandon_open(now):
            self.counters["never_arrived"] += 1
            if cloid in self._in_flight:
                # Taken off the queue by a run that stopped before booking it: the engine hears
                # that it never arrived, so it can decide again.
                self._in_flight.pop(cloid, None)
                self._triggers.pop(cloid, None)
                outcome = OrderOutcome(cloid, "never_arrived", time_ms=now)
                if not self._outcomes.offer(outcome):
                    await self._outcomes.put(outcome)
        log.info(
            "executor: paper account loaded",
            cash=str(self._account.cash),
            positions=len(self._account.positions),
            new=stored is None,
        )

    async def _load_live(self) -> None:
        """Live: each follow's part as stored, the account as the exchange has it (the venue
        raises when it cannot be read: unknown is never flat), the ledger replayed."""
        stored = await self._copies.load_live()
        self._attributed = {
            f: {c: Decimal(s) for c, s in coins.items()} for f, coins in (stored or {}).items()
        }
        read = await self._venue.start(self)
        if read is None:
            raise ExchangeError("the live venue gave no account state")
        state = read.state
        self._base_read = None
        self._recent.clear()
        self._sync_live(read)
        copies, transfers, funding = await self._performance.history()
        self.ledger = FollowLedger.replay(copies, transfers, funding)
        self._loaded = True
        await self._settle_open_live()
        log.info(
            "executor: live account loaded",
            account_value=str(state.margin_summary.account_value),
            positions=len(self._account.positions),
        )

    async def _settle_open_live(self) -> None:
        """Before READY: settle every live intent a previous run left open. One never marked
        ``sending`` was never signed: it never arrived. One that was may have reached the
        exchange: the venue asks ``orderStatus(cloid)`` once its ``expiresAfter`` has passed
        and it is booked like any reply (never sent again). The outcomes reach the engine, so
        the copier decides again with a new attempt where nothing arrived."""
        for row in await self._copies.open_live():
            intent = row.intent
            self.counters["settled_at_start"] += 1
            if row.status == "planned":
                result = VenueResult(
                    "never_arrived",
                    self._clock.time_ms(),
                    error="a previous run stopped before sending it",
                )
                await self._settle_final(intent, result)
                continue
            sent_ms = row.sent_ms if row.sent_ms is not None else intent.decided_ms
            self._sent_at[intent.cloid] = (intent.coin, sent_ms)
            expires_ms = sent_ms + self._venue.expires_after_ms
            why = f"a previous run stopped with it {row.status}"
            result = await self._venue.settle(intent, self, expires_ms, why)
            if result.status == "filled" and result.filled_sz > 0 and result.avg_px is not None:
                await asyncio.shield(self._book_fill(intent, None, result))
            elif result.status == "rejected":
                await self._settle_rejected(intent, result.error or NO_MATCH, result.time_ms)
            else:
                await asyncio.shield(self._settle_final(intent, result))

    def _sync_live(self, read: AccountRead | None = None) -> None:
        """Live: rebuild the account from the venue's newest read of the exchange, coin by
        coin, replaying the fills booked that it surely does not hold.

        Whether a read holds one of our fills is told on our own clock (the exchange's ``time``
        in the read is another clock): asked for after the fill's reply came, it holds it; answered
        before its order was sent, it does not. A coin with a fill in between, or an order sent
        before the answer and not yet booked, is ambiguous: it keeps the view it had (our own
        bookings since the last clear read) until a later read is clear for it."""
        if self.paper:
            return
        read = read or self._venue.state()
        base = self._base_read
        if read is None or read is base:
            return
        if base is not None and read.sent_ms < base.sent_ms:
            return
        self._base_read = read
        for cloid in [c for c in self._sent_at if c not in self._in_flight]:
            del self._sent_at[cloid]
        unclear = {coin for coin, sent in self._sent_at.values() if sent < read.done_ms}
        for f in self._recent:
            if read.sent_ms < f.time_ms and f.sent_ms < read.done_ms:
                unclear.add(f.coin)
        current = self._account.positions
        account = account_from_state(read.state)
        for coin in unclear:
            held = current.get(coin)
            account = account.with_position(
                coin, ZERO if held is None else held.szi, ZERO if held is None else held.entry_px
            )
        kept: deque[_BookedFill] = deque()
        for f in self._recent:
            if f.coin in unclear:
                kept.append(f)  # in the view already; a later clear read settles it
            elif read.done_ms <= f.sent_ms:
                account = account.apply_fill(f.coin, f.is_buy, f.sz, f.px, f.fee).account
                kept.append(f)
            # else: the read holds it
        self._recent = kept
        self._account = account

    def _refresh_view(self) -> None:
        """Live: read the account again soon (one read at a time), so a coin the last read
        left unclear gets a clear view."""
        if self._refresh is not None and not self._refresh.done():
            return
        self._refresh = asyncio.create_task(self._read_again(), name="executor:view-refresh")

    async def _read_again(self) -> None:
        try:
            read = await self._venue.read_state()
        except (ExchangeError, StreamError) as exc:
            log.info("executor: account not read again", error=str(exc))
            return
        if read is not None:
            self._sync_live(read)

    async def _consume(self, tg: asyncio.TaskGroup, slots: asyncio.Semaphore) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                getter = asyncio.ensure_future(self._intents.get())
                try:
                    await asyncio.wait((getter, stop), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not getter.done():
                        getter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await getter
                if getter.cancelled():  # stopping, and nothing was taken off the queue
                    slots.release()
                    return
                try:
                    intent = getter.result()
                except QueueClosed:
                    slots.release()
                    return
                if intent.cloid not in self._in_flight:
                    self._in_flight[intent.cloid] = _InFlight(intent, None)
                tg.create_task(self._execute(intent, slots), name=f"executor:{intent.cloid}")
        finally:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop

    # -- one intent --------------------------------------------------------------------------

    async def _execute(self, intent: OrderIntent, slots: asyncio.Semaphore) -> None:
        # One coin's intents run in the order they came (asyncio.Lock is FIFO, and each task
        # reaches it before awaiting anything else). Cancelled between the write-ahead and the
        # booking, an intent stays in flight: the next run marks its row never_arrived and
        # tells the engine.
        try:
            async with self._coin_locks.setdefault(intent.coin, asyncio.Lock()):
                await self._run_intent(intent)
        finally:
            slots.release()

    async def _run_intent(self, intent: OrderIntent) -> None:
        """Write ahead, let the venue fill (paper) or send (live), book. Live, the row is
        committed once, as ``sending`` (it may have been sent: a restart asks the exchange);
        paper, ``planned`` then ``sending``."""
        self.counters["intents"] += 1
        entry = self._in_flight.get(intent.cloid)
        trigger = self._triggers.get(intent.cloid) or (entry.trigger if entry else None)
        now = self._clock.time_ms()
        send_delay = None if trigger is None else now - trigger.time_ms
        row = _with_intent_fields(
            intent, trigger, now, paper=self.paper, sent=None if self.paper else (now, send_delay)
        )
        try:
            stored = await self._copies.write_intent(row)
        except StoreError as exc:
            # No durable intent, no order.
            log.warning("executor: intent not written; refused", cloid=intent.cloid, error=str(exc))
            self.counters["refused"] += 1
            # Refused by us, not by the exchange: no rejection for the breakers (a database
            # gone for a moment must not leave trading halted once it is back).
            error = f"{REFUSED_BEFORE_SENDING}not recorded: {exc}"
            await self._finish(intent, OrderOutcome(intent.cloid, "rejected", error=error))
            return
        if stored is not None:
            self.counters["duplicates"] += 1
            await self._on_duplicate(intent, stored)
            return
        if not self.paper:
            self._sent_at[intent.cloid] = (intent.coin, now)
        crash_point("after_commit")
        if self.paper:
            try:
                await self._copies.mark_sending(intent.cloid, now, send_delay)
            except StoreError as exc:
                log.warning("executor: cannot mark sending", cloid=intent.cloid, error=str(exc))
        crash_point("after_mark")  # live: the same moment as after_commit
        result = await self._venue.execute(intent, self)
        if result.status == "filled" and result.filled_sz > 0 and result.avg_px is not None:
            # Shielded: once the exchange (or the paper book) filled it, the booking finishes.
            await asyncio.shield(self._book_fill(intent, trigger, result))
        elif result.status == "rejected":
            await self._settle_rejected(intent, result.error or NO_MATCH, result.time_ms)
        else:
            await asyncio.shield(self._settle_final(intent, result))

    async def _book_fill(
        self, intent: OrderIntent, trigger: LeaderFill | None, fill: VenueResult
    ) -> None:
        """Book a fill: account, fill row and settlement in one transaction, then memory.
        Shielded by the caller: once the fill is computed (or the exchange filled it), its
        booking finishes. Live, the stored part is the attribution (the account is the
        exchange's), and the order is remembered so our own userFills do not book it again."""
        assert fill.avg_px is not None
        fill_ms = fill.time_ms
        sent = self._sent_at.get(intent.cloid)
        sent_ms = fill_ms if sent is None else sent[1]
        if not self.paper:
            self._remember_booked(intent.cloid, fill.oid)
            self._own_stash.pop(intent.cloid, None)
        async with self._account_lock:
            self._sync_live()
            booked = self._account.apply_fill(
                intent.coin, intent.is_buy, fill.filled_sz, fill.avg_px, fill.fee
            )
            attributed = {f: dict(c) for f, c in self._attributed.items()}
            sign = 1 if intent.is_buy else -1
            shares = attribute_fill(
                intent.attribution, intent.sz, fill.filled_sz, self._sz_decimals(intent.coin)
            )
            for follow, part in shares:
                coins = attributed.setdefault(follow, {})
                szi = coins.get(intent.coin, ZERO) + sign * part
                if szi:
                    coins[intent.coin] = szi
                else:
                    coins.pop(intent.coin, None)
                if not coins:
                    attributed.pop(follow, None)
            status: OutcomeStatus = "filled" if fill.filled_sz == intent.sz else "partial"
            settlement = Settlement(
                status=status,
                settled_ms=fill_ms,
                filled_sz=fill.filled_sz,
                avg_px=fill.avg_px,
                fee=fill.fee,
                closed_pnl=booked.closed_pnl,
                slippage_bps=None
                if trigger is None
                else slippage_bps(intent.is_buy, fill.avg_px, trigger.px),
            )
            fill_row = PaperFillRow(
                intent.cloid,
                intent.coin,
                intent.is_buy,
                fill.filled_sz,
                fill.avg_px,
                fill.fee,
                booked.closed_pnl,
                booked.start_position,
                booked.dir,
                fill_ms,
            )
            recorded = True
            try:
                if self.paper:
                    await self._copies.settle(
                        intent.cloid,
                        settlement,
                        account=booked.account.to_dict(),
                        attributed=attributed,
                        funded_hour_ms=self._funded_hour_ms,
                        fill=fill_row,
                    )
                else:
                    await self._copies.settle(intent.cloid, settlement, live_attributed=attributed)
                crash_point("after_book")
            except StoreError as exc:
                recorded = False
                if self.paper:
                    # Not booked: the row stays "sending" and the next run settles it as
                    # never_arrived; the engine hears the same now.
                    log.warning(
                        "executor: paper fill not booked", cloid=intent.cloid, error=str(exc)
                    )
                    self.counters["never_arrived"] += 1
                    outcome = OrderOutcome(
                        intent.cloid, "never_arrived", error=f"not booked: {exc}", time_ms=fill_ms
                    )
                    self._in_flight.pop(intent.cloid, None)
                    self._triggers.pop(intent.cloid, None)
                else:
                    # The exchange filled it whatever the database says: it is booked in
                    # memory (the next snapshot confirms the position) and the row stays open
                    # for the start-up settlement to find.
                    log.error(
                        "executor: live fill not recorded", cloid=intent.cloid, error=str(exc)
                    )
            if recorded or not self.paper:
                # The account and the in-flight sizes change together: no await in between.
                if self.paper:
                    self._account = booked.account
                else:
                    # On the view as it is now: a newer read may have come in meanwhile.
                    self._account = self._account.apply_fill(
                        intent.coin, intent.is_buy, fill.filled_sz, fill.avg_px, fill.fee
                    ).account
                    self._recent.append(
                        _BookedFill(
                            sent_ms,
                            fill_ms,
                            intent.coin,
                            intent.is_buy,
                            fill.filled_sz,
                            fill.avg_px,
                            fill.fee,
                        )
                    )
                    base = self._base_read
                    if base is not None and base.sent_ms < fill_ms and sent_ms < base.done_ms:
                        self._refresh_view()  # the view may hold this fill twice: look again
                self._attributed = attributed
                self.activity[intent.coin] += 1
                self.ledger.settled(
                    CopyRecord(
                        intent.coin,
                        status,
                        fill_ms,
                        intent.attribution,
                        intent.is_buy,
                        intent.sz,
                        fill.filled_sz,
                        fill.avg_px,
                        fill.fee,
                    )
                )
                self._in_flight.pop(intent.cloid, None)
                self._triggers.pop(intent.cloid, None)
                self.counters[status] += 1
                outcome = OrderOutcome(
                    intent.cloid,
                    status,
                    fill.filled_sz,
                    fill.avg_px,
                    fill.fee,
                    oid=fill.oid,
                    time_ms=fill_ms,
                )
        data = _event_data(
            _with_intent_fields(intent, trigger, paper=self.paper),
            settlement if outcome.status in ("filled", "partial") else None,
            outcome,
        )
        self._publish(data, intent.leader, fill_ms)
        await self._put_outcome(outcome)

    async def _settle_rejected(self, intent: OrderIntent, error: str, now_ms: int) -> None:
        settlement = Settlement(status="rejected", settled_ms=now_ms, error=error)
        try:
            await self._copies.settle(intent.cloid, settlement)
        except StoreError as exc:
            log.warning("executor: cannot settle", cloid=intent.cloid, error=str(exc))
        self.counters["rejected"] += 1
        self.rejections[error[:REJECTION_KEY]] += 1
        trigger = self._triggers.get(intent.cloid)
        await self._finish(
            intent,
            OrderOutcome(intent.cloid, "rejected", error=error, time_ms=now_ms),
            _with_intent_fields(intent, trigger, paper=self.paper),
            settlement,
        )

    async def _settle_final(self, intent: OrderIntent, result: VenueResult) -> None:
        """Settle an order that filled nothing and was not refused: ``never_arrived`` (the
        copier may decide again, with a new attempt) or, after every try, ``unknown``."""
        status: OutcomeStatus = "never_arrived" if result.status == "never_arrived" else "unknown"
        settlement = Settlement(status=status, settled_ms=result.time_ms, error=result.error)
        try:
            await self._copies.settle(intent.cloid, settlement)
        except StoreError as exc:
            log.warning("executor: cannot settle", cloid=intent.cloid, error=str(exc))
        self.counters[status] += 1
        self._own_stash.pop(intent.cloid, None)
        trigger = self._triggers.get(intent.cloid)
        await self._finish(
            intent,
            OrderOutcome(
                intent.cloid, status, oid=result.oid, error=result.error, time_ms=result.time_ms
            ),
            _with_intent_fields(intent, trigger, paper=self.paper),
            settlement,
        )

    # -- what a live venue uses ---------------------------------------------------------------

    async def mark_unknown(self, intent: OrderIntent, error: str) -> None:
        """A sent order's fate is ambiguous: its row says so (``unknown``) while the venue
        settles it by cloid; it stays in flight (``pending``) until then."""
        now = self._clock.time_ms()
        try:
            await self._copies.settle(
                intent.cloid, Settlement(status="unknown", settled_ms=now, error=error)
            )
        except StoreError as exc:
            log.warning("executor: cannot mark unknown", cloid=intent.cloid, error=str(exc))

    def own_fills(self, message: UserFills) -> None:
        """Our own fills (the follower's userFills): each fill (by tid) once. A fill of an
        order already booked from its reply is a duplicate (by cloid or oid) and is dropped;
        a fill of an order in flight is kept for its settlement (exact size, price and fee);
        anything else is not ours to book (an order placed outside hlcopy, or history): the
        exchange's positions carry it. A snapshot is history, never booked."""
        for f in message.fills:
            if f.tid is not None:
                if f.tid in self._own_tids:
                    self.counters["own_fills_deduped"] += 1
                    continue
                self._own_tids.add(f.tid)
                self._own_tid_order.append(f.tid)
                if len(self._own_tid_order) > self._own_kept:
                    self._own_tids.discard(self._own_tid_order.popleft())
            if message.is_snapshot:
                continue
            self.counters["own_fills"] += 1
            cloid = None if f.cloid is None else f.cloid.lower()
            if (cloid is not None and cloid in self._booked_cloids) or (
                f.oid is not None and f.oid in self._booked_oids
            ):
                self.counters["own_fills_deduped"] += 1
            elif cloid is not None and cloid in self._in_flight:
                stash = self._own_stash.setdefault(cloid, {})
                stash[f.tid if f.tid is not None else -len(stash) - 1] = f
            else:
                self.counters["own_fills_foreign"] += 1
                self.activity[f.coin] += 1
                self.foreign.append(f)

    def stashed_fills(self, cloid: str) -> list[Fill]:
        """Our own fills of ``cloid`` seen on the stream while it was in flight."""
        return list(self._own_stash.get(cloid, {}).values())

    def _remember_booked(self, cloid: str, oid: int | None) -> None:
        self._booked_cloids.add(cloid)
        if oid is not None:
            self._booked_oids.add(oid)
        self._booked_order.append((cloid, oid))
        if len(self._booked_order) > self._own_kept:
            old_cloid, old_oid = self._booked_order.popleft()
            self._booked_cloids.discard(old_cloid)
            if old_oid is not None:
                self._booked_oids.discard(old_oid)

    async def book(self, coin: str) -> L2Book:
        """The coin's book now (the paper venue fills against it)."""
        return await self._book(coin)

    async def _on_duplicate(self, intent: OrderIntent, stored: StoredOutcome) -> None:
        """The cloid was written before: never run it again. A settled one is reported as it
        was; one still open belongs to another task, which reports it."""
        if stored.status in ("planned", "sending", "unknown"):
            return  # still being settled (live: by cloid)
        outcome = OrderOutcome(
            intent.cloid,
            _STORED_STATUS.get(stored.status, "unknown"),
            stored.filled_sz,
            stored.avg_px,
            stored.fee,
            error=stored.error,
            time_ms=stored.settled_ms or 0,
        )
        self._in_flight.pop(intent.cloid, None)
        self._triggers.pop(intent.cloid, None)
        await self._put_outcome(outcome)

    async def _finish(
        self,
        intent: OrderIntent,
        outcome: OrderOutcome,
        row: CopyRow | None = None,
        settlement: Settlement | None = None,
    ) -> None:
        self._in_flight.pop(intent.cloid, None)
        self._triggers.pop(intent.cloid, None)
        if row is not None:
            self._publish(_event_data(row, settlement, outcome), intent.leader, outcome.time_ms)
        await self._put_outcome(outcome)

    async def _put_outcome(self, outcome: OrderOutcome) -> None:
        if not self._outcomes.offer(outcome):
            await self._outcomes.put(outcome)

    def _publish(self, data: dict[str, Any], leader: str | None, now_ms: int) -> None:
        self._figures.count(data)
        if self._bus is not None:
            self._bus.publish(Event("copy", data, now_ms or self._clock.time_ms(), leader))

    # -- books and mids ----------------------------------------------------------------------

    async def _subscribe_book(self, coin: str) -> None:
        if self._stream is None or coin in self._book_subs:
            return
        try:
            self._book_subs[coin] = await self._stream.l2_book(coin, _BookSink(self._latest))
        except (StreamError, ExchangeError) as exc:
            log.warning("executor: no l2Book subscription", coin=coin, error=str(exc))

    @property
    def mids_sink(self) -> Sink[AllMids]:
        """Where another holder of the allMids feed hands its updates (``subscribe_mids``
        False): the stream allows one subscription per feed."""
        return _MidsSink(self._latest)

    async def _subscribe_mids(self) -> None:
        if self._stream is None or self._mids_sub is not None or not self._own_mids:
            return
        try:
            self._mids_sub = await self._stream.all_mids(_MidsSink(self._latest), wait=False)
        except (StreamError, ExchangeError) as exc:
            log.warning("executor: no allMids subscription", error=str(exc))

    def _fresh_book(self, coin: str) -> L2Book | None:
        entry = self._latest.books.get(coin)
        if entry is None:
            return None
        book, at = entry
        if self._clock.monotonic() - at > self._book_max_age_s:
            return None
        return book

    async def _book(self, coin: str) -> L2Book:
        """The coin's book now: the stream's latest if fresh, else one REST read."""
        book = self._fresh_book(coin)
        if book is not None:
            return book
        if self._stream is not None and coin not in self._book_subs:
            waiter = self._latest.waiter(coin)
            waiter.clear()
            await self._subscribe_book(coin)
            if coin in self._book_subs:
                with contextlib.suppress(TimeoutError):
                    async with self._clock.timeout(self._book_wait_s):
                        await waiter.wait()
                book = self._fresh_book(coin)
                if book is not None:
                    return book
        if self._info is None:
            raise NoMarketData(f"no fresh book for {coin} and no REST client")
        self.counters["book_rest"] += 1
        book = await self._info.l2_book(coin, lane=Lane.ORDER)
        self._latest.books[coin] = (book, self._clock.monotonic())
        return book

    # -- funding ----------------------------------------------------------------------------

    async def _funding_loop(self) -> None:
        while not self._stopping.is_set():
            now = self._clock.time_ms()
            due = now // HOUR_MS * HOUR_MS
            if self._funded_hour_ms is None or self._funded_hour_ms < due:
                try:
                    await self.fund(due)
                except (ExchangeError, StoreError) as exc:
                    self.counters["funding_errors"] += 1
                    log.warning("executor: funding not booked; retrying", error=str(exc))
                    await sleep_unless(self._clock, self._stopping, self._funding_retry_s)
                    continue
            wait_s = (due + HOUR_MS - self._clock.time_ms()) / 1000
            await sleep_unless(self._clock, self._stopping, max(wait_s, 0.001))

    async def fund(self, hour_ms: int) -> list[FundingRow]:
        """Book the funding of the hour that ends at ``hour_ms`` (and of hours missed before
        it) on every open paper position."""
        if self._funded_hour_ms is not None and self._funded_hour_ms >= hour_ms:
            return []
        # The rates are read before taking the lock: fills wait for no REST call.
        held = sorted(self._account.positions)
        ctxs = await self._funding_ctxs(held) if held else {}
        async with self._account_lock:
            last = self._funded_hour_ms
            if last is not None and last >= hour_ms:
                return []
            hours = 1 if last is None else min((hour_ms - last) // HOUR_MS, MAX_CATCH_UP_HOURS)
            account = self._account
            rows: list[FundingRow] = []
            if account.positions:
                for coin in sorted(account.positions):
                    ctx = ctxs.get(coin)
                    if ctx is None:
                        log.warning("executor: no funding rate for a paper position", coin=coin)
                        continue
                    rate, px = ctx
                    szi = account.position(coin)
                    account, paid = account.apply_funding(coin, px, rate * hours)
                    rows.append(FundingRow(hour_ms, coin, szi, px, rate, hours, paid))
            now = self._clock.time_ms()
            await self._copies.book_funding(rows, account.to_dict(), self._attributed, hour_ms, now)
            self._account = account
            self._funded_hour_ms = hour_ms
            for r in rows:
                self.ledger.fund(FundingRecord(r.hour_ms, r.coin, r.px, r.rate, r.hours))
            self.counters["funding_hours"] += 1
        if rows:
            log.info(
                "executor: paper funding booked",
                hour_ms=hour_ms,
                hours=hours,
                usdc=str(sum((r.usdc for r in rows), ZERO)),
            )
        return rows

    async def _funding_ctxs(self, coins: Sequence[str]) -> dict[str, tuple[Decimal, Decimal]]:
        """(rate, oracle price) per coin from metaAndAssetCtxs, one request per dex."""
        if self._info is None:
            raise NoMarketData("no REST client for funding rates")
        dexes = sorted({coin.split(":", 1)[0] if ":" in coin else "" for coin in coins})
        out: dict[str, tuple[Decimal, Decimal]] = {}
        for dex in dexes:
            meta, ctxs = await self._info.meta_and_asset_ctxs(dex, lane=Lane.FOLLOWER)
            for asset, ctx in zip(meta.universe, ctxs, strict=False):
                px = ctx.oracle_px or ctx.mark_px
                if ctx.funding is not None and px is not None:
                    out[asset.name] = (ctx.funding, px)
        return out

    # -- skips -----------------------------------------------------------------------------

    async def _skip_writer(self) -> None:
        while True:
            if not self._skips:
                if self._stopping.is_set():
                    return
                self._skips_waiting.clear()
                stop = asyncio.ensure_future(self._stopping.wait())
                wake = asyncio.ensure_future(self._skips_waiting.wait())
                try:
                    await asyncio.wait((stop, wake), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (stop, wake):
                        task.cancel()
                    await asyncio.gather(stop, wake, return_exceptions=True)
                continue
            try:
                await self.flush_skips()
            except StoreError as exc:
                self.counters["skip_write_errors"] += 1
                log.warning("executor: skips not written", rows=len(self._skips), error=str(exc))
                if self._stopping.is_set():
                    return
                await sleep_unless(self._clock, self._stopping, 1.0)

    async def flush_skips(self) -> None:
        """Write the skips recorded so far now (the writer's batch; tests). On a failure they
        stay buffered, in order, for the next try."""
        async with self._skip_lock:
            batch = list(self._skips)
            self._skips.clear()
            try:
                await self._copies.write_skips(batch)
                self.counters["skips_written"] += len(batch)
            except BaseException:
                # Back to the front, ahead of anything recorded meanwhile (the bound holds).
                room = max(self._skip_buffer - len(self._skips), 0)
                self._skips.extendleft(reversed(batch[-room:] if room else []))
                self.counters["skips_dropped"] += len(batch) - min(room, len(batch))
                raise

    # -- figures ----------------------------------------------------------------------------

    def metric_families(self) -> list[MetricFamily]:
        return self._figures.families()

    def stats(self) -> dict[str, Any]:
        account = self._account
        return {
            **self.counters,
            "in_flight": len(self._in_flight),
            "rejections": dict(self.rejections.most_common(10)),
            "intents_waiting": len(self._waiting),
            "skips_buffered": len(self._skips),
            "books": len(self._book_subs),
            "latency_ms": self.latency_ms,
            "venue": self._venue.stats(),
            "taker_fee_rate": str(self.taker_fee_rate),
            "queue": self._intents.stats(),
            "account": {
                "cash": str(account.cash),
                "realized_pnl": str(account.realized_pnl),
                "fees": str(account.fees),
                "funding": str(account.funding),
                "positions": {c: str(p.szi) for c, p in account.positions.items()},
            },
        }


class CopyFigures:
    """Per-follow copy figures for /metrics, counted from the ``copy`` events: orders by
    final status, skips by reason, and the sums behind mean slippage and decision delay."""

    FINAL = frozenset({"filled", "partial", "rejected", "unknown", "never_arrived"})

    def __init__(self) -> None:
        self.orders: Counter[tuple[str, str]] = Counter()
        self.skips: Counter[tuple[str, str]] = Counter()
        self.slippage: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.delay: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def count(self, data: Mapping[str, Any]) -> None:
        status = str(data.get("status"))
        follows = [str(f) for f in data.get("follows") or ()]
        for follow in follows:
            if status == "skipped":
                self.skips[follow, str(data.get("skip_reason"))] += 1
                continue
            if status not in self.FINAL:
                continue
            self.orders[follow, status] += 1
            if data.get("slippage_bps") is not None:
                total = self.slippage[follow]
                total[0] += float(data["slippage_bps"])
                total[1] += 1
            leader_ms, decided_ms = data.get("leader_time_ms"), data.get("decided_ms")
            if leader_ms is not None and decided_ms is not None:
                total = self.delay[follow]
                total[0] += max(0, int(decided_ms) - int(leader_ms))
                total[1] += 1

    def families(self) -> list[MetricFamily]:
        def mean(sums: Mapping[str, list[float]]) -> list[tuple[dict[str, str], float]]:
            return [({"follow": f}, t / n) for f, (t, n) in sums.items() if n]

        return [
            MetricFamily(
                "hlcopy_copy_orders",
                "counter",
                "copy orders by final status",
                [({"follow": f, "status": s}, float(n)) for (f, s), n in self.orders.items()],
            ),
            MetricFamily(
                "hlcopy_copy_skips",
                "counter",
                "copies skipped, by reason",
                [({"follow": f, "reason": r}, float(n)) for (f, r), n in self.skips.items()],
            ),
            MetricFamily(
                "hlcopy_copy_slippage_bps_mean",
                "gauge",
                "mean slippage of filled copies against the leader's price (bps)",
                mean(self.slippage),
            ),
            MetricFamily(
                "hlcopy_copy_decision_delay_ms_mean",
                "gauge",
                "mean time from the leader's fill to our decision (ms)",
                mean(self.delay),
            ),
        ]


def _leader_fields(fill: LeaderFill | None, decided_ms: int | None) -> dict[str, Any]:
    if fill is None:
        return {}
    return {
        "leader_tid": fill.tid,
        "leader_side": fill.side,
        "leader_px": fill.px,
        "leader_sz": fill.sz,
        "leader_time_ms": fill.time_ms,
        "decision_delay_ms": None if decided_ms is None else decided_ms - fill.time_ms,
    }


def _with_intent_fields(
    intent: OrderIntent,
    trigger: LeaderFill | None,
    now_ms: int = 0,
    *,
    paper: bool = True,
    sent: tuple[int, int | None] | None = None,
) -> CopyRow:
    """The copy row of an intent as it is planned (decided now when it does not say when), or,
    with ``sent`` (sent ms, send delay), as it is sent."""
    return CopyRow(
        status="planned" if sent is None else "sending",
        paper=paper,
        attribution=intent.attribution,
        coin=intent.coin,
        decided_ms=intent.decided_ms or now_ms,
        cloid=intent.cloid,
        leader=intent.leader,
        is_buy=intent.is_buy,
        sz=intent.sz,
        limit_px=intent.limit_px,
        reduce_only=intent.reduce_only,
        reason=intent.reason,
        attempt=intent.attempt,
        sent_ms=None if sent is None else sent[0],
        send_delay_ms=None if sent is None else sent[1],
        **_leader_fields(trigger, intent.decided_ms or None),
    )


def _event_data(
    row: CopyRow, settlement: Settlement | None, outcome: OrderOutcome | None
) -> dict[str, Any]:
    """The ``copy`` event: the copy as the API shows it, in short."""
    status = row.status if outcome is None else outcome.status
    return {
        "cloid": row.cloid,
        "status": status,
        "paper": row.paper,
        "follows": row.follow_ids,
        "leader": row.leader,
        "coin": row.coin,
        "side": None if row.is_buy is None else ("B" if row.is_buy else "A"),
        "sz": None if row.sz is None else str(row.sz),
        "limit_px": None if row.limit_px is None else str(row.limit_px),
        "reduce_only": row.reduce_only,
        "reason": row.reason,
        "skip_reason": row.skip_reason,
        "leader_px": None if row.leader_px is None else str(row.leader_px),
        "leader_time_ms": row.leader_time_ms,
        "decided_ms": row.decided_ms,
        "filled_sz": None if outcome is None else str(outcome.filled_sz),
        "avg_px": None if outcome is None or outcome.avg_px is None else str(outcome.avg_px),
        "fee": None if outcome is None else str(outcome.fee),
        "slippage_bps": None
        if settlement is None or settlement.slippage_bps is None
        else str(settlement.slippage_bps),
        "error": None if outcome is None else outcome.error,
    }


#: The executor shell; ``PaperExecutor`` is its historical name (paper is the default venue).
Executor = PaperExecutor
