"""The tracker: one scheduler that spends the REST weight budget where it matters most.

Work, in the budget's lane order (``budget.py`` serves lanes strictly):

* **follower truth** — the follower account's ``clearinghouseState`` every few seconds;
* **leader truth** — each followed leader's ``clearinghouseState`` (interval configurable);
* **tracked traders** — chosen from every address discovery has seen (plus explicit track
  requests and the public leaderboard's seeds), by a priority that rises with volume, recency,
  a seed rank and a request; their positions are read round-robin by staleness x priority;
* **scoring** — ``portfolio`` for every tracked trader, and fills for the ones near the top of
  the winners or the losers (by the provisional score, which needs no fills), so their score
  is complete; ``userRole`` for those too, since vaults, sub-accounts and agents are no leaders
  (for the public leaderboard's best before their fills: vaults and sub-accounts crowd it).

Truth has a worker of its own, so a crowd of scoring requests can never make it wait for a
worker; scoring has ``[tracking] workers``. With work waiting, every worker sits in the budget's
queue, which is what keeps the budget full without ever going over it.

Completing the top (candidates' fills and roles, promising traders' portfolios) goes in the
scoring lane; exploring everyone else (their portfolios and positions) in the lowest lane, on
at most all workers but two, so a candidate's read always has a worker. The budget keeps a
scoring reserve exploration cannot take, sized to the candidates' reads still to come, and
exploration never overtakes a waiting scoring read: it spends what completing leaves, and the
budget stays full while the top completes. Candidates are completed the public leaderboard's
best first, then those near the top by provisional score, then the traders the user asked to
watch.

Snapshots become position events (opened, increased, decreased, closed, flipped, liquidated),
stored and published on the event bus. Metrics go to PostgreSQL and to the leaderboard. Prices
for events come from the ``allMids`` feed (zero REST weight). Old events and fills are pruned
here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import structlog

from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import HlcopyConfig
from hlcopy.errors import ExchangeError, StoreError, WireError
from hlcopy.events import Event, EventBus
from hlcopy.hl import InfoClient, StreamPool, UniverseService
from hlcopy.keys import parse_address
from hlcopy.model import (
    ZERO,
    AccountRead,
    AccountState,
    AllMids,
    Fill,
    MarginSummary,
    Portfolio,
    Position,
    PositionEvent,
    SeedTrader,
    UserRole,
)
from hlcopy.queues import BoundedQueue, Sink
from hlcopy.record import record
from hlcopy.scout import analytics
from hlcopy.scout.analytics import TraderMetrics
from hlcopy.scout.leaderboard import pack_metrics
from hlcopy.store import Store
from hlcopy.store.tracking import TrackingStore, position_json

log = structlog.get_logger()

DAY_MS = 86_400_000
SNAPSHOTS_KEPT = 24  # compact margin summaries per trader, for average leverage and risk
INDEX_POINTS_KEPT = 200  # equity index points stored per window for charts
SELECT_EVERY_S = 30.0  # how often the tracked set is chosen again
LOOKBACK_MS = 31 * DAY_MS  # fills kept in view for scoring (the month window)
FAILURE_RETRY_S = 60.0  # a trader whose request failed waits this long before the next try
# Weight exploration leaves for completing the top, per read still to come: one fills read's
# likely cost, or a role (the budget caps the sum).
SCORING_RESERVE = 60
FREE_FOR_COMPLETING = 2  # scoring workers never taken by exploring jobs
FILLS_IN_FLIGHT = 2  # candidates' fills reads at once


class ActivityView(Protocol):
    """What the tracker needs of discovery's registry entries (read-only)."""

    @property
    def address(self) -> str: ...

    @property
    def first_seen_ms(self) -> int: ...

    @property
    def last_seen_ms(self) -> int: ...

    @property
    def volume_usd(self) -> Decimal: ...

    @property
    def taker(self) -> int: ...

    @property
    def coins(self) -> tuple[str, ...]: ...

    @property
    def maker(self) -> int: ...


class RegistryView(Protocol):
    def __iter__(self) -> Iterator[ActivityView]: ...

    def get(self, address: str) -> ActivityView | None: ...


class MetricsSink(Protocol):
    """Where scores go: the leaderboard."""

    def put(
        self,
        address: str,
        metrics: Mapping[str, TraderMetrics],
        *,
        account_value: Decimal | None,
        updated_ms: int,
    ) -> None: ...


# -- pure: snapshots to events ---------------------------------------------------------------


def position_events(
    address: str,
    before: Mapping[str, Position] | None,
    after: AccountState,
    mids: Mapping[str, Decimal],
    time_ms: int,
) -> list[PositionEvent]:
    """The changes between two snapshots of one account.

    No events for a first observation: a position already open when first seen was not opened
    then. A position that shrank or closed while the price crossed its liquidation price (read
    from the earlier snapshot) was liquidated; the exchange says so only in fills.
    """
    if before is None:
        return []
    now = {p.coin: p for p in after.positions if p.szi != 0}
    events: list[PositionEvent] = []
    for coin in sorted(set(before) | set(now)):
        prev = before.get(coin)
        new = now.get(coin)
        prev_szi = prev.szi if prev is not None else ZERO
        new_szi = new.szi if new is not None else ZERO
        if prev_szi == new_szi:
            continue
        mid = mids.get(coin)
        if new_szi == 0:
            kind = "close"
        elif prev_szi == 0:
            kind = "open"
        elif (prev_szi > 0) != (new_szi > 0):
            kind = "flip"
        elif abs(new_szi) > abs(prev_szi):
            kind = "increase"
        else:
            kind = "decrease"
        if kind in ("close", "decrease") and prev is not None and _liquidated(prev, mid):
            kind = "liquidated"
        ref = new if new is not None else prev
        px = mid if mid is not None else _mark(ref)
        events.append(
            PositionEvent(
                address=address,
                coin=coin,
                kind=kind,  # type: ignore[arg-type]
                prev_szi=prev_szi,
                new_szi=new_szi,
                time_ms=time_ms,
                entry_px=new.entry_px if new is not None else prev.entry_px if prev else None,
                px=px,
                notional=None if px is None else abs(new_szi) * px,
                leverage=None
                if ref is None or ref.leverage is None
                else Decimal(ref.leverage.value),
            )
        )
    return events


def _mark(p: Position | None) -> Decimal | None:
    if p is None or p.position_value is None or p.szi == 0:
        return None
    return abs(p.position_value / p.szi)


def _liquidated(prev: Position, mid: Decimal | None) -> bool:
    liq = prev.liquidation_px
    if liq is None or mid is None:
        return False
    return mid <= liq if prev.szi > 0 else mid >= liq


def event_json(e: PositionEvent) -> dict[str, Any]:
    """An event as the live feed and the API show it."""

    def s(v: Decimal | None) -> str | None:
        return None if v is None else str(v)

    return {
        "address": e.address,
        "coin": e.coin,
        "kind": e.kind,
        "prev_szi": str(e.prev_szi),
        "new_szi": str(e.new_szi),
        "entry_px": s(e.entry_px),
        "px": s(e.px),
        "notional": s(e.notional),
        "leverage": s(e.leverage),
        "time_ms": e.time_ms,
    }


# -- the schedule ---------------------------------------------------------------------------


@dataclass(slots=True)
class Tracked:
    """What the tracker keeps per tracked trader between polls (compact on purpose)."""

    address: str
    priority: float = 0.0
    positions: dict[str, Position] | None = None
    positions_s: float = -math.inf  # clock.monotonic() of the last positions read
    scored_s: float = -math.inf
    fills_s: float = -math.inf
    role_s: float = -math.inf
    retry_after_s: float = -math.inf
    fills_until_ms: int | None = None  # fills are stored up to here
    role: UserRole | None = None
    summaries: deque[tuple[int, Decimal, Decimal, Decimal]] = field(
        default_factory=lambda: deque(maxlen=SNAPSHOTS_KEPT)
    )
    provisional_score: float | None = None
    provisional_badness: float | None = None
    portfolio: Portfolio | None = None  # kept while a candidate, to complete its score
    requested: bool = False  # asked for by the user: the truth worker reads its positions
    promising: bool = False  # seeded, requested or a candidate: worth the scoring lane
    candidate: bool = False  # near the top of either list: its fills are worth their weight
    # Why a candidate: 2 the public leaderboard's best, 1 near the top by provisional score,
    # 0 only asked for by the user (its fills wait, and its role is never worth 60 on that).
    merit: int = 0
    contender: bool = False  # its complete score ranks near the top: its role is worth 60 too
    score: float | None = None  # the complete (fills-based) month score, once known


_LAST = {"positions": "positions_s", "score": "scored_s", "fills": "fills_s", "role": "role_s"}
# Never-done work comes in tiers: a contender's role, then a candidate's fills, then any other
# first read, then what is overdue.
_TIER = {"role": 3, "fills": 2}


@record
class Job:
    kind: str  # "positions" | "score" | "role"
    trader: Tracked


def next_job(
    traders: Iterable[Tracked],
    now_s: float,
    positions_interval_s: float,
    scoring_interval_s: float,
    *,
    explore: bool = True,
    fills: bool = True,
) -> Job | None:
    """The most urgent job that is due: staleness x priority, never-done work first.

    Completing a candidate's score (its fills, then its role) comes before anything else: a
    trader who may rank near the top is worth more than one more provisional figure. Among
    candidates, the most promising first: the public leaderboard's best, then those near the
    top by provisional score, then those the user only asked to watch, each by provisional
    score (a watched trader's positions are read on time by the truth worker; its fills decide
    nothing at the top). Roles by complete score, the best first. Without ``explore``, only
    promising traders' work is chosen (the workers for exploring are all busy)."""
    best: tuple[tuple[int, int, float], int, Job] | None = None
    order = 0
    for t in traders:
        if now_s < t.retry_after_s or not (explore or t.promising):
            continue
        weight = 1.0 + max(t.priority, 0.0)
        for kind, last, interval in (
            ("role", t.role_s, 0.0),
            ("fills", t.fills_s, scoring_interval_s),
            ("score", t.scored_s, scoring_interval_s),
            ("positions", t.positions_s, positions_interval_s),
        ):
            if kind == "positions" and t.requested:
                continue  # the truth worker reads a watched trader's positions, on time
            if kind == "fills" and (
                not fills
                or not t.candidate
                or t.scored_s == -math.inf
                or (t.merit == 2 and t.role is None)
                or (t.role is not None and t.role.role != "user")
            ):
                # Fills complete a score: for candidates, after their portfolio, and for the
                # public leaderboard's best after their role too; never for a vault or an agent.
                continue
            if kind == "role" and (not role_wanted(t) or last > -math.inf):
                continue  # once, and only where a vault or an agent must not rank: 60 weight
            if now_s - last < interval:
                continue
            urgency: tuple[int, int, float]  # (tier, merit, then by score or staleness)
            if last > -math.inf:
                urgency = (0, 0, (now_s - last) * weight)  # the longer overdue, the more urgent
            elif kind == "role" and t.contender:
                # A contender is on the board's top now, and a vault must not stay there while
                # other scores are completed (it did, at two minutes, in a third of the scout
                # acceptance runs).
                urgency = (_TIER[kind], 0, _or_lowest(t.score))
            elif kind in ("role", "fills"):  # a seed's role comes in its fills' turn
                urgency = (_TIER["fills"], t.merit, _or_lowest(t.provisional_score))
            else:
                urgency = (1, 0, weight)  # never done: by priority
            order += 1
            if best is None or urgency > best[0]:
                best = (urgency, -order, Job(kind, t))
    return None if best is None else best[2]


def role_wanted(t: Tracked) -> bool:
    """Whether a trader's role (60 weight) is worth reading, once: a contender's, whose
    complete score is near the top of the winners, where a vault or an agent must not rank;
    and, before its fills, that of a trader among the public leaderboard's best. That top holds
    vaults and sub-accounts (in the demo's market, up to 7 of the 12), and a role known first
    spares their fills, which cannot rank them (the scout acceptance ranked 8 at two minutes in
    CI, its fills and roles spent on 7 such traders)."""
    return t.role is None and (t.contender or t.merit == 2)


def _or_lowest(score: float | None) -> float:
    return -math.inf if score is None else score


def priority(
    volume_usd: Decimal,
    last_seen_ms: int | None,
    now_ms: int,
    *,
    requested: bool = False,
    seed_rank: int | None = None,
) -> float:
    """Higher for more volume, more recent activity, a good or bad seed rank, a request."""
    p = math.log10(1.0 + float(volume_usd))
    if last_seen_ms is not None:
        hours = max(0.0, (now_ms - last_seen_ms) / 3_600_000)
        p += 3.0 / (1.0 + hours)
    if seed_rank is not None:  # the public leaderboard's best and worst go first
        p += 30.0 / (1.0 + seed_rank / 10)
    if requested:
        p += 100.0
    return p


# -- the component ---------------------------------------------------------------------------


class Tracker(Component):
    """See the module docstring."""

    name = "tracker"

    def __init__(
        self,
        *,
        info: InfoClient,
        store: Store,
        stream: StreamPool,
        universe: UniverseService,
        registry: RegistryView,
        metrics: MetricsSink,
        bus: EventBus,
        config: HlcopyConfig,
        clock: Clock = SYSTEM,
    ) -> None:
        self._info = info
        self._db = TrackingStore(store)
        self._stream = stream
        self._universe = universe
        self._registry = registry
        self._metrics = metrics
        self._bus = bus
        self._clock = clock
        self._traders: dict[str, Tracked] = {}
        self._requested: set[str] = set()
        self._seed_ranks: dict[str, int] = {}
        self._seed_best: set[str] = set()  # the public leaderboard's best by month ROI
        self._leaders: set[str] = set()
        self._leader_states: dict[str, AccountState] = {}
        self._first_read: set[str] = set()  # leaders whose first state read was sent
        self._truth_due: dict[str, float] = {}  # leaders and watched traders: next read
        self._on_leader_state: list[Callable[[str, AccountState], None]] = []
        self._mids_sinks: list[Sink[AllMids]] = []
        self._fills_in_flight = 0
        self._exploring = 0  # scoring workers on an exploring job
        #: The follower's account as last read, with when (the live executor's view uses it).
        self.follower_read: AccountRead | None = None
        self._mids: dict[str, Decimal] = {}
        self._mids_queue = BoundedQueue[AllMids]("tracker:mids", 4, "drop_oldest")
        self._wake = asyncio.Event()
        self._draining = asyncio.Event()
        self._in_flight: dict[asyncio.Task[Any] | None, tuple[str, float]] = {}
        self._loaded = False
        self._settled = False  # enough provisional scores for "near the top" to mean something
        self.counters: dict[str, int] = {
            "positions": 0,
            "scored": 0,
            "fills_fetched": 0,
            "portfolio_reads": 0,
            "exploring_reads": 0,
            "fills_reads": 0,
            "roles": 0,
            "events": 0,
            "leader_reads": 0,
            "follower_reads": 0,
            "errors": 0,
            "pruned_events": 0,
            "pruned_fills": 0,
            "seeded": 0,
        }
        self.reconfigure(config)

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._cfg = config.tracking
        self._retention = config.retention
        self._discovery = config.discovery
        self._network_rest = config.network.rest
        self._follower = config.account.address if config.account.mode == "live" else None
        board = config.leaderboard
        self._follower_equity = board.follower_equity_usd or config.account.paper_equity_usd
        self._scoring_reserve = 0  # as the budget starts
        self._reserve_truth()

    # -- what others ask of it ------------------------------------------------------------

    def request_track(self, address: str) -> None:
        """Raise ``address``'s tracking priority (the API calls this; no I/O here)."""
        address = parse_address(address)
        self._requested.add(address)
        self._reserve_truth()
        entry = self._traders.get(address)
        if entry is None:
            entry = self._traders[address] = Tracked(address)
        entry.priority = max(entry.priority, priority(ZERO, None, 0, requested=True))
        self._mark_candidates()
        self._wake.set()

    def set_leaders(self, addresses: Iterable[str]) -> None:
        """The leaders whose positions are truth for the copy engine."""
        self._leaders = {parse_address(a) for a in addresses}
        self._reserve_truth()
        self._wake.set()

    def _reserve_truth(self) -> None:
        """Keep room in every budget window for the truth reads to come (see the budget)."""
        cfg = self._cfg
        window = self._info.budget_window_s
        reads = len(self._leaders) * window / cfg.leader_poll_interval_s
        reads += len(self._requested - self._leaders) * window / cfg.positions_interval_s
        if self._follower is not None:
            reads += window / cfg.follower_poll_interval_s
        # What they read on average: a reserve they would not use leaves the window idle.
        self._info.reserve_state_reads(math.ceil(reads))

    def _reserve_scoring(self) -> None:
        """Room for completing the top: for each candidate's fills and each wanted role still
        to be read (not for the traders the user only asked to watch: they are no part of the
        top). Weight spent stays spent for a whole window, and the tracker spends a window
        within a second of it coming free: exploration took most of each while the top was
        completed a read at a time. None once all are read, or the reserve would only leave
        the window idle (it cost the scout acceptance's five-minute budget its margin over
        90%)."""
        pending = sum(
            (t.merit > 0 and t.fills_s == -math.inf) + (role_wanted(t) and t.role_s == -math.inf)
            for t in self._traders.values()
        )
        weight = SCORING_RESERVE * pending
        if weight != self._scoring_reserve:
            self._scoring_reserve = weight
            self._info.reserve_scoring_weight(weight)

    def share_mids(self, sink: Sink[AllMids]) -> None:
        """Hand every allMids update on to ``sink`` too (the stream allows one subscription
        per feed; the tracker holds this one)."""
        self._mids_sinks.append(sink)

    def on_leader_state(self, callback: Callable[[str, AccountState], None]) -> None:
        """Hand every leader snapshot to ``callback`` too (the leader books, the leaders'
        norms; no I/O in it)."""
        self._on_leader_state.append(callback)

    def leader_state(self, address: str) -> AccountState | None:
        return self._leader_states.get(address)

    # -- running --------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        if self._loaded:
            await self._select()
        else:
            await self._load()
        mids_sub = await self._stream.all_mids(self._mids_queue, wait=False)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_mids(), name="tracker:mids")
                tg.create_task(self._truth_worker(), name="tracker:truth")
                for i in range(self._cfg.workers):
                    tg.create_task(self._scoring_worker(), name=f"tracker:worker{i}")
                tg.create_task(self._selector(), name="tracker:select")
                tg.create_task(self._pruner(), name="tracker:prune")
                if self._discovery.seed_leaderboard:
                    tg.create_task(self._seeder(), name="tracker:seed")
                ready.set()
                await self._draining.wait()
                raise _Drained
        except* _Drained:
            pass
        finally:
            await self._stream.unsubscribe(mids_sub)

    async def drain(self) -> None:
        self._draining.set()
        self._wake.set()

    async def _load(self) -> None:
        """What tracking knew before a restart: the track requests, then — for the traders
        chosen now — their roles and last positions (so a role is not paid for twice, and the
        first read after a restart already makes events)."""
        self._requested.update(await self._db.requested())
        self._reserve_truth()
        await self._select()
        for row in await self._db.load(list(self._traders)):
            entry = self._traders.get(row.address)
            if entry is None:
                continue
            if row.role is not None:
                entry.role = UserRole(row.role, row.master)
                entry.role_s = self._clock.monotonic()
            if row.positions is not None:
                entry.positions = _positions_from_json(row.positions)
        self._loaded = True
        log.info("tracker state loaded", traders=len(self._traders), requested=len(self._requested))

    # -- choosing whom to track -----------------------------------------------------------

    async def _selector(self) -> None:
        while not await sleep_unless(self._clock, self._draining, SELECT_EVERY_S):
            await self._select()

    async def _select(self) -> None:
        """Choose the tracked set: the highest priorities among active traders."""
        now_ms = self._clock.time_ms()
        inactive_before = now_ms - int(self._cfg.inactive_after_days * DAY_MS)
        scored: list[tuple[float, str]] = []
        for i, a in enumerate(self._registry):
            if i % 5000 == 4999:
                await asyncio.sleep(0)  # a large registry must not stall the event loop
            if a.last_seen_ms < inactive_before:
                continue
            p = priority(
                a.volume_usd,
                a.last_seen_ms,
                now_ms,
                requested=a.address in self._requested,
                seed_rank=self._seed_ranks.get(a.address),
            )
            scored.append((p, a.address))
        for address in self._requested | set(self._seed_ranks):
            activity = self._registry.get(address)
            if activity is None:
                scored.append(
                    (
                        priority(
                            ZERO,
                            None,
                            now_ms,
                            requested=address in self._requested,
                            seed_rank=self._seed_ranks.get(address),
                        ),
                        address,
                    )
                )
        chosen = heapq.nlargest(self._cfg.max_tracked_traders, scored)
        keep = {address for _, address in chosen}
        for address in list(self._traders):
            if address not in keep and address not in self._requested:
                del self._traders[address]
        for p, address in chosen:
            entry = self._traders.setdefault(address, Tracked(address))
            entry.priority = p
        self._mark_candidates()
        self._wake.set()

    def _mark_candidates(self) -> None:
        """Traders near the top of the winners (by provisional score) get fills; those whose
        complete score then leads, a role (the public leaderboard's best, a role first).

        By rank: the provisional score is a lower bound, and a good month can still have a
        negative one. Losers need no fills (their badness is a bound on returns alone), so the
        whole budget for completing goes to the winners, where fills decide the score. A
        trader whose public trades look like market making is passed over: it cannot rank, and
        its fills are the most expensive of all."""
        n = self._cfg.scoring_top_n
        with_score = [
            t
            for t in self._traders.values()
            if t.provisional_score is not None and not self._looks_like_market_maker(t.address)
        ]
        # "Near the top" means something only once there is a field to be near the top of;
        # until then, only the public leaderboard's best are worth completing.
        settled = self._settled = len(with_score) >= 2 * n
        # The public leaderboard's best stay candidates once the field is settled: a month of
        # luck among dozens explored outranks them on the provisional score alone, and the
        # consistent winners were then never completed.
        near_top = {
            t.address
            for t in heapq.nlargest(n, with_score, key=lambda t: t.provisional_score or 0.0)
            if settled
        }
        seeded = {t.address for t in with_score if t.address in self._seed_best}
        # A role (60 weight) only where it can change what the board shows: among the best
        # complete scores, where a vault or an agent must not rank; and only once the field is
        # settled: while few scores are complete, any would lead however bad (in the scout
        # acceptance, the fills and roles of the six traders it watches took about 500 of the
        # first two minutes' 2,400 weight, ahead of the public leaderboard's best). A trader
        # the user asked to watch is completed then too, and its role is read like anyone's
        # if its complete score leads: a watched sub-account must not rank either.
        complete = [t for t in self._traders.values() if t.score is not None]
        leading = {t.address for t in heapq.nlargest(n, complete, key=lambda t: t.score or 0.0)}
        for t in self._traders.values():
            address = t.address
            requested = t.requested = address in self._requested
            t.merit = 2 if address in seeded else 1 if address in near_top else 0
            # The user's picks once the field is settled: at the start, they took the first
            # window's room for completing while the public leaderboard's best were still
            # having their portfolios read.
            t.candidate = t.merit > 0 or (requested and settled)
            t.promising = requested or t.candidate or address in self._seed_ranks
            t.contender = settled and t.candidate and address in leading
            if not t.candidate:
                t.portfolio = None  # only candidates keep one (a portfolio is tens of kB)
        self._reserve_scoring()

    def _looks_like_market_maker(self, address: str) -> bool:
        seen = self._registry.get(address)
        return seen is not None and analytics.looks_like_market_maker(
            seen.taker,
            seen.maker,
            span_ms=seen.last_seen_ms - seen.first_seen_ms,
            coins=len(seen.coins),
        )

    # -- truth: the follower, the leaders and the watched ------------------------------------

    async def _truth_worker(self) -> None:
        """The follower, then the leaders, then the traders the user asked to watch, each on
        its own interval and in its own lane: the scoring workers can all be waiting on a full
        window behind heavy reads, and a watched trader's position events must not wait too."""
        follower_due = -math.inf
        while not self._draining.is_set():
            now = self._clock.monotonic()
            if self._follower is not None and now >= follower_due:
                follower_due = now + self._cfg.follower_poll_interval_s
                sent_ms = self._clock.time_ms()
                state = await self._read_state(self._follower, Lane.FOLLOWER)
                if state is not None:
                    self.follower_read = AccountRead(state, sent_ms, self._clock.time_ms())
                    self.counters["follower_reads"] += 1
                continue
            watched = self._leaders | self._requested
            for address in list(self._truth_due):
                if address not in watched:
                    del self._truth_due[address]
            for address in watched:
                self._truth_due.setdefault(address, -math.inf)
            if self._truth_due:
                address, due = min(self._truth_due.items(), key=lambda item: item[1])
                if due <= now:
                    await self._read_truth(address, now)
                    continue
            nexts = list(self._truth_due.values())
            if self._follower is not None:
                nexts.append(follower_due)
            wait = min(nexts) - now if nexts else SELECT_EVERY_S
            self._wake.clear()
            await sleep_unless(self._clock, self._wake, max(0.05, wait))

    async def _read_truth(self, address: str, now: float) -> None:
        leader = address in self._leaders
        cfg = self._cfg
        self._truth_due[address] = now + (
            cfg.leader_poll_interval_s if leader else cfg.positions_interval_s
        )
        # A newly followed leader's first state goes in the order lane: its follow's first
        # orders wait on it, and weight spent stays a whole window, so in the leader lane it could
        # wait up to a minute for what scoring spent before the follow came (a dashboard test
        # saw over 30 s). One read of weight 2 per leader followed; a second try is a leader read.
        first = leader and address not in self._first_read
        if first:
            self._first_read.add(address)
        state = await self._read_state(address, Lane.ORDER if first else Lane.LEADER)
        if state is None:
            return
        self.counters["leader_reads" if leader else "positions"] += 1
        previous = self._leader_states.get(address)
        if leader:
            self._leader_states[address] = state
            for callback in self._on_leader_state:
                callback(address, state)
        entry = self._traders.get(address)
        if entry is not None:
            entry.positions_s = now
            before: Mapping[str, Position] | None = entry.positions
        elif previous is not None:
            before = {p.coin: p for p in previous.positions if p.szi != 0}
        else:
            before = None
        await self._absorb(address, state, entry, before)

    async def _read_state(self, address: str, lane: Lane) -> AccountState | None:
        try:
            return await self._info.clearinghouse_state(address, lane=lane)
        except (ExchangeError, WireError) as exc:
            self.counters["errors"] += 1
            log.warning("position read failed", address=address, error=str(exc))
            return None

    # -- scoring workers -------------------------------------------------------------------

    async def _scoring_worker(self) -> None:
        while not self._draining.is_set():
            traders = list(self._traders.values())
            job = next_job(
                traders,
                self._clock.monotonic(),
                self._cfg.positions_interval_s,
                self._cfg.scoring_interval_s,
                explore=self._exploring < max(1, self._cfg.workers - FREE_FOR_COMPLETING),
                # Few fills reads at a time: each reserves up to 120 weight and waits for its
                # likely cost to come free; the other workers' reads fill the window meanwhile.
                fills=self._fills_in_flight < FILLS_IN_FLIGHT,
            )
            if job is None:
                self._wake.clear()
                await sleep_unless(self._clock, self._wake, 1.0)
                continue
            trader = job.trader
            # Claim it before the first await, so no other worker takes the same job.
            attr = _LAST[job.kind]
            previous = getattr(trader, attr)
            setattr(trader, attr, self._clock.monotonic())
            self._fills_in_flight += job.kind == "fills"
            exploring = not trader.promising
            self._exploring += exploring
            worker = asyncio.current_task()
            self._in_flight[worker] = (job.kind, self._clock.monotonic())
            try:
                await self._run(job)
            except (ExchangeError, WireError, StoreError) as exc:
                self.counters["errors"] += 1
                # Due again after a pause, not after a whole interval.
                setattr(trader, attr, previous)
                trader.retry_after_s = self._clock.monotonic() + FAILURE_RETRY_S
                log.warning(
                    "tracking job failed", job=job.kind, address=trader.address, error=str(exc)
                )
            finally:
                self._fills_in_flight -= job.kind == "fills"
                self._exploring -= exploring
                self._in_flight.pop(worker, None)

    async def _run(self, job: Job) -> None:
        t = job.trader
        if job.kind == "positions":
            lane = Lane.SCORING if t.promising else Lane.ENRICHMENT
            state = await self._info.clearinghouse_state(t.address, lane=lane)
            self.counters["positions"] += 1
            await self._absorb(t.address, state, t, t.positions)
        elif job.kind == "role":
            await self._read_role(t)
            if t.portfolio is not None:  # its figures again, with the role (and fills, if read)
                fills = await self._stored_fills(t) if t.fills_s > -math.inf else None
                await self._publish_metrics(t, t.portfolio, fills)
        elif job.kind == "fills":
            await self._fetch_fills(t)
            portfolio = t.portfolio
            if portfolio is None:
                self.counters["portfolio_reads"] += 1
                portfolio = await self._info.portfolio(t.address, lane=Lane.SCORING)
            await self._publish_metrics(t, portfolio, await self._stored_fills(t))
        else:
            await self._score(t)

    async def _absorb(
        self,
        address: str,
        state: AccountState,
        t: Tracked | None,
        before: Mapping[str, Position] | None,
    ) -> None:
        """A new snapshot: events against the previous one, then store and publish."""
        now_ms = state.time_ms or self._clock.time_ms()
        events = position_events(address, before, state, self._mids, now_ms)
        positions = {p.coin: p for p in state.positions if p.szi != 0}
        if t is not None:
            t.positions = positions
            m = state.margin_summary
            t.summaries.append((now_ms, m.account_value, m.total_margin_used, m.total_ntl_pos))
        await self._db.save_positions(
            address,
            state.margin_summary.account_value,
            [
                position_json(
                    p.coin,
                    p.szi,
                    p.entry_px,
                    p.position_value,
                    p.unrealized_pnl,
                    p.leverage.value if p.leverage is not None else None,
                    p.liquidation_px,
                    p.margin_used,
                )
                for p in positions.values()
            ],
            now_ms,
        )
        for e in await self._db.record_events(events):
            self.counters["events"] += 1
            self._bus.publish(Event("position", event_json(e), e.time_ms, e.address))

    async def _score(self, t: Tracked) -> None:
        """A fresh portfolio, with the stored fills when the trader is a candidate.

        Completing the top (candidates, seeds, requests) goes in the scoring lane; exploring
        everyone else in the lowest one, so it only ever uses what completing leaves over."""
        lane = Lane.SCORING if t.promising else Lane.ENRICHMENT
        self.counters["portfolio_reads"] += 1
        self.counters["exploring_reads"] += 0 if t.promising else 1
        portfolio = await self._info.portfolio(t.address, lane=lane)
        fills = await self._stored_fills(t) if t.candidate and t.fills_s > -math.inf else None
        await self._publish_metrics(t, portfolio, fills)

    async def _read_role(self, t: Tracked) -> None:
        t.role = await self._info.user_role(t.address, lane=Lane.SCORING)
        t.role_s = self._clock.monotonic()
        await self._db.save_role(t.address, t.role, self._clock.time_ms())
        self.counters["roles"] += 1  # counted once stored: a reader of the count finds the row

    def _would_lead(self, t: Tracked, score: float) -> bool:
        """Whether a complete ``score`` would be among the best ``scoring_top_n`` of them, once
        the field is settled (as for contenders: before, every early score would lead, and
        reading all their roles first left too few ranked at two minutes), for a trader that
        is near the top by its provisional score or that the user asked to watch."""
        if not self._settled or not (t.merit > 0 or t.requested):
            return False
        others = [x.score for x in self._traders.values() if x.score is not None and x is not t]
        best = heapq.nlargest(self._cfg.scoring_top_n, others)
        return len(best) < self._cfg.scoring_top_n or score > best[-1]

    async def _publish_metrics(
        self, t: Tracked, portfolio: Portfolio, fills: list[Fill] | None
    ) -> None:
        now_ms = self._clock.time_ms()
        sz_decimals = {a.name: a.sz_decimals for a in self._universe.universe}
        snapshots = [
            AccountState((), MarginSummary(av, margin, ntl, ZERO), None, None, None, ms)
            for ms, av, margin, ntl in t.summaries
        ]

        def analyze() -> dict[str, analytics.TraderMetrics]:
            return analytics.analyze(
                portfolio,
                now_ms=now_ms,
                fills=fills,
                snapshots=snapshots,
                role=t.role,
                follower_equity=self._follower_equity,
                sz_decimals=sz_decimals,
            )

        metrics = analyze()
        month = metrics.get("month")
        score = None if month is None else month.score
        if t.role is None and score is not None and self._would_lead(t, score):
            # Near the top of the winners, where a vault or an agent must not rank even for a
            # moment (one did, its role read in flight, at the scout acceptance's two
            # minutes): its role first, then its score.
            await self._read_role(t)
            metrics = analyze()
            month = metrics.get("month")
        t.provisional_score = month.provisional_score if month else None
        t.provisional_badness = month.provisional_badness if month else None
        t.score = month.score if month else None
        account_value = next(
            (m.account_value for m in metrics.values() if m.account_value is not None), None
        )
        await self._db.save_stats(
            t.address,
            {w: m.as_dict() for w, m in metrics.items()},
            _index_points(portfolio),
            account_value,
            now_ms,
            board_figures=pack_metrics(metrics, updated_ms=now_ms),
        )
        self._metrics.put(t.address, metrics, account_value=account_value, updated_ms=now_ms)
        self.counters["scored"] += 1
        was = t.candidate
        self._mark_candidates()
        t.portfolio = portfolio if t.candidate else None
        if t.candidate and not was:
            log.debug("tracker: a new candidate", address=t.address)

    async def _fetch_fills(self, t: Tracked) -> None:
        """New fills since the last look (the whole lookback the first time), stored. A month
        of a typical trader's fills costs 30-50 weight this way, against 120 for a full page of
        the most recent 2000."""
        now_ms = self._clock.time_ms()
        since = now_ms - LOOKBACK_MS if t.fills_until_ms is None else t.fills_until_ms
        fresh = await self._info.user_fills_by_time(
            t.address, since, lane=Lane.SCORING, max_pages=3
        )
        self.counters["fills_fetched"] += len(fresh)
        self.counters["fills_reads"] += 1
        await self._db.record_fills(t.address, fresh, "rest", now_ms)
        t.fills_until_ms = max((f.time_ms for f in fresh), default=t.fills_until_ms or now_ms)

    async def _stored_fills(self, t: Tracked) -> list[Fill]:
        return await self._db.load_fills(t.address, self._clock.time_ms() - LOOKBACK_MS)

    # -- prices, seeds, retention ----------------------------------------------------------

    async def _read_mids(self) -> None:
        async for update in self._mids_queue:
            self._mids.update(update.mids)
            for sink in self._mids_sinks:
                sink.offer(update)  # never waits: a sink that is full misses one update

    async def _seeder(self) -> None:
        url = self._discovery.seed_url or f"{self._network_rest}/leaderboard"
        while True:
            try:
                rows = await self._info.public_leaderboard(url)
            except (ExchangeError, WireError) as exc:
                log.warning("seed leaderboard unavailable", url=url, error=str(exc))
                rows = ()
            if rows:
                n = max(self._cfg.scoring_top_n, 10)
                best, worst = _seed_lists(rows, n)
                ranks: dict[str, int] = {}
                for i, r in enumerate(best):
                    ranks[r.address] = i
                self._seed_best = {r.address for r in best}
                for i, r in enumerate(worst):
                    ranks.setdefault(r.address, i)
                self._seed_ranks = ranks
                self.counters["seeded"] = len(ranks)
                with contextlib.suppress(StoreError):
                    await self._db.mark_seeded(list(ranks), self._clock.time_ms())
                await self._select()
                log.info("tracking seeded from the public leaderboard", traders=len(ranks))
            if await sleep_unless(self._clock, self._draining, 86_400.0 if rows else 600.0):
                return

    async def _pruner(self) -> None:
        while not await sleep_unless(self._clock, self._draining, self._retention.prune_interval_s):
            now_ms = self._clock.time_ms()
            try:
                events, fills = await self._db.prune(
                    now_ms - int(self._retention.events_days * DAY_MS),
                    now_ms - int(self._retention.fills_days * DAY_MS),
                )
            except StoreError as exc:
                log.warning("pruning failed", error=str(exc))
                continue
            self.counters["pruned_events"] += events
            self.counters["pruned_fills"] += fills

    # -- figures ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        polled = [t.positions_s for t in self._traders.values() if t.positions_s > -math.inf]
        return {
            "tracked": len(self._traders),
            "candidates": sum(1 for t in self._traders.values() if t.candidate),
            "requested": len(self._requested),
            "leaders": len(self._leaders),
            "oldest_snapshot_age_s": round(now - min(polled), 1) if polled else None,
            # What each worker is doing and since when: a job that never ends shows here.
            "in_flight": sorted(
                (kind, round(now - since, 1)) for kind, since in self._in_flight.values()
            ),
            **self.counters,
        }


def _seed_lists(rows: Sequence[SeedTrader], n: int) -> tuple[list[SeedTrader], list[SeedTrader]]:
    """The public leaderboard's ``n`` best and ``n`` worst traders, among those whose whole
    history agrees (a lucky month after losing over all time is not a winner to complete
    first, and an unlucky one after winning is not a loser).

    The best by their weakest return of the week, the month and all time: one large lucky
    trade makes a month, not all three. Against the simulator's ground truth that put 8 skilled
    traders among the first 12 where the month alone put 6 (the rest vaults, sub-accounts,
    whales and the lucky). The worst by their month."""

    def roi(r: SeedTrader, window: str) -> Decimal | None:
        perf = r.windows.get(window)
        return None if perf is None else perf.roi

    def weakest(r: SeedTrader) -> Decimal:
        known = [x for w in ("week", "month", "allTime") if (x := roi(r, w)) is not None]
        return min(known, default=ZERO)

    ranked = [r for r in rows if roi(r, "month") is not None]
    by_month = sorted(ranked, key=lambda r: roi(r, "month") or ZERO, reverse=True)
    best = [r for r in sorted(ranked, key=weakest, reverse=True) if weakest(r) > 0]
    worst = [
        r for r in reversed(by_month) if max(roi(r, "month") or ZERO, roi(r, "allTime") or ZERO) < 0
    ]
    return best[:n], worst[:n]


class _Drained(Exception):
    """Ends the tracker's task group when the daemon drains it."""


def _positions_from_json(rows: Sequence[Mapping[str, Any]]) -> dict[str, Position]:
    out: dict[str, Position] = {}
    for r in rows:

        def d(key: str, row: Mapping[str, Any] = r) -> Decimal | None:
            value = row.get(key)
            return None if value is None else Decimal(str(value))

        szi = d("szi")
        if szi is None or szi == 0:
            continue
        out[str(r["coin"])] = Position(
            coin=str(r["coin"]),
            szi=szi,
            entry_px=d("entry_px"),
            leverage=None,
            liquidation_px=d("liquidation_px"),
            margin_used=d("margin_used"),
            position_value=d("position_value"),
            unrealized_pnl=d("unrealized_pnl"),
            return_on_equity=None,
        )
    return out


def _index_points(portfolio: Portfolio) -> dict[str, list[list[float]]]:
    """The equity index per window, thinned to at most INDEX_POINTS_KEPT points."""
    out: dict[str, list[list[float]]] = {}
    for window in analytics.WINDOWS:
        period = portfolio.periods.get(window)
        stats = None if period is None else analytics.portfolio_stats(period)
        if stats is None:
            continue
        points = stats.index
        step = max(1, math.ceil(len(points) / INDEX_POINTS_KEPT))
        thinned = list(points[::step])
        if points and thinned[-1] != points[-1]:
            thinned.append(points[-1])
        out[window] = [[float(ms), round(value, 6)] for ms, value in thinned]
    return out
