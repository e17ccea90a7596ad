"""The risk keeper: the async shell around ``follow/risk.py``.

It holds the state of every scope — ``global`` (the follower account), ``follow:<id>`` and
``leader:<address>`` — evaluates each with its latest figures once a second, persists every
change with the events that caused it before anyone acts on it, and publishes each transition
on the live feed. A halt over the API applies at once: the copier asks ``trading_state`` before
every decision, so no new exposure is decided after it, and the executor asks again before it
sends.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.errors import StoreError
from hlcopy.events import Event, EventBus
from hlcopy.follow.risk import (
    OrderResult,
    RiskEvent,
    RiskInputs,
    RiskState,
    TradingState,
    evaluate,
    halt,
    most_severe,
    resume,
)
from hlcopy.record import record
from hlcopy.store import Store
from hlcopy.store.risk import RiskStore

log = structlog.get_logger(__name__)

GLOBAL = "global"
EVALUATE_EVERY_S = 1.0


def follow_scope(follow_id: str) -> str:
    return f"follow:{follow_id}"


def leader_scope(address: str) -> str:
    return f"leader:{address}"


InputsProvider = Callable[[str], RiskInputs | None]
"""The latest figures of a scope (None: nothing known yet, judge nothing)."""


class UnknownScope(ValueError):
    """A halt or resume named a scope that is neither global nor a known follow or leader."""


@record
class Transition:
    """What a halt or resume changed, for the API's answer."""

    scope: str
    state: TradingState
    events: tuple[RiskEvent, ...]


class RiskKeeper(Component):
    """See the module docstring."""

    name = "risk"

    def __init__(self, store: Store, bus: EventBus, *, clock: Clock = SYSTEM) -> None:
        self._db = RiskStore(store)
        self._bus = bus
        self._clock = clock
        self._states: dict[str, RiskState] = {GLOBAL: RiskState(GLOBAL)}
        self._tripped: set[str] = set()  # the scopes with a trip: mostly none, and then ACTIVE
        self._scopes: set[str] = {GLOBAL}  # the scopes that exist now (follows come and go)
        self._results: defaultdict[str, list[OrderResult]] = defaultdict(list)
        self._provider: InputsProvider | None = None
        self._lock = asyncio.Lock()  # one change of a scope at a time: state, then its row
        self._loaded = False
        self._draining = asyncio.Event()
        self.counters = {"evaluations": 0, "trips": 0, "clears": 0, "errors": 0}

    # -- what others ask of it --------------------------------------------------------------

    def set_provider(self, provider: InputsProvider) -> None:
        """Where the figures come from (the copy engine knows PnL, equity and exposure)."""
        self._provider = provider

    def set_scopes(self, scopes: Iterable[str]) -> None:
        """The follows and leaders that exist now; global always does."""
        self._scopes = {GLOBAL, *scopes}
        for scope in self._scopes:
            self._states.setdefault(scope, RiskState(scope))

    def trading_state(self, *scopes: str) -> TradingState:
        """The most severe state of ``scopes`` and of the global scope."""
        if not self._tripped:  # every copy decision asks, and almost always nothing is tripped
            return TradingState.ACTIVE
        worst = TradingState.ACTIVE
        for scope in (GLOBAL, *scopes):  # a plain loop: every copy decision asks
            state = self._states.get(scope)
            if state is not None and state.trips:  # no trips: ACTIVE
                worst = most_severe(worst, state.state)
        return worst

    def state(self, scope: str) -> RiskState | None:
        return self._states.get(scope)

    def _put(self, state: RiskState) -> None:
        """The one way a scope's state changes, so the tripped set always agrees with it."""
        self._states[state.scope] = state
        if state.trips:
            self._tripped.add(state.scope)
        else:
            self._tripped.discard(state.scope)

    def record(self, scopes: Iterable[str], result: OrderResult) -> None:
        """An order settled: it counts for the error triggers of each of ``scopes``."""
        for scope in (GLOBAL, *scopes):
            self._results[scope].append(result)

    async def halt(
        self, scope: str, reason: str, level: TradingState = TradingState.HALTED
    ) -> Transition:
        """Halt (or switch to reduce-only) a scope now; persisted before it returns."""
        return await self._change(scope, lambda s, now: halt(s, reason, now, level))

    async def resume(self, scope: str, reason: str) -> Transition:
        """Clear every trip of a scope (conditions that still hold trip again)."""
        return await self._change(scope, lambda s, now: resume(s, reason, now))

    async def events(self, limit: int = 100, scope: str | None = None) -> list[dict[str, Any]]:
        return await self._db.events(limit, scope)

    # -- running ----------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        if not self._loaded:
            for state in await self._db.load():
                self._put(state)
            self._loaded = True
            halted = {s: st.state.value for s, st in self._states.items() if st.trips}
            log.info("risk state loaded", scopes=len(self._states), tripped=halted)
        ready.set()
        while not await sleep_unless(self._clock, self._draining, EVALUATE_EVERY_S):
            await self._evaluate_all()

    async def drain(self) -> None:
        self._draining.set()

    async def _evaluate_all(self) -> None:
        provider = self._provider
        for scope in sorted(self._scopes):
            inputs = provider(scope) if provider is not None else None
            results = tuple(self._results.pop(scope, ()))
            if inputs is None:
                if results:
                    self._results[scope][:0] = results  # judged with the next figures
                continue
            if results:
                inputs = replace(inputs, order_results=inputs.order_results + results)
            self.counters["evaluations"] += 1
            await self._change(scope, _evaluator(inputs), quiet=True)

    async def _change(
        self,
        scope: str,
        step: Callable[[RiskState, int], tuple[RiskState, tuple[RiskEvent, ...]]],
        *,
        quiet: bool = False,
    ) -> Transition:
        if scope not in self._scopes and scope not in self._states:
            raise UnknownScope(f"no risk scope {scope!r}")
        async with self._lock:
            now_ms = self._clock.time_ms()
            before = self._states.get(scope) or RiskState(scope)
            after, events = step(before, now_ms)
            if after != before or events:
                # Persisted first: a restart must find what the daemon acted on.
                try:
                    await self._db.save(after, events, now_ms)
                except StoreError:
                    self.counters["errors"] += 1
                    if not quiet:
                        raise
                    # An automatic trip still applies in memory; the next change persists it.
                self._put(after)
            for e in events:
                self.counters["trips" if e.kind == "trip" else "clears"] += 1
                log.warning(
                    "risk " + e.kind,
                    scope=e.scope,
                    cause=e.cause.value,
                    state=e.after.value,
                    detail=e.detail,
                )
                self._bus.publish(Event("risk", event_json(e), e.time_ms, None))
            return Transition(scope, after.state, events)

    def stats(self) -> dict[str, Any]:
        return {
            "scopes": {
                s: {
                    "state": st.state.value,
                    "causes": [t.cause.value for t in st.trips],
                }
                for s, st in sorted(self._states.items())
                if s in self._scopes or st.trips
            },
            **self.counters,
        }


def _evaluator(
    inputs: RiskInputs,
) -> Callable[[RiskState, int], tuple[RiskState, tuple[RiskEvent, ...]]]:
    return lambda state, now_ms: evaluate(state, inputs, now_ms)


def event_json(e: RiskEvent, *, with_scope: bool = True) -> dict[str, Any]:
    """A transition as the feed and the API show it (the API's halt answer names the scope
    once, beside its events)."""
    out: dict[str, Any] = {"scope": e.scope} if with_scope else {}
    return {
        **out,
        "cause": e.cause.value,
        "kind": e.kind,
        "from": e.before.value,
        "to": e.after.value,
        "detail": e.detail,
        "time_ms": e.time_ms,
    }
