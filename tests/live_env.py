"""A live daemon against the simulator, for the tests that need one: an approved agent key in a
0600 file, the follower account funded, the App built by the composition root in live mode."""

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
from hlcopy.app import App
from hlcopy.budget import WeightBudget
from hlcopy.credentials import load_secrets
from hlcopy.hl import ExchangeClient, Signer
from hlcopy.sim import Simulator

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
async def live_app(
    tmp_path: Path,
    sim: Simulator,
    dsn: str,
    *,
    follows: list[dict[str, Any]] | None = None,
    tracking: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[tuple[App, str]]:
    """The live App, READY, and the follower account's address; ``follows`` and ``tracking``
    replace the defaults (two follows: a copy with a protective stop and an inverse), other
    keyword arguments are config sections merged over the defaults."""
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
        network={
            "name": "custom",
            "rest_url": sim.url,
            "ws_url": sim.ws_url,
            "chain": "testnet",
            **sections.pop("network", {}),
        },
        discovery={"enabled": True},
        tracking=tracking
        or {
            "leader_poll_interval_s": 2,
            "reconcile_interval_s": 5,
            "follower_poll_interval_s": 2,
            "workers": 2,
        },
        account={
            "mode": "live",
            "address": master.address,
            "agent_key_file": str(key_file),
            **sections.pop("account", {}),
        },
        follow=follows
        or [
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
            **sections.pop("risk", {}),
        },
        **sections,
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
