"""Chaos (e): a seeded 10% of the daemon's REST requests answered HTTP 429 for 25 s (the issue
says a minute; 25 s keeps the scenario under 40 s) while a leader trades — the simulator's own
weight counter never refuses the daemon, copy orders keep flowing (over the WebSocket, in the
budget's order lane) without the read lanes' 429 backoff holding them up, and nothing is retried
blind: no cloid reaches the exchange twice, and an order whose reply is lost during the storm is
settled by ``orderStatus`` (itself subject to the 429s), not sent again.

The daemon is quiet on REST here (a few dozen requests: after its first 429s its read lanes back
off, 5 s and doubling, as designed), so the budget is far from its limit; this scenario proves
that 429s slow nothing but reads, not how close to the limit the budget runs.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from random import Random
from typing import Any

import aiohttp
import pytest
from hlcopy.sim import Simulator
from hlcopy.sim.engine import REC_CLOID

from tests.e2e.chaos_env import (
    REC_TIME,
    accepted,
    assert_exactly_once,
    chaos_seed,
    cloid_of,
    converged,
    copy_records,
    copy_rows,
    seed_on_failure,
)
from tests.live_env import LEADER, LOT, live_app, sim_post, szi

RATIO = Decimal("0.5")
BASELINE_S, STORM_S = 5.0, 25.0
SHARE = 0.1
TRADES_PER_S = 3.0
RECONCILE_S = 5.0
SLACK_S = 3.0
BACKOFF_MS = 5_000  # the budget's first read back-off after a 429


async def _trade(session: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]) -> None:
    async with session.post(sim.url + "/_sim/trade", json=body) as r:
        assert r.status == 200, await r.text()


async def _leader_for(sim: Simulator, rng: Random, seconds: float) -> int:
    """The leader trades ETH, mean-reverting around a small long, for ``seconds``."""
    mid = Decimal(str(sim.engine.by_name["ETH"].path.mid))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    n = 0
    async with aiohttp.ClientSession() as session:
        while loop.time() < end:
            lean = max(-0.4, min(0.4, float(szi(sim, LEADER) * mid - 3_000) / 10_000))
            body = {
                "address": LEADER,
                "coin": "ETH",
                "is_buy": rng.random() < 0.5 - lean,
                "usd": rng.randint(150, 600),
            }
            await _trade(session, sim, body)
            n += 1
            await asyncio.sleep(rng.expovariate(TRADES_PER_S))
    return n


def _storm_seed(rng: Random) -> int:
    """A seed for the simulator's draws of which requests the storm refuses, whose first 429
    comes within the storm's first ten requests. The daemon makes only a few dozen in the storm
    (fewer once it backs off), so an unlucky seed's first hit could come after them all (CI drew
    one whose first hit was the 52nd): a storm that refuses nothing proves nothing."""
    while True:
        seed = rng.getrandbits(31)
        draws = Random(seed)  # the simulator draws ``random() < fraction`` per request
        if any(draws.random() < SHARE for _ in range(10)):
            return seed


def _p99(values: list[int]) -> float:
    return max(values) if len(values) < 100 else statistics.quantiles(values, n=100)[98]


@pytest.mark.slow(33)
@pytest.mark.timeout(120)
async def test_a_storm_of_429s_never_exceeds_the_budget_nor_stops_or_repeats_orders(
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
            account={"order_expires_after_s": 2.0},
        ) as (app, account):
            await asyncio.sleep(1)  # the leader's first snapshot (flat) and subscription
            rate_limited = sim.stats["rate_limited"]
            requests = sim.stats["info_requests"] + sim.stats["exchange_requests"]
            baseline_trades = await _leader_for(sim, rng, BASELINE_S)

            await asyncio.sleep(1)  # the baseline's last copies are done

            # The storm: 10% of /info and /exchange answer 429, drawn from the seed.
            storm_ms = sim.engine.now_ms  # the exchange's records are stamped in its time
            storm_local_ms = sim.clock.time_ms()  # the copy log in ours
            spec = {"status": 429, "seconds": STORM_S, "fraction": SHARE, "seed": _storm_seed(rng)}
            await sim_post(sim, "/_sim/faults", {"http_error": spec})
            # One order's reply is lost early in the storm (a SOL copy, so ETH keeps flowing
            # while it waits): it is settled by orderStatus, under the storm.
            await sim_post(sim, "/_sim/faults", {"exchange_lose_reply": 1})
            async with aiohttp.ClientSession() as session:
                body = {"address": LEADER, "coin": "SOL", "is_buy": True, "usd": 2_000}
                await _trade(session, sim, body)
            async with asyncio.timeout(5):
                while sim.stats["replies_lost"] < 1:
                    await asyncio.sleep(0.02)
            storm_trades = await _leader_for(sim, rng, STORM_S - 1)
            storm_429s = app.daemon.stats()["budget"]["rate_limited"]
            await asyncio.sleep(1)  # the storm ends

            def target(coin: str) -> Decimal:
                return (RATIO * szi(sim, LEADER, coin)).quantize(LOT, rounding=ROUND_DOWN)

            await converged(sim, account, lambda: target("ETH"), RECONCILE_S + SLACK_S)
            await converged(sim, account, lambda: target("SOL"), SLACK_S, coin="SOL")

            # The budget: the simulator's weight window never refused us; the storm did hit.
            assert sim.stats["rate_limited"] == rate_limited
            assert storm_429s >= 1
            # Orders kept flowing through the storm, without waiting on the reads' backoff.
            rows = await copy_rows(dsn)
            eth = [
                r
                for r in copy_records(sim, account, storm_ms)
                if accepted(r) and rows[cloid_of(r)]["coin"] == "ETH"
            ]
            assert len(eth) >= storm_trades // 3, (len(eth), storm_trades)
            times = sorted(r[REC_TIME] for r in eth)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # No order waited in the budget: the read lanes' back-off (5 s and doubling) is theirs.
            assert app.daemon.stats()["budget"]["lanes"]["order"]["wait_s_max"] == 0
            # End to end, decided -> booked (the write-ahead, the budget, the round trip): a
            # back-off holding orders would show as 5 s and up. CI's busiest runs took up to
            # 1.1 s before the storm as well as in it, so the bound is the back-off, not a speed.
            delays = {
                phase: [
                    int(r["settled_ms"]) - int(r["decided_ms"])
                    for r in rows.values()
                    if r["status"] == "filled"
                    and r["coin"] == "ETH"
                    and (r["decided_ms"] >= storm_local_ms) == (phase == "storm")
                ]
                for phase in ("baseline", "storm")
            }
            assert delays["storm"], rows
            assert _p99(delays["storm"]) < BACKOFF_MS, delays
            # The lost reply: settled by cloid, one record on the exchange, never resent.
            (sol,) = [c for c, r in rows.items() if r["coin"] == "SOL"]
            assert rows[sol]["status"] == "filled"
            assert [accepted(r) for r in copy_records(sim, account) if r[REC_CLOID] == sol] == [
                True
            ]
            # Nothing twice (I1); every outcome known.
            figures = await assert_exactly_once(sim, account, dsn)
            assert app.executor.counters["unknown"] == 0
            venue = app.executor.stats()["venue"]
            assert venue["settled_by_cloid"] >= 1
            requests = sim.stats["info_requests"] + sim.stats["exchange_requests"] - requests
            print(
                f"chaos (e) seed={seed}: trades={baseline_trades}+{storm_trades}"
                f" rest_requests={requests} daemon_429s={storm_429s}"
                f" storm_eth_orders={len(eth)} max_gap_ms={max(gaps, default=0)}"
                f" decided_to_booked_p99_ms={ {k: _p99(v) if v else 0 for k, v in delays.items()} }"
                f" status_errors={venue['status_errors']} {figures}"
            )
