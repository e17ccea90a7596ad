"""The real `hlcopy run`: one instance per state directory, an embedded PostgreSQL that comes
back after crashes of the daemon and of the server, and signals that arrive early."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from hlcopy.sim import Simulator

from tests.conftest import hlcopy_env
from tests.e2e.test_run_process import Process, get, hlcopy_run, write_config


def postgres_serving(data_dir: Path) -> list[int]:
    """Live postmasters whose command line names ``data_dir``."""
    return [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and str(data_dir) in (p.info["cmdline"] or [])
    ]


async def embedded_pid(port: int) -> int:
    """The PID of the embedded PostgreSQL, as the daemon reports it."""
    _, body = await get(f"http://127.0.0.1:{port}/api/v1/stats")
    pid = body["components"]["store"]["embedded_pid"]
    assert isinstance(pid, int)
    return pid


@pytest.mark.alone  # the second exits within 2 s: a Python start, timed
async def test_a_second_daemon_on_the_same_state_dir_exits_1_at_once(
    tmp_path: Path, sim: Simulator
) -> None:
    config = write_config(tmp_path, sim, None)
    async with hlcopy_run(config) as first:
        await first.wait_for("hlcopy ready", timeout=60)
        async with hlcopy_run(config) as second:
            t0 = time.monotonic()
            code = await asyncio.wait_for(second.proc.wait(), 10)
            took = time.monotonic() - t0
            await second._reader
        assert code == 1
        text = "".join(second.raw)
        assert f"another hlcopy (pid {first.proc.pid})" in text
        # At once: before it starts anything (the time is a process start, 2.3 s once on CI's
        # loaded machine, so what it did is the check, not how long it took).
        assert "store ready" not in text, text
        assert "component ready" not in text, text
        print(f"the second daemon exited in {took:.2f} s")
        assert first.proc.returncode is None  # the first keeps running
        port = (await first.wait_for("api listening"))["port"]
        assert (await get(f"http://127.0.0.1:{port}/health"))[0] == 200
        code, _ = await first.stop()
        assert code == 0


async def test_a_second_daemon_on_the_same_database_exits_1(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with hlcopy_run(write_config(tmp_path / "a", sim, dsn)) as first:
        await first.wait_for("hlcopy ready", timeout=60)
        async with hlcopy_run(write_config(tmp_path / "b", sim, dsn)) as second:
            code = await asyncio.wait_for(second.proc.wait(), 20)
            await second._reader
        assert code == 1
        assert f"another hlcopy (pid {first.proc.pid}) is using this database" in "".join(
            second.raw
        )
        assert first.proc.returncode is None
        assert (await first.stop())[0] == 0


@pytest.mark.slow(8)
async def test_embedded_postgres_survives_a_killed_daemon_and_a_killed_server(
    tmp_path: Path, sim: Simulator
) -> None:
    config = write_config(tmp_path, sim, None)
    data_dir = (tmp_path / "state" / "pg").resolve()

    # 1. The daemon dies without any cleanup: its PostgreSQL is left running.
    async with hlcopy_run(config) as first:
        await first.wait_for("hlcopy ready", timeout=60)
        first.proc.kill()
        await first.proc.wait()
    left = postgres_serving(data_dir)
    assert len(left) == 1

    # 2. A new daemon adopts it.
    async with hlcopy_run(config) as second:
        port = (await second.wait_for("api listening", timeout=60))["port"]
        await second.wait_for("hlcopy ready", timeout=60)
        assert await embedded_pid(port) == left[0]

        # 3. PostgreSQL itself dies: the daemon starts it again and is healthy within 30 s.
        os.kill(left[0], signal.SIGKILL)
        async with asyncio.timeout(30):
            while True:
                status, body = await get(f"http://127.0.0.1:{port}/health")
                restarted = body["components"]["store"]["state"] == "ready" and status == 200
                if restarted and postgres_serving(data_dir) not in ([], [left[0]]):
                    break
                await asyncio.sleep(0.25)
        new_pid = await embedded_pid(port)
        assert new_pid != left[0]
        assert postgres_serving(data_dir) == [new_pid]

        # 4. A clean stop leaves no PostgreSQL behind.
        code, _ = await second.stop(timeout=30)
    assert code == 0
    assert postgres_serving(data_dir) == []


@pytest.mark.slow(10)
async def test_a_store_that_cannot_come_back_turns_health_503(
    tmp_path: Path, sim: Simulator
) -> None:
    config = write_config(tmp_path, sim, None)
    data_dir = (tmp_path / "state" / "pg").resolve()
    async with hlcopy_run(config) as p:
        port = (await p.wait_for("api listening", timeout=60))["port"]
        await p.wait_for("hlcopy ready", timeout=60)
        pid = await embedded_pid(port)
        # Break the data directory so PostgreSQL cannot start again, then kill it.
        (data_dir / "PG_VERSION").rename(data_dir / "PG_VERSION.moved")
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(20):
            while (await get(f"http://127.0.0.1:{port}/health"))[0] != 503:
                await asyncio.sleep(0.25)
        await asyncio.sleep(3)  # several failed restart attempts later it is still down
        status, body = await get(f"http://127.0.0.1:{port}/health")
        assert status == 503
        assert body["components"]["store"]["state"] != "ready"
        assert body["components"]["store"]["down_s"] >= 3
        assert body["components"]["store"]["restarts"] >= 2
        code, _ = await p.stop(timeout=30)
    assert code == 0
    assert postgres_serving(data_dir) == []


async def _early_signal(tmp_path: Path, sim: Simulator, sig: int) -> Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "run",
        "--config",
        str(write_config(tmp_path, sim, None)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=hlcopy_env(),
    )
    # Past the interpreter's start, before the slow imports and the database start are done.
    await asyncio.sleep(0.25)
    proc.send_signal(sig)
    return Process(proc)


@pytest.mark.alone  # the signal must land between the interpreter's start and its imports
async def test_an_early_sighup_is_handled_not_fatal(tmp_path: Path, sim: Simulator) -> None:
    p = await _early_signal(tmp_path, sim, signal.SIGHUP)
    try:
        await p.wait_for("hlcopy ready", timeout=60)
        await p.wait_for("reload requested", timeout=10)
        code, _ = await p.stop(timeout=30)
        assert code == 0
    finally:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()
        await p._reader


async def test_an_early_sigterm_stops_cleanly(tmp_path: Path, sim: Simulator) -> None:
    p = await _early_signal(tmp_path, sim, signal.SIGTERM)
    try:
        code = await asyncio.wait_for(p.proc.wait(), 60)
        await p._reader
        assert code == 0, "".join(p.raw)
        assert any(line.get("event") == "stop requested" for line in p.lines)
    finally:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()
    assert postgres_serving((tmp_path / "state" / "pg").resolve()) == []


async def test_sighup_with_deeply_nested_toml_keeps_running(tmp_path: Path, sim: Simulator) -> None:
    config = write_config(tmp_path, sim, None)
    async with hlcopy_run(config) as p:
        port = (await p.wait_for("api listening", timeout=60))["port"]
        await p.wait_for("hlcopy ready", timeout=60)
        good = config.read_text()
        config.write_text("x = " + "[" * 10000 + "]" * 10000)
        mark = len(p.lines)
        p.proc.send_signal(signal.SIGHUP)
        line = await p.wait_for("config reload refused", after=mark)
        assert "nested too deeply" in line["problem"]
        await p.wait_for("keeping the running config", after=mark)
        assert (await get(f"http://127.0.0.1:{port}/health"))[0] == 200
        config.write_text(good)
        code, _ = await p.stop(timeout=30)
    assert code == 0
