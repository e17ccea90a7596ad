"""Acceptance: a ratio follow and an inverse follow of synthetic leaders who trade on their own
(the simulator's noise traders: a change every few seconds, several coins, leverage), the daemon
in paper mode. After every leader change that stands for a few seconds, the follower's paper
position in that coin is r x the leader's (negated for the inverse follow) within one lot — or
a skip with its reason was recorded for that follow and coin.

The issue asks for ten minutes; the suite runs ``HLCOPY_EQUALITY_S`` seconds (two minutes by
default, to keep the whole suite near its time budget), and the closing note reports a
ten-minute run made with ``HLCOPY_EQUALITY_S=600``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from hlcopy.sim import Simulator

from tests.component.test_copy_engine import running_app

RUN_S = float(os.environ.get("HLCOPY_EQUALITY_S", "120"))
SETTLE_S = 5.0  # a change is judged once it has stood this long
RATIO = Decimal("0.5")


@dataclass
class Change:
    follow: str
    coin: str
    leader_szi: Decimal
    at: float
    judged: bool = False


@dataclass
class Tally:
    changes: int = 0
    equal: int = 0
    skipped: int = 0
    superseded: int = 0
    failures: list[str] = field(default_factory=list)


@pytest.mark.slow(RUN_S)
@pytest.mark.timeout(RUN_S + 180)
async def test_paper_positions_equal_r_times_the_leaders_after_every_change(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    noise = sorted(a for a, kind in sim.population.archetypes().items() if kind == "noise")
    copied, faded = noise[0], noise[1]
    follows = {
        "copy": (copied, RATIO),
        "fade": (faded, -RATIO),
    }
    extra = [
        {"name": "copy", "leader": copied, "ratio": str(RATIO), "max_fill_age_ms": 60_000},
        {
            "name": "fade",
            "leader": faded,
            "mode": "inverse",
            "ratio": str(RATIO),
            "max_fill_age_ms": 60_000,
        },
    ]
    async with running_app(tmp_path, sim, dsn, follows=extra) as app:
        lots = {a.name: Decimal(1).scaleb(-a.sz_decimals) for a in app.universe.universe}
        tally = Tally()
        pending: dict[tuple[str, str], Change] = {}
        last_seen: dict[tuple[str, str], Decimal] = {}
        started = time.monotonic()
        warm = started + 10  # the leaders' first snapshots and subscriptions
        while (now := time.monotonic()) - started < RUN_S:
            await asyncio.sleep(0.25)
            held = app.executor.attributed()
            for follow, (leader, scale) in follows.items():
                account = sim.engine.accounts[leader]
                coins = {c for c, p in account.positions.items() if p.szi} | set(
                    held.get(follow, {})
                )
                for coin in coins:
                    key = (follow, coin)
                    position = account.positions.get(coin)
                    szi = position.szi if position is not None else Decimal(0)
                    if last_seen.get(key) != szi:
                        last_seen[key] = szi
                        if key in pending and not pending[key].judged:
                            tally.superseded += 1
                        if now >= warm:
                            pending[key] = Change(follow, coin, szi, now)
                            tally.changes += 1
                        continue
                    change = pending.get(key)
                    if change is None or change.judged or now - change.at < SETTLE_S:
                        continue
                    change.judged = True
                    ours = held.get(follow, {}).get(coin, Decimal(0))
                    want = scale * change.leader_szi
                    if abs(ours - want) <= lots.get(coin, Decimal(0)):
                        tally.equal += 1
                        continue
                    reasons = await app.store.pool.fetch(
                        "SELECT skip_reason FROM copies WHERE status = 'skipped'"
                        " AND $1 = ANY(follow_ids) AND coin = $2 AND decided_ms >= $3",
                        follow,
                        coin,
                        int((change.at - SETTLE_S - (now - time.time())) * 1000),
                    )
                    if reasons:
                        tally.skipped += 1
                        continue
                    tally.failures.append(
                        f"{follow} {coin}: leader {change.leader_szi}, want {want}, held {ours}"
                        f" {now - change.at:.1f} s after the change"
                    )
        skips = await app.store.pool.fetch(
            "SELECT skip_reason, count(*) AS n FROM copies WHERE status = 'skipped'"
            " GROUP BY skip_reason"
        )
        print(
            f"\n{RUN_S:.0f} s: {tally.changes} leader changes, {tally.equal} equal within a lot,"
            f" {tally.skipped} explained by a recorded skip, {tally.superseded} superseded before"
            f" {SETTLE_S:.0f} s; copier {app.copier.stats()};"
            f" skips {[(r['skip_reason'], r['n']) for r in skips]}"
        )
        assert not tally.failures, tally.failures[:10]
        assert tally.equal >= 10, tally  # the leaders did trade, and were copied
        assert all(r["skip_reason"] for r in skips)  # every skip says why
