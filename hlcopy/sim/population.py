"""Synthetic traders acting in the live market, through the engine like anyone else.

Position traders (skilled, unskilled, whales, lucky, vaults) act on their own clocks: each
decides when to open a position, plans it (side, leverage and margin type set with
``updateLeverage``, size, how long to hold, how many fills in and out, maker or taker), scales
in, holds, scales out, and moves money in and out of its account now and then. Noise traders
are the market's background flow: ``rate`` actions per second of market time, random sides,
half of them resting limit orders at the touch. Market makers own the quoted depth.

Every decision comes from one seeded generator and market time; addresses derive from the seed,
so a run is reproducible and the ground truth (who is what) can be served to tests.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal

from hlcopy.hl.wire import round_size
from hlcopy.sim.archetypes import (
    ARCHETYPES,
    OPENING_SPREAD_MS,
    REACTION_MS,
    Plan,
    Profile,
    address_for,
    choose_coin,
    counts,
    draw_profile,
    follows_trend,
    habitual_leverage,
    in_position_share,
    next_flow_ms,
    next_open_ms,
    plan_position,
)
from hlcopy.sim.engine import Account, Asset, Engine, OrderRequest

D = Decimal
SLIPPAGE = D("0.01")  # takers cross the book with a 1% limit
SUB_ACCOUNT_SHARE = 0.1
AGENT_SHARE = 0.25
CHUNK_GAP_MS = (30_000, 600_000)  # between the fills that build or unwind a position
MAKER_WAIT_MS = (60_000, 900_000)  # a resting limit waits this long before it is chased
NOISE_WAIT_MS = (10_000, 180_000)  # a noise limit order is cancelled after this long
NOISE_ORDERS = 3  # resting orders a noise trader keeps at most


def cents(usd: float) -> Decimal:
    """A float amount of USD as an exact Decimal of cents (never the float's binary tail)."""
    return D(f"{usd:.2f}")


# Scheduled events: (due ms, sequence, trader index, kind, coin).
OPEN, ENTER, EXIT, EXIT_NEXT, REVIEW, CHASE, FLOW, CLOSE = range(8)


@dataclass(slots=True)
class Holding:
    """A position a trader is working on."""

    coin: str
    plan: Plan
    units: Decimal  # the size the plan aims for
    entries_left: int
    exits_left: int
    resting: int | None = None  # oid of a limit order working for this position
    exiting: bool = False  # the exit has begun: its fills follow one another


@dataclass(slots=True)
class Trader:
    address: str
    profile: Profile
    index: int
    holdings: dict[str, Holding] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.profile.kind.name


class Population:
    """The traders and their decisions."""

    def __init__(self, engine: Engine, n: int, seed: int = 1, rate: float = 20.0) -> None:
        self.engine = engine
        self.seed = seed
        self.rate = rate
        self.rng = random.Random(seed * 7919 + 1)
        opening = random.Random(seed * 7919 + 2)
        self.traders: list[Trader] = []
        self.actions = 0
        self._seq = itertools.count()
        self._due: list[tuple[int, int, int, int, str]] = []
        coins = [
            a.name for a in engine.assets.values() if not a.is_spot and not a.delisted and not a.dex
        ]
        self._max_leverage = {c: engine.by_name[c].max_leverage for c in coins}
        now = engine.now_ms
        i = 0
        for kind, count in ((k, counts(n)[k.name]) for k in ARCHETYPES):
            for _ in range(count):
                address = address_for(seed, i)
                profile = draw_profile(kind, self.rng, coins)
                trader = Trader(address, profile, i)
                i += 1
                self.traders.append(trader)
                engine.open_account(address, cents(profile.equity), opening=True)
                if kind.name == "market_maker":
                    engine.market_makers.append(address)
                elif kind.name == "vault":
                    engine.roles[address] = ("vault", None)
                if kind.name != "market_maker" and not kind.flow_driven:
                    # A market found mid-life: the share of traders who would be holding a
                    # position now open one within the first minute, the rest when they would.
                    # (Drawn from their own stream: the population stays what it was.)
                    first = next_open_ms(profile, self.rng)
                    if opening.random() < in_position_share(profile):
                        first = opening.randint(1000, OPENING_SPREAD_MS)
                    self._at(now + first, trader, OPEN)
                if kind.name != "market_maker":
                    self._at(now + next_flow_ms(profile, self.rng), trader, FLOW)
        self._relate()
        self._noise = [t for t in self.traders if t.profile.kind.flow_driven]

    def _relate(self) -> None:
        """Sub-accounts and agent wallets: some traders trade in a master's sub-account, some
        have an API wallet registered for them."""
        people = [t for t in self.traders if t.kind not in ("market_maker", "vault")]
        for t in people:
            if self.rng.random() < SUB_ACCOUNT_SHARE:
                master = self.rng.choice(people)
                if master is not t and master.address not in self.engine.roles:
                    self.engine.roles[t.address] = ("subAccount", master.address)
        for t in people:
            if t.address in self.engine.roles or self.rng.random() >= AGENT_SHARE:
                continue
            agent = address_for(self.seed, f"agent:{t.index}")
            self.engine.agents[agent] = t.address
            name = f"bot{t.index}" if self.rng.random() < 0.5 else ""  # named ones: extraAgents
            self.engine.agent_names.setdefault(t.address, {})[agent] = name

    def archetypes(self) -> dict[str, str]:
        return {t.address: t.kind for t in self.traders}

    def profile(self, address: str) -> Profile | None:
        for t in self.traders:
            if t.address == address:
                return t.profile
        return None

    # -- time -------------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Act for ``dt_s`` seconds of market time: the background flow, then what is due."""
        for _ in range(self.plan(dt_s)):
            self.flow()
        self.run_due()

    def plan(self, dt_s: float) -> int:
        """How many flow actions ``dt_s`` seconds bring (Poisson)."""
        lam = self.rate * dt_s
        if not self._noise or lam <= 0:
            return 0
        if lam > 30:  # normal approximation: fast and close enough for large rates
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        threshold, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= threshold:
                return k
            k += 1

    def run_due(self, limit: int | None = None) -> bool:
        """Run the scheduled decisions that are due (at most ``limit``); True if more wait."""
        now = self.engine.now_ms
        done = 0
        while self._due and self._due[0][0] <= now:
            if limit is not None and done >= limit:
                return True
            done += 1
            _, _, index, kind, coin = heapq.heappop(self._due)
            trader = self.traders[index]
            if kind == OPEN:
                self._open(trader)
            elif kind == ENTER:
                self._enter(trader, coin)
            elif kind == EXIT:
                self._exit(trader, coin)
            elif kind == EXIT_NEXT:
                self._exit(trader, coin, chained=True)
            elif kind == REVIEW:
                self._review(trader, coin)
            elif kind == CHASE:
                self._chase(trader, coin)
            elif kind == FLOW:
                self._flow_money(trader)
            elif kind == CLOSE:
                self._noise_close(trader, coin)
        return False

    def _at(self, due: int, trader: Trader, kind: int, coin: str = "") -> None:
        heapq.heappush(self._due, (due, next(self._seq), trader.index, kind, coin))

    # -- position traders -------------------------------------------------------------------

    def _account(self, trader: Trader) -> Account:
        return self.engine.accounts[trader.address]

    def _equity(self, trader: Trader) -> float:
        return float(self.engine.account_value(self._account(trader)))

    def _open(self, trader: Trader) -> None:
        p = trader.profile
        now = self.engine.now_ms
        self._at(now + next_open_ms(p, self.rng), trader, OPEN)
        acct = self._account(trader)
        open_coins = {c for c, pos in acct.positions.items() if pos.szi}
        busy = open_coins | set(trader.holdings)
        if len(busy) >= p.concurrent:
            return
        free = [c for c in p.coins if c not in busy]
        if not free:
            return
        trending = [c for c in free if self.engine.by_name[c].path.regime]
        coin = choose_coin(p, self.rng, free, trending, self._max_leverage)
        asset = self.engine.by_name[coin]
        equity = self._equity(trader)
        if equity < 20:
            return
        plan = plan_position(
            p, self.rng, asset.path.regime, asset.max_leverage, equity, asset.strict_isolated
        )
        self.engine.update_leverage(trader.address, asset.asset_id, plan.cross, plan.leverage)
        units = round_size(D(repr(plan.notional)) / asset.path.mid, asset.sz_decimals)
        if units <= 0:
            return
        trader.holdings[coin] = Holding(coin, plan, units, plan.entries, plan.exits)
        self.actions += 1
        self._enter(trader, coin)

    def _enter(self, trader: Trader, coin: str) -> None:
        h = trader.holdings.get(coin)
        if h is None:
            return
        self._cancel_resting(trader, h)
        now = self.engine.now_ms
        asset = self.engine.by_name[coin]
        pos = self._account(trader).positions.get(coin)
        held = abs(pos.szi) if pos is not None else D(0)
        if h.entries_left <= 0 or held >= h.units:
            self._at(now + h.plan.hold_ms, trader, EXIT, coin)
            return
        chunk = self._chunk(asset, h.units - held, h.entries_left)
        h.entries_left -= 1
        if h.plan.maker_entry:
            h.resting = self._post(trader, asset, h.plan.is_buy, chunk, False)
        else:
            self._take(trader, asset, h.plan.is_buy, chunk, False)
        if h.entries_left > 0:
            self._at(now + self.rng.randint(*CHUNK_GAP_MS), trader, ENTER, coin)
        else:
            self._at(now + h.plan.hold_ms, trader, EXIT, coin)
            if follows_trend(trader.profile):
                self._at(now + self.rng.randint(*REACTION_MS), trader, REVIEW, coin)
        if h.resting is not None:
            self._at(now + self.rng.randint(*MAKER_WAIT_MS), trader, CHASE, coin)

    def _review(self, trader: Trader, coin: str) -> None:
        """A trend follower looks at its position now and then, and leaves when the trend
        has turned against it (as its past does)."""
        h = trader.holdings.get(coin)
        if h is None or h.exiting:
            return
        regime = self.engine.by_name[coin].path.regime
        against = regime < 0 if h.plan.is_buy else regime > 0
        if against and self.rng.random() < trader.profile.kind.skill:
            self._exit(trader, coin)
        else:
            self._at(self.engine.now_ms + self.rng.randint(*REACTION_MS), trader, REVIEW, coin)

    def _exit(self, trader: Trader, coin: str, chained: bool = False) -> None:
        """One fill of the way out; the first call starts the exit, later ones (``chained``)
        continue it."""
        h = trader.holdings.get(coin)
        pos = self._account(trader).positions.get(coin)
        if h is None or (h.exiting and not chained):
            return
        h.exiting = True
        self._cancel_resting(trader, h)
        if pos is None or not pos.szi:  # liquidated, or never filled
            del trader.holdings[coin]
            return
        asset = self.engine.by_name[coin]
        h.exits_left -= 1
        size = abs(pos.szi)
        if h.exits_left <= 0:  # the last exit closes whatever is left, now
            self._take(trader, asset, pos.szi < 0, size, True)
            del trader.holdings[coin]
            return
        chunk = min(size, self._chunk(asset, size, h.exits_left + 1))
        if h.plan.maker_exit:
            h.resting = self._post(trader, asset, pos.szi < 0, chunk, True)
        else:
            self._take(trader, asset, pos.szi < 0, chunk, True)
        self._at(self.engine.now_ms + self.rng.randint(*CHUNK_GAP_MS), trader, EXIT_NEXT, coin)

    def _chase(self, trader: Trader, coin: str) -> None:
        """A limit order that waited long enough is cancelled; half the time its remainder
        is taken at once instead."""
        h = trader.holdings.get(coin)
        if h is None or h.resting is None:
            return
        order = self._account(trader).orders.get(h.resting)
        self._cancel_resting(trader, h)
        if order is not None and self.rng.random() < 0.5:
            asset = self.engine.by_name[coin]
            self._take(trader, asset, order.is_buy, order.sz, order.reduce_only)

    def _cancel_resting(self, trader: Trader, h: Holding) -> None:
        if h.resting is not None:
            acct = self._account(trader)
            if h.resting in acct.orders:
                asset = self.engine.by_name[h.coin]
                self.engine.cancel(trader.address, [(asset.asset_id, h.resting)])
            h.resting = None

    def _chunk(self, asset: Asset, units: Decimal, parts: int) -> Decimal:
        """One of ``parts`` pieces of ``units``, no smaller than the $10 minimum allows."""
        chunk = round_size(units / max(1, parts), asset.sz_decimals)
        floor = round_size(D(11) / asset.path.mid, asset.sz_decimals) + asset.lot
        return min(units, max(chunk, floor))

    def _flow_money(self, trader: Trader) -> None:
        """Deposits and withdrawals: top-ups after losses, profits taken, and money moved
        for no reason at all."""
        p = trader.profile
        self._at(self.engine.now_ms + next_flow_ms(p, self.rng), trader, FLOW)
        acct = self._account(trader)
        equity = float(self.engine.account_value(acct))
        opening = float(acct.opening) or p.equity
        if equity < 0.5 * opening or (equity < 1.3 * opening and self.rng.random() < 0.55):
            amount = opening * self.rng.uniform(0.1, 0.5)
            self.engine.deposit(acct, cents(amount))
        else:
            amount = equity * self.rng.uniform(0.05, 0.3)
            self.engine.withdraw(acct, cents(amount))
        self.engine.watch_risk(trader.address, self.engine.now_ms)

    # -- the background flow ----------------------------------------------------------------

    def flow(self) -> None:
        """One noise trader acts: a random-side order on one of its coins, sized to its
        habits, as a taker or as a limit at the touch; a fresh position gets a closing time."""
        rng = self.rng
        trader = self._noise[int(rng.random() * len(self._noise))]
        p = trader.profile
        coin = p.coins[int(rng.random() * len(p.coins))]
        asset = self.engine.by_name[coin]
        mid = asset.path.mid
        acct = self.engine.accounts[trader.address]
        if coin not in acct.leverage:  # its habit, set once per coin
            self.engine.update_leverage(
                trader.address,
                asset.asset_id,
                rng.random() >= p.kind.isolated,
                habitual_leverage(p, rng, asset.max_leverage),
            )
        pos = acct.positions.get(coin)
        szi = pos.szi if pos is not None else D(0)
        cap = p.margin * p.equity * p.leverage
        usd = cap * rng.uniform(0.2, 1.0)
        is_buy = rng.random() < 0.5
        if szi and float(abs(szi) * mid) + usd > cap:
            is_buy = szi < 0  # at its limit: this order reduces
        sz = round_size(D(repr(usd)) / mid, asset.sz_decimals)
        if sz <= 0:
            return
        self.actions += 1
        if rng.random() < p.kind.maker:
            if len(acct.orders) >= NOISE_ORDERS:  # requote: the oldest order makes way
                oldest = min(acct.orders)
                self.engine.cancel(
                    trader.address,
                    [(self.engine.by_name[acct.orders[oldest].coin].asset_id, oldest)],
                )
            oid = self._post(trader, asset, is_buy, sz, False)
            if oid is not None:
                self._at(
                    self.engine.now_ms + rng.randint(*NOISE_WAIT_MS), trader, CLOSE, f"{coin}#{oid}"
                )
        else:
            self._take(trader, asset, is_buy, sz, False)
        if not szi:
            median, sigma, lo, hi = p.kind.hold_minutes
            hold = max(lo, min(hi, median * math.exp(sigma * rng.gauss(0.0, 1.0))))
            self._at(self.engine.now_ms + int(hold * 60_000), trader, CLOSE, coin)

    def _noise_close(self, trader: Trader, what: str) -> None:
        coin, _, oid = what.partition("#")
        acct = self._account(trader)
        asset = self.engine.by_name[coin]
        if oid:  # a limit order whose time is up
            if int(oid) in acct.orders:
                self.engine.cancel(trader.address, [(asset.asset_id, int(oid))])
            return
        pos = acct.positions.get(coin)
        if pos is not None and pos.szi:
            self._take(trader, asset, pos.szi < 0, abs(pos.szi), True)

    # -- orders -----------------------------------------------------------------------------

    def _take(
        self, trader: Trader, asset: Asset, is_buy: bool, sz: Decimal, reduce_only: bool
    ) -> None:
        if sz > 0:
            self.engine.market_order(trader.address, asset.name, is_buy, sz, SLIPPAGE, reduce_only)

    def _post(
        self, trader: Trader, asset: Asset, is_buy: bool, sz: Decimal, reduce_only: bool
    ) -> int | None:
        """A Gtc limit joining the best bid (buy) or ask (sell); its oid if it rests."""
        bid, ask = self.engine.best(asset)
        px = bid if is_buy else ask
        if px is None or sz <= 0:
            return None
        (status,) = self.engine.place_orders(
            trader.address, [OrderRequest(asset.asset_id, is_buy, px, sz, reduce_only, "Gtc")]
        )
        if isinstance(status, dict) and "resting" in status:
            oid = status["resting"]["oid"]
            return int(oid)
        return None
