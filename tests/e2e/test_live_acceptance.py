"""Issue 12's acceptance run: ``hlcopy run`` live against ``hlcopy sim``, both as the user runs
them, with three follows (one inverse) of leaders that trade at random for a while. At the end
every follow holds its target, the follower's position on the exchange is the sum of the
follows' parts, every order's outcome is known, and the simulator's own order records show
each cloid once and no order hlcopy did not write ahead.

CI runs it for ``HLCOPY_ACCEPTANCE_S`` seconds (default 45); the closing note's run sets 600.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.hl import ExchangeClient, Signer

from tests.conftest import hlcopy_env
from tests.e2e.test_run_process import Process, hlcopy_run

SECONDS = float(os.environ.get("HLCOPY_ACCEPTANCE_S", "45"))
LEADERS = {  # follow name -> (leader, mode, ratio)
    "copy-a": ("0x" + "a1" * 20, "copy", Decimal("0.5")),
    "copy-b": ("0x" + "b2" * 20, "copy", Decimal("0.2")),
    "fade-c": ("0x" + "c3" * 20, "inverse", Decimal("0.3")),
}
COINS = ("BTC", "ETH", "SOL")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def hlcopy_sim(port: int) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "sim",
        "--port",
        str(port),
        "--traders",
        "30",
        "--warmup-s",
        "20",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=hlcopy_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(120), aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/_sim/stats") as r:
                        if r.status == 200:
                            break
                assert proc.returncode is None, "hlcopy sim exited"
                await asyncio.sleep(0.5)
        yield url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def sim_positions(http: aiohttp.ClientSession, url: str, address: str) -> dict[str, Decimal]:
    async with http.post(url + "/info", json={"type": "clearinghouseState", "user": address}) as r:
        state = await r.json()
    return {
        p["position"]["coin"]: Decimal(p["position"]["szi"])
        for p in state["assetPositions"]
        if Decimal(p["position"]["szi"]) != 0
    }


def config(tmp_path: Path, url: str, dsn: str, account: str, key_file: Path, api: int) -> Path:
    ws = url.replace("http", "ws", 1) + "/ws"
    follows = "".join(
        f'[[follow]]\nname = "{name}"\nleader = "{leader}"\nmode = "{mode}"\n'
        f'ratio = "{ratio}"\nmax_fill_age_ms = 60000\n'
        for name, (leader, mode, ratio) in LEADERS.items()
    )
    path = tmp_path / "hlcopy.toml"
    path.write_text(
        f'[network]\nname = "custom"\nrest_url = "{url}"\nws_url = "{ws}"\nchain = "testnet"\n'
        f'[database]\ndsn = "{dsn}"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[api]\nport = {api}\n[logging]\nformat = "json"\n'
        "[tracking]\nreconcile_interval_s = 10\n"
        f'[account]\nmode = "live"\naddress = "{account}"\nagent_key_file = "{key_file}"\n'
        "[risk]\nmax_position_notional_usd = 10000000\nmax_total_notional_usd = 10000000\n"
        "max_order_notional_usd = 10000000\nmax_daily_loss_usd = 10000000\n"
        "max_drawdown_pct = 90\n" + follows
    )
    return path


@pytest.mark.slow(SECONDS + 25)
@pytest.mark.timeout(SECONDS + 300)
async def test_three_live_follows_hold_their_targets_with_every_order_known_once(
    tmp_path: Path, dsn: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    async with hlcopy_sim(free_port()) as url, aiohttp.ClientSession() as http:
        master = Signer.from_key("0x" + secrets.token_hex(32))
        agent_key = "0x" + secrets.token_hex(32)
        await post(http, url + "/_sim/fund", {"address": master.address, "usdc": "10000000"})
        for leader, _, _ in LEADERS.values():
            await post(http, url + "/_sim/fund", {"address": leader, "usdc": "10000000"})
        by_master = ExchangeClient(http, url, master, WeightBudget(), is_mainnet=False)
        await by_master.approve_agent(master, Signer.from_key(agent_key).address, "acceptance")
        key_file = tmp_path / "agent.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(agent_key)
        api = free_port()
        cfg = config(tmp_path, url, dsn, master.address, key_file, api)
        account = master.address.lower()
        async with hlcopy_run(cfg) as p:
            await p.wait_for("hlcopy ready", timeout=60)
            # Every leader's book live (its state read, its userFills snapshot in): a trade
            # before then would be history, not a change to copy.
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"http://127.0.0.1:{api}/api/v1/positions") as r:
                        books = (await r.json())["leaders"] if r.status == 200 else {}
                    if len(books) == len(LEADERS) and all(
                        b is not None and b["live"] for b in books.values()
                    ):
                        break
                    await asyncio.sleep(0.1)
            trades: Counter[str] = Counter()
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                leader = rng.choice([v[0] for v in LEADERS.values()])
                coin = rng.choice(COINS)
                held = (await sim_positions(http, url, leader)).get(coin, Decimal(0))
                is_buy = rng.random() < 0.5 if abs(held) * 1 < 3 else held < 0
                body = {
                    "address": leader,
                    "coin": coin,
                    "is_buy": is_buy,
                    "usd": rng.choice((2_000, 5_000, 12_000)),
                }
                reply = await post(http, url + "/_sim/trade", body)
                status = reply["statuses"][0]
                trades["filled" if isinstance(status, dict) and "filled" in status else "not"] += 1
                await asyncio.sleep(rng.uniform(0.2, 1.5))
            # Quiet: every copy lands and one reconcile pass has run.
            await asyncio.sleep(15)
            async with http.get(f"http://127.0.0.1:{api}/api/v1/positions") as r:
                view = await r.json()
            follower = await sim_positions(http, url, account)
            leaders = {
                name: await sim_positions(http, url, leader)
                for name, (leader, _, _) in LEADERS.items()
            }
            p.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(p.proc.wait(), 30) == 0
            await check_end(http, url, dsn, account, view, follower, leaders, trades, seed, p)
        print(f"acceptance: {SECONDS:g} s, leader trades {dict(trades)}, seed {seed}")


async def check_end(
    http: aiohttp.ClientSession,
    url: str,
    dsn: str,
    account: str,
    view: dict[str, Any],
    follower: dict[str, Decimal],
    leaders: dict[str, dict[str, Decimal]],
    trades: Counter[str],
    seed: int,
    p: Process,
) -> None:
    where = f"seed {seed}, trades {dict(trades)}"
    async with http.post(url + "/info", json={"type": "meta"}) as r:
        lots = {a["name"]: int(a["szDecimals"]) for a in (await r.json())["universe"]}
    assert trades["filled"] > 0, where
    rows = {r["coin"]: r for r in view["positions"]}
    coins = set(follower) | set(rows) | {c for held in leaders.values() for c in held}
    for coin in coins:
        row = rows.get(coin)
        assert row is not None, f"{where}: {coin} held by a leader or us, unknown to hlcopy"
        # The exchange holds what the daemon says, the follows' parts sum to it ...
        assert Decimal(str(row["szi"])) == follower.get(coin, Decimal(0)), (where, coin, row)
        parts = {f["follow"]: f for f in row["follows"]}
        held = sum((Decimal(str(f["attributed_szi"])) for f in parts.values()), Decimal(0))
        assert held + Decimal(str(row["outside_szi"])) == follower.get(coin, Decimal(0)), where
        # ... and each follow holds its target: the leader's position scaled, toward zero on
        # the lot, less only what the $10 minimum order left (skip policy).
        lot = Decimal(1).scaleb(-lots[coin])
        mid = Decimal(str(row["mid"]))
        for name, (_, mode, ratio) in LEADERS.items():
            f = parts.get(name)
            scaled = ratio * leaders[name].get(coin, Decimal(0)) * (-1 if mode == "inverse" else 1)
            want = (scaled / lot).to_integral_value(ROUND_DOWN) * lot
            got = Decimal(0) if f is None else Decimal(str(f["attributed_szi"]))
            if f is not None and f["target_szi"] is not None:
                assert Decimal(str(f["target_szi"])) == scaled, (where, coin, name, f, scaled)
            assert got == want or abs(got - want) * mid < 10, (where, coin, name, got, want)
    conn = await asyncpg.connect(dsn)
    try:
        copies = await conn.fetch("SELECT cloid, status FROM copies WHERE cloid IS NOT NULL")
    finally:
        await conn.close()
    open_rows = [r for r in copies if r["status"] in ("planned", "sending", "unknown")]
    assert not open_rows, f"{where}: outcomes unknown: {open_rows}"
    ours = {r["cloid"] for r in copies}
    seen: Counter[str] = Counter()
    for cloid in ours:
        async with http.get(url + "/_sim/orders", params={"cloid": cloid}) as r:
            found = await r.json() if r.status == 200 else []
        seen.update(f["user"] for f in found)
        assert len(found) <= 1, f"{where}: {cloid} accepted {len(found)} times"
        status = next(r["status"] for r in copies if r["cloid"] == cloid)
        if status in ("filled", "partial"):
            assert [f["user"] for f in found] == [account], (where, cloid)
    assert set(seen) <= {account}, where
    assert p.lines[-1]["event"] == "hlcopy stopped", where
