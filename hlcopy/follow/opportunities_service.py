"""The opportunities component: records counter-trade opportunities and resolves their outcomes.

Two owned tasks:

* **record** — reads ``position`` events off the bus (the tracker publishes them), asks the pure
  core (``opportunities.py``) whether each is a top loser's open or add, writes the opportunity
  with one unresolved outcome row per horizon, and only then publishes an ``opportunity`` event.
* **resolve** — sleeps until the next outcome falls due (the store knows when: it holds every
  outcome still owed, so a restart loses none), prices it and writes it, then publishes.

The price at a due time is the live mid (handed in through ``mids_sink``, which the tracker feeds
from its allMids subscription) when the outcome is resolved within ``late_after_s`` of falling
due and the mids are that fresh. Otherwise — the daemon was down then, or busy, or the feed is
quiet — it is the close of the exchange's 1-minute candle that holds the due time (1-hour
candles once the minute ones are out of reach), asked for once that candle has closed. An
outcome whose price cannot be had yet is deferred in the store, with a growing pause.

Kept apart from the core like ``copier``/``engine`` and ``fills``/``executor``: the core is plain
data and importable by the backtest; this module only moves data.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final, Protocol

import structlog

from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import HlcopyConfig, OpportunitiesConfig
from hlcopy.errors import ExchangeError, StoreError, StoreUnavailable, WireError
from hlcopy.events import Event, EventBus, Overflowed, Subscriber
from hlcopy.follow.opportunities import (
    OPENING,
    Opportunity,
    PriceSource,
    candle_price,
    decide,
    event_from_json,
    outcome,
    ranks_of,
)
from hlcopy.hl import InfoClient, UniverseService
from hlcopy.model import AllMids, Candle
from hlcopy.queues import Sink
from hlcopy.store import Store
from hlcopy.store.opportunities import DueOutcome, OpportunityStore

log = structlog.get_logger(__name__)

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
MAX_MINUTE_BARS: Final = 4_000  # one candle request's span (the exchange answers 5,000 at most)
IDLE_S: Final = 60.0  # the longest sleep with nothing due (the store is asked again then)
STORE_RETRY_S: Final = 1.0
PRUNE_EVERY_S: Final = 3600.0
MAX_DEFER_S: Final = 3600.0


class LosersView(Protocol):
    """What the component needs of the leaderboard (``hlcopy.scout.leaderboard.Leaderboard``)."""

    version: int  # bumped by every refresh that changed the ranking

    def worst(self, n: int, window: str | None = None) -> list[str]: ...


class _Mids:
    """The latest mid per coin, stamped with when the last update came (never waits)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.mids: dict[str, Decimal] = {}
        self.updated_ms: int | None = None

    def offer(self, item: AllMids) -> bool:
        self.mids.update(item.mids)
        self.updated_ms = self.clock.time_ms()
        return True

    async def put(self, item: AllMids) -> None:
        self.offer(item)


class Opportunities(Component):
    """See the module docstring."""

    name = "opportunities"
    core = False  # copying goes on without it; owed outcomes wait in the store

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        board: LosersView,
        universe: UniverseService,
        info: InfoClient | None,
        config: HlcopyConfig,
        clock: Clock = SYSTEM,
        *,
        buffer: int = 10_000,
        batch: int = 200,
    ) -> None:
        self._db = OpportunityStore(store)
        self._bus = bus
        self._board = board
        self._universe = universe
        self._info = info
        self._clock = clock
        self._buffer = buffer
        self._batch = batch
        # Subscribed now, so no event published between construction and ``run`` is missed.
        self._sub: Subscriber = bus.subscribe(buffer, types=["position"])
        self._mids = _Mids(clock)
        self._wake = asyncio.Event()
        self._draining = asyncio.Event()
        self._ranks_key: tuple[int, int, str] | None = None
        self._ranks: dict[str, int] = {}
        self._cfg: OpportunitiesConfig = config.opportunities
        self._window = config.opportunities.window or config.leaderboard.losers_window
        self.counters: dict[str, int] = defaultdict(int)
        for key in ("events", "recorded", "resolved", "deferred", "store_errors", "lost"):
            self.counters[key] = 0
        self.reconfigure(config)

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._cfg = config.opportunities
        self._window = self._cfg.window or config.leaderboard.losers_window
        self._ranks_key = None

    @property
    def mids_sink(self) -> Sink[AllMids]:
        """Where the holder of the allMids feed hands its updates (``Tracker.share_mids``)."""
        return self._mids

    def mids(self) -> dict[str, Decimal]:
        """The latest mids handed in (empty until the first allMids)."""
        return dict(self._mids.mids)

    # -- running --------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        if self._sub.closed or self._sub.overflowed:  # drained or cut off before: listen again
            self._sub = self._bus.subscribe(self._buffer, types=["position"])
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._record_loop(), name="opportunities:record")
            tg.create_task(self._resolve_loop(), name="opportunities:resolve")
            ready.set()

    async def drain(self) -> None:
        """Record what is buffered already, then stop; the resolver stops at once (whatever it
        still owes is in the store)."""
        self._draining.set()
        self._wake.set()
        self._bus.unsubscribe(self._sub)

    # -- recording ------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            try:
                event = await self._sub.next()
            except StopAsyncIteration:
                return  # drained: everything buffered was handled
            except Overflowed:
                self.counters["overflows"] += 1
                log.warning("opportunities: fell behind the position events; listening again")
                if self._draining.is_set():
                    return
                self._sub = self._bus.subscribe(self._buffer, types=["position"])
                continue
            await self._consider(event)

    async def _consider(self, event: Event) -> None:
        self.counters["events"] += 1
        ev = event_from_json(event.data)
        if ev is None:
            self.counters["malformed"] += 1
            return
        cfg = self._cfg
        if not cfg.enabled or ev.kind not in OPENING:
            return  # the cheap exits first: most events are no opens of a top loser
        asset = self._universe.universe.get(ev.coin)
        decision = decide(
            ev,
            self._top_losers(cfg.losers_top_n),
            None if asset is None else asset.sz_decimals,
            cfg.notional_usd,
            self._window,
            self._mids.mids.get(ev.coin),
        )
        if not isinstance(decision, Opportunity):
            self.counters[f"skipped_{decision.reason}"] += 1
            return
        opp_id = await self._record(decision, cfg.horizons_s)
        if opp_id is None:
            return
        self.counters["recorded"] += 1
        self._wake.set()
        log.info(
            "opportunity",
            trader=decision.trader,
            coin=decision.coin,
            our_side=decision.our_side,
            size=str(decision.size),
            price=str(decision.price),
            losers_rank=decision.losers_rank,
        )
        await self._publish(opp_id, "recorded", None)

    async def _record(self, opp: Opportunity, horizons: Sequence[int]) -> int | None:
        """Write ``opp`` (retrying while the database is away); its id, None when it was
        recorded before or could not be written."""
        while True:
            try:
                opp_id = await self._db.record(opp, horizons, self._clock.time_ms())
            except StoreUnavailable as exc:
                self.counters["store_errors"] += 1
                log.warning("opportunities: database away; retrying", error=str(exc))
                if await sleep_unless(self._clock, self._draining, STORE_RETRY_S):
                    self.counters["lost"] += 1
                    return None
                continue
            except StoreError as exc:
                self.counters["store_errors"] += 1
                self.counters["lost"] += 1
                log.warning("opportunities: not recorded", coin=opp.coin, error=str(exc))
                return None
            if opp_id is None:
                self.counters["duplicates"] += 1
            return opp_id

    def _top_losers(self, n: int) -> dict[str, int]:
        """The losers list's top ``n`` (address -> rank), read again only when it changed."""
        key = (self._board.version, n, self._window)
        if key != self._ranks_key:
            self._ranks = ranks_of(self._board.worst(n, self._window))
            self._ranks_key = key
        return self._ranks

    async def _publish(self, opp_id: int, change: str, horizon_s: int | None) -> None:
        """Announce a stored change on the bus (as the API shows the opportunity)."""
        try:
            row = await self._db.opportunity(opp_id)
        except StoreError as exc:  # stored already; only the announcement is lost
            self.counters["store_errors"] += 1
            log.warning("opportunities: not announced", id=opp_id, error=str(exc))
            return
        if row is None:  # pruned in between
            return
        data = {"change": change, "horizon_s": horizon_s, **row}
        self._bus.publish(Event("opportunity", data, self._clock.time_ms(), row["trader"]))

    # -- resolving ------------------------------------------------------------------------

    async def _resolve_loop(self) -> None:
        pruned_s = -math.inf
        while not self._draining.is_set():
            # Cleared before the store is read: a recording after this point wakes us again.
            self._wake.clear()
            now_ms = self._clock.time_ms()
            try:
                full = await self._resolve_due(now_ms)
                if self._clock.monotonic() - pruned_s >= PRUNE_EVERY_S:
                    pruned_s = self._clock.monotonic()
                    days = self._cfg.retention_days
                    self.counters["pruned"] += await self._db.prune(now_ms - int(days * 86_400_000))
                next_ms = await self._db.next_due()
            except StoreError as exc:
                self.counters["store_errors"] += 1
                log.warning("opportunities: cannot read owed outcomes", error=str(exc))
                await sleep_unless(self._clock, self._draining, STORE_RETRY_S)
                continue
            delay = IDLE_S if next_ms is None else (next_ms - self._clock.time_ms()) / 1000
            if full or delay <= 0:
                continue  # more are due right now
            await sleep_unless(self._clock, self._wake, min(IDLE_S, delay))

    async def _resolve_due(self, now_ms: int) -> bool:
        """Resolve what is due by ``now_ms``; True when a whole batch was due (more may be)."""
        due = await self._db.due(now_ms, self._batch)
        bars = await self._minute_bars([d for d in due if not self._live(d, now_ms)])
        for d in due:
            if self._draining.is_set():
                return False
            priced = await self._price(d, now_ms, bars.get(d.coin, ()))
            if isinstance(priced, int):
                await self._db.defer(d.opportunity_id, d.horizon_s, priced)
                self.counters["deferred"] += 1
                continue
            px, source = priced
            o = outcome(d.our_side, d.size, d.price, d.horizon_s, d.due_ms, px, source, now_ms)
            if await self._db.resolve(d.opportunity_id, o):
                self.counters["resolved"] += 1
                self.counters[f"resolved_{source}"] += 1
                await self._publish(d.opportunity_id, "resolved", d.horizon_s)
        return len(due) >= self._batch

    def _live(self, d: DueOutcome, now_ms: int) -> bool:
        """Whether the live mid is the price at ``d``'s due time."""
        late_ms = self._cfg.late_after_s * 1000
        stamp = self._mids.updated_ms
        return (
            now_ms - d.due_ms <= late_ms
            and stamp is not None
            and now_ms - stamp <= late_ms
            and d.coin in self._mids.mids
        )

    async def _price(
        self, d: DueOutcome, now_ms: int, minute_bars: Sequence[Candle]
    ) -> tuple[Decimal, PriceSource] | int:
        """The price at ``d``'s due time and where it came from, or when to try again."""
        if self._live(d, now_ms):
            return self._mids.mids[d.coin], "mid"
        found = candle_price(minute_bars, d.due_ms, now_ms)
        if found is not None:
            return found[0], "candle_1m"
        for c in minute_bars:
            if c.open_ms <= d.due_ms <= c.close_ms:  # its bar is still open: ask once it closes
                return c.close_ms + 1
        if now_ms - d.due_ms < MINUTE_MS or self._info is None:
            return self._retry_at(d, now_ms)
        try:
            hour_bars = await self._info.candle_snapshot(
                d.coin, "1h", d.due_ms - HOUR_MS, d.due_ms + HOUR_MS, lane=Lane.ENRICHMENT
            )
        except (ExchangeError, WireError) as exc:
            self.counters["candle_errors"] += 1
            log.warning("opportunities: no candles", coin=d.coin, error=str(exc))
            return self._retry_at(d, now_ms)
        found = candle_price(hour_bars, d.due_ms, now_ms)
        if found is not None:
            return found[0], "candle_1h"
        return self._retry_at(d, now_ms)

    def _retry_at(self, d: DueOutcome, now_ms: int) -> int:
        return now_ms + int(min(MAX_DEFER_S, 30.0 * 2 ** min(d.tries, 12)) * 1000)

    async def _minute_bars(self, late: Sequence[DueOutcome]) -> dict[str, list[Candle]]:
        """1-minute candles around the due times of ``late``, per coin, in as few requests as
        their spread allows."""
        if not late or self._info is None:
            return {}
        by_coin: dict[str, list[int]] = defaultdict(list)
        for d in late:
            by_coin[d.coin].append(d.due_ms)
        out: dict[str, list[Candle]] = {}
        for coin, times in by_coin.items():
            times.sort()
            bars: list[Candle] = []
            start = 0
            while start < len(times):
                end = start
                while (
                    end + 1 < len(times)
                    and times[end + 1] - times[start] <= MAX_MINUTE_BARS * MINUTE_MS
                ):
                    end += 1
                try:
                    bars += await self._info.candle_snapshot(
                        coin,
                        "1m",
                        times[start] - MINUTE_MS,
                        times[end] + MINUTE_MS,
                        lane=Lane.ENRICHMENT,
                    )
                except (ExchangeError, WireError) as exc:
                    self.counters["candle_errors"] += 1
                    log.warning("opportunities: no candles", coin=coin, error=str(exc))
                start = end + 1
            out[coin] = bars
        return out

    # -- figures --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self._cfg.enabled,
            "mids": len(self._mids.mids),
            **self.counters,
        }
