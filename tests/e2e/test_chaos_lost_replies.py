"""Chaos (c): orders whose outcome the daemon cannot know from the reply — settled by
``orderStatus(cloid)`` once ``expiresAfter`` has passed, never sent again, one venue order each:

1. applied, and the reply over the WebSocket ``post`` never comes (``exchange_lose_reply``);
2. with the WebSocket refused (REST it is), applied, and answered HTTP 502
   (``exchange_fail_after_apply``);
3. answered HTTP 502 *before* it was applied (a gateway that never passed it on): the exchange
   does not know the cloid, so it settles as never arrived, and the copier decides again under
   a new cloid — one order lands for the leader's move, the old cloid never does.

The leader's moves reach the daemon through its stream (1) and, while the WebSocket is refused,
through the tracker's REST reads of the leader's account (2, 3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hlcopy.sim import Simulator
from hlcopy.sim.engine import REC_CLOID

from tests.e2e.chaos_env import (
    accepted,
    assert_exactly_once,
    chaos_seed,
    converged,
    copy_records,
    copy_rows,
    seed_on_failure,
)
from tests.live_env import LEADER, LOT, live_app, sim_post, szi

RATIO = Decimal("0.5")
EXPIRES_S = 2.0
RECONCILE_S = 5.0
POST_TIMEOUT_S = 10.0  # the stream's wait for a post's reply
SLACK_S = 4.0


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None


async def _rows_since(dsn: str, decided_ms: int) -> dict[str, asyncpg.Record]:
    return {c: r for c, r in (await copy_rows(dsn)).items() if r["decided_ms"] >= decided_ms}


async def _new_rows(dsn: str, decided_ms: int, status: set[str], timeout: float) -> list[str]:
    """The cloids decided since ``decided_ms`` once one of them is in ``status``."""
    found: dict[str, asyncpg.Record] = {}
    try:
        async with asyncio.timeout(timeout):
            while not any(r["status"] in status for r in found.values()):
                await asyncio.sleep(0.1)
                found = await _rows_since(dsn, decided_ms)
    except TimeoutError:
        raise AssertionError(f"no copy row {status} within {timeout} s: {found}") from None
    return sorted(found, key=lambda c: found[c]["decided_ms"])


def _records(sim: Simulator, account: str, cloid: str) -> list[Any]:
    return [r for r in copy_records(sim, account) if r[REC_CLOID] == cloid]


@pytest.mark.slow(25)
@pytest.mark.timeout(150)
async def test_lost_and_failed_replies_are_settled_by_cloid_and_never_resent(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    seed = chaos_seed()
    with seed_on_failure(seed) as rng:
        await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
        follows = [
            {"name": "copy", "leader": LEADER, "ratio": str(RATIO), "max_fill_age_ms": 60_000}
        ]
        tracking = {
            "leader_poll_interval_s": 1,
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
            account={"order_expires_after_s": EXPIRES_S},
        ) as (app, account):
            venue = app.executor.stats

            def target() -> Decimal:
                return (RATIO * szi(sim, LEADER)).quantize(LOT, rounding=ROUND_DOWN)

            async def leader_trades(is_buy: bool, low: int, high: int) -> int:
                """The leader trades; the time its copy can be decided from. The leader stays
                long throughout (a flip would be two orders: a close, then an open)."""
                now = sim.clock.time_ms()
                usd = rng.randint(low, high)
                body = {"address": LEADER, "coin": "ETH", "is_buy": is_buy, "usd": usd}
                await sim_post(sim, "/_sim/trade", body)
                return now

            def actions() -> int:
                return int(sim.stats["ws_actions"] + sim.stats["exchange_requests"])

            await asyncio.sleep(1)  # the leader's first snapshot (flat) and subscription

            # 1. Applied; the WebSocket reply is lost.
            await sim_post(sim, "/_sim/faults", {"exchange_lose_reply": 1})
            sent_before = actions()
            since = await leader_trades(True, 6_000, 9_000)
            (lost,) = await _new_rows(dsn, since, {"sending", "unknown"}, 5)
            await converged(sim, account, target, 5)  # on the exchange at once
            assert venue()["venue"]["settled_by_cloid"] == 0  # ... still unknown to us
            (lost,) = await _new_rows(dsn, since, {"filled"}, POST_TIMEOUT_S + EXPIRES_S + SLACK_S)
            assert [accepted(r) for r in _records(sim, account, lost)] == [True]
            assert actions() - sent_before == 1  # never sent again
            assert sim.stats["replies_lost"] == 1
            assert venue()["venue"]["settled_by_cloid"] == 1

            # 2. No WebSocket (orders go over REST); applied, then answered 502.
            await sim_post(
                sim,
                "/_sim/faults",
                {"http_error": {"status": 503, "seconds": 60, "paths": ["/ws"]}, "drop_ws": "all"},
            )
            await _until(lambda: not app.stream.post_ready, 5, "the WebSocket refused")
            await sim_post(sim, "/_sim/faults", {"exchange_fail_after_apply": {"status": 502}})
            sent_before = actions()
            since = await leader_trades(False, 1_000, 2_500)
            await converged(sim, account, target, 5)  # the leader's poll, then the order
            (failed,) = await _new_rows(dsn, since, {"filled"}, EXPIRES_S + SLACK_S)
            assert [accepted(r) for r in _records(sim, account, failed)] == [True]
            assert actions() - sent_before == 1
            assert sim.stats["replies_lost"] == 2
            assert venue()["venue"]["settled_by_cloid"] == 2

            # 3. Still over REST: answered 502 before it was applied.
            await sim_post(
                sim,
                "/_sim/faults",
                {"http_error": {"status": 502, "seconds": 60, "paths": ["/ws", "/exchange"]}},
            )
            held = szi(sim, account)
            since = await leader_trades(True, 1_000, 2_500)
            (refused,) = await _new_rows(dsn, since, {"unknown"}, 5)
            await sim_post(  # the gateway is back; the WebSocket still refused
                sim,
                "/_sim/faults",
                {"http_error": {"status": 503, "seconds": 60, "paths": ["/ws"]}},
            )
            assert szi(sim, account) == held
            rows = await _new_rows(dsn, since, {"never_arrived"}, EXPIRES_S + SLACK_S)
            assert rows[0] == refused
            await converged(sim, account, target, RECONCILE_S + SLACK_S)  # decided again
            rows = list(await _rows_since(dsn, since))
            assert _records(sim, account, refused) == []  # the old cloid never lands
            landed = [c for c in rows if any(accepted(r) for r in _records(sim, account, c))]
            assert len(landed) == 1, (rows, landed)  # one venue order for the leader's move

            # Back to normal: the WebSocket comes back, and nothing was sent twice (I1).
            await sim_post(sim, "/_sim/faults", {"clear": True})
            await _until(lambda: app.stream.post_ready, 10, "the WebSocket back")
            figures = await assert_exactly_once(sim, account, dsn)
            assert app.executor.counters["unknown"] == 0  # every outcome known
            print(f"chaos (c) seed={seed}: {figures} venue={venue()['venue']}")
