"""The copy engine in paper mode, built by the composition root against the simulator and real
PostgreSQL: a ratio follow holds r x the leader within one lot after every leader change, an
inverse follow the opposite, and a halt stops new exposure."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hlcopy.api.app import render_metrics
from hlcopy.app import App
from hlcopy.config import DatabaseConfig
from hlcopy.credentials import load_secrets
from hlcopy.follow.norms import DAY_MS
from hlcopy.follow.risk import TradingState
from hlcopy.follow.riskkeeper import GLOBAL, follow_scope, leader_scope
from hlcopy.sim import Simulator
from hlcopy.store import Store
from hlcopy.store.norms import NormStore

from tests.conftest import make_config

LEADER = "0x" + "1e" * 20
FADED = "0x" + "2e" * 20
LOT = Decimal("0.0001")  # ETH's lot on the simulator (szDecimals 4)


async def sim_post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(sim.url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def leader_szi(sim: Simulator, address: str, coin: str) -> Decimal:
    position = sim.engine.accounts[address].positions.get(coin)
    return Decimal(0) if position is None else position.szi


@contextlib.asynccontextmanager
async def running_app(
    tmp_path: Path,
    sim: Simulator,
    dsn: str,
    follows: list[dict[str, Any]] | None = None,
    leader_poll_interval_s: float = 2,
) -> AsyncIterator[App]:
    cfg = make_config(
        tmp_path,
        dsn,
        network={
            "name": "custom",
            "rest_url": sim.url,
            "ws_url": sim.ws_url,
            "chain": "testnet",
        },
        discovery={"enabled": True},
        tracking={
            "leader_poll_interval_s": leader_poll_interval_s,
            "reconcile_interval_s": 5,
            "workers": 2,
        },
        follow=follows
        or [
            {"name": "copy", "leader": LEADER, "ratio": "0.5", "max_fill_age_ms": 60_000},
            {
                "name": "fade",
                "leader": FADED,
                "mode": "inverse",
                "ratio": "0.25",
                "max_fill_age_ms": 60_000,
            },
        ],
        risk={
            "max_position_notional_usd": 100_000,
            "max_total_notional_usd": 200_000,
            "max_order_notional_usd": 100_000,
        },
        account={"paper_equity_usd": 100_000},
    )
    async with App(cfg, load_secrets(cfg)) as app:
        task = asyncio.create_task(app.run(), name="test:app")
        try:
            async with asyncio.timeout(60):
                while not app.daemon.health()[0]:
                    assert not task.done(), f"the daemon exited with {task.result()}"
                    await asyncio.sleep(0.05)
            yield app
        finally:
            app.daemon.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)


async def synced(app: App, *leaders: str, timeout: float = 30) -> None:
    """Until each leader's book is live (its state and userFills snapshot in): a trade made
    before then is history in that snapshot, never a change to copy."""
    try:
        async with asyncio.timeout(timeout):
            while not all(app.books.synced(a) for a in leaders):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"leaders not synced: {app.books.describe()}") from None


async def converged(app: App, want: dict[str, Decimal], timeout: float = 20) -> None:
    """Until the paper account holds ``want`` per follow in ETH (within one lot)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                held = app.executor.attributed()
                if all(
                    abs(held.get(f, {}).get("ETH", Decimal(0)) - v) <= LOT for f, v in want.items()
                ):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"wanted {want}, held {app.executor.attributed()}; copier {app.copier.stats()}, "
            f"leaders {app.books.stats()}, views "
            f"{[app.books.view(a, 'ETH') for a in (LEADER, FADED)]}"
        ) from None


@pytest.mark.slow(8)
@pytest.mark.timeout(180)
async def test_ratio_and_inverse_follows_hold_their_targets_and_a_halt_stops_them(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    for address in (LEADER, FADED):
        await sim_post(sim, "/_sim/fund", {"address": address, "usdc": "1000000"})
    async with running_app(tmp_path, sim, dsn) as app:
        await synced(app, LEADER, FADED)
        for step, (usd, fade_usd) in enumerate(((20_000, 8_000), (-5_000, 4_000), (-30_000, 0))):
            await sim_post(
                sim,
                "/_sim/trade",
                {"address": LEADER, "coin": "ETH", "is_buy": usd > 0, "usd": abs(usd)},
            )
            if fade_usd:
                await sim_post(
                    sim,
                    "/_sim/trade",
                    {"address": FADED, "coin": "ETH", "is_buy": True, "usd": fade_usd},
                )
            want = {
                "copy": (Decimal("0.5") * leader_szi(sim, LEADER, "ETH")).quantize(LOT),
                "fade": (Decimal("-0.25") * leader_szi(sim, FADED, "ETH")).quantize(LOT),
            }
            await converged(app, want)
            print(f"step {step}: {want} held {app.executor.attributed()}")
        assert app.executor.positions()["ETH"] == sum(
            (v.get("ETH", Decimal(0)) for v in app.executor.attributed().values()), Decimal(0)
        )

        # A halt: the next leader change is decided, but nothing new goes out.
        await app.risk.halt(GLOBAL, "test halt")
        before = dict(app.executor.attributed()["copy"])
        intents = app.copier.counters["intents"]
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 20_000}
        )
        await asyncio.sleep(3)
        assert app.executor.attributed()["copy"] == before
        assert app.copier.counters["intents"] == intents
        assert app.copier.counters["skips"] > 0

        # The copy figures per follow, on /metrics.
        text = render_metrics(app.daemon.metrics).decode()
        assert 'hlcopy_copy_orders_total{follow="copy",status="filled"}' in text
        assert 'hlcopy_copy_orders_total{follow="fade",status="filled"}' in text
        assert 'hlcopy_copy_skips_total{follow="copy",reason="halted"}' in text
        assert 'hlcopy_copy_slippage_bps_mean{follow="copy"}' in text


@pytest.mark.slow(11)
@pytest.mark.timeout(180)
async def test_a_leader_whose_leverage_leaves_its_norm_puts_its_follow_in_reducing(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
    # Its history, as ten days of following it would have stored: 0.05x on average (200
    # samples a day), so the limit is 3 x that.
    today = int(time.time() * 1000) // DAY_MS
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        await NormStore(store).add([(LEADER, today - d, 10.0, 200, 0.07) for d in range(1, 11)])
    async with running_app(tmp_path, sim, dsn) as app:
        await synced(app, LEADER)
        assert app.norms.stats()["with_norm"] == 1
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 50_000}
        )
        await converged(
            app, {"copy": (Decimal("0.5") * leader_szi(sim, LEADER, "ETH")).quantize(LOT)}
        )
        scope = leader_scope(LEADER)
        assert app.risk.trading_state(scope) == TradingState.ACTIVE

        # It more than triples its exposure: about 0.2x, beyond 0.15x.
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 150_000}
        )
        async with asyncio.timeout(15):
            while app.risk.trading_state(scope) != TradingState.REDUCING:
                await asyncio.sleep(0.1)
        state = app.risk.state(scope)
        assert state is not None
        assert [t.cause.value for t in state.trips] == ["leader_leverage"]
        assert app.risk.trading_state(follow_scope("copy")) == TradingState.ACTIVE  # its own

        # While it is beyond its norm, its increases are not copied. The trip comes from the
        # leader's polled state, after its fill: the copy of the trade that tripped it may still
        # be in flight (CI once read 7.3133 here, then found 29.2487: that copy, booked late).
        async with asyncio.timeout(10):
            while app.executor.pending():
                await asyncio.sleep(0.05)
        held = app.executor.attributed()["copy"]["ETH"]
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 20_000}
        )
        await asyncio.sleep(4)
        assert app.executor.attributed()["copy"]["ETH"] <= held + LOT
        skips = await app.store.pool.fetch(
            "SELECT skip_reason FROM copies WHERE status = 'skipped' AND 'copy' = ANY(follow_ids)"
        )
        assert "reducing_only" in {r["skip_reason"] for r in skips}

        # Back within its band (below 90% of the limit): the trip clears on its own and the
        # follow copies the leader's reduction.
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": False, "usd": 170_000}
        )
        async with asyncio.timeout(15):
            while app.risk.trading_state(scope) != TradingState.ACTIVE:
                await asyncio.sleep(0.1)
        await converged(
            app, {"copy": (Decimal("0.5") * leader_szi(sim, LEADER, "ETH")).quantize(LOT)}
        )


@pytest.mark.slow(14)
@pytest.mark.timeout(180)
async def test_a_halt_survives_a_restart_and_a_resume_catches_up(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
    async with running_app(tmp_path, sim, dsn) as app:
        await synced(app, LEADER)
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 10_000}
        )
        await converged(
            app, {"copy": (Decimal("0.5") * leader_szi(sim, LEADER, "ETH")).quantize(LOT)}
        )
        await app.risk.halt(GLOBAL, "before the restart")
        held = app.executor.attributed()["copy"]["ETH"]

    # A new daemon on the same state and database: still halted, before it decides anything.
    async with running_app(tmp_path, sim, dsn) as app:
        assert app.risk.trading_state() == TradingState.HALTED
        state = app.risk.state(GLOBAL)
        assert state is not None
        assert [(t.cause.value, t.detail) for t in state.trips] == [("api", "before the restart")]
        await synced(app, LEADER)
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 20_000}
        )
        await asyncio.sleep(4)
        assert app.executor.attributed()["copy"]["ETH"] == held
        assert app.copier.counters["intents"] == 0
        # Resumed, the follow catches up with what the leader did meanwhile.
        await app.risk.resume(GLOBAL, "checked")
        await converged(
            app, {"copy": (Decimal("0.5") * leader_szi(sim, LEADER, "ETH")).quantize(LOT)}
        )
