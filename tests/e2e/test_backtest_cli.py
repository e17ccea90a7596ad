"""``hlcopy backtest`` as a user runs it: the real command in its own process, offline on the
recorded fills (table, JSON, chart, sweep) and online against the simulator (``--config``
naming it); bad input is one clear line on stderr and exit code 2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hlcopy.sim import SimConfig, Simulator

from tests.conftest import REPO, hlcopy_env

FIXTURE = REPO / "tests" / "fixtures" / "hyperliquid" / "info_user_fills.json"
LEADER = "0xb7b6f3cea3f66bf525f5d8f965f6dbf6d9b017b2"
DAY_MS = 86_400_000


def hlcopy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hlcopy", "backtest", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=hlcopy_env(),
        check=False,
    )


@pytest.fixture(scope="module")
def fills(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded fills as ``userFills`` answered them: a JSON list."""
    path = tmp_path_factory.mktemp("fills") / "fills.json"
    path.write_text(json.dumps(json.loads(FIXTURE.read_text())["response"]))
    return path


def test_offline_a_table_a_chart_and_json(fills: Path, tmp_path: Path) -> None:
    chart = tmp_path / "chart.svg"
    done = hlcopy(LEADER, "--fills", str(fills), "--plot", str(chart), "--ratio", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a terminal: no progress bar
    out = done.stdout
    assert f"hlcopy backtest {LEADER}" in out
    assert "offline (prices from the fills)" in out
    for row in ("PnL (USD)", "max drawdown", "leader scaled PnL", "gap to the leader", "fees"):
        assert row in out
    assert f"chart: {chart}" in out
    svg = chart.read_text()
    assert svg.startswith("<svg")
    assert "leader scaled" in svg

    done = hlcopy(LEADER, "--fills", str(fills), "--json", "--sweep", "latency_ms=0,1000")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["addresses"] == [LEADER]
    assert [r["label"] for r in report["results"]] == ["latency_ms=0", "latency_ms=1000"]
    for r in report["results"]:
        assert r["leader_fills"] == 500
        assert r["orders"] > 0
        parts = sum(float(v) for v in r["parts"].values())
        assert abs(parts - float(r["gap"])) < 1e-9


def test_online_against_the_simulator(tmp_path: Path) -> None:
    async def main() -> tuple[subprocess.CompletedProcess[str], str]:
        async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as sim:
            now = sim.engine.now_ms
            leader = max(
                (t.address for t in sim.population.traders),
                key=lambda a: len(sim.pasts.fills_between(a, now - 2 * DAY_MS, None)),
            )
            config = tmp_path / "hlcopy.toml"
            config.write_text(
                f'[network]\nname = "custom"\nrest_url = "{sim.url}"\n'
                f'ws_url = "{sim.ws_url}"\nchain = "testnet"\n'
                "[account]\npaper_equity_usd = 25000\n"
            )
            args = (leader, "--config", str(config), "--days", "2", "--latency-ms", "0")
            done = await asyncio.to_thread(hlcopy, *args, "--json")
            return done, leader

    done, leader = asyncio.run(main())
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = orjson.loads(done.stdout)
    (result,) = report["results"]
    assert result["source"] == "candles"
    assert result["equity_start"] == "25000.00"
    assert result["leaders"][0]["address"] == leader
    assert result["leader_fills"] > 0
    assert report["until_ms"] - report["since_ms"] == 2 * DAY_MS


def mixed_users() -> list[dict[str, Any]]:
    """The recording, plus the same trades on the other side (another account): interleaved."""
    own = json.loads(FIXTURE.read_text())["response"]
    other = [
        {
            **f,
            "side": "A" if f["side"] == "B" else "B",
            "startPosition": str(-float(f["startPosition"])),
        }
        for f in own
    ]
    return sorted(own + other, key=lambda f: f["time"])


@pytest.mark.parametrize(
    ("case", "complaint"),
    [
        ("bad-address", "is not an address"),
        ("unreadable", "cannot read"),
        ("not-json", "not fills as the exchange returns them: not JSON"),
        ("malformed", "not fills as the exchange returns them: fill 0"),
        ("mixed-users", "the fills are not one account's"),
        ("empty-window", "nothing to backtest"),
        ("from-after-to", "is after --to"),
        ("bad-option", "ratio: "),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    fills: Path, tmp_path: Path, case: str, complaint: str
) -> None:
    bad = tmp_path / "bad.json"
    args: list[str]
    if case == "bad-address":
        args = ["0x1234", "--fills", str(fills)]
    elif case == "unreadable":
        args = [LEADER, "--fills", str(tmp_path / "missing.json")]
    elif case == "not-json":
        bad.write_text("{this is not json")
        args = [LEADER, "--fills", str(bad)]
    elif case == "malformed":
        bad.write_text(json.dumps([{"coin": "BTC", "px": "x", "sz": "1", "side": "B", "time": 1}]))
        args = [LEADER, "--fills", str(bad)]
    elif case == "mixed-users":
        bad.write_text(json.dumps(mixed_users()))
        args = [LEADER, "--fills", str(bad)]
    elif case == "empty-window":
        args = [LEADER, "--fills", str(fills), "--from", "2024-01-01", "--to", "2024-01-02"]
    elif case == "from-after-to":
        args = [LEADER, "--fills", str(fills), "--from", "2023-06-01", "--to", "2023-05-01"]
    else:
        args = [LEADER, "--fills", str(fills), "--ratio", "-2"]
    done = hlcopy(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("hlcopy backtest: ")
    assert complaint in lines[0]
