"""Discovery: every address that trades, from the public ``trades`` stream, at zero REST weight.

One ``trades`` subscription per watched coin (every listed perp of the first dex; builder dexes
and spot pairs when configured; or exactly ``[discovery] coins``), kept in step with the
universe as it refreshes: new listings are subscribed, delisted coins dropped. Each trade names
both parties; each party is registered in the in-memory ``Registry`` (first and last seen, trade
count, notional volume, coins, taker and maker counts) and the changes are written to
PostgreSQL in batches, coalesced per address, by one writer task. The stream is never held up by
the database: the queue of changed addresses is capped at ``queue_size`` and drops its oldest
entries past that (counted); a dropped address is written again by a sweep once the database
is back, so an outage delays the table but loses nothing that is still in memory.

**Leader fast path.** ``watch(addresses)`` names the followed leaders; a trade naming one becomes
a ``LeaderFill(source="firehose")`` handed to the leader-fills sink at once, before the frame is
even registered. The sink's own policy holds (leader fills are never dropped): when it is full,
fills wait in order and only this consumer waits with them, never the stream reader.

**Who is who in ``users``.** The docs say a trade's ``users`` is [buyer, seller]; one SDK reads
[maker, taker]. The two readings differ only when the aggressor buys (``side == "B"``): then the
first address is the buyer-taker under one and the seller-maker under the other. At start-up one
``userFillsByTime`` lookup of the first address of such a trade settles it (its fill with the
trade's tid says its side and whether it crossed); the answer is kept in the kv table
(``trades.users_order``) for later starts. Until it is known, fills from the stream are
``confirmed=False`` hints and the docs' reading is assumed for taker/maker counts.
"""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal, get_args

import structlog

from hlcopy.backoff import backoff_delay
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import DiscoveryConfig, HlcopyConfig
from hlcopy.errors import ExchangeError, StoreError, StoreUnavailable, StreamError, WireError
from hlcopy.hl import InfoClient, StreamPool, Subscription, Universe, UniverseService
from hlcopy.model import Fill, LeaderFill, Side, Trade, Trades
from hlcopy.queues import BoundedQueue, QueueClosed, Sink
from hlcopy.store import Store
from hlcopy.store.registry import COIN_SEPARATOR, ActivityRow, LoadedRow, RegistryStore

log = structlog.get_logger()

BATCH_FRAMES = 128  # frames ingested between two turns of the event loop

UsersOrder = Literal["buyer_seller", "maker_taker"]
USERS_ORDERS: tuple[UsersOrder, ...] = get_args(UsersOrder)
KV_USERS_ORDER = "trades.users_order"
_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
_OTHER: dict[str, Side] = {"B": "A", "A": "B"}

# Where an address stands with the database writer (Activity._state).
_CLEAN, _PENDING, _DROPPED = 0, 1, 2
# Activity._counts: takers in the low bits, makers above (a trillion takers before they meet).
_MAKER_SHIFT = 40
_MAKER = 1 << _MAKER_SHIFT
_TAKERS = _MAKER - 1


class _CoinTable:
    """Coin names as bits: an address's coins are one int, whatever the number of markets."""

    __slots__ = ("_joined", "_names_of", "bits", "names")

    def __init__(self) -> None:
        self.bits: dict[str, int] = {}
        self.names: list[str] = []
        # Few distinct sets occur (most addresses trade a handful of big coins): each is
        # decoded once. Bounded: a pathological mix only costs speed.
        self._names_of: dict[int, list[str]] = {}
        self._joined: dict[int, str] = {}

    def bit(self, coin: str) -> int:
        bit = self.bits.get(coin)
        if bit is None:
            bit = self.bits[coin] = 1 << len(self.names)
            self.names.append(coin)
        return bit

    def mask(self, coins: Iterable[str]) -> int:
        mask = 0
        for coin in coins:
            mask |= self.bit(coin)
        return mask

    def decode(self, mask: int) -> list[str]:
        """The coins of ``mask``, in the order they were first seen (the list is shared)."""
        names = self._names_of.get(mask)
        if names is None:
            if len(self._names_of) >= 65_536:
                self._names_of.clear()
            names = [n for i, n in enumerate(self.names) if mask >> i & 1]
            self._names_of[mask] = names
        return names

    def joined(self, mask: int) -> str:
        """The coins of ``mask`` as the registry's writes send them."""
        text = self._joined.get(mask)
        if text is None:
            if len(self._joined) >= 65_536:
                self._joined.clear()
            text = self._joined[mask] = COIN_SEPARATOR.join(self.decode(mask))
        return text


class Activity:
    """What the trade stream says about one address. Live: the registry updates it in place.

    Compact for 100,000+ addresses: slotted; the coins are a bit set over the registry's coin
    table (``coins`` decodes it); taker and maker counts share one int (each trade an address
    is in, it either took or made, so ``trades`` is their sum); the volume is the exact
    Decimal sum of px x sz.
    """

    __slots__ = (
        "_coins",
        "_counts",
        "_state",
        "_table",
        "address",
        "first_seen_ms",
        "last_seen_ms",
        "volume_usd",
    )

    def __init__(
        self,
        table: _CoinTable,
        address: str,
        first_seen_ms: int,
        last_seen_ms: int,
        volume_usd: Decimal,
        taker: int,
        maker: int,
        coins: int,
    ) -> None:
        self._table = table
        self.address = address
        self.first_seen_ms = first_seen_ms
        self.last_seen_ms = last_seen_ms
        self.volume_usd = volume_usd
        self._counts = taker + maker * _MAKER
        self._coins = coins
        self._state = _CLEAN

    @property
    def taker(self) -> int:
        """Trades in which the address crossed the book."""
        return self._counts & _TAKERS

    @property
    def maker(self) -> int:
        """Trades in which the address's resting order was hit."""
        return self._counts >> _MAKER_SHIFT

    @property
    def trades(self) -> int:
        counts = self._counts
        return (counts & _TAKERS) + (counts >> _MAKER_SHIFT)

    @property
    def coins(self) -> tuple[str, ...]:
        """The coins the address traded, in the order discovery first saw each coin."""
        return tuple(self._table.decode(self._coins))

    def row(self) -> ActivityRow:
        """The figures as a write sends them."""
        counts = self._counts
        taker, maker = counts & _TAKERS, counts >> _MAKER_SHIFT
        return (
            self.address,
            self.first_seen_ms,
            self.last_seen_ms,
            taker + maker,
            str(self.volume_usd),
            taker,
            maker,
            self._table.joined(self._coins),
        )

    def __repr__(self) -> str:
        return (
            f"Activity({self.address}, trades={self.trades}, taker={self.taker}, "
            f"maker={self.maker}, volume_usd={self.volume_usd}, coins={self.coins})"
        )


# Stands in for what a trade names that is not an address: never registered, never queued.
_IGNORED = Activity(_CoinTable(), "", 0, 0, Decimal(0), 0, 0, 0)
_IGNORED._state = _PENDING


class Registry:
    """Every address seen, in memory, and the queue of those changed since they were written.

    Pure: no I/O and no clock. ``record`` is the hot path (one call per frame of trades);
    readers use ``get``, ``len``, iteration and ``search``.
    """

    def __init__(self, queue_size: int = 100_000) -> None:
        self.queue_size = queue_size
        self._by: dict[str, Activity] = {}
        self._coins = _CoinTable()
        self._sorted: list[str] = []  # addresses in order, for search; new ones wait in _unsorted
        self._unsorted: list[str] = []
        self._pending: deque[Activity] = deque()
        self._dropped: set[Activity] = set()  # dropped from the queue, not written since
        self.dropped = 0  # changes dropped from the queue (each later swept back in)
        self.swept = 0
        self.invalid = 0  # trades naming something that is not an address
        self.trades = 0

    # -- readers --------------------------------------------------------------------------

    def get(self, address: str) -> Activity | None:
        return self._by.get(address)

    def __len__(self) -> int:
        return len(self._by)

    def __contains__(self, address: object) -> bool:
        return address in self._by

    def __iter__(self) -> Iterator[Activity]:
        """A snapshot: the registry may grow while the caller iterates and awaits."""
        return iter(list(self._by.values()))

    def search(self, prefix: str, limit: int, offset: int) -> tuple[int, list[Activity]]:
        """(how many addresses start with ``prefix``, the page [offset, offset + limit) of them
        in address order). ``prefix`` is a lowercase ``0x…`` prefix; "" matches every address."""
        if self._unsorted:
            # Timsort merges the sorted run with the sorted newcomers in linear time.
            self._unsorted.sort()
            self._sorted += self._unsorted
            self._unsorted.clear()
            self._sorted.sort()
        ordered = self._sorted
        lo = bisect_left(ordered, prefix)
        hi = bisect_left(ordered, prefix + "\U0010ffff", lo) if prefix else len(ordered)
        start = lo + max(0, offset)
        by = self._by
        return hi - lo, [by[a] for a in ordered[start : min(hi, start + max(0, limit))]]

    @property
    def coins(self) -> list[str]:
        """Every coin seen, in order of first sight."""
        return list(self._coins.names)

    # -- the hot path ---------------------------------------------------------------------

    def record(self, trades: Sequence[Trade], maker_taker: bool = False) -> None:
        """Register both parties of each trade.

        ``maker_taker``: read ``users`` as [maker, taker] instead of the docs' [buyer, seller].
        Everything is hoisted into locals and inlined for both parties: this runs for every
        trade on the exchange.
        """
        by = self._by
        table = self._coins
        bits = table.bits
        pending = self._pending
        append = pending.append
        last_coin = None
        bit = 0
        for t in trades:
            users = t.users
            if users is None:
                continue
            coin = t.coin
            if coin != last_coin:
                last_coin = coin
                bit = bits.get(coin) or table.bit(coin)
            u0, u1 = users
            if maker_taker or t.side == "A":
                taker, maker = u1, u0
            else:
                taker, maker = u0, u1
            ms = t.time_ms
            notional = t.px * t.sz
            # the taker
            a = by.get(taker)
            if a is None:
                a = self._new(taker, ms, notional, 1, 0, bit)
            else:
                a._counts += 1
                a.volume_usd += notional
                if ms > a.last_seen_ms:
                    a.last_seen_ms = ms
                elif ms < a.first_seen_ms:
                    a.first_seen_ms = ms
                if not a._coins & bit:
                    a._coins |= bit
            if a._state != _PENDING:
                if a._state == _DROPPED:
                    self._dropped.discard(a)
                a._state = _PENDING
                append(a)
            # the maker
            a = by.get(maker)
            if a is None:
                a = self._new(maker, ms, notional, 0, 1, bit)
            else:
                a._counts += _MAKER
                a.volume_usd += notional
                if ms > a.last_seen_ms:
                    a.last_seen_ms = ms
                elif ms < a.first_seen_ms:
                    a.first_seen_ms = ms
                if not a._coins & bit:
                    a._coins |= bit
            if a._state != _PENDING:
                if a._state == _DROPPED:
                    self._dropped.discard(a)
                a._state = _PENDING
                append(a)
        self.trades += len(trades)
        if len(pending) > self.queue_size:
            self._drop(len(pending) - self.queue_size)

    def _new(
        self, address: str, ms: int, notional: Decimal, taker: int, maker: int, bit: int
    ) -> Activity:
        """A first sighting, queued for writing; ``_IGNORED`` for what is not an address."""
        if _ADDRESS.fullmatch(address) is None:
            self.invalid += 1
            return _IGNORED
        a = Activity(self._coins, address, ms, ms, notional, taker, maker, bit)
        self._by[address] = a
        self._unsorted.append(address)
        return a

    # -- the writer's side ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Addresses changed and queued for writing."""
        return len(self._pending)

    @property
    def stale(self) -> int:
        """Addresses changed, dropped from the queue and not yet swept back in."""
        return len(self._dropped)

    def _drop(self, n: int) -> None:
        popleft = self._pending.popleft
        dropped = self._dropped
        for _ in range(n):
            a = popleft()
            a._state = _DROPPED
            dropped.add(a)
        self.dropped += n

    def take(self, n: int) -> tuple[list[Activity], list[ActivityRow]]:
        """Up to ``n`` queued addresses, oldest first, and their figures as of now.

        They count as written from here on: a change after this queues them again."""
        popleft = self._pending.popleft
        joined = self._coins.joined
        taken = []
        rows = []
        for _ in range(min(n, len(self._pending))):
            a = popleft()
            a._state = _CLEAN
            taken.append(a)
            counts = a._counts
            taker, maker = counts & _TAKERS, counts >> _MAKER_SHIFT
            rows.append(
                (
                    a.address,
                    a.first_seen_ms,
                    a.last_seen_ms,
                    taker + maker,
                    str(a.volume_usd),
                    taker,
                    maker,
                    joined(a._coins),
                )
            )
        return taken, rows

    def requeue(self, taken: Sequence[Activity]) -> None:
        """Put back what a failed write took, at the front (it is the oldest); past the cap the
        oldest are dropped, as for any change."""
        pending = self._pending
        for a in reversed(taken):
            if a._state == _CLEAN:
                a._state = _PENDING
                pending.appendleft(a)
        if len(pending) > self.queue_size:
            self._drop(len(pending) - self.queue_size)

    def sweep(self) -> int:
        """Queue again, within the cap, addresses whose change was dropped; how many."""
        room = self.queue_size - len(self._pending)
        n = 0
        dropped = self._dropped
        while dropped and n < room:
            a = dropped.pop()
            a._state = _PENDING
            self._pending.append(a)
            n += 1
        self.swept += n
        return n

    def merge(self, rows: Iterable[LoadedRow]) -> None:
        """Add what the database knew. An address already seen since start-up has only been
        counted in memory (nothing is written before the load completes): the figures add up
        and the sum is queued for writing. The stored trade count is taker + maker, as this
        registry writes it."""
        by = self._by
        table = self._coins
        for address, first, last, _, volume, taker, maker, coins in rows:
            a = by.get(address)
            if a is None:
                by[address] = Activity(
                    table, address, first, last, volume, taker, maker, table.mask(coins)
                )
                self._unsorted.append(address)
                continue
            a.first_seen_ms = min(a.first_seen_ms, first)
            a.last_seen_ms = max(a.last_seen_ms, last)
            a.volume_usd += volume
            a._counts += taker + maker * _MAKER
            a._coins |= table.mask(coins)
            if a._state != _PENDING:
                self._dropped.discard(a)
                a._state = _PENDING
                self._pending.append(a)


def party_sides(aggressor: Side, order: UsersOrder | None) -> tuple[Side, Side]:
    """The sides of ``users[0]`` and ``users[1]`` of a trade whose aggressor took ``aggressor``,
    under ``order`` (the docs' [buyer, seller] until calibrated)."""
    if order == "maker_taker":
        return _OTHER[aggressor], aggressor
    return "B", "A"


def users_order_from(trade: Trade, user: str, fills: Iterable[Fill]) -> UsersOrder | None:
    """Which reading of ``trade.users`` the fills of ``user`` (one of the two) bear out.

    Under [buyer, seller] the first address bought; under [maker, taker] it made the book. The
    two agree whenever the aggressor sells, so only a trade with ``side == "B"`` can tell them
    apart. None when the fill is missing or fits neither reading.
    """
    if trade.users is None or user not in trade.users or trade.users[0] == trade.users[1]:
        return None
    i = trade.users.index(user)
    buyer_seller: tuple[Side, bool] = (
        ("B", trade.side == "B") if i == 0 else ("A", trade.side == "A")
    )
    maker_taker: tuple[Side, bool] = (_OTHER[trade.side], False) if i == 0 else (trade.side, True)
    if buyer_seller == maker_taker:
        return None
    for f in fills:
        if f.tid != trade.tid or f.coin != trade.coin:
            continue
        # Where the readings differ they differ in side; ``crossed`` (absent on old records)
        # must agree as well.
        if f.side == buyer_seller[0] and f.crossed in (None, buyer_seller[1]):
            return "buyer_seller"
        if f.side == maker_taker[0] and f.crossed in (None, maker_taker[1]):
            return "maker_taker"
        return None
    return None


class _RateMeter:
    """Events per second over the last ``span_s`` whole seconds."""

    __slots__ = ("_buckets", "_seconds", "_span")

    def __init__(self, span_s: int = 10) -> None:
        self._span = span_s
        self._buckets = [0] * span_s
        self._seconds = [-1] * span_s

    def add(self, now_s: int, n: int) -> None:
        i = now_s % self._span
        if self._seconds[i] != now_s:
            self._seconds[i] = now_s
            self._buckets[i] = 0
        self._buckets[i] += n

    def rate(self, now_s: int) -> float:
        total = sum(
            b
            for b, s in zip(self._buckets, self._seconds, strict=True)
            if now_s - self._span < s < now_s
        )
        return total / (self._span - 1)


class Discovery(Component):
    """The trades firehose to the registry, the database and the leader fast path. See the
    module docstring."""

    name = "discovery"

    def __init__(
        self,
        stream: StreamPool,
        universe: UniverseService,
        info: InfoClient,
        store: Store,
        config: DiscoveryConfig,
        leader_fills: Sink[LeaderFill] | None = None,
        clock: Clock = SYSTEM,
        *,
        frames_size: int = 10_000,
        resync_s: float = 10.0,
        load_page: int = 10_000,
        calibration_delay_s: float = 2.0,
        calibration_attempts: int = 3,
        retry_cap_s: float = 30.0,
    ) -> None:
        self._stream = stream
        self._universe = universe
        self._info = info
        self._db = RegistryStore(store)
        self._cfg = config
        self._sink = leader_fills
        self._clock = clock
        self._resync_s = resync_s
        self._load_page = load_page
        self._calibration_delay_s = calibration_delay_s
        self._calibration_attempts = calibration_attempts
        self._retry_cap_s = retry_cap_s
        self.registry = Registry(config.queue_size)
        # The stream pool's reader hands frames over here and never waits: under overload the
        # oldest frames go (counted in this queue's figures).
        self.frames = BoundedQueue[Trades]("discovery_trades", frames_size, "drop_oldest")
        self._watched: frozenset[str] = frozenset()
        self._overflow: deque[LeaderFill] = deque()  # fills the sink had no room for yet
        self._order: UsersOrder | None = None
        self._calibration = "pending"
        self._probe: asyncio.Future[Trade] | None = None
        self._subs: dict[str, Subscription[Trades]] = {}
        self._synced: Universe | None = None
        self._sync_needed = True
        self._dexes: list[str] = []  # builder dexes and spot pairs, as last listed
        self._spot: list[str] = []
        self._loaded = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._writing = asyncio.Lock()  # one writer at a time: batches never overlap
        self._draining = asyncio.Event()
        self._meter = _RateMeter()
        self.counters = {
            "frames": 0,
            "leader_fills": 0,
            "leader_fills_waited": 0,  # the sink was full: handed over once it had room
            "leader_fills_lost": 0,
            "persisted": 0,
            "flushes": 0,
            "write_failures": 0,
            "write_errors": 0,
            "subscribe_failures": 0,
            "calibration_lookups": 0,
        }

    # -- what others call -----------------------------------------------------------------

    def watch(self, leaders: Iterable[str]) -> None:
        """Follow exactly ``leaders`` on the stream (replacing the previous set)."""
        self._watched = frozenset(a.lower() for a in leaders)

    @property
    def watched(self) -> frozenset[str]:
        return self._watched

    @property
    def users_order(self) -> UsersOrder | None:
        """How a trade's ``users`` pair reads, once calibrated (or recorded by an earlier run)."""
        return self._order

    @property
    def loaded(self) -> bool:
        """Whether the registry holds what the database knew at start."""
        return self._loaded.is_set()

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._cfg = config.discovery
        self.registry.queue_size = config.discovery.queue_size
        self._sync_needed = True

    # -- the component --------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._consume(), name="discovery:consume")]
            if not self._loaded.is_set():
                tasks.append(tg.create_task(self._load(), name="discovery:load"))
            tasks.append(tg.create_task(self._flush_loop(), name="discovery:flush"))
            if self._order is None:
                tasks.append(tg.create_task(self._calibrate(), name="discovery:calibrate"))
            await self._sync()
            tasks.append(tg.create_task(self._follow_universe(), name="discovery:universe"))
            await self._loaded.wait()
            ready.set()
            await self._draining.wait()
            for task in tasks:
                task.cancel()
        self._probe = None
        self._consume_queued()
        await self._final_flush()

    async def drain(self) -> None:
        self._draining.set()

    # -- frames ---------------------------------------------------------------------------

    async def _consume(self) -> None:
        frames = self.frames
        while True:
            try:
                batch = await frames.get_batch(BATCH_FRAMES)
            except QueueClosed:
                return
            for frame in batch:
                self._ingest(frame)
            if self._overflow:
                await self._hand_over()
            self._meter.add(int(self._clock.monotonic()), sum(len(f.trades) for f in batch))
            # A full queue hands over a batch without the loop turning: let a leader's fill
            # through to the copy engine between batches.
            await asyncio.sleep(0)

    def _consume_queued(self) -> None:
        for frame in self.frames.drain_nowait():
            self._ingest(frame)
        # The copy engine is stopping too (and reconciles with the exchange when it starts).
        self.counters["leader_fills_lost"] += len(self._overflow)
        self._overflow.clear()

    def _ingest(self, frame: Trades) -> None:
        """One frame: leaders first (latency), then the registry."""
        self.counters["frames"] += 1
        trades = frame.trades
        if self._watched and self._sink is not None:
            self._match(frame)
        self.registry.record(trades, self._order == "maker_taker")
        if self.registry.pending >= self._cfg.persist_batch_size:
            self._flush_now.set()
        probe = self._probe
        if probe is not None and not probe.done():
            for t in trades:
                if t.side == "B" and t.users is not None and t.users[0] != t.users[1]:
                    probe.set_result(t)
                    break

    def _match(self, frame: Trades) -> None:
        watched = self._watched
        order = self._order
        confirmed = order is not None
        for t in frame.trades:
            users = t.users
            if users is None:
                continue
            u0, u1 = users
            if u0 in watched or u1 in watched:
                s0, s1 = party_sides(t.side, order)
                if u0 in watched:
                    self._emit(t, u0, s0, confirmed, frame)
                if u1 in watched:
                    self._emit(t, u1, s1, confirmed, frame)

    def _emit(self, t: Trade, leader: str, side: Side, confirmed: bool, frame: Trades) -> None:
        fill = LeaderFill(
            leader,
            t.coin,
            side,
            t.sz,
            t.px,
            t.time_ms,
            t.tid,
            "firehose",
            None,
            confirmed,
            frame.recv_ns,
        )
        self.counters["leader_fills"] += 1
        assert self._sink is not None
        try:
            if self._overflow or not self._sink.offer(fill):
                self._overflow.append(fill)  # in order, behind what is already waiting
                self.counters["leader_fills_waited"] += 1
        except QueueClosed:
            self.counters["leader_fills_lost"] += 1

    async def _hand_over(self) -> None:
        """Leader fills are never dropped: wait for room (this holds back only this consumer;
        the stream reader keeps handing frames to the drop-oldest frame queue)."""
        assert self._sink is not None
        while self._overflow:
            fill = self._overflow[0]
            try:
                await self._sink.put(fill)
            except QueueClosed:
                self.counters["leader_fills_lost"] += len(self._overflow)
                self._overflow.clear()
                return
            self._overflow.popleft()

    # -- subscriptions --------------------------------------------------------------------

    async def _follow_universe(self) -> None:
        while not await sleep_unless(self._clock, self._draining, self._resync_s):
            if self._sync_needed or self._universe.universe is not self._synced:
                await self._sync()

    async def _sync(self) -> None:
        """Subscribe to what should be watched and unsubscribe from what should not."""
        universe = self._universe.universe
        self._sync_needed = False
        wanted = await self._wanted(universe)
        for coin in sorted(set(self._subs) - set(wanted)):
            await self._stream.unsubscribe(self._subs.pop(coin))
            log.info("discovery: unsubscribed a coin no longer listed or wanted", coin=coin)
        todo = [c for c in wanted if c not in self._subs]
        # Within the pool's subscription limit, leaving the rest for later (and for the
        # userFills and book feeds of other components): first-dex perps come first.
        room = self._stream.max_subscriptions - int(self._stream.stats()["subscriptions"])
        if len(todo) > room:
            self._sync_needed = True
            log.warning(
                "discovery: at the subscription limit; some coins are not watched",
                not_watched=len(todo) - max(0, room),
                limit=self._stream.max_subscriptions,
            )
            todo = todo[: max(0, room)]
        async with asyncio.TaskGroup() as tg:
            for coin in todo:
                tg.create_task(self._subscribe(coin), name=f"discovery:subscribe:{coin}")
        self._synced = universe
        if todo:
            log.info(
                "discovery: subscribed",
                added=len([c for c in todo if c in self._subs]),
                subscriptions=len(self._subs),
            )

    async def _subscribe(self, coin: str) -> None:
        try:
            self._subs[coin] = await self._stream.trades(coin, self.frames)
        except (StreamError, ExchangeError) as exc:
            # Over the pool's limits, refused or not acknowledged: try again at the next sync.
            self.counters["subscribe_failures"] += 1
            self._sync_needed = True
            log.warning("discovery: cannot subscribe", coin=coin, error=str(exc))

    async def _wanted(self, universe: Universe) -> list[str]:
        """The coins to watch, most important first."""
        cfg = self._cfg
        if not cfg.enabled:
            return []
        if cfg.coins:
            unknown = sorted(c for c in cfg.coins if c not in universe)
            if unknown:
                log.warning("discovery: configured coins not listed", coins=unknown)
            return [
                c
                for c in dict.fromkeys(cfg.coins)
                if (a := universe.get(c)) is not None and not a.delisted
            ]
        wanted = [a.name for a in universe.perps()]
        # The universe lists assets by name only; which dexes and spot pairs there are comes
        # from the exchange (20 weight each, only when the universe changed). If that fails,
        # the last answer stands and the next check asks again.
        if cfg.builder_dexes:
            try:
                self._dexes = [d.name for d in await self._info.perp_dexs()]
            except ExchangeError as exc:
                self._sync_needed = True
                log.warning("discovery: cannot list the builder dexes", error=str(exc))
            for dex in self._dexes:
                wanted += [a.name for a in universe.perps(dex)]
        if cfg.spot:
            try:
                self._spot = [p.name for p in (await self._info.spot_meta()).universe]
            except ExchangeError as exc:
                self._sync_needed = True
                log.warning("discovery: cannot list the spot pairs", error=str(exc))
            wanted += [name for name in self._spot if name in universe]
        return list(dict.fromkeys(wanted))

    # -- the database ---------------------------------------------------------------------

    def _retry_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, 0.5, self._retry_cap_s)

    async def _load(self) -> None:
        """Page in the known addresses; the stream flows meanwhile, and nothing is written
        until this is done (what was seen meanwhile is added to what was loaded)."""
        after, attempt, loaded = "", 0, 0
        while True:
            try:
                page = await self._db.load_page(after, self._load_page)
            except StoreError as exc:
                delay = self._retry_delay(attempt)
                attempt += 1
                log.warning("discovery: cannot load the registry; retrying", error=str(exc))
                await self._clock.sleep(delay)
                continue
            attempt = 0
            self.registry.merge(page)
            loaded += len(page)
            if len(page) < self._load_page:
                break
            after = page[-1][0]
        self._loaded.set()
        log.info("discovery: registry loaded", addresses=loaded, known=len(self.registry))

    async def _flush_loop(self) -> None:
        await self._loaded.wait()
        failures = 0
        while True:
            await sleep_unless(self._clock, self._flush_now, self._cfg.flush_interval_ms / 1000)
            self._flush_now.clear()
            if await self._flush():
                failures = 0
                continue
            # The database is away or refusing: the queue holds (and caps) the changes.
            delay = self._retry_delay(failures)
            failures += 1
            await self._clock.sleep(delay)

    async def flush(self) -> bool:
        """Write every change made so far (after any write in progress); False when the
        database failed. The writer task does this on its own; this is for a caller that must
        know the table is up to date."""
        if not self._loaded.is_set():
            return False
        return await self._flush()

    async def _flush(self) -> bool:
        """Write everything queued, batch by batch; then what was dropped meanwhile. False when
        the database failed (the batch goes back to the front of the queue)."""
        async with self._writing:
            return await self._write_all()

    async def _write_all(self) -> bool:
        """Write the changes queued when called (and those dropped before), batch by batch. A
        change made while writing waits for the next flush: chasing the queue's tail wrote back
        to back under a busy firehose (about a hundred small transactions a second, where the
        interval means two), and each of their round trips woke PostgreSQL on the daemon's
        core."""
        reg = self.registry
        left = reg.pending
        while left > 0 or (reg.stale and (left := reg.sweep()) > 0):
            taken, rows = reg.take(min(left, self._cfg.persist_batch_size))
            if not taken:  # the queue overflowed meanwhile: dropped, swept back in later
                break
            left -= len(taken)
            try:
                await self._db.upsert(rows)
            except asyncio.CancelledError:
                # Stopped mid-write (the last flush at drain writes them; if this write did
                # commit, writing the same absolute figures again changes nothing).
                reg.requeue(taken)
                raise
            except StoreUnavailable as exc:
                reg.requeue(taken)
                self.counters["write_failures"] += 1
                if self.counters["write_failures"] % 100 == 1:
                    log.warning("discovery: database unavailable; changes wait", error=str(exc))
                return False
            except StoreError as exc:
                # Not transient: these rows would fail again. Their next change writes them.
                self.counters["write_errors"] += 1
                log.error("discovery: a registry batch was refused", error=str(exc))
                return False
            self.counters["persisted"] += len(rows)
            self.counters["flushes"] += 1
        return True

    async def _final_flush(self) -> None:
        if not self._loaded.is_set():
            return
        try:
            async with self._clock.timeout(5.0):
                await self._flush()
        except TimeoutError:
            log.warning("discovery: gave up the last write", pending=self.registry.pending)

    # -- calibration ----------------------------------------------------------------------

    async def _calibrate(self) -> None:
        # Catch a trade from the first frames on, while the stored answer is being read.
        self._probe = asyncio.get_running_loop().create_future() if self._cfg.calibrate else None
        try:
            stored = await self._db.kv_get(KV_USERS_ORDER)
        except StoreError as exc:
            stored = None
            log.warning("discovery: cannot read the users order; calibrating", error=str(exc))
        if stored in USERS_ORDERS:
            self._probe = None
            self._order = stored
            self._calibration = "stored"
            log.info("discovery: users order recorded earlier", users_order=stored)
            return
        if not self._cfg.calibrate:
            self._calibration = "off"
            return
        for _ in range(self._calibration_attempts):
            order = await self._probe_once()
            if order is not None:
                self._order = order
                self._calibration = "calibrated"
                log.info("discovery: calibrated the trades' users order", users_order=order)
                await self._remember(order)
                return
        self._calibration = "failed"
        log.warning(
            "discovery: could not calibrate the users order; stream fills stay unconfirmed",
            lookups=self.counters["calibration_lookups"],
        )

    async def _probe_once(self) -> UsersOrder | None:
        """One lookup of the first address of a trade in which the aggressor bought."""
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_future()
        try:
            trade = await self._probe
        finally:
            self._probe = None
        assert trade.users is not None
        if self._calibration_delay_s > 0:
            # The exchange may not serve a fill the instant its trade is streamed.
            await self._clock.sleep(self._calibration_delay_s)
        user = trade.users[0]
        self.counters["calibration_lookups"] += 1
        try:
            fills = await self._info.user_fills_by_time(
                user, trade.time_ms, trade.time_ms, max_pages=1
            )
        except (ExchangeError, WireError) as exc:
            log.warning("discovery: calibration lookup failed", error=str(exc))
            await self._clock.sleep(self._retry_delay(0))
            return None
        order = users_order_from(trade, user, fills)
        if order is None:
            log.info("discovery: calibration lookup inconclusive", tid=trade.tid, user=user)
        return order

    async def _remember(self, order: UsersOrder) -> None:
        attempt = 0
        while True:
            try:
                await self._db.kv_set(KV_USERS_ORDER, order)
                return
            except StoreError as exc:
                delay = self._retry_delay(attempt)
                attempt += 1
                log.warning("discovery: cannot record the users order; retrying", error=str(exc))
                await self._clock.sleep(delay)

    # -- figures --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        reg = self.registry
        return {
            "trades_per_s": round(self._meter.rate(int(self._clock.monotonic())), 1),
            "trades": reg.trades,
            "addresses": len(reg),
            "coins_seen": len(reg.coins),
            "subscriptions": len(self._subs),
            "loaded": self._loaded.is_set(),
            "pending": reg.pending,
            "dropped": reg.dropped,
            "stale": reg.stale,
            "swept": reg.swept,
            "invalid_addresses": reg.invalid,
            "frames_dropped": self.frames.dropped,
            "watched": len(self._watched),
            "users_order": self._order,
            "calibration": self._calibration,
            "calibrated": self._order is not None,
            **self.counters,
        }
