"""`hlcopy sim` and `hlcopy demo` as a user runs them."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp

from tests.conftest import REPO, hlcopy_env


async def _line(
    proc: asyncio.subprocess.Process, pattern: str, timeout: float = 90
) -> re.Match[str]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"exited ({await proc.wait()}) before printing {pattern!r}"
            m = re.search(pattern, line)
            if m:
                return m


async def test_hlcopy_sim_serves_until_interrupted() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "sim",
        "--port",
        "0",
        "--warmup-s",
        "5",
        "--traders",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=hlcopy_env(),
    )
    try:
        url = (await _line(proc, r"REST (http://\S+)"))[1]
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/info", json={"type": "meta"}) as r:
                assert r.status == 200
                assert len((await r.json())["universe"]) >= 20
            async with s.get(url + "/_sim/archetypes") as r:
                assert len(await r.json()) == 20
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_hlcopy_demo_runs_the_whole_thing_for_a_while(tmp_path: Path) -> None:
    config = tmp_path / "demo.toml"
    config.write_text(
        (REPO / "config" / "demo.toml")
        .read_text()
        .replace('dir = ".hlcopy/demo"', f'dir = "{tmp_path / "state"}"')
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "demo",
        "--config",
        str(config),
        "--sim-port",
        "0",
        "--api-port",
        "0",
        "--duration",
        "20",
        "--warmup-s",
        "10",
        "--traders",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=hlcopy_env(),
    )
    try:
        api = (await _line(proc, r"daemon API at (http://\S+)"))[1]
        async with aiohttp.ClientSession() as s:
            async with asyncio.timeout(60):
                while True:
                    try:
                        async with s.get(api + "/health") as r:
                            if r.status == 200:
                                body = await r.json()
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.25)
            assert set(body["components"]) == {"store", "universe", "stream", "api"}
            async with s.get(api + "/api/v1/stats") as r:
                stats = await r.json()
        assert stats["mode"] == "paper"
        assert stats["components"]["universe"]["assets"] >= 25
        assert stats["components"]["stream"]["connections_ready"] == 1
        assert await asyncio.wait_for(proc.wait(), 60) == 0  # --duration ends it cleanly
        assert (tmp_path / "state" / "pg" / "PG_VERSION").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
