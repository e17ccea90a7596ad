"""Exchange-side protection that outlives hlcopy: protective stops and the dead man's switch.

Live mode only. Both live on the exchange, so they hold when the daemon is gone.

**Protective stops** (``Protector``; ``follow.protective_stop_pct``). For each coin in which
hlcopy holds a position (the net of every follow's attributed part) and at least one follow
holding it sets a percent, one reduce-only stop-market trigger order rests on the exchange:

* size: hlcopy's net part, cut to the account's position (a stop never exceeds it, and none is
  kept when the account holds the other side or nothing), rounded down to the lot;
* trigger: the tightest percent of the follows holding the coin, beyond the *worse* of the
  position's entry and the mark (a long's stop below ``min(entry, mark)``, a short's above
  ``max(entry, mark)``; the mark is the mid hlcopy sees). In profit it guards the entry; at a
  loss it sits that far beyond the mark, so it does not fire at once, and while hlcopy runs
  only a move of more than the percent between two passes fires it. After a death the further
  loss is bounded by the percent of the price hlcopy last saw (a gap can still fill worse: it
  is a market order, with the 10% limit the exchange's UI uses);
* moved when the size or the side changes, or the wanted trigger drifts from the resting one
  by more than ``move_step`` of the stop's distance: by one ``modify`` (never a moment with two
  stops or none), or, once the exchange refuses that (or with ``modify=False``), by placing the
  new stop and then cancelling the old (never a moment with none); cancelled when hlcopy is
  flat in the coin.

Passes run on an interval and after each booked copy fill (the executor's ``copy`` events);
only differences cost an action, and actions go through the exchange client (the budget's
ORDER lane). The resting stops are known from our own replies and re-read from the account's
``frontendOpenOrders`` at start, every ``resync_s``, and after any action whose outcome is
unknown (once its ``expiresAfter`` has passed, so the read is final). A stop's cloid says it is
ours: ``stop_cloid(coin, generation)`` is a fixed tag, the coin's hash and a generation that
only grows (at least the clock's milliseconds), so a restart recognises its stops, adopts the
newest per coin and cancels older ones, and never reuses a cloid. Errors are logged and
counted and the coin is tried again on a later pass; nothing here waits on, or blocks, the copy
engine. Stopping hlcopy leaves the stops in place, on purpose. They are protection, not
copying: they are kept in every trading state (HALTED too). A stop whose part is under the
exchange's $10 minimum and not the whole position may be refused when it fires.

**Dead man's switch** (``DeadManSwitch``; ``account.dead_man_switch_s``): ``scheduleCancel``
at now + the delay, re-armed every third of it. If hlcopy stops for longer, the exchange
cancels every resting order of the account. Copies are IOC and never rest, so what it cancels
are the protective stops (the positions are then unprotected) and orders placed by hand: the
two are not meant to be used together, and neither is on by default. The exchange refuses it
below $1,000,000 traded volume; the switch then tries again hourly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final

import structlog

from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.errors import (
    AmbiguousOutcome,
    ExchangeError,
    Permanent,
    StreamError,
    WireError,
)
from hlcopy.events import EventBus, Overflowed, Subscriber
from hlcopy.follow.executor import PaperExecutor
from hlcopy.hl import ExchangeClient, InfoClient, Rounding, derive_cloid, round_price, round_size
from hlcopy.model import Asset, Order, OrderSpec, OrderStatus
from hlcopy.record import record

log = structlog.get_logger()

ZERO: Final = Decimal(0)
HUNDRED: Final = Decimal(100)
#: A stop-market order's limit: this far past its trigger, as the exchange's UI writes it.
MARKET_SLIPPAGE: Final = Decimal("0.1")
#: The first 6 of a stop cloid's 16 bytes: "hlstop".
STOP_TAG: Final = "686c73746f70"
GONE_ON_MODIFY: Final = "Cannot modify canceled or filled order"
GONE_ON_CANCEL: Final = "Order was never placed, already canceled, or filled"


# -- pure core -----------------------------------------------------------------------------------


def _coin_tag(coin: str) -> str:
    return derive_cloid(f"hlcopy-protective-stop:{coin}")[2:10]


def stop_cloid(coin: str, generation: int) -> str:
    """The cloid of ``coin``'s protective stop of ``generation`` (0 < generation < 2^48)."""
    if not 0 < generation < 1 << 48:
        raise ValueError(f"generation out of range: {generation}")
    return f"0x{STOP_TAG}{_coin_tag(coin)}{generation:012x}"


def stop_generation(cloid: str | None, coin: str) -> int | None:
    """The generation of our protective stop on ``coin``, or None when ``cloid`` is not one."""
    if cloid is None:
        return None
    low = cloid.lower()
    head = f"0x{STOP_TAG}{_coin_tag(coin)}"
    if len(low) != 34 or not low.startswith(head):
        return None
    try:
        return int(low[len(head) :], 16)
    except ValueError:
        return None


@record
class StopPlan:
    """The stop a coin should have: ``is_buy`` is the stop's side (a long's stop sells)."""

    coin: str
    is_buy: bool
    sz: Decimal
    trigger_px: Decimal
    pct: Decimal


@record
class RestingStop:
    """A protective stop of ours on the exchange, as we placed or found it."""

    coin: str
    cloid: str
    oid: int | None
    is_buy: bool
    sz: Decimal
    trigger_px: Decimal
    generation: int


def stop_trigger(
    szi: Decimal, entry: Decimal | None, mark: Decimal | None, pct: Decimal
) -> Decimal:
    """Where the stop of a position of ``szi`` goes: ``pct`` percent beyond the worse of its
    entry and the mark (either may be unknown, not both)."""
    known = [p for p in (entry, mark) if p is not None and p > 0]
    if not known:
        raise ValueError("neither an entry nor a mark price")
    f = pct / HUNDRED
    if szi > 0:
        return min(known) * (1 - f)
    return max(known) * (1 + f)


def plan_stops(
    attributed: Mapping[str, Mapping[str, Decimal]],
    positions: Mapping[str, Decimal],
    entries: Mapping[str, Decimal],
    mids: Mapping[str, Decimal],
    pcts: Mapping[str, Decimal],
    assets: Callable[[str], Asset | None],
) -> dict[str, StopPlan]:
    """The stop each coin should have (see the module docstring), from each follow's part
    (``attributed``: {follow: {coin: szi}}), the account's positions and entries, the mids and
    each follow's percent (follows without one are absent). Prices and sizes on the coin's grid;
    a coin that cannot have one (no price, not a lot) is left out."""
    net: dict[str, Decimal] = {}
    tightest: dict[str, Decimal] = {}
    for follow, coins in attributed.items():
        pct = pcts.get(follow)
        for coin, szi in coins.items():
            if not szi:
                continue
            net[coin] = net.get(coin, ZERO) + szi
            if pct is not None:
                tightest[coin] = min(pct, tightest.get(coin, pct))
    out: dict[str, StopPlan] = {}
    for coin, pct in tightest.items():
        ours, held = net.get(coin, ZERO), positions.get(coin, ZERO)
        if ours == 0 or held == 0 or (ours > 0) != (held > 0):
            continue
        asset = assets(coin)
        if asset is None or asset.delisted:
            continue
        sz = round_size(min(abs(ours), abs(held)), asset.sz_decimals)
        if sz <= 0:
            continue
        try:
            px = stop_trigger(held, entries.get(coin), mids.get(coin), pct)
            px = round_price(px, asset.sz_decimals, asset.is_spot, Rounding.NEAREST)
        except (ValueError, WireError):
            continue
        out[coin] = StopPlan(coin, held < 0, sz, px, pct)
    return out


def needs_move(plan: StopPlan, resting: RestingStop, step: Decimal) -> bool:
    """Whether ``resting`` must become ``plan``: another side or size, or a trigger more than
    ``step`` of the stop's distance away from the wanted one."""
    if plan.is_buy != resting.is_buy or plan.sz != resting.sz:
        return True
    distance = plan.trigger_px * plan.pct / HUNDRED
    return abs(plan.trigger_px - resting.trigger_px) > distance * step


def stop_spec(asset: Asset, plan: StopPlan, cloid: str) -> OrderSpec:
    """A reduce-only stop-market order for ``plan`` (its limit ``MARKET_SLIPPAGE`` past the
    trigger; ``hl/`` rounds it in the safe direction)."""
    limit = plan.trigger_px * (1 + MARKET_SLIPPAGE if plan.is_buy else 1 - MARKET_SLIPPAGE)
    return OrderSpec(
        asset,
        plan.is_buy,
        limit,
        plan.sz,
        reduce_only=True,
        cloid=cloid,
        trigger_px=plan.trigger_px,
        tpsl="sl",
        trigger_is_market=True,
    )


def _dex(coin: str) -> str:
    return coin.split(":", 1)[0] if ":" in coin else ""


# -- the protector -------------------------------------------------------------------------------


class Protector(Component):
    """Keeps one protective stop per coin on the exchange. See the module docstring."""

    name = "protect"
    core = False

    def __init__(
        self,
        executor: PaperExecutor,
        exchange: ExchangeClient,
        info: InfoClient,
        account: str,
        assets: Callable[[str], Asset | None],
        stop_pcts: Callable[[], Mapping[str, Decimal]],
        bus: EventBus | None = None,
        clock: Clock = SYSTEM,
        *,
        interval_s: float = 5.0,
        resync_s: float = 60.0,
        retry_s: float = 10.0,
        move_step: Decimal = Decimal("0.1"),
        expires_after_s: float = 5.0,
        modify: bool = True,
    ) -> None:
        self._executor = executor
        self._exchange = exchange
        self._info = info
        self.account = account.lower()
        self._assets = assets
        self._stop_pcts = stop_pcts
        self._bus = bus
        self._clock = clock
        self._interval_s = interval_s
        self._resync_ms = int(resync_s * 1000)
        self._retry_ms = int(retry_s * 1000)
        self._step = move_step
        self._expires_ms = int(expires_after_s * 1000)
        self._modify = modify  # False: move by placing the new stop, then cancelling the old
        self._stops: dict[str, RestingStop] = {}
        self._generation: dict[str, int] = {}
        self._retry_at: dict[str, int] = {}
        self._doubt_until: dict[str, int] = {}
        self._synced_ms: int | None = None  # last frontendOpenOrders read; None: read first
        self._sub: Subscriber | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.counters: dict[str, int] = {
            "passes": 0,
            "placed": 0,
            "moved": 0,
            "replaced": 0,
            "modify_refused": 0,
            "cancelled": 0,
            "gone": 0,
            "adopted": 0,
            "stale_cancelled": 0,
            "resyncs": 0,
            "errors": 0,
            "ambiguous": 0,
        }

    # -- what tests and the API read --------------------------------------------------------------

    def stops(self) -> dict[str, RestingStop]:
        """The resting stops as we know them, by coin."""
        return dict(self._stops)

    def plan(self) -> dict[str, StopPlan]:
        """The stops the coins should have now."""
        account = self._executor.account()
        return plan_stops(
            self._executor.attributed(),
            {c: p.szi for c, p in account.positions.items()},
            {c: p.entry_px for c, p in account.positions.items()},
            self._executor.mids(),
            self._stop_pcts(),
            self._assets,
        )

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "stops": {
                c: {"sz": str(s.sz), "trigger_px": str(s.trigger_px), "cloid": s.cloid}
                for c, s in sorted(self._stops.items())
            },
            "in_doubt": sorted(self._doubt_until),
        }

    # -- component --------------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._stopping.clear()
        while not self._executor.loaded:  # its positions are the exchange's from then on
            if await sleep_unless(self._clock, self._stopping, 0.1):
                return
        if self._bus is not None:
            self._sub = self._bus.subscribe(1000, types=("copy",))
        try:
            async with asyncio.TaskGroup() as tg:
                if self._sub is not None:
                    tg.create_task(self._listen(), name="protect:fills")
                ready.set()
                try:
                    await self._loop()
                finally:
                    self._stopping.set()
                    self._unsubscribe()  # ends the listener
        finally:
            self._unsubscribe()

    async def drain(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if self._bus is not None and sub is not None:
            self._bus.unsubscribe(sub)

    async def _listen(self) -> None:
        """Wake a pass after each booked copy fill."""
        while not self._stopping.is_set() and self._sub is not None:
            try:
                event = await self._sub.next()
            except StopAsyncIteration:
                return
            except Overflowed:
                if self._bus is None or self._stopping.is_set():
                    return
                self._sub = self._bus.subscribe(1000, types=("copy",))
                self._wake.set()
                continue
            if event.data.get("status") in ("filled", "partial"):
                self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            await self.sync()
            await sleep_unless(self._clock, self._wake, self._interval_s)

    # -- one pass ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """One pass: re-read our stops when due, then bring each coin's stop to its plan.
        Never raises an exchange error: it is counted, and the coin tried again later."""
        self.counters["passes"] += 1
        now = self._clock.time_ms()
        due = [c for c, t in self._doubt_until.items() if t <= now]
        if self._synced_ms is None or due or now - self._synced_ms >= self._resync_ms:
            try:
                await self._resync()
            except (ExchangeError, StreamError) as exc:
                self.counters["errors"] += 1
                log.warning("protect: open orders not read; stops unchanged", error=str(exc))
                return
        plans = self.plan()
        for coin in sorted(set(plans) | set(self._stops)):
            if self._stopping.is_set():
                return
            now = self._clock.time_ms()
            if coin in self._doubt_until or self._retry_at.get(coin, 0) > now:
                continue
            await self._converge(coin, plans.get(coin))

    async def _converge(self, coin: str, plan: StopPlan | None) -> None:
        have = self._stops.get(coin)
        if plan is None and have is None:
            return
        asset = self._assets(coin)
        if asset is None:
            self._failed(coin, "not in the exchange's universe")
            return
        try:
            if plan is None:
                assert have is not None
                await self._cancel(asset, have)
            elif have is None:
                await self._place(asset, plan)
            elif needs_move(plan, have, self._step):
                await self._move(asset, have, plan)
        except AmbiguousOutcome as exc:
            # It may have landed: nothing more for this coin until the account's open orders
            # are read again, after expiresAfter (a second stop must never be placed blind).
            self.counters["ambiguous"] += 1
            self._doubt_until[coin] = self._clock.time_ms() + self._expires_ms + 500
            log.warning("protect: stop action outcome unknown", coin=coin, error=str(exc))
        except (ExchangeError, StreamError, WireError) as exc:
            self._failed(coin, str(exc))

    def _failed(self, coin: str, error: str) -> None:
        self.counters["errors"] += 1
        self._retry_at[coin] = self._clock.time_ms() + self._retry_ms
        log.warning("protect: stop not brought up to date", coin=coin, error=error)

    def _next_generation(self, coin: str) -> int:
        gen = max(self._generation.get(coin, 0) + 1, self._clock.time_ms())
        self._generation[coin] = gen
        return gen

    def _expires(self) -> int:
        return self._clock.time_ms() + self._expires_ms

    async def _place(self, asset: Asset, plan: StopPlan) -> None:
        gen = self._next_generation(plan.coin)
        cloid = stop_cloid(plan.coin, gen)
        (status,) = await self._exchange.place(
            [stop_spec(asset, plan, cloid)], expires_after=self._expires()
        )
        self._took(plan, status, cloid, gen, "placed")

    async def _move(self, asset: Asset, have: RestingStop, plan: StopPlan) -> None:
        if not self._modify:
            await self._replace(asset, have, plan)
            return
        gen = self._next_generation(plan.coin)
        cloid = stop_cloid(plan.coin, gen)
        ref: int | str = have.oid if have.oid is not None else have.cloid
        (status,) = await self._exchange.modify(
            [(ref, stop_spec(asset, plan, cloid))], expires_after=self._expires()
        )
        if status.outcome == "error" and (status.error or "").startswith(GONE_ON_MODIFY):
            # It fired or was cancelled meanwhile: the next pass places one if still wanted.
            self.counters["gone"] += 1
            self._stops.pop(plan.coin, None)
            return
        if status.outcome == "error":
            # Whether the old one still rests after a refused modify is not ours to guess: read
            # it again. From now on stops move by place-then-cancel, which any exchange takes.
            self._synced_ms = None
            self._modify = False
            self.counters["modify_refused"] += 1
            log.warning(
                "protect: modifying a stop refused; moving stops by place-then-cancel",
                coin=plan.coin,
                error=status.error,
            )
        self._took(plan, status, cloid, gen, "moved")

    async def _replace(self, asset: Asset, have: RestingStop, plan: StopPlan) -> None:
        """Move a stop without ``modify``: the new one first, then the old one cancelled. For a
        moment both rest; both are reduce-only, so the second to fire finds nothing to reduce
        and never opens a position. There is never a moment with none."""
        gen = self._next_generation(plan.coin)
        cloid = stop_cloid(plan.coin, gen)
        (status,) = await self._exchange.place(
            [stop_spec(asset, plan, cloid)], expires_after=self._expires()
        )
        if status.outcome == "error":
            self._failed(plan.coin, status.error or "refused")  # the old one still holds
            return
        if status.outcome not in ("resting", "waitingForTrigger"):
            # Filled at once (the mark was past it): read what is left.
            self._stops.pop(plan.coin, None)
            self._synced_ms = None
            return
        self._rests(plan, status.oid, cloid, gen, "replaced")
        try:
            (cancelled,) = await self._exchange.cancel_by_cloid(
                [(asset, have.cloid)], expires_after=self._expires()
            )
        except (ExchangeError, StreamError):
            self._synced_ms = None  # the next read finds the older one and cancels it
            raise
        if not cancelled.ok and not (cancelled.error or "").startswith(GONE_ON_CANCEL):
            self._synced_ms = None

    def _took(self, plan: StopPlan, status: OrderStatus, cloid: str, gen: int, done: str) -> None:
        """Record what the exchange made of a stop order (``done``: what resting means)."""
        if status.outcome in ("resting", "waitingForTrigger"):
            self._rests(plan, status.oid, cloid, gen, done)
            return
        self._stops.pop(plan.coin, None)
        if status.outcome == "error":
            self._failed(plan.coin, status.error or "refused")
        # "filled": the mark was already past it; the position is closed, nothing rests.

    def _rests(self, plan: StopPlan, oid: int | None, cloid: str, gen: int, done: str) -> None:
        self._stops[plan.coin] = RestingStop(
            plan.coin, cloid, oid, plan.is_buy, plan.sz, plan.trigger_px, gen
        )
        self.counters[done] += 1
        log.info(
            f"protect: stop {done}",
            coin=plan.coin,
            sz=str(plan.sz),
            trigger_px=str(plan.trigger_px),
            cloid=cloid,
        )

    async def _cancel(self, asset: Asset, have: RestingStop) -> None:
        (status,) = await self._exchange.cancel_by_cloid(
            [(asset, have.cloid)], expires_after=self._expires()
        )
        if status.ok:
            self.counters["cancelled"] += 1
            log.info("protect: stop cancelled", coin=have.coin, cloid=have.cloid)
        elif (status.error or "").startswith(GONE_ON_CANCEL):
            self.counters["gone"] += 1
        else:
            self._failed(have.coin, status.error or "cancel refused")
            return
        self._stops.pop(have.coin, None)

    # -- what the exchange has --------------------------------------------------------------------

    async def _resync(self) -> None:
        """Read our stops off the account's open orders: adopt the newest per coin, cancel the
        older ones (a restart, or an action whose outcome was unknown)."""
        coins = set(self._stops) | set(self._doubt_until)
        for held in self._executor.attributed().values():
            coins |= set(held)
        orders: list[Order] = []
        for dex in sorted({""} | {_dex(c) for c in coins}):
            orders += await self._info.frontend_open_orders(self.account, dex, lane=Lane.FOLLOWER)
        self.counters["resyncs"] += 1
        found: dict[str, list[tuple[int, Order]]] = {}
        for o in orders:
            gen = stop_generation(o.cloid, o.coin)
            if gen is not None:
                found.setdefault(o.coin, []).append((gen, o))
        stops: dict[str, RestingStop] = {}
        for coin, mine in found.items():
            mine.sort(key=lambda item: item[0])
            gen, newest = mine[-1]
            self._generation[coin] = max(self._generation.get(coin, 0), gen)
            stops[coin] = _resting(newest, gen)
            known = self._stops.get(coin)
            if known is None or known.cloid != stops[coin].cloid:
                self.counters["adopted"] += 1
            for _, stale in mine[:-1]:
                await self._cancel_stale(coin, stale)
        self._stops = stops
        self._doubt_until.clear()
        self._synced_ms = self._clock.time_ms()

    async def _cancel_stale(self, coin: str, order: Order) -> None:
        asset = self._assets(coin)
        if asset is None or order.cloid is None:
            return
        try:
            (status,) = await self._exchange.cancel_by_cloid(
                [(asset, order.cloid)], expires_after=self._expires()
            )
        except (ExchangeError, StreamError) as exc:
            self.counters["errors"] += 1
            self._synced_ms = None  # read again next pass
            log.warning("protect: stale stop not cancelled", coin=coin, error=str(exc))
            return
        if status.ok:
            self.counters["stale_cancelled"] += 1
            log.info("protect: stale stop cancelled", coin=coin, cloid=order.cloid)


def _resting(order: Order, gen: int) -> RestingStop:
    assert order.cloid is not None
    return RestingStop(
        order.coin,
        order.cloid.lower(),
        order.oid,
        order.side == "B",
        order.sz,
        order.trigger_px if order.trigger_px is not None else order.limit_px,
        gen,
    )


def stop_pcts_of(follows: Iterable[tuple[str, Decimal | None]]) -> dict[str, Decimal]:
    """{follow id: percent} of the follows that set ``protective_stop_pct``."""
    return {f: pct for f, pct in follows if pct is not None}


# -- the dead man's switch -----------------------------------------------------------------------


class DeadManSwitch(Component):
    """Arms ``scheduleCancel`` ``delay_s`` ahead, every third of it. See the module docstring."""

    name = "dead-man-switch"
    core = False

    def __init__(
        self,
        exchange: ExchangeClient,
        delay_s: float,
        clock: Clock = SYSTEM,
        *,
        refused_retry_s: float = 3600.0,
        error_retry_s: float = 5.0,
        stops_on: Callable[[], bool] | None = None,
    ) -> None:
        if delay_s < 10:
            raise ValueError("the dead man's switch needs at least 10 s (the exchange: 5 s)")
        self._exchange = exchange
        self._delay_ms = int(delay_s * 1000)
        self._clock = clock
        self._refused_retry_s = refused_retry_s
        self._error_retry_s = error_retry_s
        self._stops_on = stops_on
        self._stopping = asyncio.Event()
        self.armed_until_ms: int | None = None
        self.refused: str | None = None
        self.counters: dict[str, int] = {"armed": 0, "refused": 0, "errors": 0}

    async def run(self, ready: Ready) -> None:
        self._stopping.clear()
        if self._stops_on is not None and self._stops_on():
            log.warning(
                "dead man's switch: it cancels the protective stops too when it fires; "
                "the positions are then unprotected"
            )
        ready.set()
        while not self._stopping.is_set():
            wait_s = await self.arm()
            await sleep_unless(self._clock, self._stopping, wait_s)
        # Left armed on purpose: a stopped hlcopy is as absent as a dead one.

    async def drain(self) -> None:
        self._stopping.set()

    async def arm(self) -> float:
        """Arm the switch once; how long until the next time."""
        until = self._clock.time_ms() + self._delay_ms
        try:
            await self._exchange.schedule_cancel(until)
        except Permanent as exc:
            self.counters["refused"] += 1
            if self.refused is None:
                log.warning("dead man's switch refused by the exchange", error=str(exc))
            self.refused = str(exc)
            return self._refused_retry_s
        except (ExchangeError, StreamError) as exc:
            # Ambiguous or not sent: the one armed before still holds for a while; soon again.
            self.counters["errors"] += 1
            log.warning("dead man's switch not re-armed", error=str(exc))
            return self._error_retry_s
        self.counters["armed"] += 1
        self.armed_until_ms = until
        self.refused = None
        return self._delay_ms / 3000

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "delay_s": self._delay_ms / 1000,
            "armed_until_ms": self.armed_until_ms,
            "refused": self.refused,
        }
