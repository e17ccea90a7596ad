"""Chaos (f): PostgreSQL goes away mid-run — the daemon reaches it through a TCP proxy that the
test cuts (every connection reset, new ones closed at once, as when the server stops) and later
restores; the session's server and every other test are untouched.

While it is away the leader keeps trading: no order is sent without a committed intent (every
cloid the simulator took has its row in ``copies``), nothing is sent twice (I1). When it is back
the daemon recovers by itself: every leader fill, including those of the outage, is recorded
(I2), trading is not left halted, and the follower converges to its target (I3).
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from random import Random

import aiohttp
import pytest
from hlcopy.follow.risk import TradingState
from hlcopy.sim import Simulator

from tests.e2e.chaos_env import (
    accepted_cloids,
    all_recorded,
    assert_exactly_once,
    chaos_seed,
    converged,
    copy_records,
    pg_proxy,
    seed_on_failure,
    sim_fill_tids,
)
from tests.live_env import LEADER, LOT, live_app, sim_post, szi

RATIO = Decimal("0.5")
OUTAGE_S = 6.0
RECONCILE_S = 5.0
RECOVERY_S = 20.0  # the store's reconnect backoff after a few failures, then one reconcile


async def _trades(sim: Simulator, rng: Random, n: int, pause_s: float) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            body = {
                "address": LEADER,
                "coin": "ETH",
                "is_buy": rng.random() < 0.6,
                "usd": rng.randint(300, 1_200),
            }
            async with session.post(sim.url + "/_sim/trade", json=body) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(rng.uniform(0.5, 1.5) * pause_s)


@pytest.mark.slow(24)
@pytest.mark.timeout(150)
async def test_postgres_cut_mid_run_sends_nothing_unrecorded_and_recovers(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    seed = chaos_seed()
    with seed_on_failure(seed) as rng:
        await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
        follows = [
            {"name": "copy", "leader": LEADER, "ratio": str(RATIO), "max_fill_age_ms": 60_000}
        ]
        tracking = {
            "leader_poll_interval_s": 2,
            "reconcile_interval_s": RECONCILE_S,
            "follower_poll_interval_s": 2,
            "workers": 2,
        }

        def target() -> Decimal:
            return (RATIO * szi(sim, LEADER)).quantize(LOT, rounding=ROUND_DOWN)

        async with (
            pg_proxy(dsn) as proxy,
            live_app(tmp_path, sim, proxy.dsn, follows=follows, tracking=tracking) as (
                app,
                account,
            ),
        ):
            await asyncio.sleep(1)  # the leader's first snapshot (flat) and subscription
            await _trades(sim, rng, 3, 0.4)
            await converged(sim, account, target, RECONCILE_S)
            before = accepted_cloids(sim, account)
            assert before

            # The database goes away; the leader keeps trading.
            outage_ms = sim.engine.now_ms
            proxy.cut()
            await _trades(sim, rng, 5, OUTAGE_S / 5)
            during = copy_records(sim, account, outage_ms)
            proxy.restore()
            assert proxy.resets > 0

            # Back: the daemon recovers by itself.
            took = await converged(sim, account, target, RECOVERY_S)
            await all_recorded(sim, dsn, LEADER, 10)
            assert app.risk.trading_state() == TradingState.ACTIVE, app.risk.state("global")
            # A leader trade after the outage is copied as usual.
            await _trades(sim, rng, 2, 0.4)
            await converged(sim, account, target, RECONCILE_S)
            # No order without a committed intent, nothing twice (I1).
            figures = await assert_exactly_once(sim, account, dsn)
            assert app.executor.counters["unknown"] == 0
            print(
                f"chaos (f) seed={seed}: sent_during_outage={len(during)}"
                f" recovered_in_s={took:.1f} resets={proxy.resets}"
                f" refused={app.executor.counters.get('refused')}"
                f" leader_fills={len(sim_fill_tids(sim, LEADER))} {figures}"
            )
