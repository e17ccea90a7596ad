"""The reconciler (live mode): the exchange's positions against hlcopy's books, every interval.

The copy engine calls ``check`` at each reconcile interval, before it decides every coin in
play again. ``check`` reads the account (``clearinghouseState``, FOLLOWER lane) and hands each
coin to the pure core (``follow/drift.py``). Only a coin that stayed *quiet* counts: no order
of it in flight before or after the read, and nothing booked in it while the read ran (the
executor's per-coin ``activity``); where the core finds a difference, the account is read again
after ``confirm_s`` and only a coin that shows the same position, and stayed quiet throughout,
is corrected. Any error, an unparseable or empty reply, or a coin that moved means *unknown*:
nothing is corrected this time. A correction is stored (``executor.restate``) before it counts;
the engine's decision of the coin then sends at most one correcting order.

At start (``start``, before the engine is READY) the account's open orders are read and
reported (hlcopy's protective stops are the protector's business; anything else was placed
outside hlcopy and is left alone), and the first successful look sets the *outside* baseline
with the core's start-up rules. Positions outside hlcopy are reported in the log, in
``stats()`` and on the event feed (``reconcile`` events), never traded.

A protective stop that fired (our own ``userFills``: a fill whose cloid carries the stop tag)
marks its coin: the shrink it caused is not bought back until the leader's next change
(``gate``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

import structlog

from hlcopy.clock import SYSTEM, Clock
from hlcopy.errors import ExchangeError, StoreError, StreamError
from hlcopy.events import Event, EventBus
from hlcopy.follow.drift import CoinDrift, reconcile_at_start, reconcile_coin
from hlcopy.follow.executor import PaperExecutor
from hlcopy.follow.protect import STOP_TAG
from hlcopy.hl import InfoClient
from hlcopy.model import AccountState

log = structlog.get_logger()

ZERO: Final = Decimal(0)
_STOP_PREFIX: Final = "0x" + STOP_TAG


class Reconciler:
    """See the module docstring."""

    def __init__(
        self,
        executor: PaperExecutor,
        sz_decimals: Callable[[str], int | None],
        *,
        info: InfoClient | None = None,
        account: str | None = None,
        bus: EventBus | None = None,
        clock: Clock = SYSTEM,
        confirm_s: float = 1.0,
    ) -> None:
        self._executor = executor
        self._sz_decimals = sz_decimals
        self._info = info
        self._account = account
        self._bus = bus
        self._clock = clock
        self._confirm_s = confirm_s
        #: Per coin, the position opened outside hlcopy (None: no baseline yet).
        self.outside: dict[str, Decimal] | None = None
        #: (follow, coin) -> the time from which the follow waits for its leader's next change.
        self.gates: dict[tuple[str, str], int] = {}
        self._foreign_seen = 0  # how many of the executor's foreign fills were looked at
        self._stopped: set[str] = set()  # coins where a protective stop filled, not yet applied
        self.open_orders: dict[str, int] | None = None
        self.counters: dict[str, int] = {
            "checks": 0,
            "unknown": 0,
            "unconfirmed": 0,
            "drifts": 0,
            "outside": 0,
            "gated": 0,
            "store_errors": 0,
        }

    # -- what the engine uses ---------------------------------------------------------------

    def gate(self, follow_id: str, coin: str) -> int | None:
        return self.gates.get((follow_id, coin))

    async def start(self) -> None:
        """Before READY: report the account's open orders and set the baseline (an error is
        logged; the first check then sets it)."""
        if self._executor.paper:
            return
        await self._read_open_orders()
        await self.check({})

    async def check(self, targets: Mapping[tuple[str, str], Decimal]) -> list[CoinDrift]:
        """Compare the exchange with the books and correct what is confirmed (module
        docstring). ``targets``: (follow, coin) -> the size the copier last wanted."""
        if self._executor.paper or not self._executor.loaded:
            return []
        self.counters["checks"] += 1
        self._note_stops()
        first = await self._look()
        if first is None:
            return []
        found = self._compare(first[0], first[1], targets)
        if not found:
            if self.outside is None:
                self.outside = {}  # the books agree with the exchange: nothing outside
            return []
        await self._clock.sleep(self._confirm_s)
        second = await self._look()
        if second is None:
            return []
        again = {d.coin: d for d in self._compare(second[0], second[1], targets)}
        act_a, act_b = first[1], second[1]
        confirmed = []
        for d in found:
            other = again.get(d.coin)
            if other is None or other != d or act_a.get(d.coin, 0) != act_b.get(d.coin, 0):
                self.counters["unconfirmed"] += 1
                continue
            confirmed.append(d)
        if not confirmed:
            return []
        return await self._apply(confirmed)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "outside": None
            if self.outside is None
            else {c: str(v) for c, v in sorted(self.outside.items()) if v != 0},
            "gates": len(self.gates),
            "open_orders_at_start": self.open_orders,
        }

    # -- looking ------------------------------------------------------------------------------

    async def _look(self) -> tuple[AccountState, dict[str, int]] | None:
        """One read: the state and each coin's activity count around it, -1 for a coin that
        was busy or moved while it ran (it never counts, never confirms)."""
        busy, before = self._executor.busy_coins(), dict(self._executor.activity)
        try:
            state = await self._executor.read_state()
        except (ExchangeError, StreamError) as exc:
            self.counters["unknown"] += 1
            log.warning(
                "reconcile: the account could not be read; nothing corrected", error=str(exc)
            )
            return None
        if state is None:
            self.counters["unknown"] += 1
            return None
        after = dict(self._executor.activity)
        moved = {c for c in after if after[c] != before.get(c, 0)}
        for coin in busy | self._executor.busy_coins() | moved:
            after[coin] = -1
        return state, after

    def _note_stops(self) -> None:
        """Mark the coins in which a protective stop filled since the last look."""
        total = self._executor.counters["own_fills_foreign"]
        new, self._foreign_seen = total - self._foreign_seen, total
        foreign = self._executor.foreign
        for f in list(foreign)[max(0, len(foreign) - new) :]:
            if f.cloid is not None and f.cloid.lower().startswith(_STOP_PREFIX):
                self._stopped.add(f.coin)

    def _compare(
        self,
        state: AccountState,
        activity: Mapping[str, int],
        targets: Mapping[tuple[str, str], Decimal],
    ) -> list[CoinDrift]:
        real = {p.coin: p.szi for p in state.positions if p.szi != 0}
        attributed = self._executor.attributed()
        by_coin: dict[str, dict[str, Decimal]] = {}
        for follow, coins in attributed.items():
            for coin, szi in coins.items():
                by_coin.setdefault(coin, {})[follow] = szi
        wanted: dict[str, dict[str, Decimal]] = {}
        for (follow, coin), szi in targets.items():
            wanted.setdefault(coin, {})[follow] = szi
        outside = self.outside
        out = []
        for coin in sorted(set(real) | set(by_coin) | set(outside or {})):
            if activity.get(coin, 0) < 0:
                continue  # it moved while we looked: unknown
            szd = self._sz_decimals(coin)
            if szd is None:
                continue
            parts = by_coin.get(coin, {})
            if outside is None:
                found = reconcile_at_start(coin, real.get(coin, ZERO), parts, szd)
            else:
                found = reconcile_coin(
                    coin,
                    real.get(coin, ZERO),
                    parts,
                    outside.get(coin, ZERO),
                    wanted.get(coin, {}),
                    szd,
                    gate_shrink=coin in self._stopped,
                )
            if found is not None:
                out.append(found)
        return out

    # -- correcting ---------------------------------------------------------------------------

    async def _apply(self, found: list[CoinDrift]) -> list[CoinDrift]:
        drifts = {d.coin: d.parts for d in found if d.kind == "drift"}
        if drifts:
            try:
                await self._executor.restate(drifts)
            except StoreError as exc:
                self.counters["store_errors"] += 1
                log.warning("reconcile: correction not stored; nothing corrected", error=str(exc))
                return []
        outside = dict(self.outside or {})
        now = self._clock.time_ms()
        for d in found:
            outside[d.coin] = d.outside
            self._stopped.discard(d.coin)
            if d.kind == "drift":
                self.counters["drifts"] += 1
                for follow in d.gated:
                    self.gates[follow, d.coin] = now
                    self.counters["gated"] += 1
                log.warning(
                    "reconcile: drift corrected",
                    coin=d.coin,
                    real=str(d.real),
                    expected=str(d.expected),
                    gated=list(d.gated),
                )
            else:
                self.counters["outside"] += 1
                log.warning(
                    "reconcile: position outside hlcopy, left alone",
                    coin=d.coin,
                    real=str(d.real),
                    outside=str(d.outside),
                )
            self._publish(d, now)
        self.outside = {c: v for c, v in outside.items() if v != 0}
        return found

    def _publish(self, d: CoinDrift, now: int) -> None:
        if self._bus is None:
            return
        data = {
            "coin": d.coin,
            "kind": d.kind,
            "real_szi": str(d.real),
            "expected_szi": str(d.expected),
            "outside_szi": str(d.outside),
            "parts": {f: str(v) for f, v in sorted(d.parts.items())},
            "gated": list(d.gated),
        }
        self._bus.publish(Event("reconcile", data, now))

    async def _read_open_orders(self) -> None:
        if self._info is None or self._account is None:
            return
        try:
            orders = await self._info.frontend_open_orders(self._account)
        except (ExchangeError, StreamError) as exc:
            log.warning("reconcile: open orders could not be read at start", error=str(exc))
            return
        stops = sum(
            1 for o in orders if o.cloid is not None and o.cloid.lower().startswith(_STOP_PREFIX)
        )
        self.open_orders = {"protective_stops": stops, "outside": len(orders) - stops}
        if len(orders) > stops:
            log.warning(
                "reconcile: open orders placed outside hlcopy, left alone",
                count=len(orders) - stops,
            )
