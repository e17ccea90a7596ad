"""``hlcopy agent new`` + ``hlcopy agent approve`` against the simulated exchange, through the
CLI entry point: the agent is approved and confirmed, then trades for the master's account; the
master key is read once and shows nowhere (stdout, stderr, debug logs)."""

from __future__ import annotations

import asyncio
import getpass
import io
import secrets
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hlcopy import agent, cli, log
from hlcopy.budget import WeightBudget
from hlcopy.hl import ExchangeClient, Signer
from hlcopy.sim import Simulator

from tests.component.test_sim_server import eth_spec
from tests.conftest import network_toml, write_secret


async def sim_post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(sim.url + path, data=orjson.dumps(body)) as r:
        assert r.status == 200, await r.text()
        return orjson.loads(await r.read())


@pytest.fixture(autouse=True)
def debug_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Whatever the command configures, its logs go to this stream at debug level (and, after
    the test, to the real stderr, not to a capture that is closed by then)."""
    stream = io.StringIO()
    configure = log.configure_logging
    monkeypatch.setattr(
        log, "configure_logging", lambda *a, **k: configure("debug", "json", stream)
    )
    yield stream
    configure("info", "json", sys.__stderr__)


@pytest.fixture
def master(tmp_path: Path) -> tuple[str, str, Path]:
    """A throwaway master key: (key, address, 0600 file)."""
    key = "0x" + secrets.token_hex(32)
    return key, Signer.from_key(key).address, write_secret(tmp_path / "master.key", key)


def config(sim: Simulator, tmp_path: Path) -> Path:
    path = tmp_path / "hlcopy.toml"
    path.write_text(network_toml(sim) + f'[state]\ndir = "{tmp_path / "state"}"\n')
    return path


async def hlcopy(*argv: str) -> int:
    """``hlcopy ARGV`` through the CLI's entry point, in a thread: it runs its own event loop
    while the simulator keeps serving in this one."""
    return await asyncio.to_thread(cli.main, list(argv))


def assert_never_shown(key: str, *texts: str) -> None:
    for text in texts:
        for form in (key, key[2:], key[2:].upper()):
            assert form not in text


def files_holding(root: Path, text: str) -> list[Path]:
    """Files under ``root`` that contain ``text`` (in any case)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and text.lower() in p.read_text(errors="replace").lower()
    ]


async def test_approve_then_the_agent_trades_for_the_master(
    sim: Simulator,
    tmp_path: Path,
    master: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
    debug_logs: io.StringIO,
) -> None:
    master_key, master_address, master_file = master
    await sim_post(sim, "/_sim/fund", {"address": master_address, "usdc": "100000"})
    agent_file = tmp_path / "agent.key"
    assert await hlcopy("agent", "new", str(agent_file)) == 0
    agent_key = agent_file.read_text().strip()
    agent_address = Signer.from_key(agent_key).address
    assert f"agent address: {agent_address}\n" in capsys.readouterr().out

    code = await hlcopy(
        "agent",
        "approve",
        "--agent-key",
        str(agent_file),
        "--master-key-file",
        str(master_file),
        "--config",
        str(config(sim, tmp_path)),
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (
        f"approving agent {agent_address} (named 'hlcopy') for account {master_address} on "
        f"{sim.url} (testnet chain)\n"
    ) in out
    assert f"approved: agent {agent_address} trades for account {master_address}" in out
    assert "confirmed by extraAgents" in out
    assert_never_shown(master_key, out, err, debug_logs.getvalue())
    assert_never_shown(agent_key, out, err, debug_logs.getvalue())
    assert await asyncio.to_thread(files_holding, tmp_path, master_key[2:]) == [master_file]

    listed = await sim_post(sim, "/info", {"type": "extraAgents", "user": master_address})
    assert [(a["name"], a["address"]) for a in listed] == [("hlcopy", agent_address)]
    role = await sim_post(sim, "/info", {"type": "userRole", "user": agent_address})
    assert role == {"role": "agent", "data": {"user": master_address}}

    # An order signed by the agent key lands on the master's account.
    async with aiohttp.ClientSession() as session:
        by_agent = ExchangeClient(
            session, sim.url, Signer.from_key(agent_key), WeightBudget(), is_mainnet=False
        )
        (status,) = await by_agent.place([eth_spec(sim)])
    assert status.outcome == "filled"
    assert sim.engine.accounts[master_address].positions["ETH"].szi == Decimal("0.01")
    assert agent_address not in sim.engine.accounts


async def test_unnamed_agent_with_the_prompted_key_is_confirmed_by_user_role(
    sim: Simulator,
    tmp_path: Path,
    master: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: io.StringIO,
) -> None:
    master_key, master_address, master_file = master
    master_file.unlink()  # typed at the prompt, on no disk
    await sim_post(sim, "/_sim/fund", {"address": master_address, "usdc": "100000"})
    prompts: list[str] = []

    def typed(prompt: str = "") -> str:
        prompts.append(prompt)
        return master_key

    monkeypatch.setattr(getpass, "getpass", typed)
    agent_address = Signer.from_key("0x" + secrets.token_hex(32)).address
    code = await hlcopy(
        "agent",
        "approve",
        "--agent-address",
        agent_address.upper().replace("0X", "0x"),
        "--name",
        "",
        "--config",
        str(config(sim, tmp_path)),
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert prompts == [agent.PROMPT]
    assert f"approving agent {agent_address} (unnamed)" in out
    assert "confirmed by userRole" in out
    assert sim.engine.agents[agent_address] == master_address
    # extraAgents lists named agents only (as on the exchange).
    assert await sim_post(sim, "/info", {"type": "extraAgents", "user": master_address}) == []
    assert_never_shown(master_key, out, err, debug_logs.getvalue())
    assert await asyncio.to_thread(files_holding, tmp_path, master_key[2:]) == []


async def test_a_lost_reply_is_not_resent_and_the_poll_confirms_it(
    sim: Simulator,
    tmp_path: Path,
    master: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, master_address, master_file = master
    await sim_post(sim, "/_sim/fund", {"address": master_address, "usdc": "100000"})
    await sim_post(sim, "/_sim/faults", {"exchange_lose_reply": 1})
    before = sim.snapshot()["exchange_requests"]
    agent_address = "0x" + secrets.token_hex(20)
    code = await hlcopy(
        "agent",
        "approve",
        "--agent-address",
        agent_address,
        "--master-key-file",
        str(master_file),
        "--config",
        str(config(sim, tmp_path)),
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "confirmed by extraAgents" in out
    assert sim.snapshot()["replies_lost"] == 1
    assert sim.snapshot()["exchange_requests"] - before == 1  # sent once, never again
    assert sim.engine.agents[agent_address] == master_address


async def test_an_unfunded_master_is_refused_with_the_exchanges_reason(
    sim: Simulator,
    tmp_path: Path,
    master: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    master_key, master_address, master_file = master
    agent_address = "0x" + secrets.token_hex(20)
    code = await hlcopy(
        "agent",
        "approve",
        "--agent-address",
        agent_address,
        "--master-key-file",
        str(master_file),
        "--config",
        str(config(sim, tmp_path)),
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert err.endswith(
        "hlcopy agent approve: not approved: "
        f"Must deposit before performing actions. User: {master_address}\n"
    )
    assert agent_address not in sim.engine.agents
    assert_never_shown(master_key, out, err)


async def test_the_wait_for_confirmation_is_bounded(
    sim: Simulator,
    tmp_path: Path,
    master: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, master_address, master_file = master
    await sim_post(sim, "/_sim/fund", {"address": master_address, "usdc": "100000"})
    # The approval lands 4 s late: after the client gave up on the reply (0.5 s) and after it
    # stopped waiting for the exchange to list the agent (1 s more).
    await sim_post(sim, "/_sim/faults", {"exchange_delay": {"seconds": 4, "count": 1}})
    path = config(sim, tmp_path)
    path.write_text(path.read_text().replace("[state]", "request_timeout_s = 0.5\n[state]"))
    agent_address = "0x" + secrets.token_hex(20)
    started = time.monotonic()
    code = await hlcopy(
        "agent",
        "approve",
        "--agent-address",
        agent_address,
        "--master-key-file",
        str(master_file),
        "--config",
        str(path),
        "--wait-s",
        "1",
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert time.monotonic() - started < 3.5
    assert agent_address not in sim.engine.agents  # it gave up before the approval landed
    assert err.endswith(
        "hlcopy agent approve: the reply was lost and after 1 s extraAgents does not show agent "
        f"{agent_address} for {master_address}; check again later, or run this command again\n"
    )
    async with asyncio.timeout(10):  # it landed in the end, once
        while agent_address not in sim.engine.agents:
            await asyncio.sleep(0.05)
    assert sim.snapshot()["exchange_requests"] == 1
