"""The daemon in live mode, built by the composition root against the simulator: an approved
agent signs for the follower account, a copy follow and an inverse follow hold their targets on
the exchange itself, the copy follow's position carries one protective stop, and no cloid is
ever sent twice (the simulator's own order records say so)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hlcopy.app import App
from hlcopy.budget import WeightBudget
from hlcopy.credentials import load_secrets
from hlcopy.hl import ExchangeClient, InfoClient, Signer
from hlcopy.sim import Simulator
from hlcopy.store.copies import CopyStore

from tests.conftest import make_config

LEADER = "0x" + "3e" * 20
FADED = "0x" + "4e" * 20
LOT = Decimal("0.0001")  # ETH's lot on the simulator


async def sim_post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(sim.url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def szi(sim: Simulator, address: str, coin: str = "ETH") -> Decimal:
    account = sim.engine.accounts.get(address)
    position = None if account is None else account.positions.get(coin)
    return Decimal(0) if position is None else position.szi


@contextlib.asynccontextmanager
async def live_app(tmp_path: Path, sim: Simulator, dsn: str) -> AsyncIterator[tuple[App, str]]:
    agent_key = "0x" + secrets.token_hex(32)
    master, agent = Signer.from_key("0x" + secrets.token_hex(32)), Signer.from_key(agent_key)
    await sim_post(sim, "/_sim/fund", {"address": master.address, "usdc": "200000"})
    async with aiohttp.ClientSession() as session:
        by_master = ExchangeClient(session, sim.url, master, WeightBudget(), is_mainnet=False)
        await by_master.approve_agent(master, agent.address, "hlcopy")
    key_file = tmp_path / "agent.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(agent_key)
    cfg = make_config(
        tmp_path,
        dsn,
        network={"name": "custom", "rest_url": sim.url, "ws_url": sim.ws_url, "chain": "testnet"},
        discovery={"enabled": True},
        tracking={
            "leader_poll_interval_s": 2,
            "reconcile_interval_s": 5,
            "follower_poll_interval_s": 2,
            "workers": 2,
        },
        account={"mode": "live", "address": master.address, "agent_key_file": str(key_file)},
        follow=[
            {
                "name": "copy",
                "leader": LEADER,
                "ratio": "0.5",
                "max_fill_age_ms": 60_000,
                "protective_stop_pct": "5",
            },
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
    )
    async with App(cfg, load_secrets(cfg)) as app:
        task = asyncio.create_task(app.run(), name="test:live-app")
        try:
            async with asyncio.timeout(60):
                while not app.daemon.health()[0]:
                    assert not task.done(), f"the daemon exited with {task.result()}"
                    await asyncio.sleep(0.05)
            yield app, master.address
        finally:
            app.daemon.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)


async def held_on_exchange(sim: Simulator, account: str, want: Decimal, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            while abs(szi(sim, account) - want) > 2 * LOT:
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"wanted {want} ETH, the exchange holds {szi(sim, account)}") from None


@pytest.mark.timeout(180)
async def test_live_follows_hold_their_targets_on_the_exchange_with_a_protective_stop(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    for address in (LEADER, FADED):
        await sim_post(sim, "/_sim/fund", {"address": address, "usdc": "1000000"})
    async with live_app(tmp_path, sim, dsn) as (app, account):
        await asyncio.sleep(3)  # the leaders' first snapshots (flat) and subscriptions
        for usd, fade_usd in ((20_000, 8_000), (-5_000, 4_000)):
            await sim_post(
                sim,
                "/_sim/trade",
                {"address": LEADER, "coin": "ETH", "is_buy": usd > 0, "usd": abs(usd)},
            )
            await sim_post(
                sim,
                "/_sim/trade",
                {"address": FADED, "coin": "ETH", "is_buy": True, "usd": fade_usd},
            )
            want = (Decimal("0.5") * szi(sim, LEADER)).quantize(LOT) - (
                Decimal("0.25") * szi(sim, FADED)
            ).quantize(LOT)
            await held_on_exchange(sim, account, want, 30)
        attributed = app.executor.attributed()
        assert abs(attributed["copy"]["ETH"] - Decimal("0.5") * szi(sim, LEADER)) <= 2 * LOT
        assert abs(attributed["fade"]["ETH"] + Decimal("0.25") * szi(sim, FADED)) <= 2 * LOT
        assert app.executor.pending() == {}

        # One reduce-only stop for the copied long, on the exchange itself.
        async with aiohttp.ClientSession() as session:
            info = InfoClient(session, sim.url, WeightBudget())
            async with asyncio.timeout(20):
                while True:
                    stops = [o for o in await info.frontend_open_orders(account) if o.coin == "ETH"]
                    if stops:
                        break
                    await asyncio.sleep(0.5)
        assert len(stops) == 1, stops

        # Every order the daemon recorded is on the exchange once, under its own cloid.
        rows = [r for r in await CopyStore(app.store).copies(None, None, 500) if r["cloid"]]
        assert len(rows) >= 4
        assert len({r["cloid"] for r in rows}) == len(rows)
        async with aiohttp.ClientSession() as session:
            for r in rows:
                async with session.get(sim.url + "/_sim/orders", params={"cloid": r["cloid"]}) as q:
                    found = await q.json() if q.status == 200 else []
                assert r["status"] in ("filled", "partial", "rejected"), r
                if r["status"] != "rejected":
                    assert [f["user"] for f in found] == [account], r
        assert app.executor.counters["unknown"] == 0
