"""The supervisor in-process: start order, restarts, fatal exits, draining, reload, liveness."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hlcopy.clock import VirtualClock
from hlcopy.component import Component, Ready
from hlcopy.config import HlcopyConfig
from hlcopy.daemon import Daemon
from hlcopy.errors import StoreUnavailable
from hlcopy.notify import Notifier
from hlcopy.queues import BoundedQueue, QueueClosed

from tests.conftest import make_config, running


class Probe(Component):
    """A component whose behaviour each test scripts; it records what happened to it."""

    def __init__(
        self,
        name: str,
        events: list[str],
        *,
        transient_failures: int = 0,
        fatal_after_ready: bool = False,
        return_after_ready: bool = False,
        ignore_drain: bool = False,
        core: bool = True,
    ) -> None:
        self.name = name
        self.core = core
        self.events = events
        self.transient_failures = transient_failures
        self.fatal_after_ready = fatal_after_ready
        self.return_after_ready = return_after_ready
        self.ignore_drain = ignore_drain
        self.drained = asyncio.Event()
        self.configs: list[HlcopyConfig] = []
        self.fail_now = asyncio.Event()

    async def run(self, ready: Ready) -> None:
        self.events.append(f"start {self.name}")
        await asyncio.sleep(0.01)
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise StoreUnavailable(f"{self.name} not yet")
        ready.set()
        self.events.append(f"ready {self.name}")
        if self.fatal_after_ready:
            raise RuntimeError(f"{self.name} broke")
        if self.return_after_ready:
            return
        waiter = asyncio.create_task(self.fail_now.wait())
        drained = asyncio.create_task(self.drained.wait())
        try:
            done, _ = await asyncio.wait({waiter, drained}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            drained.cancel()
        if waiter in done:
            raise StoreUnavailable(f"{self.name} lost its connection")
        if self.ignore_drain:
            await asyncio.Event().wait()  # never finishes: the supervisor must cancel it

    async def drain(self) -> None:
        self.events.append(f"drain {self.name}")
        self.drained.set()

    def reconfigure(self, config: HlcopyConfig) -> None:
        self.configs.append(config)

    def stats(self) -> dict[str, Any]:
        return {"answers": 42, "nested": {"ok": True}}


def daemon_for(tmp_path: Path, **kwargs: Any) -> Daemon:
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_cap_s", 0.05)
    return Daemon(make_config(tmp_path), notifier=Notifier(""), **kwargs)


async def test_components_start_in_order_each_after_the_previous_is_ready(tmp_path: Path) -> None:
    events: list[str] = []
    d = daemon_for(tmp_path)
    for name in ("store", "stream", "api"):
        d.add(Probe(name, events))
    async with running(d) as task:
        assert events == [
            "start store",
            "ready store",
            "start stream",
            "ready stream",
            "start api",
            "ready api",
        ]
    assert await task == 0
    assert events[6:] == ["drain api", "drain stream", "drain store"]


async def test_what_start_up_built_is_out_of_the_collectors_way_while_it_runs(
    tmp_path: Path,
) -> None:
    d = daemon_for(tmp_path)
    d.add(Probe("store", []))
    async with running(d) as task:
        async with asyncio.timeout(5):
            while gc.get_freeze_count() == 0:  # frozen once everything is ready
                await asyncio.sleep(0.005)
    assert await task == 0
    assert gc.get_freeze_count() == 0  # and handed back when it stops


async def test_transient_failures_restart_only_that_component(tmp_path: Path) -> None:
    events: list[str] = []
    d = daemon_for(tmp_path)
    flaky = Probe("flaky", events, transient_failures=2)
    d.add(Probe("first", events))
    d.add(flaky)
    async with running(d) as task:
        health = d.health()[1]["components"]
        assert health["flaky"]["restarts"] == 2
        assert health["flaky"]["last_error"] == "StoreUnavailable: flaky not yet"
        assert health["first"]["restarts"] == 0
        assert events.count("start first") == 1

        flaky.fail_now.set()  # fails again after being ready: restarted, then ready again
        async with asyncio.timeout(5):
            while d.health()[1]["components"]["flaky"]["restarts"] < 3:
                await asyncio.sleep(0.005)
            assert not d.health()[0] or events.count("ready flaky") == 2
            while not d.health()[0]:
                await asyncio.sleep(0.005)
        flaky.fail_now.clear()
    assert await task == 0


async def test_health_is_503_material_while_a_component_restarts(tmp_path: Path) -> None:
    d = daemon_for(tmp_path, backoff_base_s=5, backoff_cap_s=5)
    flaky = Probe("flaky", [])
    d.add(flaky)
    async with running(d):
        flaky.fail_now.set()
        async with asyncio.timeout(2):
            while d.health()[0]:
                await asyncio.sleep(0.005)
        ok, body = d.health()
        assert not ok
        assert body["status"] == "degraded"
        assert body["components"]["flaky"]["state"] == "restarting"


async def test_fatal_error_stops_the_daemon_with_exit_code_1(tmp_path: Path) -> None:
    events: list[str] = []
    d = daemon_for(tmp_path)
    d.add(Probe("ok", events))
    d.add(Probe("broken", events, fatal_after_ready=True))
    d.add(Probe("never", events))
    assert await asyncio.wait_for(d.run(), 5) == 1
    assert "start never" not in events
    assert d.health()[1]["components"]["broken"]["state"] == "failed"


async def test_a_component_returning_on_its_own_is_fatal(tmp_path: Path) -> None:
    d = daemon_for(tmp_path)
    d.add(Probe("quitter", [], return_after_ready=True))
    assert await asyncio.wait_for(d.run(), 5) == 1


async def test_drain_is_bounded_and_stragglers_are_cancelled(tmp_path: Path) -> None:
    events: list[str] = []
    d = daemon_for(tmp_path, drain_timeout_s=0.3)
    d.add(Probe("stubborn", events, ignore_drain=True))
    d.add(Probe("polite", events))
    async with running(d) as task:
        pass
    t0 = time.monotonic()
    assert await task == 0
    assert time.monotonic() - t0 < 2
    assert events[-2:] == ["drain polite", "drain stubborn"]


async def test_stop_during_startup(tmp_path: Path) -> None:
    d = daemon_for(tmp_path, backoff_base_s=10, backoff_cap_s=10)
    d.add(Probe("never-ready", [], transient_failures=100))
    task = asyncio.create_task(d.run())
    await asyncio.sleep(0.1)
    d.request_stop()
    assert await asyncio.wait_for(task, 5) == 0


async def test_a_run_for_a_while_stops_on_its_own_and_cleanly(tmp_path: Path) -> None:
    """``--duration``: the daemon stops by itself after that long, draining as on a signal."""
    events: list[str] = []
    d = daemon_for(tmp_path)
    d.add(Probe("store", events))
    assert await asyncio.wait_for(d.run(stop_after_s=0.2), 5) == 0
    assert events == ["start store", "ready store", "drain store"]


async def test_reload_applies_a_valid_file_and_keeps_restart_sections(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    path = tmp_path / "hlcopy.toml"
    path.write_text(f'[state]\ndir = "{tmp_path}"\n[api]\nport = 1111\n')
    from hlcopy.config import load_config

    d = Daemon(load_config(path), config_path=path, notifier=Notifier(""))
    probe = Probe("p", [])
    d.add(probe)
    async with running(d):
        path.write_text(
            f'[state]\ndir = "{tmp_path}"\n[api]\nport = 2222\n[risk]\nmax_daily_loss_usd = 123\n'
        )
        result = await d.reload()
        assert result.ok
        assert result.changed == ["api", "risk"]
        assert result.restart_required == ["api"]
        assert d.config.api.port == 1111  # needs a restart: kept
        assert str(d.config.risk.max_daily_loss_usd) == "123"
        assert probe.configs == [d.config]

        path.write_text("[risk]\nmax_daily_loss_usd = -5\nbogus = 1\n")
        result = await d.reload()
        assert not result.ok
        assert sorted(result.problems) == [
            "risk.bogus: unknown key",
            "risk.max_daily_loss_usd: must be greater than 0",
        ]
        assert str(d.config.risk.max_daily_loss_usd) == "123"
        assert len(probe.configs) == 1
    logged = [orjson.loads(line) for line in log_stream.getvalue().splitlines()]
    refused = [e["problem"] for e in logged if e["event"] == "config reload refused"]
    assert sorted(refused) == sorted(result.problems)
    assert any(e["event"] == "keeping the running config" for e in logged)


async def test_liveness_problems(tmp_path: Path) -> None:
    d = daemon_for(tmp_path, dead_after_s=0.2, backoff_base_s=10, backoff_cap_s=10)
    core = Probe("core", [])
    side = Probe("side", [], core=False)
    d.add(core)
    d.add(side)
    async with running(d):
        assert d.liveness_problem() is None
        side.fail_now.set()  # a non-core component down does not matter to the watchdog
        await asyncio.sleep(0.3)
        assert d.liveness_problem() is None
        core.fail_now.set()
        await asyncio.sleep(0.05)
        assert d.liveness_problem() is None  # restarting, not yet dead
        await asyncio.sleep(0.3)
        assert (d.liveness_problem() or "").startswith("core down for")
        d.loop_lag_s = 1.5
        assert d.liveness_problem() == "event loop lagging 1.500 s"


async def test_watchdog_pings_stop_when_a_core_component_is_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.setblocking(False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    d = daemon_for(tmp_path, dead_after_s=0.1, backoff_base_s=10, backoff_cap_s=10)
    d.notifier = Notifier(sock_path)
    core = Probe("core", [])
    d.add(core)

    def drain_messages() -> list[str]:
        out = []
        while True:
            try:
                out.append(listener.recv(4096).decode())
            except BlockingIOError:
                return out

    try:
        async with running(d):
            await asyncio.sleep(0.3)
            assert drain_messages().count("WATCHDOG=1") >= 3
            core.fail_now.set()
            await asyncio.sleep(0.3)  # dead after 0.1 s: pings stop
            drain_messages()
            await asyncio.sleep(0.3)
            assert "WATCHDOG=1" not in drain_messages()
    finally:
        d.notifier.close()
        listener.close()


async def test_stats_and_metrics_show_queues_and_component_figures(tmp_path: Path) -> None:
    d = daemon_for(tmp_path)
    d.add(Probe("p", []))
    q = d.queue(BoundedQueue[int]("leader_fills", 4))
    for i in range(3):
        q.put_nowait(i)
    drop = d.queue(BoundedQueue[int]("firehose", 2, "drop_oldest"))
    for i in range(5):
        assert drop.offer(i)
    async with running(d):
        stats = d.stats()
        assert stats["queues"]["leader_fills"]["depth"] == 3
        assert stats["queues"]["firehose"] == {
            "depth": 2,
            "maxsize": 2,
            "policy": "drop_oldest",
            "dropped": 3,
            "high_water": 2,
            "total_in": 5,
            "closed": False,
        }
        assert stats["components"]["p"]["answers"] == 42
        families = d.metrics()
        assert len({f.name for f in families}) == len(families)  # one family per name
        kinds = {f.name: f.kind for f in families}
        assert kinds["hlcopy_queue_dropped"] == kinds["hlcopy_component_restarts"] == "counter"
        metrics = {
            (f.name, tuple(sorted(labels.items()))): v for f in families for labels, v in f.samples
        }
        assert metrics[("hlcopy_queue_depth", (("queue", "leader_fills"),))] == 3
        assert metrics[("hlcopy_queue_dropped", (("queue", "firehose"),))] == 3
        assert metrics[("hlcopy_component_up", (("component", "p"),))] == 1
        assert metrics[("hlcopy_component_stat", (("component", "p"), ("stat", "nested.ok")))] == 1
    assert not q.offer(9) or q.qsize() == 4  # a blocking queue refuses offer() when full


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    d = daemon_for(tmp_path)
    d.add(Probe("x", []))
    with pytest.raises(ValueError, match="two components"):
        d.add(Probe("x", []))
    d.queue(BoundedQueue[int]("q", 1))
    with pytest.raises(ValueError, match="two queues"):
        d.queue(BoundedQueue[int]("q", 1))


class LostForGood(Component):
    """Ready once, then it loses its resource and every restart attempt fails quickly."""

    name = "store"

    def __init__(self) -> None:
        self.runs = 0
        self.lose = asyncio.Event()

    async def run(self, ready: Ready) -> None:
        self.runs += 1
        if self.runs == 1:
            ready.set()
            await self.lose.wait()
            raise StoreUnavailable("the database went away")
        await asyncio.sleep(0.01)
        raise StoreUnavailable("still cannot reconnect")


async def test_failed_restart_attempts_do_not_reset_how_long_a_component_is_down(
    tmp_path: Path,
) -> None:
    d = daemon_for(tmp_path, dead_after_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.02)
    store = LostForGood()
    d.add(store)
    async with running(d):
        store.lose.set()
        await asyncio.sleep(0.15)
        assert d.liveness_problem() is None  # down, but not for long yet
        await asyncio.sleep(0.35)
        assert store.runs > 5  # it kept trying, each attempt restarting the clock before
        assert (d.liveness_problem() or "").startswith("store down for")
        ok, body = d.health()
        assert not ok
        assert body["components"]["store"]["down_s"] >= 0.3


@pytest.mark.parametrize(
    "content",
    [
        "x = " + "[" * 5000 + "]" * 5000,
        "[api]\nport = " + "9" * 5000 + "\n",
        "\x00\x01\x02 not toml at all",
        "[[[[[[",
    ],
    ids=["deep-nesting", "huge-number", "binary-junk", "broken-tables"],
)
async def test_reload_of_a_malformed_file_is_refused_and_the_daemon_keeps_running(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "hlcopy.toml"
    path.write_text(f'[state]\ndir = "{tmp_path}"\n')
    d = Daemon(make_config(tmp_path), config_path=path, notifier=Notifier(""))
    probe = Probe("p", [])
    d.add(probe)
    async with running(d) as task:
        path.write_text(content)
        result = await d.reload()
        assert not result.ok
        assert result.problems
        d._on_hup()  # the SIGHUP path: a task in the daemon's TaskGroup
        await asyncio.sleep(0.1)
        assert not task.done()
        assert d.health()[0]


async def test_reload_of_a_fifo_is_refused_at_once_and_shutdown_is_not_held_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hlcopy.toml"
    os.mkfifo(path)  # a reader opening this blocking would wait for a writer forever
    d = Daemon(make_config(tmp_path), config_path=path, notifier=Notifier(""))
    d.add(Probe("p", []))
    async with running(d):
        t0 = time.monotonic()
        result = await d.reload()
        assert time.monotonic() - t0 < 1
        assert not result.ok
        assert "not a regular file" in result.problems[0]


class Wavering(Component):
    """Ready, then not ready while a dependency is away, then ready again, without restarting."""

    name = "feed"

    def __init__(self) -> None:
        self.ready: Ready | None = None
        self.runs = 0
        self.stop = asyncio.Event()

    async def run(self, ready: Ready) -> None:
        self.runs += 1
        self.ready = ready
        ready.set()
        await self.stop.wait()

    async def drain(self) -> None:
        self.stop.set()


async def test_a_component_can_report_lost_readiness_and_regain_it(tmp_path: Path) -> None:
    d = daemon_for(tmp_path, dead_after_s=0.2)
    feed = Wavering()
    d.add(feed)
    async with running(d):
        assert feed.ready is not None
        feed.ready.lost("the upstream feed went quiet")
        ok, body = d.health()
        assert not ok
        assert body["components"]["feed"]["state"] == "unready"
        assert body["components"]["feed"]["last_error"] == "the upstream feed went quiet"
        await asyncio.sleep(0.3)
        assert (d.liveness_problem() or "").startswith("feed down for")
        feed.ready.set()
        assert d.health()[0]
        assert d.liveness_problem() is None
        assert feed.runs == 1  # no restart was involved


async def test_restart_with_backoff_runs_on_the_virtual_clock_without_real_sleeping(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    # A backoff of at least 50 s: waiting it out for real would time the test out.
    d = Daemon(
        make_config(tmp_path),
        notifier=Notifier(""),
        clock=clock,
        backoff_base_s=100,
        backoff_cap_s=100,
    )
    events: list[str] = []
    flaky = Probe("flaky", events, transient_failures=2)
    d.add(flaky)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.create_task(d.run())
    await clock.settle()
    await asyncio.sleep(0.05)  # the first attempt runs and fails (a real 10 ms inside Probe)
    assert events == ["start flaky"]
    assert d.health()[1]["components"]["flaky"]["state"] == "restarting"
    await clock.advance(49)  # the delay is in [50, 100] s: not yet
    assert events == ["start flaky"]
    await clock.advance(51)
    await asyncio.sleep(0.05)
    assert events == ["start flaky", "start flaky"]
    await clock.advance(100)
    await asyncio.sleep(0.05)
    assert events == ["start flaky", "start flaky", "start flaky", "ready flaky"]
    assert d.health()[0]
    assert d.health()[1]["components"]["flaky"]["restarts"] == 2
    d.request_stop()
    await clock.advance(1)
    assert await asyncio.wait_for(task, 5) == 0
    assert loop.time() - t0 < 5  # 200+ virtual seconds, well under 5 real ones


async def test_a_closed_queue_refuses_producers_and_lets_the_consumer_drain(tmp_path: Path) -> None:
    d = daemon_for(tmp_path)
    q = d.queue(BoundedQueue[str]("intents", 8))
    for item in ("a", "b"):
        await q.put(item)
    q.close()
    with pytest.raises(QueueClosed):
        await q.put("c")
    assert [item async for item in q] == ["a", "b"]
    assert d.stats()["queues"]["intents"]["closed"] is True


class _Grouped(Component):
    """Runs its work in a TaskGroup, as most components do; its tasks fail as scripted."""

    name = "grouped"

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.runs = 0

    async def run(self, ready: Ready) -> None:
        self.runs += 1
        if self.failures:
            failure = self.failures.pop(0)

            async def fail() -> None:
                raise failure

            async with asyncio.TaskGroup() as tg:
                tg.create_task(fail())
        ready.set()
        await asyncio.Event().wait()


async def test_a_transient_error_inside_a_components_task_group_restarts_it(
    tmp_path: Path,
) -> None:
    # Found by chaos (f): the tracker's TaskGroup raised StoreUnavailable (PostgreSQL gone for
    # a moment) wrapped in an ExceptionGroup, and the whole daemon stopped.
    d = daemon_for(tmp_path)
    grouped = _Grouped([StoreUnavailable("save positions: database unavailable")] * 2)
    d.add(grouped)
    async with running(d) as task:
        health = d.health()[1]["components"]["grouped"]
        assert (grouped.runs, health["restarts"]) == (3, 2)
        assert health["last_error"] == "StoreUnavailable: save positions: database unavailable"
    assert await task == 0


async def test_a_task_group_with_any_other_error_is_still_fatal(tmp_path: Path) -> None:
    scripts: list[list[BaseException]] = [
        [StoreUnavailable("gone"), RuntimeError("a bug")],
        [ExceptionGroup("both", [StoreUnavailable("gone"), RuntimeError("a bug")])],
    ]
    for failures in scripts:
        d = daemon_for(tmp_path)
        grouped = _Grouped(failures)
        d.add(grouped)
        assert await asyncio.wait_for(d.run(), 10) == 1
        assert d.health()[1]["components"]["grouped"]["state"] == "failed"
