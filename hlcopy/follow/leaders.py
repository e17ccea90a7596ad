"""Leader books: where each followed leader stands, coin by coin, from every source at once.

Sources, all deduplicated by (leader, tid):

- ``userFills`` subscriptions for the highest-priority leaders (configured priority, then the
  leader's notional; at most ``tracking.user_fills_subscriptions``, fewer when other components
  hold WebSocket user slots). Their fills carry ``startPosition``, so a fill says exactly where
  the leader ends: ``start_position + delta``. The snapshot a (re)subscription replays is
  history: recorded, never a change.
- The trades firehose for every followed leader (discovery hands its ``LeaderFill``s over): no
  start position, so a firehose fill moves the book by its side and size only, and it is a hint
  (``confirmed=False``) until discovery has calibrated who is who in a trade.
- REST gap-fill: after every (re)subscription of a leader's ``userFills`` (seen as its snapshot
  message or a new acknowledged epoch of the subscription), ``userFillsByTime`` from the last
  exactly seen time (minus an overlap) on the GAPFILL lane. What the stream missed while down
  arrives here, exact, and becomes a change.
- ``snapshot(leader, state)``: the tracker's clearinghouseState reads set the book and correct
  drift (a correction is a change with ``fill=None``).

**How a coin's book is kept.** An *anchor* (an exact position at an exchange time, from a
snapshot or an exact fill) plus the firehose *hints* applied since. An exact fill newer than the
anchor becomes the anchor (so its effect does not depend on arrival order: a reordered older
fill is already inside the newer one's start position); fills in the same millisecond chain
through ``startPosition``. A hint older than the anchor is already inside it. The position is
the anchor plus the hints; it is ``confirmed`` when the anchor is known and every hint is.

**Dedupe** is in memory (the recent tids of each leader, bounded per leader; a fill older than
the anchor cannot move the book anyway, so a forgotten tid that comes back changes nothing) and
in PostgreSQL (``leader_fills``, unique (leader, tid), written in batches off the hot path).

**Out**: a ``LeaderChange`` on the changes sink for each change that moves a book (its position
or whether it is confirmed). The sink blocks when full; ``snapshot`` and the feeds never wait for
it: changes queue here, in order, and one task hands them over.

**Latency**: ``userFills`` messages are applied in the stream reader's turn (a ``Handler``, not
a queue), and the copy engine's sink decides in that same turn when it can, so a leader's fill
becomes an order intent without waiting for the event loop to come round twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from hlcopy.backoff import backoff_delay
from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import HlcopyConfig
from hlcopy.errors import ExchangeError, StoreError, StreamError, WireError
from hlcopy.follow.copier import LeaderView
from hlcopy.hl import InfoClient, StreamPool, Subscription
from hlcopy.model import AccountState, Fill, LeaderFill, UserFills
from hlcopy.queues import BoundedQueue, Handler, QueueClosed, Sink
from hlcopy.record import record
from hlcopy.store import Store
from hlcopy.store.leaders import LeaderFillRow, LeaderFillStore

log = structlog.get_logger()

ZERO = Decimal(0)
# What the dedupe memory knows of a tid.
_RECORDED, _HINT, _EXACT = 1, 2, 3
# _Book.gap_epoch when a subscription's snapshot came before its subscribe call returned.
_SNAPSHOT_FIRST = -2


@record
class LeaderChange:
    """A leader's book moved in ``coin``: by ``fill`` (None: a snapshot corrected it).

    ``time_ms`` is when the change was made (this process's clock, exchange milliseconds);
    ``szi`` and ``confirmed`` are the book after it.
    """

    leader: str
    coin: str
    fill: LeaderFill | None
    time_ms: int
    szi: Decimal = ZERO
    confirmed: bool = True


@dataclass(slots=True)
class _Hint:
    tid: int
    time_ms: int
    delta: Decimal
    confirmed: bool


class _CoinBook:
    """One leader in one coin: an anchor (exact) plus firehose hints since."""

    __slots__ = (
        "anchor_fill",
        "anchor_ms",
        "anchor_szi",
        "entry_px",
        "hints",
        "last_change_ms",
    )

    def __init__(self) -> None:
        self.anchor_szi: Decimal | None = None  # None: not known exactly
        self.anchor_ms = -1
        self.anchor_fill = False  # the anchor is an exact fill (not a snapshot)
        self.hints: list[_Hint] = []
        self.entry_px: Decimal | None = None
        self.last_change_ms: int | None = None

    def state(self) -> tuple[Decimal, bool] | None:
        """(size, confirmed) in one read (a leader's fill reads it twice); None: not known."""
        anchor = self.anchor_szi
        hints = self.hints
        if not hints:  # a leader followed through userFills
            return None if anchor is None else (anchor + ZERO, True)  # + 0: as a sum, no -0
        szi = (anchor if anchor is not None else ZERO) + sum((h.delta for h in hints), ZERO)
        return szi, anchor is not None and all(h.confirmed for h in hints)

    @property
    def szi(self) -> Decimal:
        state = self.state()
        return ZERO if state is None else state[0]

    @property
    def confirmed(self) -> bool:
        state = self.state()
        return state is not None and state[1]

    @property
    def known(self) -> bool:
        return self.anchor_szi is not None or bool(self.hints)

    def reanchor(self, szi: Decimal, time_ms: int, from_fill: bool) -> None:
        self.anchor_szi = szi
        self.anchor_ms = time_ms
        self.anchor_fill = from_fill
        # Hints up to the anchor's time are inside it.
        if self.hints:
            self.hints = [h for h in self.hints if h.time_ms > time_ms]


class _Book:
    """Everything known of one followed leader."""

    __slots__ = (
        "coins",
        "equity",
        "fills_live",
        "gap_epoch",
        "history_ms",
        "notional",
        "priority",
        "seen",
        "snapshot_ms",
        "sub",
        "watermark_ms",
    )

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.coins: dict[str, _CoinBook] = {}
        self.equity: Decimal | None = None
        self.notional = ZERO
        self.seen: OrderedDict[int, int] = OrderedDict()
        self.snapshot_ms: int | None = None  # a full state was applied: absent coins are flat
        self.sub: Subscription[UserFills] | None = None
        self.gap_epoch = -1  # the subscription epoch last gap-filled
        self.fills_live = False  # the userFills subscription's snapshot came: fills now are news
        self.watermark_ms: int | None = None  # newest fill time seen from an exact live source
        # Per coin, the newest fill time the userFills snapshot (history) showed: when the
        # leader last changed its position there, for a position a state shows first.
        self.history_ms: dict[str, int] = {}


def _entry(prev: Decimal, entry: Decimal | None, delta: Decimal, px: Decimal) -> Decimal | None:
    """The average entry price after a fill of ``delta`` at ``px`` (the exchange's rule)."""
    new = prev + delta
    if new == 0:
        return None
    if prev == 0 or (prev > 0) != (new > 0):
        return px  # opened or flipped
    if abs(new) > abs(prev):
        if entry is None:
            return px
        return (entry * abs(prev) + px * abs(delta)) / abs(new)
    return entry  # reduced


def _is_perp(coin: str) -> bool:
    # Spot fills ("@107", "PURR/USDC") are not positions a leader book follows.
    return not coin.startswith("@") and "/" not in coin


class _OneChangePerCoin:
    """``with books._one_change_per_coin:`` holds the changes made inside, and hands over one
    per (leader, coin) at the end: the first fill's, with the book as it ends. A trade that
    sweeps several makers arrives as several fills at once; the copy engine then orders the
    whole trade, not a sliver per maker (each below the minimum on its own, or one order per
    fill). No await inside. Nested blocks hand over at the outermost's end."""

    __slots__ = ("_books", "_depth")

    def __init__(self, books: LeaderBooks) -> None:
        self._books = books
        self._depth = 0

    def __enter__(self) -> None:
        if self._depth == 0:
            self._books._held = {}
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            held, self._books._held = self._books._held, None
            for change in (held or {}).values():
                self._books._hand(change)


class LeaderBooks(Component):
    """Followed leaders' positions from snapshots, userFills, the firehose and REST gap-fill.
    See the module docstring."""

    name = "leaders"

    def __init__(
        self,
        stream: StreamPool,
        info: InfoClient,
        store: Store,
        firehose: BoundedQueue[LeaderFill],
        changes: Sink[LeaderChange],
        config: HlcopyConfig,
        clock: Clock = SYSTEM,
        *,
        seen_per_leader: int = 20_000,
        gapfill_overlap_ms: int = 5_000,
        max_backfill_ms: int = 3_600_000,
        check_interval_s: float = 0.5,
        resync_s: float = 10.0,
        flush_interval_s: float = 0.2,
        batch_size: int = 1_000,
        max_pending_rows: int = 200_000,
        retry_cap_s: float = 30.0,
    ) -> None:
        self._stream = stream
        self._info = info
        self._db = LeaderFillStore(store)
        self._firehose = firehose
        self._changes = changes
        self._cfg = config
        self._clock = clock
        self._seen_cap = seen_per_leader
        self._overlap_ms = gapfill_overlap_ms
        self._max_backfill_ms = max_backfill_ms
        self._check_s = check_interval_s
        self._resync_s = resync_s
        self._flush_s = flush_interval_s
        self._batch = batch_size
        self._max_pending = max_pending_rows
        self._retry_cap_s = retry_cap_s
        self._books: dict[str, _Book] = {}
        # The userFills subscriptions' messages, applied in the stream reader's own turn: a
        # leader's fill reaches the copy engine without waiting for a consumer task to run.
        self.user_fills = Handler[UserFills]("leader_user_fills", self._on_user_fills)
        self._orphans: list[Subscription[UserFills]] = []  # of leaders no longer followed
        self._gap_queue: deque[str] = deque()
        self._gap_wanted: set[str] = set()
        self._gap_ready = asyncio.Event()
        self._out: deque[LeaderChange] = deque()
        self._held: dict[tuple[str, str], LeaderChange] | None = None
        self._one_change_per_coin = _OneChangePerCoin(self)
        self._out_ready = asyncio.Event()
        self._rows: deque[LeaderFillRow] = deque()
        self._flush_now = asyncio.Event()
        self._writing = asyncio.Lock()
        self._sync_now = asyncio.Event()
        self._syncing = asyncio.Lock()
        self._draining = asyncio.Event()
        self.counters = {
            "fills_user_fills": 0,
            "fills_snapshot": 0,
            "fills_firehose": 0,
            "fills_rest": 0,
            "duplicates": 0,
            "upgraded": 0,  # a firehose hint later seen exactly
            "stale": 0,  # older than the anchor: already inside it
            "changes": 0,
            "corrections": 0,  # snapshots that moved a book
            "changes_waited": 0,
            "changes_lost": 0,
            "gapfills": 0,
            "gapfill_failures": 0,
            "subscribe_failures": 0,
            "rows_written": 0,
            "rows_dropped": 0,
            "write_failures": 0,
            "unfollowed_input": 0,
        }

    # -- what others call -----------------------------------------------------------------

    def set_leaders(self, priorities: Mapping[str, int]) -> None:
        """Follow exactly these leaders (address -> priority, higher first). Their books start
        empty (a snapshot or an exact fill makes a coin known); dropped leaders are forgotten."""
        wanted = {a.lower(): p for a, p in priorities.items()}
        for leader in list(self._books):
            if leader not in wanted:
                gone = self._books.pop(leader)
                if gone.sub is not None:  # unsubscribed at the next sync
                    self._orphans.append(gone.sub)
        for leader, priority in wanted.items():
            book = self._books.get(leader)
            if book is None:
                self._books[leader] = _Book(priority)
            else:
                book.priority = priority
        self._sync_now.set()

    @property
    def leaders(self) -> frozenset[str]:
        return frozenset(self._books)

    def subscribed(self) -> frozenset[str]:
        """Leaders with a userFills subscription."""
        return frozenset(a for a, b in self._books.items() if b.sub is not None)

    def synced(self, leader: str) -> bool:
        """Whether ``leader``'s book is live: a clearinghouseState applied and its userFills
        snapshot in, so a fill from now on is a change to a known position (a fill before the
        snapshot is history, and a position first seen in a state is not a fresh trade)."""
        book = self._books.get(leader.lower())
        return book is not None and book.snapshot_ms is not None and book.fills_live

    def snapshot(self, leader: str, state: AccountState) -> None:
        """A clearinghouseState of ``leader``: set its book, correcting any drift. Never waits.

        A coin whose book already holds an exact fill newer than the state keeps it (the state
        was read before that fill). A position in the book's first state is no change now: its
        ``last_change_ms`` is the leader's newest fill in the coin the userFills snapshot showed,
        or unknown (so entry "wait" never takes a position that predates the follow for a fresh
        change, and one opened after the follow began, while hlcopy was down, is still copied).
        After that, a coin a state leaves out is flat, so a position a later state shows in a
        coin the book did not know is a change between the two reads, dated by this one (the
        state may come before the fills' message, and those are then inside it)."""
        leader = leader.lower()
        book = self._books.get(leader)
        if book is None:
            self.counters["unfollowed_input"] += 1
            return
        t = state.time_ms if state.time_ms is not None else self._clock.time_ms()
        book.equity = state.margin_summary.account_value
        book.notional = sum(
            (
                p.position_value
                if p.position_value is not None
                else abs(p.szi) * (p.entry_px or ZERO)
                for p in state.positions
            ),
            ZERO,
        )
        flat_since = book.snapshot_ms  # every coin a state left out was flat then
        book.snapshot_ms = t if flat_since is None else max(flat_since, t)
        positions = {p.coin: p for p in state.positions}
        for coin in sorted(set(book.coins) | set(positions)):
            c = book.coins.get(coin)
            if c is None:
                c = book.coins[coin] = _CoinBook()
                if flat_since is not None:
                    c.reanchor(ZERO, flat_since, from_fill=False)
            if t < c.anchor_ms:
                continue
            before = c.state()
            p = positions.get(coin)
            c.reanchor(p.szi if p is not None else ZERO, t, from_fill=False)
            if p is not None and p.entry_px is not None:
                c.entry_px = p.entry_px
            elif p is None:
                c.entry_px = None
            after = c.state()
            assert after is not None  # just anchored
            if before != after and not (before is None and after[0] == 0):
                if before is not None:
                    # A position the book already knew moved between two reads.
                    c.last_change_ms = t
                elif c.last_change_ms is None:
                    c.last_change_ms = book.history_ms.get(coin)
                self.counters["corrections"] += 1
                self._emit(LeaderChange(leader, coin, None, self._clock.time_ms(), *after))

    def view(self, leader: str, coin: str) -> LeaderView | None:
        """What the book knows of ``leader`` in ``coin``; None when nothing is known."""
        book = self._books.get(leader.lower())
        if book is None:
            return None
        c = book.coins.get(coin)
        state = None if c is None else c.state()
        if c is None or state is None:
            if book.snapshot_ms is None:
                return None
            return LeaderView(ZERO, True, None, book.equity, None)
        return LeaderView(state[0], state[1], c.entry_px, book.equity, c.last_change_ms)

    def status(self, leader: str) -> dict[str, Any] | None:
        """How ``leader`` is followed now, for the API: ``via`` its own userFills stream or the
        public trades firehose (beyond the stream's slots, or until its subscription is made),
        and whether its book is ``live``: a state applied and, through userFills, the stream's
        snapshot in (a fill before the snapshot is history, never a change to copy). None when
        the leader has no book."""
        book = self._books.get(leader.lower())
        if book is None:
            return None
        changes = [c.last_change_ms for c in book.coins.values() if c.last_change_ms is not None]
        via = "userFills" if book.sub is not None else "firehose"
        return {
            "via": via,
            "live": book.snapshot_ms is not None and (via == "firehose" or book.fills_live),
            "state_ms": book.snapshot_ms,
            "last_change_ms": max(changes, default=None),
            "equity": book.equity,
        }

    def coins(self, leader: str) -> set[str]:
        """The coins in which ``leader`` holds a position, as far as the book knows."""
        book = self._books.get(leader.lower())
        if book is None:
            return set()
        return {coin for coin, c in book.coins.items() if c.known and c.szi != 0}

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._cfg = config
        self._sync_now.set()

    # -- the component --------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._consume_firehose(), name="leaders:firehose"),
                tg.create_task(self._hand_over(), name="leaders:changes"),
                tg.create_task(self._flush_loop(), name="leaders:flush"),
                tg.create_task(self._gapfill_loop(), name="leaders:gapfill"),
            ]
            await self.sync()
            tasks.append(tg.create_task(self._watch(), name="leaders:watch"))
            ready.set()
            await self._draining.wait()
            for task in tasks:
                task.cancel()
        try:
            async with self._clock.timeout(5.0):
                await self.flush()
        except TimeoutError:
            log.warning("leaders: gave up the last write", pending=len(self._rows))

    async def drain(self) -> None:
        self._draining.set()

    # -- subscriptions --------------------------------------------------------------------

    def _slots(self) -> int:
        mine = {a for a, b in self._books.items() if b.sub is not None}
        others = self._stream.users() - mine
        free = self._stream.max_users - len(others)
        return max(0, min(self._cfg.tracking.user_fills_subscriptions, free))

    def ranked(self) -> list[str]:
        """Followed leaders, most important first: priority, then notional, then address."""
        return sorted(
            self._books, key=lambda a: (-self._books[a].priority, -self._books[a].notional, a)
        )

    async def sync(self) -> None:
        """Bring the userFills subscriptions in line with the leaders' ranking."""
        async with self._syncing:
            self._sync_now.clear()
            wanted = set(self.ranked()[: self._slots()])
            for leader in [leader for leader in self._subs() if leader not in wanted]:
                await self._unsubscribe(leader)
            orphans, self._orphans = self._orphans, []
            for sub in orphans:
                await self._stream.unsubscribe(sub)
            for leader in self.ranked():
                if leader not in wanted:
                    continue
                book = self._books.get(leader)
                if book is None or book.sub is not None:
                    continue
                await self._subscribe(leader, book)

    def _subs(self) -> list[str]:
        return [a for a, b in self._books.items() if b.sub is not None]

    async def _unsubscribe(self, leader: str) -> None:
        book = self._books.get(leader)
        if book is None or book.sub is None:
            return
        sub, book.sub = book.sub, None
        book.gap_epoch = -1
        book.fills_live = False
        await self._stream.unsubscribe(sub)
        log.info("leaders: userFills slot released", leader=leader)

    async def _subscribe(self, leader: str, book: _Book) -> None:
        if book.watermark_ms is None:
            now = self._clock.time_ms()
            start = now
            try:
                stored = (await self._db.last_times([leader])).get(leader)
            except StoreError as exc:
                stored = None
                log.warning("leaders: cannot read the fill watermark", error=str(exc))
            if stored is not None:
                start = max(stored, now - self._max_backfill_ms)
            book.watermark_ms = start
        try:
            sub = await self._stream.user_fills(leader, self.user_fills)
        except (StreamError, ExchangeError) as exc:
            self.counters["subscribe_failures"] += 1
            log.warning("leaders: cannot subscribe to userFills", leader=leader, error=str(exc))
            return
        if self._books.get(leader) is not book:  # unfollowed meanwhile
            await self._stream.unsubscribe(sub)
            return
        book.sub = sub
        if book.gap_epoch == _SNAPSHOT_FIRST:
            book.gap_epoch = sub.acked_epoch
        log.info("leaders: following through userFills", leader=leader, priority=book.priority)

    async def _watch(self) -> None:
        """Resync the slots now and then (notionals change) and notice resubscriptions that
        came without a snapshot message: each acknowledged epoch is gap-filled once."""
        last_sync = self._clock.monotonic()
        while True:
            await sleep_unless(self._clock, self._sync_now, self._check_s)
            now = self._clock.monotonic()
            if self._sync_now.is_set() or now - last_sync >= self._resync_s:
                last_sync = now
                await self.sync()
            for leader, book in self._books.items():
                sub = book.sub
                if sub is not None and sub.acked_epoch >= 0 and sub.acked_epoch != book.gap_epoch:
                    book.gap_epoch = sub.acked_epoch
                    self._want_gapfill(leader)

    # -- fills ----------------------------------------------------------------------------

    def _on_user_fills(self, msg: UserFills) -> None:
        book = self._books.get(msg.user)
        if book is None:
            self.counters["unfollowed_input"] += 1
            return
        with self._one_change_per_coin:
            for f in msg.fills:
                lf = self._from_fill(msg.user, f, "userFills", msg.recv_ns)
                if lf is not None:
                    self._ingest(book, lf, snapshot=msg.is_snapshot)
        if msg.is_snapshot:
            book.fills_live = True
            # A (re)subscription: what the stream missed while it was away comes from REST,
            # once per acknowledged epoch (the watcher may have seen the epoch first).
            sub = book.sub
            if sub is None:  # the subscribe call has not returned yet: its epoch is this one
                book.gap_epoch = _SNAPSHOT_FIRST
                self._want_gapfill(msg.user)
            elif sub.acked_epoch != book.gap_epoch:
                book.gap_epoch = sub.acked_epoch
                self._want_gapfill(msg.user)

    async def _consume_firehose(self) -> None:
        while True:
            try:
                batch = await self._firehose.get_batch(512)
            except QueueClosed:
                return
            with self._one_change_per_coin:
                for lf in batch:
                    book = self._books.get(lf.leader)
                    if book is None:
                        self.counters["unfollowed_input"] += 1
                        continue
                    if _is_perp(lf.coin):
                        self._ingest(book, lf, snapshot=False)

    @staticmethod
    def _from_fill(leader: str, f: Fill, source: str, recv_ns: int = 0) -> LeaderFill | None:
        if f.tid is None or f.tid == 0 or not _is_perp(f.coin):
            return None  # system rows without a trade, spot
        return LeaderFill(
            leader,
            f.coin,
            f.side,
            f.sz,
            f.px,
            f.time_ms,
            f.tid,
            "rest" if source == "rest" else "userFills",
            f.start_position,
            True,
            recv_ns,
        )

    def ingest(self, fill: LeaderFill, *, snapshot: bool = False) -> bool:
        """Apply one fill from any source (the feeds call this; so may a caller with fills of
        its own). True when it moved the book."""
        book = self._books.get(fill.leader)
        if book is None:
            self.counters["unfollowed_input"] += 1
            return False
        return self._ingest(book, fill, snapshot=snapshot)

    def _ingest(self, book: _Book, f: LeaderFill, *, snapshot: bool) -> bool:
        exact = f.start_position is not None
        if snapshot:
            self.counters["fills_snapshot"] += 1
        elif f.source == "firehose":
            self.counters["fills_firehose"] += 1
        elif f.source == "rest":
            self.counters["fills_rest"] += 1
        else:
            self.counters["fills_user_fills"] += 1
        seen = book.seen
        level = seen.get(f.tid, 0)
        if snapshot:
            # History: recorded, never a change (gap-fill makes the missed ones changes); its
            # newest fill per coin says when a position a state shows first was last changed,
            # in whatever order the snapshot lists them (the simulator's is oldest first).
            newest = max(book.history_ms.get(f.coin, f.time_ms), f.time_ms)
            book.history_ms[f.coin] = newest
            c = book.coins.get(f.coin)
            if c is not None and c.known and c.szi != 0:
                last = c.last_change_ms
                c.last_change_ms = newest if last is None else max(last, newest)
            if level == 0:
                self._remember(book, f.tid, _RECORDED)
                self._record(f, snapshot=True, changed=False)
            else:
                self.counters["duplicates"] += 1
            return False
        if level == _EXACT or (level == _HINT and not exact):
            self.counters["duplicates"] += 1
            return False
        self._remember(book, f.tid, _EXACT if exact else _HINT)
        if exact and f.source != "firehose":
            wm = book.watermark_ms
            book.watermark_ms = f.time_ms if wm is None else max(wm, f.time_ms)
        c = book.coins.get(f.coin)
        if c is None:
            c = book.coins[f.coin] = _CoinBook()
            if book.snapshot_ms is not None:  # flat as of the last snapshot
                c.reanchor(ZERO, book.snapshot_ms, from_fill=False)
        before = c.state()
        prev_szi = ZERO if before is None else before[0]
        if exact:
            if level == _HINT:
                self.counters["upgraded"] += 1
                c.hints = [h for h in c.hints if h.tid != f.tid]
            assert f.start_position is not None
            newer = f.time_ms > c.anchor_ms or (
                f.time_ms == c.anchor_ms and f.start_position == c.anchor_szi
            )
            if c.anchor_szi is None or newer:
                delta = f.delta
                c.reanchor(f.start_position + delta, f.time_ms, from_fill=True)
                if level != _HINT:
                    c.entry_px = _entry(f.start_position, c.entry_px, delta, f.px)
            else:
                self.counters["stale"] += 1
        elif c.anchor_szi is not None and (
            f.time_ms < c.anchor_ms or (f.time_ms == c.anchor_ms and c.anchor_fill)
        ):
            # Already inside the anchor (or, in the anchor fill's own millisecond, coming
            # exactly through userFills too).
            self.counters["stale"] += 1
        else:
            c.hints.append(_Hint(f.tid, f.time_ms, f.delta, f.confirmed))
            c.entry_px = _entry(prev_szi, c.entry_px, f.delta, f.px)
        after = c.state()
        assert after is not None  # anchored or hinted by now
        moved = before != after and not (before is None and after[0] == 0)
        if moved:
            c.last_change_ms = f.time_ms
            self._emit(LeaderChange(f.leader, f.coin, f, self._clock.time_ms(), *after))
        self._record(f, snapshot=False, changed=moved)
        return moved

    def _remember(self, book: _Book, tid: int, level: int) -> None:
        seen = book.seen
        seen[tid] = level
        seen.move_to_end(tid)
        while len(seen) > self._seen_cap:
            seen.popitem(last=False)

    # -- gap-fill -------------------------------------------------------------------------

    def _want_gapfill(self, leader: str) -> None:
        if leader not in self._gap_wanted:
            self._gap_wanted.add(leader)
            self._gap_queue.append(leader)
            self._gap_ready.set()

    async def _gapfill_loop(self) -> None:
        failures = 0
        while True:
            await self._gap_ready.wait()
            self._gap_ready.clear()
            while self._gap_queue:
                leader = self._gap_queue.popleft()
                self._gap_wanted.discard(leader)
                if await self.gapfill(leader):
                    failures = 0
                    continue
                # The read failed: ask again after a pause (the budget or the exchange is busy).
                self._want_gapfill(leader)
                await self._clock.sleep(backoff_delay(failures, 0.5, self._retry_cap_s))
                failures += 1

    async def gapfill(self, leader: str) -> bool:
        """Fetch ``leader``'s fills since the last exactly seen time (minus an overlap) and
        apply them; False when the read failed."""
        book = self._books.get(leader)
        if book is None:
            return True
        now = self._clock.time_ms()
        start = book.watermark_ms if book.watermark_ms is not None else now
        start = max(start - self._overlap_ms, now - self._max_backfill_ms)
        try:
            fills = await self._info.user_fills_by_time(leader, start, lane=Lane.GAPFILL)
        except (ExchangeError, WireError) as exc:
            self.counters["gapfill_failures"] += 1
            log.warning("leaders: gap-fill failed", leader=leader, error=str(exc))
            return False
        self.counters["gapfills"] += 1
        book = self._books.get(leader)
        if book is None:
            return True
        moved = 0
        with self._one_change_per_coin:
            for f in fills:
                lf = self._from_fill(leader, f, "rest")
                if lf is not None and self._ingest(book, lf, snapshot=False):
                    moved += 1
        if moved:
            log.info("leaders: gap-fill found missed fills", leader=leader, changes=moved)
        return True

    # -- out ------------------------------------------------------------------------------

    def _emit(self, change: LeaderChange) -> None:
        held = self._held
        if held is None:
            self._hand(change)
            return
        key = (change.leader, change.coin)
        first = held.get(key)
        held[key] = (
            change
            if first is None
            else dataclasses.replace(first, szi=change.szi, confirmed=change.confirmed)
        )

    def _hand(self, change: LeaderChange) -> None:
        self.counters["changes"] += 1
        try:
            if self._out or not self._changes.offer(change):
                self._out.append(change)
                self.counters["changes_waited"] += 1
                self._out_ready.set()
        except QueueClosed:
            self.counters["changes_lost"] += 1

    async def _hand_over(self) -> None:
        """Changes are never dropped: wait for room, in order."""
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            while self._out:
                try:
                    await self._changes.put(self._out[0])
                except QueueClosed:
                    self.counters["changes_lost"] += len(self._out)
                    self._out.clear()
                    break
                self._out.popleft()

    # -- the database ---------------------------------------------------------------------

    def _record(self, f: LeaderFill, *, snapshot: bool, changed: bool) -> None:
        self._rows.append(
            (
                f.leader,
                f.tid,
                f.coin,
                f.side,
                f.px,
                f.sz,
                f.time_ms,
                f.start_position,
                f.source,
                f.confirmed,
                snapshot,
                changed,
                self._clock.time_ms(),
            )
        )
        if len(self._rows) > self._max_pending:
            self._rows.popleft()
            self.counters["rows_dropped"] += 1
        if len(self._rows) >= self._batch:
            self._flush_now.set()

    async def _flush_loop(self) -> None:
        failures = 0
        while True:
            await sleep_unless(self._clock, self._flush_now, self._flush_s)
            self._flush_now.clear()
            if await self.flush():
                failures = 0
                continue
            await self._clock.sleep(backoff_delay(failures, 0.5, self._retry_cap_s))
            failures += 1

    async def flush(self) -> bool:
        """Write every fill recorded so far; False when the database failed (they wait)."""
        async with self._writing:
            while self._rows:
                n = min(self._batch, len(self._rows))
                batch = [self._rows.popleft() for _ in range(n)]
                try:
                    await self._db.write(batch)
                except asyncio.CancelledError:
                    self._rows.extendleft(reversed(batch))
                    raise
                except StoreError as exc:
                    self._rows.extendleft(reversed(batch))
                    self.counters["write_failures"] += 1
                    if self.counters["write_failures"] % 100 == 1:
                        log.warning("leaders: cannot write leader fills", error=str(exc))
                    return False
                self.counters["rows_written"] += n
        return True

    # -- figures --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "leaders": len(self._books),
            "subscribed": len(self._subs()),
            "firehose_only": len(self._books) - len(self._subs()),
            "slots": self._slots(),
            "pending_rows": len(self._rows),
            "changes_queued": len(self._out),
            "user_fills_errors": self.user_fills.errors,
            "gapfills_queued": len(self._gap_queue),
            **self.counters,
        }

    def describe(self, leaders: Iterable[str] | None = None) -> dict[str, Any]:
        """Each leader's book, for the API and debugging."""
        out: dict[str, Any] = {}
        for leader in leaders if leaders is not None else self._books:
            book = self._books.get(leader)
            if book is None:
                continue
            out[leader] = {
                "priority": book.priority,
                "userFills": book.sub is not None,
                "equity": None if book.equity is None else str(book.equity),
                "watermark_ms": book.watermark_ms,
                "coins": {
                    coin: {"szi": str(c.szi), "confirmed": c.confirmed}
                    for coin, c in sorted(book.coins.items())
                    if c.known
                },
            }
        return out
