"""Chaos (b): the ``userFills`` snapshot that every (re)subscription replays is history — on the
first-ever start with a leader who already traded (some of it inside the REST gap-fill's 5 s
overlap), and again after each drop, now full of fills already copied — and history is never
copied: no order comes from it, while the leader's live fills are copied once each (I1) and
every fill, old or new, is recorded (I2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hlcopy.sim import Simulator

from tests.e2e.chaos_env import (
    accepted_cloids,
    all_recorded,
    assert_exactly_once,
    chaos_seed,
    converged,
    copy_records,
    copy_rows,
    seed_on_failure,
    sim_fill_tids,
)
from tests.live_env import LEADER, LOT, live_app, sim_post, szi

HISTORY = 40  # leader fills before the daemon's first start, the last ones seconds before it
LIVE = 6  # leader trades while it runs
DROPS = 4
RATIO = Decimal("0.5")
RECONCILE_S = 5.0
SLACK_S = 3.0


async def _trade(session: aiohttp.ClientSession, sim: Simulator, is_buy: bool, usd: int) -> None:
    body = {"address": LEADER, "coin": "ETH", "is_buy": is_buy, "usd": usd}
    async with session.post(sim.url + "/_sim/trade", json=body) as r:
        assert r.status == 200, await r.text()


async def _drop_and_wait(sim: Simulator, stats: Callable[[], dict[str, Any]], n: int) -> None:
    """Drop every WebSocket ``n`` times, each once the daemon has resubscribed."""
    for _ in range(n):
        reconnects = stats()["reconnects"]
        await sim_post(sim, "/_sim/faults", {"drop_ws": "all"})
        async with asyncio.timeout(10):
            while stats()["reconnects"] == reconnects or stats()["connections_ready"] < 1:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the snapshot and the gap-fill's REST read


@pytest.mark.slow(26)
@pytest.mark.timeout(120)
async def test_history_replayed_by_snapshots_is_recorded_and_never_copied(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    seed = chaos_seed()
    with seed_on_failure(seed) as rng:
        await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
        async with aiohttp.ClientSession() as session:
            # The leader's past: mostly buys (it ends holding a long), the last few inside the
            # gap-fill's overlap of the daemon's first subscription.
            for _ in range(HISTORY):
                await _trade(session, sim, rng.random() < 0.7, rng.randint(100, 400))
                await asyncio.sleep(rng.uniform(0, 0.05))
        history = sim_fill_tids(sim, LEADER)
        assert len(history) >= HISTORY
        held = szi(sim, LEADER)
        follows = [
            {"name": "copy", "leader": LEADER, "ratio": str(RATIO), "max_fill_age_ms": 60_000}
        ]
        tracking = {
            "leader_poll_interval_s": 2,
            "reconcile_interval_s": RECONCILE_S,
            "follower_poll_interval_s": 2,
            "workers": 2,
        }
        network = {"ws_reconnect_base_s": 0.1, "ws_reconnect_cap_s": 0.5}
        async with live_app(
            tmp_path, sim, dsn, follows=follows, tracking=tracking, network=network
        ) as (app, account):
            # First-ever start: the history is recorded, and nothing is copied — not at start,
            # not at a reconcile, not when drops replay the snapshot.
            await all_recorded(sim, dsn, LEADER, 10)
            await _drop_and_wait(sim, app.stream.stats, 2)
            await asyncio.sleep(RECONCILE_S + 1)
            assert copy_records(sim, account) == []
            assert await copy_rows(dsn) == {}
            assert szi(sim, account) == 0
            assert app.books.view(LEADER, "ETH") is not None
            assert app.books.view(LEADER, "ETH").szi == held  # type: ignore[union-attr]
            replayed = app.books.counters["fills_snapshot"]
            assert replayed >= 3 * len(history)  # the first subscription's and two drops'

            # Live fills are copied, one order at most for each.
            async with aiohttp.ClientSession() as session:
                for _ in range(LIVE):
                    await _trade(session, sim, rng.random() < 0.5, rng.randint(200, 800))
                    await asyncio.sleep(rng.uniform(0.3, 0.8))

            def target() -> Decimal:
                return (RATIO * szi(sim, LEADER)).quantize(LOT, rounding=ROUND_DOWN)

            await converged(sim, account, target, RECONCILE_S + SLACK_S)
            await asyncio.sleep(1)
            copied = accepted_cloids(sim, account)
            rows = await copy_rows(dsn)
            # One decision at most for each live trade: one order, or the two legs of a flip
            # (a reduce-only close, then the open; seed 431169407 flips).
            decisions: dict[tuple[int, int], list[bool]] = {}
            for cloid in copied:
                r = rows[cloid]
                decisions.setdefault((r["leader_tid"], r["decided_ms"]), []).append(
                    r["reduce_only"]
                )
            assert 1 <= len(decisions) <= LIVE, decisions
            assert all(
                sorted(legs) in ([False], [True], [False, True]) for legs in decisions.values()
            )

            # Every resubscription now replays fills already copied: still nothing is sent.
            duplicates = app.books.counters["duplicates"]
            sent = copy_records(sim, account)
            await _drop_and_wait(sim, app.stream.stats, DROPS)
            await asyncio.sleep(RECONCILE_S + 1)  # one reconcile after the last drop
            assert copy_records(sim, account) == sent
            assert app.books.counters["fills_snapshot"] - replayed >= DROPS * len(history)
            assert app.books.counters["duplicates"] > duplicates

            # I1 and I2 over the whole run.
            figures = await assert_exactly_once(sim, account, dsn)
            await all_recorded(sim, dsn, LEADER, 10)
            print(
                f"chaos (b) seed={seed}: history={len(history)} copied={len(copied)}"
                f" replayed={app.books.counters['fills_snapshot']}"
                f" duplicates={app.books.counters['duplicates']} {figures}"
            )
