"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per test,
throwaway keys, config files, and a helper to run the real daemon in-process."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hlcopy.config import DatabaseConfig, HlcopyConfig, parse_config
from hlcopy.daemon import Daemon
from hlcopy.log import configure_logging
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store
from hlcopy.store.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


def expected_seconds(item: pytest.Item) -> float:
    """What ``@pytest.mark.slow(seconds)`` says a test takes (0 for an unmarked one)."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.args[0] if mark.args else mark.kwargs.get("seconds", 5))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first: the suite runs on parallel workers (pytest-xdist), and a
    five-minute test that started last would finish minutes after all the others. The sort is
    stable, so the rest keeps its order (and a module's tests stay together)."""
    items.sort(key=lambda item: -expected_seconds(item))


# Tests that last minutes (the acceptance runs) take no part in `alone`: waiting for them would
# stall every worker that long.
_ALONE_IGNORES_S = 60.0
# ``first_alone`` (the five-minute scout acceptance, judged at two minutes): it is the longest,
# so it starts first, and every other worker waits for it, at most this long.
FIRST_ALONE_WAIT_S = 420.0


_FIRST_ALONE = pytest.StashKey[bool]()


def _has_first_alone(session: pytest.Session) -> bool:
    """Whether this run holds a ``first_alone`` test (looked up once)."""
    if _FIRST_ALONE not in session.stash:
        session.stash[_FIRST_ALONE] = any(
            i.get_closest_marker("first_alone") for i in session.items
        )
    return session.stash[_FIRST_ALONE]


def _wait_for(path: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def _logging_back_to_stderr() -> Iterator[None]:
    """After each test, logging goes to the process's stderr again: a test that ran the CLI
    under a capture leaves it writing to a stream that closes with the test, and the next test
    of this worker (pytest-xdist orders modules its own way) would fail on its first line."""
    yield
    configure_logging("info", "json", sys.__stderr__)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """``@pytest.mark.alone``: a test whose acceptance bound is wall-clock time (a process's
    start, a latency percentile) runs while no other test of this run does but the
    minutes-long ones: the other parallel workers (pytest-xdist) hold off meanwhile. Setup and
    teardown count as the test's; the wait is outside its timeout."""
    if not hasattr(item.config, "workerinput") or getattr(item.config, "cache", None) is None:
        return (yield)  # one process: every test runs alone already
    locks = item.config.cache.mkdir("hlcopy-alone")
    done = locks / f"first-done-{item.config.workerinput['testrunuid']}"
    if item.get_closest_marker("first_alone") is not None:
        try:
            return (yield)
        finally:
            done.touch()  # the other workers go on, whatever became of it
    if _has_first_alone(item.session):
        _wait_for(done, FIRST_ALONE_WAIT_S)
    if expected_seconds(item) >= _ALONE_IGNORES_S:
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    # Two locks, so that a waiting `alone` test is not starved by a stream of others: the
    # gate lets one test at a time in, and the room holds many others or one alone.
    with open(locks / "gate", "a") as gate, open(locks / "room", "a") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        return (yield)  # the files' closing releases both locks


# The session server's data is thrown away with it, so it need not survive a power cut: no
# flush to disk at each commit and each CREATE DATABASE (what most of a test's database setup
# costs). A killed server loses nothing by this (the OS keeps what was written); the tests of
# crashes and restarts run servers of their own with the defaults.
_THROWAWAY_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


async def _start_throwaway(server: EmbeddedPostgres) -> str:
    uri = await server.start()
    admin = await asyncpg.connect(uri)
    try:
        for name, value in _THROWAWAY_SETTINGS.items():
            await admin.execute(f"ALTER SYSTEM SET {name} = {value}")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()
    return uri


@pytest.fixture(scope="session")
def pg_uri() -> Iterator[str]:
    """A real PostgreSQL for the whole session (embedded, like the daemon's default); one per
    xdist worker, each in its own data directory."""
    # A short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="hlpg-"))
    server = EmbeddedPostgres(root / "pg")
    try:
        yield asyncio.run(_start_throwaway(server))
    finally:
        asyncio.run(server.stop())
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def dsn(pg_uri: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield pg_uri.replace("/postgres?", f"/{name}?")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def store(dsn: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated store on this test's fresh database (shared with other stores of the test)."""
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as s:
        await s.migrate()
        yield s


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A small simulated exchange in real time on a free port (the daemon's exchange in tests)."""
    async with Simulator(SimConfig(port=0, traders=20, rate=5, warmup_s=30)) as s:
        yield s


def network_toml(sim: Simulator) -> str:
    """The [network] table pointing hlcopy at ``sim``."""
    return (
        f'[network]\nname = "custom"\nrest_url = "{sim.url}"\nws_url = "{sim.ws_url}"\n'
        'chain = "testnet"\n'
    )


@pytest.fixture
def agent_key() -> str:
    """A throwaway private key, generated for this test only."""
    return "0x" + secrets.token_hex(32)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Capture structured (JSON) logs of the code under test."""
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    yield stream
    configure_logging("info", "json", sys.stderr)


def write_secret(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def make_config(state_dir: Path, dsn: str | None = None, **sections: Any) -> HlcopyConfig:
    """A valid config on loopback with an ephemeral API port, overridable per section."""
    data: dict[str, Any] = {
        "state": {"dir": str(state_dir)},
        "api": {"port": 0},
        "logging": {"format": "json"},
    }
    if dsn is not None:
        data["database"] = {"dsn": dsn}
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    return parse_config(data)


@contextlib.asynccontextmanager
async def running(daemon: Daemon, timeout_s: float = 30.0) -> AsyncIterator[asyncio.Task[int]]:
    """Run ``daemon`` in a task until every component is ready; stop it on exit."""
    task = asyncio.create_task(daemon.run(), name="test:daemon")
    try:
        async with asyncio.timeout(timeout_s):
            while not daemon.health()[0]:
                if task.done():
                    raise AssertionError(f"daemon exited early with {task.result()}")
                await asyncio.sleep(0.02)
        yield task
    finally:
        daemon.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), timeout_s)


def hlcopy_env(**extra: str) -> dict[str, str]:
    """Environment for running the hlcopy CLI as a subprocess."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY")
    }
    env.update(extra)
    return env
