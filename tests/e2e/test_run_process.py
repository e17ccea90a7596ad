"""`hlcopy run` as systemd would run it: a real process, real signals, a real notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hlcopy.sim import Simulator

from tests.conftest import hlcopy_env, network_toml, write_secret


class Process:
    """An `hlcopy` subprocess whose JSON log lines are collected as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="test:stderr")

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            async for line in self.proc.stderr:
                text = line.decode(errors="replace")
                self.raw.append(text)
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.lines.append(orjson.loads(text))
                self._new.set()
        finally:
            self._new.set()  # the end of the output wakes a waiter too: it then sees the exit

    async def wait_for(self, event: str, timeout: float = 30, after: int = 0) -> dict[str, Any]:
        """The first log line from index ``after`` on whose event is ``event``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.lines[after:]:
                        if line.get("event") == event:
                            return line
                    if self._reader.done():  # stderr closed: the process is gone or going
                        code = await self.proc.wait()
                        raise AssertionError(
                            f"exited {code} before {event!r}:\n" + "".join(self.raw)
                        )
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:  # what the process was doing instead
            raise AssertionError(
                f"no {event!r} within {timeout} s; the log so far:\n" + "".join(self.raw[-40:])
            ) from None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code, time.monotonic() - t0


@contextlib.asynccontextmanager
async def hlcopy_run(config: Path, **env: str) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=hlcopy_env(**env),
    )
    p = Process(proc)
    try:
        yield p
    except BaseException:  # a failed test shows what the daemon said last
        print("".join(p.raw[-60:]), file=sys.stderr)
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await p._reader


def write_config(tmp_path: Path, sim: Simulator, dsn: str | None, extra: str = "") -> Path:
    path = tmp_path / "hlcopy.toml"
    db = f'[database]\ndsn = "{dsn}"\n' if dsn else ""
    path.write_text(
        f'{network_toml(sim)}{db}[state]\ndir = "{tmp_path / "state"}"\n[api]\nport = 0\n'
        f'[logging]\nformat = "json"\n{extra}'
    )
    return path


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_run_serves_health_and_exits_0_on_sigterm(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    async with hlcopy_run(write_config(tmp_path, sim, dsn)) as p:
        port = (await p.wait_for("api listening"))["port"]
        await p.wait_for("hlcopy ready")
        status, body = await get(f"http://127.0.0.1:{port}/health")
        assert status == 200
        assert {c["state"] for c in body["components"].values()} == {"ready"}
        code, took = await p.stop()
    assert code == 0
    assert took < 10
    assert p.lines[-1]["event"] == "hlcopy stopped"


async def test_sighup_with_broken_toml_keeps_the_running_config(
    tmp_path: Path, sim: Simulator, dsn: str
) -> None:
    cfg = write_config(tmp_path, sim, dsn, "[risk]\nmax_daily_loss_usd = 100\n")
    async with hlcopy_run(cfg) as p:
        port = (await p.wait_for("api listening"))["port"]
        await p.wait_for("hlcopy ready")
        good = cfg.read_text()

        cfg.write_text(
            good.replace("max_daily_loss_usd = 100", "max_daily_loss_usd = -1\nbogus = 2")
        )
        mark = len(p.lines)
        p.proc.send_signal(signal.SIGHUP)
        kept = await p.wait_for("keeping the running config", after=mark)
        assert kept["problems"] == 2
        refused = [ln["problem"] for ln in p.lines[mark:] if ln["event"] == "config reload refused"]
        assert sorted(refused) == [
            "risk.bogus: unknown key",
            "risk.max_daily_loss_usd: must be greater than 0",
        ]
        assert (await get(f"http://127.0.0.1:{port}/health"))[0] == 200

        cfg.write_text(good.replace("max_daily_loss_usd = 100", "max_daily_loss_usd = 50"))
        mark = len(p.lines)
        p.proc.send_signal(signal.SIGHUP)
        assert (await p.wait_for("config reloaded", after=mark))["changed"] == ["risk"]
        assert (await p.stop())[0] == 0


async def test_sd_notify_messages_arrive_in_order(tmp_path: Path, sim: Simulator, dsn: str) -> None:
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    messages: list[str] = []

    async def receive_until(pred: Any, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                messages.append((await loop.sock_recv(listener, 4096)).decode())

    try:
        async with hlcopy_run(
            write_config(tmp_path, sim, dsn), NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000"
        ) as p:
            await receive_until(lambda: any(m.startswith("READY=1") for m in messages))
            await receive_until(lambda: messages.count("WATCHDOG=1") >= 2)
            p.proc.send_signal(signal.SIGHUP)

            def reloaded() -> bool:
                # Watchdog pings interleave with everything: look past them.
                others = [m for m in messages if m != "WATCHDOG=1"]
                return any(m.startswith("RELOADING=1") for m in others) and others[-1].startswith(
                    "READY=1"
                )

            await receive_until(reloaded)
            p.proc.send_signal(signal.SIGTERM)
            await receive_until(lambda: "STOPPING=1" in messages)
            assert await asyncio.wait_for(p.proc.wait(), 10) == 0
    finally:
        listener.close()

    others = [m for m in messages if m != "WATCHDOG=1"]
    kinds = [m.split("=")[0] for m in others]
    assert kinds[0] == "STATUS"
    first_ready = kinds.index("READY")
    assert all(k == "STATUS" for k in kinds[:first_ready])  # only status before READY
    reload_at = kinds.index("RELOADING")
    assert first_ready < reload_at < kinds.index("STOPPING")
    assert kinds[reload_at + 1] == "READY"
    assert others[first_ready].startswith("READY=1\nSTATUS=running")
    assert others[reload_at].split("\n")[1].startswith("MONOTONIC_USEC=")
    assert messages.count("WATCHDOG=1") >= 2


async def test_run_without_dsn_starts_embedded_postgres(tmp_path: Path, sim: Simulator) -> None:
    async with hlcopy_run(write_config(tmp_path, sim, None)) as p:
        port = (await p.wait_for("api listening", timeout=60))["port"]
        ready = await p.wait_for("store ready")
        assert ready["embedded"] is True
        status, body = await get(f"http://127.0.0.1:{port}/health")
        assert status == 200
        assert body["components"]["store"]["state"] == "ready"
        assert (await p.stop())[0] == 0
    assert (tmp_path / "state" / "pg" / "PG_VERSION").exists()
    assert not (tmp_path / "state" / "pg" / "postmaster.pid").exists()  # stopped with us


async def test_the_key_and_token_never_appear_in_logs(
    tmp_path: Path, sim: Simulator, dsn: str, agent_key: str
) -> None:
    key = write_secret(tmp_path / "agent.key", agent_key)
    token = "tok-" + agent_key[10:40]
    token_file = write_secret(tmp_path / "api.token", token)
    path = tmp_path / "hlcopy.toml"
    path.write_text(
        f'{network_toml(sim)}[database]\ndsn = "{dsn}"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[api]\nport = 0\ntoken_file = "{token_file}"\n'
        '[logging]\nlevel = "debug"\nformat = "json"\n'
        f'[account]\nagent_key_file = "{key}"\n'
    )
    async with hlcopy_run(path) as p:
        port = (await p.wait_for("api listening"))["port"]
        await p.wait_for("hlcopy ready")
        async with aiohttp.ClientSession() as s:
            # A wrong token carrying the key, and the right token: neither may be logged.
            async with s.post(
                f"http://127.0.0.1:{port}/api/v1/reload",
                headers={"Authorization": f"Bearer {agent_key}"},
            ) as r:
                assert r.status == 401
            async with s.post(
                f"http://127.0.0.1:{port}/api/v1/reload",
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 200
        assert (await p.stop())[0] == 0
    out = "".join(p.raw)
    assert "config reloaded" in out
    for secret in (agent_key, agent_key[2:], token):
        assert secret not in out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[api]\nport = -2\n", "api.port: must be greater than or equal to 0"),
        ("[api\n", "line 1, column 5: TOML syntax error"),
    ],
)
async def test_invalid_config_exits_2_naming_the_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "run",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=hlcopy_env(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert f"{path}: {expected}" in err.decode()
