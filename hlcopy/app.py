"""The composition root: builds everything the daemon runs and hands it to the supervisor.

Every resource is entered into one ``AsyncExitStack`` by the ``App`` that created it, so each
has exactly one owner that closes it, in reverse order of creation, however the run ends. The
supervisor (``daemon.py``) only runs components; it never builds or imports them.

The store is owned here too: created and finally closed by the ``App``, after every component
has stopped. Connecting is the store's own lazy, idempotent business (``Store.open``): the store
monitor component calls it at start and after a failure, which is how a database that went away
comes back without restarting the process.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal
from pathlib import Path
from types import TracebackType

import aiohttp

from hlcopy.api.backtest import BacktestJobs
from hlcopy.api.close import CloseAll
from hlcopy.api.performance import PerformanceReport
from hlcopy.api.server import ApiServer
from hlcopy.budget import LIVE_READ_BURST_PCT, WeightBudget
from hlcopy.clock import SYSTEM, Clock
from hlcopy.config import HlcopyConfig
from hlcopy.credentials import Secrets
from hlcopy.daemon import Daemon
from hlcopy.errors import SecretError
from hlcopy.events import EventBus
from hlcopy.follow.autofollow import AutoFollower
from hlcopy.follow.engine import ChangeInbox, CopyEngine
from hlcopy.follow.executor import PaperExecutor, Venue
from hlcopy.follow.follows import FollowRegistry
from hlcopy.follow.leaders import LeaderBooks, LeaderChange
from hlcopy.follow.norms import LeaderNorms
from hlcopy.follow.opportunities_service import Opportunities
from hlcopy.follow.protect import DeadManSwitch, Protector, stop_pcts_of
from hlcopy.follow.reconcile import Reconciler
from hlcopy.follow.riskkeeper import RiskKeeper, follow_scope
from hlcopy.follow.venues import LiveVenue
from hlcopy.hl import (
    ExchangeClient,
    InfoClient,
    NonceSource,
    Signer,
    StreamPool,
    UniverseService,
    new_session,
)
from hlcopy.instance import StateLock
from hlcopy.model import LeaderFill, OrderIntent, OrderOutcome
from hlcopy.notify import Notifier
from hlcopy.queues import BoundedQueue
from hlcopy.scout.discovery import Discovery, Registry
from hlcopy.scout.leaderboard import Leaderboard, LeaderboardService
from hlcopy.scout.tracker import Tracker
from hlcopy.store import Store
from hlcopy.store.monitor import StoreMonitor
from hlcopy.store.performance import PerformanceStore


class App:
    """``async with App(config, secrets) as app: await app.run()``."""

    def __init__(
        self,
        config: HlcopyConfig,
        secrets: Secrets,
        *,
        config_path: Path | None = None,
        clock: Clock = SYSTEM,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.secrets = secrets
        self.clock = clock
        self.daemon = Daemon(config, config_path=config_path, notifier=notifier, clock=clock)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> App:
        try:
            await self._build(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def _sz_decimals(self, coin: str) -> int | None:
        """A coin's lot (szDecimals) in the exchange's universe; None when unknown."""
        asset = self.universe.universe.get(coin)
        return asset.sz_decimals if asset is not None else None

    async def _build(self, stack: contextlib.AsyncExitStack) -> None:
        cfg, clock, daemon = self.config, self.clock, self.daemon
        net = cfg.network
        session = await stack.enter_async_context(new_session(net.request_timeout_s))
        budget = WeightBudget(
            cfg.budget.weight_per_minute,
            cfg.budget.headroom_pct,
            clock=clock,
            # Paper mode sends no orders, so there is nothing to pace the reads for: discovery
            # starts with the whole window.
            read_burst_pct=LIVE_READ_BURST_PCT if cfg.account.mode == "live" else 100,
        )
        info = InfoClient(
            session, net.rest, budget, batch_clearinghouse_states=net.batch_clearinghouse_states
        )
        self.store = Store(cfg.database, cfg.state.dir, self.secrets.db_password)
        stack.push_async_callback(self.store.close)
        self.universe = UniverseService(
            info, builder_dexes=cfg.discovery.builder_dexes, clock=clock
        )
        self.stream = StreamPool(
            net.ws,
            ping_interval_s=net.ws_ping_interval_s,
            silence_timeout_s=net.ws_silence_timeout_s,
            backoff_base_s=net.ws_reconnect_base_s,
            backoff_cap_s=net.ws_reconnect_cap_s,
            clock=clock,
        )
        self.bus = EventBus()
        self.leaderboard = Leaderboard(losers_window=cfg.leaderboard.losers_window, clock=clock)
        # The copy pipeline's queues: leader fills and intents are never dropped.
        leader_fills = BoundedQueue[LeaderFill]("leader_fills", 10_000, "block")
        changes = ChangeInbox(BoundedQueue[LeaderChange]("leader_changes", 10_000, "block"))
        intents = BoundedQueue[OrderIntent]("intents", 1_000, "block")
        outcomes = BoundedQueue[OrderOutcome]("outcomes", 1_000, "block")
        daemon.queue(leader_fills)
        daemon.queue(changes.queue)
        daemon.queue(intents)
        daemon.queue(outcomes)
        self.discovery: Discovery | None = None
        registry: Registry = Registry(cfg.discovery.queue_size)
        if cfg.discovery.enabled:
            self.discovery = Discovery(
                self.stream,
                self.universe,
                info,
                self.store,
                cfg.discovery,
                leader_fills,
                clock=clock,
            )
            registry = self.discovery.registry
            daemon.queue(self.discovery.frames)
        self.tracker = Tracker(
            info=info,
            store=self.store,
            stream=self.stream,
            universe=self.universe,
            registry=registry,
            metrics=self.leaderboard,
            bus=self.bus,
            config=cfg,
            clock=clock,
        )

        self.risk = RiskKeeper(self.store, self.bus, clock=clock)
        self.follows = FollowRegistry(self.store, cfg, clock)
        self.books = LeaderBooks(self.stream, info, self.store, leader_fills, changes, cfg, clock)
        self.tracker.on_leader_state(self.books.snapshot)
        self.norms = LeaderNorms(self.store, min_days=cfg.risk.leader_norm_min_days, clock=clock)
        self.tracker.on_leader_state(self.norms.observe)
        venue: Venue | None = None
        exchange: ExchangeClient | None = None
        if cfg.account.mode == "live":
            exchange = self._live_exchange(session, budget)
            venue = self._live_venue(exchange, info)
        self.executor = PaperExecutor(
            intents,
            outcomes,
            self.stream,
            info,
            self.store,
            self.bus,
            cfg,
            clock,
            subscribe_mids=False,
            venue=venue,
            sz_decimals=self._sz_decimals,
        )
        self.tracker.share_mids(self.executor.mids_sink)
        self.opportunities = Opportunities(
            self.store, self.bus, self.leaderboard, self.universe, info, cfg, clock
        )
        self.tracker.share_mids(self.opportunities.mids_sink)
        self.reconciler: Reconciler | None = None
        if exchange is not None:
            self.reconciler = Reconciler(
                self.executor,
                self._sz_decimals,
                info=info,
                account=cfg.account.address,
                bus=self.bus,
                clock=clock,
            )
        self.copier = CopyEngine(
            follows=self.follows,
            books=self.books,
            executor=self.executor,
            risk=self.risk,
            universe=self.universe,
            changes=changes,
            outcomes=outcomes,
            truth=self.tracker,
            firehose=self.discovery,
            config=cfg,
            clock=clock,
            norms=self.norms,
            reconciler=self.reconciler,
        )

        # Start order: each waits for the one before it to be ready.
        daemon.add(StoreMonitor(self.store, clock=clock))
        daemon.add(self.follows)
        daemon.add(self.universe)
        daemon.add(self.stream)
        daemon.add(LeaderboardService(self.leaderboard, self.store, cfg.leaderboard, clock=clock))
        if self.discovery is not None:
            daemon.add(self.discovery)
        daemon.add(self.tracker)
        daemon.add(self.risk)
        daemon.add(self.books)
        daemon.add(self.norms)
        daemon.add(self.executor)
        daemon.add(self.copier)
        if exchange is not None:
            self._add_protection(exchange, info)
        daemon.add(AutoFollower(self.follows, self.leaderboard, self.executor, cfg, clock))
        daemon.add(self.opportunities)
        # Backtests over the API read through the daemon's budget, on its lowest lane.
        backtests = BacktestJobs(info, lambda: daemon.config, clock)
        daemon.add_stats("backtests", backtests.stats)
        if cfg.api.enabled:
            daemon.add(
                ApiServer(
                    daemon,
                    cfg.api,
                    self.secrets.api_token,
                    leaderboard=self.leaderboard,
                    registry=registry,
                    tracker=self.tracker,
                    bus=self.bus,
                    store=self.store,
                    risk=self.risk,
                    follows=self.follows,
                    positions=self.copier,
                    closer=CloseAll(
                        self.executor,
                        self.risk,
                        lambda coin: self.universe.universe.get(coin),
                        slippage_bps=cfg.risk.max_slippage_bps,
                        clock=clock,
                    ),
                    performance_report=PerformanceReport(
                        self.follows,
                        PerformanceStore(self.store),
                        self.executor.mids,
                        clock,
                        leader_positions=self._leader_positions,
                        equity_ratio=self._equity_ratio,
                    ),
                    clock=clock,
                    backtests=backtests,
                )
            )
        daemon.add_stats("budget", budget.stats)
        daemon.add_stats("info", info.stats)
        daemon.add_stats("events", self.bus.stats)
        if self.reconciler is not None:
            daemon.add_stats("reconciler", self.reconciler.stats)

    def _live_exchange(
        self, session: aiohttp.ClientSession, budget: WeightBudget
    ) -> ExchangeClient:
        """Live mode: the one exchange client (one nonce source) the venue and the protection
        share, signing with the agent key for the configured account."""
        cfg = self.config
        key = self.secrets.agent_key
        if cfg.account.address is None or key is None:  # the config and the secrets refuse this
            raise SecretError(["account: live mode needs account.address and the agent key"])
        return ExchangeClient(
            session,
            cfg.network.rest,
            Signer.from_key(key.reveal()),
            budget,
            is_mainnet=cfg.network.is_mainnet,
            nonces=NonceSource(self.clock),
            poster=self.stream,  # orders over a WebSocket post when a connection is up
        )

    def _live_venue(self, exchange: ExchangeClient, info: InfoClient) -> LiveVenue:
        """Live mode: orders signed by the agent key for the configured account; every query
        (positions, orderStatus, our own fills) names the account, never the agent."""
        cfg = self.config
        address = cfg.account.address
        assert address is not None  # _live_exchange refused it
        tracker, universe, risk, follows = self.tracker, self.universe, self.risk, self.follows

        def leverage_cap(intent: OrderIntent) -> Decimal | None:
            """The tightest max_leverage of the follows behind an order (None: uncapped)."""
            caps = [
                r.spec.max_leverage
                for f in intent.follow_ids
                if (r := follows.get(f)) is not None and r.spec.max_leverage is not None
            ]
            return min(caps) if caps else None

        return LiveVenue(
            exchange,
            info,
            address,
            lambda coin: universe.universe.get(coin),
            stream=self.stream,
            risk=lambda intent: risk.trading_state(*(follow_scope(f) for f in intent.follow_ids)),
            follower_state=lambda: tracker.follower_read,
            clock=self.clock,
            expires_after_s=cfg.account.order_expires_after_s,
            leverage_cap=leverage_cap,
        )

    def _add_protection(self, exchange: ExchangeClient, info: InfoClient) -> None:
        """Live mode: the protective stops (idle while no follow sets protective_stop_pct; at
        start they cancel stops of ours no follow wants any more) and, where configured, the
        dead man's switch, both on the venue's exchange client."""
        cfg, follows, universe = self.config, self.follows, self.universe
        assert cfg.account.address is not None

        def pcts() -> dict[str, Decimal]:
            return stop_pcts_of((r.id, r.spec.protective_stop_pct) for r in follows.follows())

        self.protector = Protector(
            self.executor,
            exchange,
            info,
            cfg.account.address,
            lambda coin: universe.universe.get(coin),
            pcts,
            self.bus,
            self.clock,
            expires_after_s=cfg.account.order_expires_after_s,
        )
        self.daemon.add(self.protector)
        if cfg.account.dead_man_switch_s is not None:
            self.daemon.add(
                DeadManSwitch(
                    exchange,
                    cfg.account.dead_man_switch_s,
                    self.clock,
                    stops_on=lambda: bool(pcts()),
                )
            )

    def _leader_positions(self, leader: str) -> dict[str, Decimal]:
        """A leader's positions as its book knows them now (for the performance report)."""
        out = {}
        for coin in self.books.coins(leader):
            view = self.books.view(leader, coin)
            if view is not None:
                out[coin] = view.szi
        return out

    def _equity_ratio(self, leader: str) -> Decimal | None:
        """Our equity over the leader's, now (equity sizing, for the performance report)."""
        state = self.tracker.leader_state(leader)
        if state is None or state.margin_summary.account_value <= 0:
            return None
        try:
            ours = self.executor.equity()
        except ValueError:
            return None  # a position without a price yet
        return ours / state.margin_summary.account_value

    async def run(self, stop_after_s: float | None = None) -> int:
        """Run the daemon until stopped (or for ``stop_after_s``); the process exit code."""
        return await self.daemon.run(stop_after_s)


async def serve(
    config: HlcopyConfig,
    secrets: Secrets,
    config_path: Path | None = None,
    *,
    stop_after_s: float | None = None,
    clock: Clock = SYSTEM,
) -> int:
    """Run the daemon described by ``config`` until stopped; the process exit code.

    Raises InstanceLocked when another hlcopy holds the state directory: the lock is taken
    before anything is started or connected.
    """
    with StateLock(config.state.dir):
        async with App(config, secrets, config_path=config_path, clock=clock) as app:
            return await app.run(stop_after_s)
