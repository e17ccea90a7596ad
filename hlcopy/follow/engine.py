"""The copy engine: the async shell around the copier (``follow/copier.py``).

It keeps the followed leaders in step with the follows (the leader books, the tracker's leader
truth, discovery's firehose watch, the risk scopes), and for every change of a leader's book it
gathers what ``decide`` needs for that coin — the follows concerned, the leaders' views, the
follower's position, attribution and orders in flight, the market, the risk states — decides,
and hands the intents to the executor and the skips to the copy log. A reconcile pass decides
every coin in play again every ``tracking.reconcile_interval_s``, so a missed change, a partial
fill or a restart converges through the same code; live, the reconciler (``follow/reconcile.py``)
first corrects the books where the exchange's positions drifted from them, and a reconcile pass
sends at most one order per coin. Decisions for one coin are serialised, so an order in flight
is always counted as pending by the next one.

**The direct path.** Changes come in through a ``ChangeInbox``. A change is decided in the turn
of whoever produced it (the stream reader applying a leader's ``userFills``, for the lowest
latency) when nothing of that coin waits or is being decided and no delay applies; the intents go
to ``PaperExecutor.submit``, which counts them as pending before anything can await. Otherwise the
change queues, in order, for the engine's task. A decision that moves attribution between follows
(a transfer, stored before it counts) always takes the queued path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Protocol

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import HlcopyConfig
from hlcopy.errors import ExchangeError, StoreError
from hlcopy.follow.copier import (
    AccountLimits,
    Decision,
    FollowerView,
    LeaderView,
    Market,
    decide,
)
from hlcopy.follow.executor import PaperExecutor
from hlcopy.follow.follows import FollowRecord, FollowRegistry
from hlcopy.follow.leaders import LeaderBooks, LeaderChange
from hlcopy.follow.norms import LeaderNorms
from hlcopy.follow.reconcile import Reconciler
from hlcopy.follow.risk import RiskInputs, RiskLimits, TradingState, result_of
from hlcopy.follow.riskkeeper import GLOBAL, RiskKeeper, follow_scope, leader_scope
from hlcopy.hl import UniverseService
from hlcopy.model import ZERO, LeaderFill, OrderOutcome, TargetPosition
from hlcopy.queues import BoundedQueue

log = structlog.get_logger(__name__)

SENT_KEPT = 10_000  # orders awaiting their outcome, remembered for their follows' risk
_NONE: Mapping[str, Decimal] = MappingProxyType({})  # a follow that holds nothing


class _Drained(Exception):
    """Raised inside the task group to leave it when the engine is drained."""


class ChangeInbox:
    """Where the leader books hand changes to the copy engine (a ``Sink``). See the module
    docstring: decided at once by the engine's ``direct`` handler when it can, otherwise queued
    in order for the engine's task. It counts the changes of each coin queued or being decided
    there, so a direct decision never overtakes one that came before it."""

    def __init__(self, queue: BoundedQueue[LeaderChange]) -> None:
        self.queue = queue
        #: Set by the running engine: decides a change now, or returns False to queue it.
        self.direct: Callable[[LeaderChange], bool] | None = None
        self._queued: Counter[str] = Counter()
        self.direct_count = 0

    def offer(self, change: LeaderChange) -> bool:
        direct = self.direct
        if direct is not None and change.coin not in self._queued and direct(change):
            self.direct_count += 1
            return True
        if not self.queue.offer(change):
            return False
        self._queued[change.coin] += 1
        return True

    async def put(self, change: LeaderChange) -> None:
        if not self.offer(change):
            await self.queue.put(change)
            self._queued[change.coin] += 1

    def done(self, change: LeaderChange) -> None:
        """The engine's task has dealt with a queued change."""
        left = self._queued[change.coin] - 1
        if left > 0:
            self._queued[change.coin] = left
        else:
            del self._queued[change.coin]


class LeaderTruth(Protocol):
    """Who reads the leaders' positions from the exchange (the tracker)."""

    def set_leaders(self, addresses: Iterable[str]) -> None: ...


class FirehoseWatch(Protocol):
    """Who spots the leaders in the public trades (discovery)."""

    def watch(self, addresses: Iterable[str]) -> None: ...


class CopyEngine(Component):
    """See the module docstring."""

    name = "copier"

    def __init__(
        self,
        *,
        follows: FollowRegistry,
        books: LeaderBooks,
        executor: PaperExecutor,
        risk: RiskKeeper,
        universe: UniverseService,
        changes: ChangeInbox,
        outcomes: BoundedQueue[OrderOutcome],
        truth: LeaderTruth | None,
        firehose: FirehoseWatch | None,
        config: HlcopyConfig,
        clock: Clock = SYSTEM,
        norms: LeaderNorms | None = None,
        reconciler: Reconciler | None = None,
    ) -> None:
        self._follows = follows
        self._books = books
        self._executor = executor
        self._risk = risk
        self._universe = universe
        self._changes = changes
        self._outcomes = outcomes
        self._truth = truth
        self._firehose = firehose
        self._norms = norms
        self._reconciler = reconciler
        self._clock = clock
        self._sent: dict[str, tuple[str, ...]] = {}  # cloid -> the follows that caused it
        self._live_version = -1
        self._live_follows: tuple[FollowRecord, ...] = ()
        self._delays: dict[str, int] = {}  # leader -> the longest delay_ms of its live follows
        self.reconfigure(config)
        self._coin_locks: dict[str, asyncio.Lock] = {}
        self._epoch = 0
        self._draining = asyncio.Event()
        self._leaders: dict[str, int] = {}
        self._targets: dict[tuple[str, str], TargetPosition] = {}
        self._unsubscribe = follows.subscribe(self._follows_changed)
        self.counters: dict[str, int] = {
            "changes": 0,
            "decisions": 0,
            "intents": 0,
            "skips": 0,
            "transfers": 0,
            "reconciles": 0,
            "outcomes": 0,
            "errors": 0,
        }

    def reconfigure(self, config: HlcopyConfig) -> None:
        r = config.risk
        self._reconcile_s = config.tracking.reconcile_interval_s
        self._limits = AccountLimits(
            max_coin_notional_usd=r.max_position_notional_usd,
            max_total_notional_usd=r.max_total_notional_usd,
            max_leverage=r.max_leverage,
            max_order_notional_usd=r.max_order_notional_usd,
        )
        self._risk_limits = RiskLimits(
            daily_loss_limit_usd=r.max_daily_loss_usd,
            max_drawdown_pct=r.max_drawdown_pct,
            max_notional_usd=r.max_total_notional_usd,
            max_leverage=r.max_leverage,
            max_rejects_in_row=r.max_consecutive_rejects,
            max_errors_per_window=r.max_errors_per_minute,
        )
        self._paper_equity = config.account.paper_equity_usd
        self._leader_limits = RiskLimits(
            max_rejects_in_row=None,
            max_errors_per_window=None,
            leader_leverage_multiple=r.leader_leverage_multiple,
        )

    # -- the followed leaders ---------------------------------------------------------------

    def _live(self) -> tuple[FollowRecord, ...]:
        """The follows that trade: active ones, and dropped ones winding down (kept with their
        delays per leader until the registry changes)."""
        if self._live_version != self._follows.version:
            live = tuple(f for f in self._follows.follows() if f.active or f.winding_down)
            delays: dict[str, int] = {}
            for f in live:
                if f.spec.delay_ms:
                    delays[f.leader] = max(delays.get(f.leader, 0), f.spec.delay_ms)
            self._live_follows, self._delays = live, delays
            self._live_version = self._follows.version
        return self._live_follows

    def _follows_changed(self) -> None:
        leaders: dict[str, int] = {}
        for f in self._live():
            leaders[f.leader] = max(leaders.get(f.leader, f.priority), f.priority)
        self._leaders = leaders
        self._books.set_leaders(leaders)
        if self._norms is not None:
            self._norms.set_leaders(leaders)
        if self._truth is not None:
            self._truth.set_leaders(leaders)
        if self._firehose is not None:
            self._firehose.watch(leaders)
        self._risk.set_scopes(
            [follow_scope(f.id) for f in self._follows.follows()]
            + [leader_scope(a) for a in leaders]
        )
        self._risk.set_provider(self._risk_inputs)

    # -- running ----------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        self._follows_changed()
        if self._reconciler is not None:
            await self._reconciler.start()  # live: the account's books checked before READY
        self._changes.direct = self._decide_direct
        ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume_changes(tg), name="copier:changes")
                tg.create_task(self._consume_outcomes(), name="copier:outcomes")
                tg.create_task(self._reconcile_loop(), name="copier:reconcile")
                await self._draining.wait()
                raise _Drained  # leaves the group, which cancels its tasks
        except* _Drained:
            pass
        finally:
            self._changes.direct = None

    async def drain(self) -> None:
        self._changes.direct = None
        self._draining.set()

    def _delay_ms(self, change: LeaderChange) -> int:
        self._live()  # refreshes the delays with the live follows
        return self._delays.get(change.leader, 0)

    def _decide_direct(self, change: LeaderChange) -> bool:
        """Decide ``change`` now, in the caller's turn; False when it must take the queued path
        (its coin's decision is in progress, a follow delays it, or a transfer must be stored
        first)."""
        lock = self._coin_locks.get(change.coin)
        if (lock is not None and lock.locked()) or self._delay_ms(change) > 0:
            return False
        try:
            decision = self._decision(change.coin, change.fill)
            if decision is not None and decision.transfers:
                return False  # decided again on the queued path, after storing the transfer
            self.counters["changes"] += 1
            if decision is not None:
                self._apply(change.coin, change.fill, decision)
        except (ExchangeError, StoreError, ValueError) as exc:
            self.counters["errors"] += 1
            log.warning("copy decision failed", coin=change.coin, error=str(exc))
        return True

    async def _consume_changes(self, tg: asyncio.TaskGroup) -> None:
        async for change in self._changes.queue:
            self.counters["changes"] += 1
            try:
                delay_ms = self._delay_ms(change)
                if delay_ms > 0:
                    tg.create_task(
                        self._later(change, delay_ms / 1000), name=f"copier:delay:{change.coin}"
                    )
                else:
                    await self._decide_coin(change.coin, change.fill)
            finally:
                self._changes.done(change)

    async def _later(self, change: LeaderChange, delay_s: float) -> None:
        await self._clock.sleep(delay_s)
        await self._decide_coin(change.coin, change.fill)

    async def _consume_outcomes(self) -> None:
        async for outcome in self._outcomes:
            self.counters["outcomes"] += 1
            scopes = self._scopes_of(outcome)
            self._risk.record(scopes, result_of(outcome))

    def _scopes_of(self, outcome: OrderOutcome) -> list[str]:
        """The follows whose order it was (by the intent's attribution): an order's error
        counts against them, not against every follow."""
        return [follow_scope(f) for f in self._sent.pop(outcome.cloid, ())]

    async def _reconcile_loop(self) -> None:
        while not await sleep_unless(self._clock, self._draining, self._reconcile_s):
            await self.reconcile()

    async def reconcile(self) -> None:
        """Decide every coin in play again: the leaders' coins and the follower's. Live, the
        reconciler first compares the exchange's positions with the books and corrects drift;
        each coin then gets at most one correcting order per interval."""
        self.counters["reconciles"] += 1
        self._epoch += 1
        if self._reconciler is not None:
            await self._reconciler.check({key: target.szi for key, target in self._targets.items()})
        coins: set[str] = set(self._executor.positions())
        for leader in self._leaders:
            coins |= self._books.coins(leader)
        for coin in sorted(coins):
            await self._decide_coin(coin, None, max_intents=1)

    # -- one decision -----------------------------------------------------------------------

    async def _decide_coin(
        self, coin: str, trigger: LeaderFill | None, max_intents: int | None = None
    ) -> None:
        lock = self._coin_locks.setdefault(coin, asyncio.Lock())
        async with lock:
            try:
                await self._decide_locked(coin, trigger, max_intents)
            except (ExchangeError, StoreError, ValueError) as exc:
                self.counters["errors"] += 1
                log.warning("copy decision failed", coin=coin, error=str(exc))

    async def _decide_locked(
        self, coin: str, trigger: LeaderFill | None, max_intents: int | None = None
    ) -> None:
        decision = self._decision(coin, trigger)
        if decision is None:
            return
        if decision.transfers:
            # Opposite wishes of two follows in one coin net inside the account: attribution
            # moves between them, only the net is traded.
            await self._executor.transfer(decision.transfers)
            self.counters["transfers"] += len(decision.transfers)
        self._apply(coin, trigger, decision, max_intents)

    def _decision(self, coin: str, trigger: LeaderFill | None) -> Decision | None:
        """Gather the core's inputs for ``coin`` and decide (no side effects); None when
        nothing of any follow's is in play in it."""
        asset = self._universe.universe.get(coin)
        if asset is None:
            return None
        attributed = self._executor.attributed_view()
        figures = self._executor.figures()  # the account's sums, kept between changes
        mids = self._executor.mids()
        mid = mids.get(coin)
        price = ZERO if mid is None else mid
        cores = []
        leaders: dict[str, LeaderView] = {}
        # The follows' figures, filled in one loop (a comprehension each is a call each).
        held: dict[str, Decimal] = {}
        other: dict[str, Decimal] = {}
        risk: dict[str, TradingState] = {}
        gates = self._reconciler.gates if self._reconciler is not None else None
        for f in self._live():
            view = self._books.view(f.leader, coin)
            parts = attributed.get(f.id, _NONE)
            part = parts.get(coin, ZERO)
            triggered = trigger is not None and trigger.leader == f.leader
            if (view is None or view.szi == 0) and part == 0 and not triggered:
                continue  # nothing of this follow's is in play in this coin
            core = f.core
            if gates and (gate := gates.get((f.id, coin))) is not None and gate > core.started_ms:
                # The reconciler saw this part shrink under a stop or while hlcopy was away:
                # like a new follow, it waits for the leader's next change to buy it back.
                core = replace(core, started_ms=gate)
            cores.append(core)
            if view is not None:
                leaders[f.leader] = view
            held[f.id] = part
            other[f.id] = figures.follow_notional.get(f.id, ZERO) - abs(part) * price
            risk[f.id] = self._risk.trading_state(follow_scope(f.id), leader_scope(f.leader))
        if not cores:
            return None
        pending = self._executor.pending_in(coin)
        szi = figures.positions.get(coin, ZERO)
        follower = FollowerView(
            szi=szi,
            attributed=held,
            pending={fid: pending.get(fid, ZERO) for fid in held},
            equity=figures.equity,
            other_notional=other,
            other_notional_total=figures.notional - abs(szi) * price,
        )
        return decide(
            follows=cores,
            leaders=leaders,
            follower=follower,
            market=Market(asset, mid),
            now_ms=self._clock.time_ms(),
            risk=risk,
            global_risk=self._risk.trading_state(),
            trigger=trigger,
            epoch=self._epoch,
            account_limits=self._limits,
        )

    def _apply(
        self,
        coin: str,
        trigger: LeaderFill | None,
        decision: Decision,
        max_intents: int | None = None,
    ) -> None:
        """Submit the intents, the first ``max_intents`` of them (a flip's open waits for the
        next decision), then keep the targets and log the skips: the orders go first, the
        bookkeeping after them (no await: each intent is pending before the next decision can
        run)."""
        self.counters["decisions"] += 1
        for intent in decision.intents[:max_intents]:
            if self._risk.trading_state() == TradingState.HALTED:
                break  # a halt that came in while deciding: nothing more goes out
            # Sent first: its outcome comes in a later turn at the soonest.
            self._executor.submit(intent, trigger)
            self.counters["intents"] += 1
            self._sent[intent.cloid] = intent.follow_ids
            if len(self._sent) > SENT_KEPT:  # an outcome that never came: forget the oldest
                del self._sent[next(iter(self._sent))]
        for target in decision.targets:
            self._targets[target.follow_id, target.coin] = target
        for skip in decision.skips:
            self.counters["skips"] += 1
            record = self._follows.get(skip.follow_id)
            self._executor.record_skip(
                skip.follow_id,
                coin,
                skip.reason.value,
                skip.szi,
                trigger,
                is_buy=None if skip.szi == 0 else skip.szi > 0,
                leader=record.leader if record is not None else None,
            )

    def positions(self) -> dict[str, Any]:
        """The follower's positions beside each follow's part and target (the API's view)."""
        account = self._executor.account()
        mids = self._executor.mids()
        attributed = self._executor.attributed()
        records = {f.id: f for f in self._follows.follows()}
        coins = set(account.positions) | {c for f, c in self._targets}
        rows = []
        for coin in sorted(coins):
            position = account.positions.get(coin)
            szi = position.szi if position is not None else ZERO
            mid = mids.get(coin)
            follows = []
            for fid in sorted({f for f, c in self._targets if c == coin} | set(attributed)):
                held = attributed.get(fid, {}).get(coin, ZERO)
                target = self._targets.get((fid, coin))
                if held == 0 and (target is None or target.szi == 0):
                    continue
                record = records.get(fid)
                follows.append(
                    {
                        "follow": fid,
                        "leader": record.leader if record is not None else None,
                        "mode": record.core.mode if record is not None else None,
                        "attributed_szi": held,
                        "target_szi": target.szi if target is not None else None,
                        "leader_szi": target.leader_szi if target is not None else None,
                        "target_at": target.time_ms if target is not None else None,
                    }
                )
            if szi == 0 and not follows:
                continue
            outside = (self._reconciler.outside or {}) if self._reconciler is not None else {}
            rows.append(
                {
                    "coin": coin,
                    "szi": szi,
                    "outside_szi": outside.get(coin, ZERO),
                    "entry_px": position.entry_px if position is not None else None,
                    "mid": mid,
                    "notional": abs(szi) * mid if mid is not None else None,
                    "unrealized_pnl": (mid - position.entry_px) * szi
                    if mid is not None and position is not None
                    else None,
                    "follows": follows,
                }
            )
        return {
            "mode": "paper" if self._executor.paper else "live",
            "equity": self._executor.figures().equity,
            "cash": account.cash,
            "realized_pnl": account.realized_pnl,
            "fees": account.fees,
            "funding": account.funding,
            "positions": rows,
            "leaders": {leader: self._books.status(leader) for leader in sorted(self._leaders)},
        }

    # -- figures for risk --------------------------------------------------------------------

    def _risk_inputs(self, scope: str) -> RiskInputs | None:
        if scope.startswith("follow:"):
            return self._follow_inputs(scope.removeprefix("follow:"))
        if scope.startswith("leader:"):
            return self._leader_inputs(scope.removeprefix("leader:"))
        if scope != GLOBAL:
            return None
        figures = self._executor.figures()
        if figures.equity is None:
            return None
        return RiskInputs(
            self._risk_limits,
            pnl=figures.equity - self._paper_equity,
            equity=figures.equity,
            notional=figures.notional,
        )

    def _follow_inputs(self, follow_id: str) -> RiskInputs | None:
        """A follow's own PnL from the executor's ledger; its drawdown is measured on the paper
        equity plus that PnL (a follow has no capital of its own)."""
        record = self._follows.get(follow_id)
        if record is None:
            return None
        figures = self._executor.ledger.figures(follow_id, self._executor.mids())
        if figures is None:
            return None  # a coin it holds has no price yet: unknown, not zero
        limits = RiskLimits(
            daily_loss_limit_usd=record.spec.daily_loss_limit_usd,
            max_drawdown_pct=record.spec.max_drawdown_pct,
            # A follow's order breakers are the account's (the [risk] section), on its orders.
            max_rejects_in_row=self._risk_limits.max_rejects_in_row,
            max_errors_per_window=self._risk_limits.max_errors_per_window,
        )
        return RiskInputs(
            limits,
            pnl=figures.pnl,
            equity=self._paper_equity + figures.pnl,
            notional=figures.notional,
        )

    def _leader_inputs(self, leader: str) -> RiskInputs | None:
        """The leader's leverage now against its 30-day norm (``follow/norms.py``)."""
        figures = None if self._norms is None else self._norms.leverage(leader)
        if figures is None:
            return None
        now, norm = figures
        return RiskInputs(self._leader_limits, leader_leverage=now, leader_leverage_norm=norm)

    def stats(self) -> dict[str, Any]:
        return {
            "leaders": len(self._leaders),
            "epoch": self._epoch,
            "direct": self._changes.direct_count,
            **self.counters,
        }
