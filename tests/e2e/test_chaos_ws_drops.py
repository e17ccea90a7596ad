"""Chaos (a): a leader trading fast while the daemon's WebSocket is dropped 20 times at random,
5 of them half-open (the connection stays up and goes silent, so only the stream's stall
detection can notice) — every leader fill is recorded (I2), no order is sent twice and no leader
fill is copied twice (I1), and the follower converges to its target (I3).

Fills come from the simulator's ``/_sim/trade`` (each a small market order of the leader; most
take one fill, now and then two). Time is compressed so that it fits in half a minute:
the stall detection runs with a 2 s silence timeout (``network.ws_silence_timeout_s``; 60 s in
production, where a stall is noticed within 75 s), and reconnects back off from 0.1 s up to
0.5 s (``network.ws_reconnect_*``; 0.5 s up to 30 s in production, forgotten after a minute of
health: twenty drops in half a minute would otherwise be twenty doublings).

The breakers are widened. Twenty drops in half a minute leave orders of unknown fate, settled by
``orderStatus``, and some never-arrived ones, which would halt trading on the error rate — a
proper reaction in production, not what this scenario measures. So is the reject streak: the
executor's view of the follower's position counts a fill twice for a moment now and then
(tests/component/test_live_position_view.py, a known bug), reduce-only orders sized from it are
refused by the exchange, and a streak of those halted about one run in five.
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from random import Random
from typing import Any

import aiohttp
import pytest
from hlcopy.app import App
from hlcopy.sim import Simulator

from tests.e2e.chaos_env import (
    all_recorded,
    assert_exactly_once,
    chaos_seed,
    converged,
    seed_on_failure,
    sim_fill_tids,
)
from tests.live_env import LEADER, LOT, live_app, sim_post, szi

FILLS = 1000  # leader fills to make
TRADES_PER_S = 40.0  # the leader's pace (what the shared event loop allows, see the report)
DROPS, HALF_OPEN = 20, 5
PING_S, SILENCE_S = 0.5, 2.0
RECONNECT_BASE_S, RECONNECT_CAP_S = 0.1, 0.5
RATIO = Decimal("0.3")
RECONCILE_S = 5.0
SLACK_S = 3.0  # a busy 2-core machine: an order's round trip and the engine's turn


async def _leader(
    sim: Simulator, rng: Random, done: asyncio.Event, figures: dict[str, Any]
) -> None:
    """Small market orders of the leader, mean-reverting around flat, until ``FILLS`` fills."""
    mid = Decimal(str(sim.engine.by_name["ETH"].path.mid))
    async with aiohttp.ClientSession() as session:
        while len(sim_fill_tids(sim, LEADER)) < FILLS:
            lean = max(-0.4, min(0.4, float(szi(sim, LEADER) * mid) / 5_000))
            body = {
                "address": LEADER,
                "coin": "ETH",
                "is_buy": rng.random() < 0.5 - lean,
                "usd": rng.randint(12, 60),
            }
            async with session.post(sim.url + "/_sim/trade", json=body) as r:
                assert r.status == 200, await r.text()
            figures["trades"] += 1
            await asyncio.sleep(rng.expovariate(TRADES_PER_S))
    done.set()


async def _until(predicate: Any, timeout: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None
    return loop.time() - started


async def _chaos(sim: Simulator, app: App, rng: Random, figures: dict[str, Any]) -> None:
    """Twenty drops of every connection, five of them half-open, at random moments; each one
    hits a connection that is up (the previous one has been recovered from)."""
    stream = app.stream
    kinds = ["half_open"] * HALF_OPEN + ["drop"] * (DROPS - HALF_OPEN)
    rng.shuffle(kinds)
    for kind in kinds:
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        await _until(lambda: stream.stats()["connections_ready"] >= 1, 15, "the stream came back")
        if kind == "drop":
            before = stream.counters["reconnects"]
            await sim_post(sim, "/_sim/faults", {"drop_ws": "all"})
            await _until(lambda n=before: stream.counters["reconnects"] > n, 5, "drop noticed")
        else:
            before = stream.counters["silences"]
            await sim_post(sim, "/_sim/faults", {"ws_half_open": "all"})
            took = await _until(
                lambda n=before: stream.counters["silences"] > n, 10, "half-open stream noticed"
            )
            figures["stall_detected_s"].append(round(took, 2))
    await _until(lambda: stream.stats()["connections_ready"] >= 1, 15, "the stream came back")


@pytest.mark.slow(34)
@pytest.mark.timeout(150)
async def test_leader_fills_through_twenty_websocket_drops_are_recorded_and_copied_once(
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
        async with live_app(
            tmp_path,
            sim,
            dsn,
            follows=follows,
            tracking=tracking,
            network={
                "ws_ping_interval_s": PING_S,
                "ws_silence_timeout_s": SILENCE_S,
                "ws_reconnect_base_s": RECONNECT_BASE_S,
                "ws_reconnect_cap_s": RECONNECT_CAP_S,
            },
            risk={"max_errors_per_minute": 10_000, "max_consecutive_rejects": 1_000},
        ) as (app, account):
            await asyncio.sleep(1)  # the leader's first snapshot (flat) and subscription
            loop = asyncio.get_running_loop()
            started = loop.time()
            figures: dict[str, Any] = {"trades": 0, "stall_detected_s": []}
            done = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_leader(sim, rng, done, figures), name="test:leader")
                tg.create_task(_chaos(sim, app, rng, figures), name="test:chaos")
            figures["storm_s"] = round(loop.time() - started, 1)
            faults = await sim_post(sim, "/_sim/faults", {})
            assert faults["drops"] + faults["half_opened"] == DROPS
            assert len(figures["stall_detected_s"]) == HALF_OPEN
            assert max(figures["stall_detected_s"]) <= SILENCE_S + 2.0, figures

            # I2: every leader fill recorded within 10 s of the stream coming back.
            figures["recorded_in_s"] = round(await all_recorded(sim, dsn, LEADER, 10), 1)

            # I3: the follower reaches its target within one reconcile interval.
            def target() -> Decimal:
                return (RATIO * szi(sim, LEADER)).quantize(LOT, rounding=ROUND_DOWN)

            figures["converged_in_s"] = round(
                await converged(sim, account, target, RECONCILE_S + SLACK_S), 1
            )
            # I1: nothing twice, on the exchange's own records.
            figures |= await assert_exactly_once(sim, account, dsn)
            figures["leader_fills"] = len(sim_fill_tids(sim, LEADER))
            assert figures["leader_fills"] >= FILLS
            assert sim.snapshot()["ws_refused"] == 0  # reconnects stayed under the cap
            books = app.books.stats()
            figures["gapfills"] = books["gapfills"]
            figures["reconnects"] = app.stream.counters["reconnects"]
            venue = app.executor.stats()["venue"]
            figures |= {
                k: venue[k] for k in ("ambiguous", "settled_by_cloid", "never_arrived", "rejected")
            }
            assert app.executor.counters["unknown"] == 0  # every order's outcome is known
            print(f"chaos (a) seed={seed}: {figures}")
