"""Chaos (h): risk breaches made by the market (``/_sim/price``) — after each, no order that could
increase exposure reaches the exchange, by the exchange's own records:

1. a drawdown past ``risk.max_drawdown_pct`` switches the account to REDUCING: the leader adds,
   and nothing is bought; the leader cuts, and the follower cuts too, reduce-only;
2. a loss past ``risk.max_daily_loss_usd`` HALTS it: the leader adds and cuts, and nothing at all
   is sent.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from random import Random

import pytest
from hlcopy.follow.risk import TradingState
from hlcopy.sim import Simulator

from tests.e2e.chaos_env import (
    REC_IS_BUY,
    REC_REDUCE_ONLY,
    accepted,
    assert_exactly_once,
    chaos_seed,
    converged,
    copy_records,
    seed_on_failure,
)
from tests.live_env import LEADER, LOT, live_app, sim_post, szi

RATIO = Decimal("0.5")
EQUITY = Decimal(200_000)  # what live_app funds the follower with
DRAWDOWN_PCT = Decimal("0.4")  # of the equity's high-water mark: $800 here
DAILY_LOSS_USD = Decimal(2_000)
RECONCILE_S = 5.0


def _mid(sim: Simulator) -> Decimal:
    return Decimal(str(sim.engine.by_name["ETH"].path.mid))


def _value(sim: Simulator, account: str) -> Decimal:
    return Decimal(sim.engine.account_value(sim.engine.accounts[account]))


async def _move(sim: Simulator, account: str, loss_usd: Decimal) -> None:
    """Move ETH against the follower's position so it loses about ``loss_usd`` more."""
    held = szi(sim, account)
    assert held != 0
    px = _mid(sim) - loss_usd / held
    await sim_post(sim, "/_sim/price", {"coin": "ETH", "px": str(px.quantize(Decimal("0.1")))})


async def _state(app: object, want: TradingState, timeout: float) -> None:
    risk = app.risk  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(timeout):
            while risk.trading_state() != want:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not {want} within {timeout} s: {risk.state('global')}") from None


async def _leader(sim: Simulator, rng: Random, is_buy: bool) -> None:
    usd = rng.randint(6_000, 9_000)
    await sim_post(
        sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": is_buy, "usd": usd}
    )


@pytest.mark.slow(14)
@pytest.mark.timeout(120)
async def test_after_a_risk_breach_no_order_can_increase_exposure(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    seed = chaos_seed()
    with seed_on_failure(seed) as rng:
        await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
        follows = [
            {"name": "copy", "leader": LEADER, "ratio": str(RATIO), "max_fill_age_ms": 60_000}
        ]
        async with live_app(
            tmp_path,
            sim,
            dsn,
            follows=follows,
            risk={
                "max_drawdown_pct": str(DRAWDOWN_PCT),
                "max_daily_loss_usd": str(DAILY_LOSS_USD),
            },
        ) as (app, account):
            await asyncio.sleep(1)  # the leader's first snapshot (flat) and subscription
            await sim_post(
                sim,
                "/_sim/trade",
                {"address": LEADER, "coin": "ETH", "is_buy": True, "usd": 40_000},
            )

            def target() -> Decimal:
                return (RATIO * szi(sim, LEADER)).quantize(LOT)

            await converged(sim, account, target, RECONCILE_S)
            assert app.risk.trading_state() == TradingState.ACTIVE
            await asyncio.sleep(1.5)  # the risk keeper's high-water mark at this equity

            # 1. Drawdown: REDUCING.
            await _move(sim, account, EQUITY * DRAWDOWN_PCT / 100 * Decimal("1.5"))
            await _state(app, TradingState.REDUCING, 5)
            reducing_ms, held = sim.engine.now_ms, szi(sim, account)
            await _leader(sim, rng, True)  # the leader adds: nothing is bought
            await asyncio.sleep(2)
            assert szi(sim, account) == held
            await _leader(sim, rng, False)  # the leader cuts: so does the follower
            await _leader(sim, rng, False)
            async with asyncio.timeout(RECONCILE_S):
                while szi(sim, account) == held:
                    await asyncio.sleep(0.1)
            cut = copy_records(sim, account, reducing_ms)
            assert cut, "REDUCING sent no reduction"
            assert all(r[REC_REDUCE_ONLY] and not r[REC_IS_BUY] for r in cut), (
                cut
            )  # reduce-only sells
            assert 0 < szi(sim, account) < held

            # 2. Daily loss: HALTED.
            loss = EQUITY - _value(sim, account)
            await _move(sim, account, DAILY_LOSS_USD - loss + 300)
            await _state(app, TradingState.HALTED, 5)
            halted_ms, held = sim.engine.now_ms, szi(sim, account)
            await _leader(sim, rng, True)
            await _leader(sim, rng, False)
            await _leader(sim, rng, False)
            await asyncio.sleep(RECONCILE_S + 1)  # and a reconcile after them
            assert copy_records(sim, account, halted_ms) == []
            assert szi(sim, account) == held

            # Over both: nothing after the first breach could add exposure; nothing twice.
            after = [r for r in copy_records(sim, account, reducing_ms) if accepted(r)]
            assert all(r[REC_REDUCE_ONLY] for r in after)
            figures = await assert_exactly_once(sim, account, dsn)
            print(
                f"chaos (h) seed={seed}: reduced_by={len(cut)} orders"
                f" loss_usd={EQUITY - _value(sim, account):.0f} {figures}"
            )
