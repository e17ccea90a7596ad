"""Chaos (g): drift injected into the follower account is corrected within one reconcile
interval with one correcting order per coin; while the account cannot be read, nothing is
corrected; a position opened outside hlcopy is left alone and reported."""

from __future__ import annotations

import asyncio
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import pytest
from hlcopy.follow.protect import STOP_TAG
from hlcopy.sim import Simulator
from hlcopy.sim.engine import REC_CLOID

from tests.component.test_copy_engine import synced
from tests.live_env import LEADER, LOT, held_on_exchange, live_app, sim_post, szi

INTERVAL_S = 5.0
CONFIRM_S = 1.0  # the reconciler's second read (Reconciler's default)
SLACK_S = 3.0  # the correcting order's round trip and the copy engine's turn, on a busy machine


def hlcopy_orders(sim: Simulator, account: str, coin: str = "ETH") -> list[str]:
    """The cloids of the copy orders the exchange took from the account in ``coin`` (hand
    trades carry no cloid; protective stops carry the stop tag)."""
    acct = sim.engine.accounts[account]
    return [
        rec[REC_CLOID]
        for rec in acct.records.values()
        if rec[0] == coin and rec[REC_CLOID] and not rec[REC_CLOID].startswith("0x" + STOP_TAG)
    ]


@pytest.mark.slow(40)
@pytest.mark.timeout(150)
async def test_drift_is_corrected_once_per_coin_and_never_while_the_account_is_unknown(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
    follows = [{"name": "copy", "leader": LEADER, "ratio": "0.5", "max_fill_age_ms": 60_000}]
    tracking = {
        "leader_poll_interval_s": 2,
        "reconcile_interval_s": INTERVAL_S,
        "follower_poll_interval_s": 2,
        "workers": 2,
    }
    async with live_app(tmp_path, sim, dsn, follows=follows, tracking=tracking) as (app, account):
        assert app.reconciler is not None
        await synced(app, LEADER)
        await sim_post(
            sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 20_000}
        )
        # The copier rounds toward zero: half of an odd lot count is the lot below (the
        # default half-even quantize can make it the lot above, and the exact checks below then
        # fail by one lot).
        target = (Decimal("0.5") * szi(sim, LEADER)).quantize(LOT, rounding=ROUND_DOWN)
        await held_on_exchange(sim, account, target, 30)
        await asyncio.sleep(INTERVAL_S + CONFIRM_S)  # one quiet reconcile: the books agree
        assert app.reconciler.counters["drifts"] == 0

        # Drift: a hand sells a third of the copy; beside it, a position in a coin hlcopy
        # neither holds nor targets.
        before = hlcopy_orders(sim, account)
        cut = (target / 3).quantize(LOT)
        await sim_post(
            sim,
            "/_sim/trade",
            {"address": account, "coin": "ETH", "is_buy": False, "sz": str(cut)},
        )
        await sim_post(
            sim, "/_sim/trade", {"address": account, "coin": "SOL", "is_buy": True, "usd": 2_000}
        )
        sol = szi(sim, account, "SOL")
        assert szi(sim, account) == target - cut
        started = time.monotonic()
        await held_on_exchange(sim, account, target, INTERVAL_S + CONFIRM_S + SLACK_S)
        took = time.monotonic() - started
        await asyncio.sleep(INTERVAL_S + CONFIRM_S)  # nothing more is sent for it
        assert len(hlcopy_orders(sim, account)) - len(before) == 1, took
        assert app.reconciler.counters["drifts"] == 1
        assert szi(sim, account, "SOL") == sol  # left alone ...
        assert app.reconciler.outside == {"SOL": sol}  # ... and reported
        rows = {r["coin"]: r for r in app.copier.positions()["positions"]}
        assert rows["ETH"]["outside_szi"] == 0
        assert app.daemon.stats()["reconciler"]["outside"] == {"SOL": str(sol)}

        # While the account cannot be read (every /info answers 502), drift is unknown: no
        # correcting order. Once it can, one order corrects it.
        before = hlcopy_orders(sim, account)
        unknown = app.reconciler.counters["unknown"]
        await sim_post(
            sim, "/_sim/faults", {"http_error": {"status": 502, "seconds": 12, "paths": ["/info"]}}
        )
        await sim_post(
            sim,
            "/_sim/trade",
            {"address": account, "coin": "ETH", "is_buy": False, "sz": str(cut)},
        )
        await asyncio.sleep(11)
        assert hlcopy_orders(sim, account) == before
        assert szi(sim, account) == target - cut
        assert app.reconciler.counters["unknown"] > unknown
        await held_on_exchange(sim, account, target, 1 + INTERVAL_S + CONFIRM_S + SLACK_S)
        await asyncio.sleep(INTERVAL_S + CONFIRM_S)
        assert len(hlcopy_orders(sim, account)) - len(before) == 1
        assert app.executor.counters["unknown"] == 0
