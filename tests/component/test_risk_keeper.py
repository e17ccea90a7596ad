"""The risk keeper on real PostgreSQL: halts persist before they are answered and survive a
restart, automatic trips fire from the figures with their cause, and the API's brake works."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from hlcopy.component import Ready
from hlcopy.config import DatabaseConfig
from hlcopy.events import EventBus
from hlcopy.follow.risk import Cause, RiskInputs, RiskLimits, TradingState
from hlcopy.follow.riskkeeper import GLOBAL, RiskKeeper, follow_scope
from hlcopy.store import Store

from tests.component.scout_env import ScoutApi, scout_api


async def migrated(dsn: str, tmp_path: Path) -> Store:
    store = Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False)
    await store.open()
    await store.migrate()
    return store


async def started(keeper: RiskKeeper) -> asyncio.Task[None]:
    """Run ``keeper`` until it reports ready (it has loaded the stored state)."""
    ready = asyncio.Event()
    task = asyncio.create_task(keeper.run(Ready(lambda ok, _: ready.set() if ok else None)))
    await asyncio.wait_for(ready.wait(), 5)
    return task


async def test_a_halt_is_stored_before_it_is_answered_and_survives_a_restart(
    dsn: str, tmp_path: Path
) -> None:
    store = await migrated(dsn, tmp_path)
    try:
        bus = EventBus()
        feed = bus.subscribe(types=["risk"])
        keeper = RiskKeeper(store, bus)
        keeper.set_scopes([follow_scope("alpha")])
        done = await keeper.halt(follow_scope("alpha"), "leader went quiet")
        assert done.state == TradingState.HALTED
        assert keeper.trading_state(follow_scope("alpha")) == TradingState.HALTED
        assert keeper.trading_state() == TradingState.ACTIVE  # the account itself is not halted
        event = await asyncio.wait_for(feed.next(), 1)
        assert event.data["scope"] == "follow:alpha"
        assert (event.data["cause"], event.data["to"]) == ("api", "halted")

        again = RiskKeeper(store, EventBus())  # a restart: a new keeper on the same database
        again.set_scopes([follow_scope("alpha")])
        task = await started(again)
        assert again.trading_state(follow_scope("alpha")) == TradingState.HALTED
        events = await again.events(10)
        assert [(e["scope"], e["cause"], e["state_after"]) for e in events] == [
            ("follow:alpha", "api", "halted")
        ]
        resumed = await again.resume(follow_scope("alpha"), "checked by hand")
        assert resumed.state == TradingState.ACTIVE
        assert again.trading_state(follow_scope("alpha")) == TradingState.ACTIVE
        await again.drain()
        await asyncio.wait_for(task, 5)
    finally:
        await store.close()


async def test_the_figures_trip_a_daily_loss_halt_within_a_second(dsn: str, tmp_path: Path) -> None:
    store = await migrated(dsn, tmp_path)
    try:
        keeper = RiskKeeper(store, EventBus())
        limits = RiskLimits(daily_loss_limit_usd=Decimal(100))
        pnl = {"value": Decimal(0)}
        keeper.set_provider(
            lambda scope: RiskInputs(limits, pnl=pnl["value"]) if scope == GLOBAL else None
        )
        task = await started(keeper)
        await asyncio.sleep(1.2)  # a first evaluation sets the day's baseline
        pnl["value"] = Decimal(-150)
        async with asyncio.timeout(3):
            while keeper.trading_state() != TradingState.HALTED:
                await asyncio.sleep(0.05)
        state = keeper.state(GLOBAL)
        assert state is not None
        trip = state.trip(Cause.DAILY_LOSS)
        assert trip is not None
        assert "150" in trip.detail
        await keeper.drain()
        await asyncio.wait_for(task, 5)
    finally:
        await store.close()


async def test_the_brake_over_the_api(dsn: str, tmp_path: Path) -> None:
    async with scout_api(dsn, tmp_path, traders=5) as api:
        await _brake(api)


async def _brake(api: ScoutApi) -> None:
    status, body = await api.call("POST", "/api/v1/halt?reason=stop", token=None)
    assert status == 401
    status, body = await api.call("POST", "/api/v1/halt")
    assert status == 400
    assert body["error"]["code"] == "invalid_parameter"
    status, body = await api.call("POST", "/api/v1/halt?reason=x&scope=nonsense")
    assert status == 400
    status, body = await api.call("POST", "/api/v1/halt?reason=x&scope=follow:nobody")
    assert status == 404
    status, body = await api.call("POST", "/api/v1/halt?reason=market%20is%20wild")
    assert status == 200, body
    assert body["state"] == "halted"
    assert api.risk.trading_state() == TradingState.HALTED
    risk = await api.get("/api/v1/risk")
    assert risk["scopes"]["global"] == {"state": "halted", "causes": ["api"]}
    assert risk["events"][0]["detail"] == "market is wild"
    status, body = await api.call("POST", "/api/v1/resume?reason=calm%20again")
    assert status == 200
    assert body["state"] == "active"
    status, body = await api.call("POST", "/api/v1/halt?reason=only%20reduce&level=reducing")
    assert body["state"] == "reducing"
