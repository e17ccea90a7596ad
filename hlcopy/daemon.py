"""The supervisor: runs components in one TaskGroup and talks to systemd.

It knows nothing of what it supervises (``app.py`` builds the components and hands them over).
Start order is the order components were added; each must report ready before the next starts,
and READY=1 goes to systemd only when all are ready. A component may later report that it is no
longer ready (``Ready.lost``), which shows in ``/health`` and, for a core component that stays
down, stops the systemd watchdog. A ``TransientError`` — alone, or all that a component's own
TaskGroup raised — restarts just that component after a capped, jittered backoff; any other
failure stops the daemon with exit code 1 so systemd restarts it. SIGTERM/SIGINT drain the
components in reverse order within a deadline, cancel what is left and exit 0. SIGHUP re-reads
the TOML and keeps the running config if the new one is invalid.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from hlcopy import __version__, signals
from hlcopy.backoff import Backoff
from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, MetricFamily, Ready, ReloadResult
from hlcopy.config import RESTART_SECTIONS, HlcopyConfig, changed_sections, load_config_async
from hlcopy.errors import ComponentFailed, ConfigError, HlcopyError, TransientError
from hlcopy.log import set_level
from hlcopy.notify import Notifier, watchdog_interval_s
from hlcopy.queues import BoundedQueue

T = TypeVar("T")

log = structlog.get_logger()


@dataclass(slots=True)
class _Slot:
    component: Component
    since: float
    # pending, starting, ready, unready (lost readiness while running), restarting, stopped, failed
    state: str = "pending"
    restarts: int = 0
    last_error: str | None = None
    # When it stopped being ready; unlike ``since`` not reset by each failed restart attempt,
    # so a component that keeps failing to come back is seen as down for the whole time.
    down_since: float | None = None
    first_ready: bool = False
    task: asyncio.Task[None] | None = None


def _transient(exc: BaseException) -> bool:
    """A ``TransientError``, or a group of nothing else: a component running its own TaskGroup
    fails with an ExceptionGroup, and a database gone for a moment is no reason to stop."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_transient(e) for e in exc.exceptions)
    return isinstance(exc, TransientError)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Daemon:
    """Runs components under supervision until stopped. See the module docstring."""

    def __init__(
        self,
        config: HlcopyConfig,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        drain_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        dead_after_s: float = 60.0,
        max_loop_lag_s: float = 1.0,
        reload_timeout_s: float = 5.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.config = config
        self.clock = clock
        self.config_path = config_path
        self._own_notifier = notifier is None
        self.notifier = notifier if notifier is not None else Notifier()
        self.queues: dict[str, BoundedQueue[Any]] = {}
        self.loop_lag_s = 0.0
        self._drain_timeout_s = drain_timeout_s
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._dead_after_s = dead_after_s
        self._max_loop_lag_s = max_loop_lag_s
        self._reload_timeout_s = reload_timeout_s
        self._slots: list[_Slot] = []
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._started = clock.monotonic()
        self._reload_lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._own_tasks: set[asyncio.Task[Any]] = set()
        self._extra_stats: dict[str, Callable[[], dict[str, Any]]] = {}

    # -- wiring ---------------------------------------------------------------------------

    def add(self, component: Component) -> None:
        """Add a component; components start in the order they are added."""
        if any(s.component.name == component.name for s in self._slots):
            raise ValueError(f"two components named {component.name!r}")
        self._slots.append(_Slot(component, self.clock.monotonic()))

    def queue(self, queue: BoundedQueue[T]) -> BoundedQueue[T]:
        """Register a queue so its depth shows in stats and metrics; returns it, typed as built:
        ``fills = daemon.queue(BoundedQueue[LeaderFill]("leader_fills", 10_000))``."""
        if queue.name in self.queues:
            raise ValueError(f"two queues named {queue.name!r}")
        self.queues[queue.name] = queue
        return queue

    def add_stats(self, name: str, source: Callable[[], dict[str, Any]]) -> None:
        """Show the figures of a shared part that is not a component (the REST budget, say)."""
        self._extra_stats[name] = source

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()
        self._wake.set()

    # -- running --------------------------------------------------------------------------

    async def run(self, stop_after_s: float | None = None) -> int:
        """Run until stopped (or for ``stop_after_s`` from now); return the process exit code
        (0 clean, 1 a component failed)."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        timer = None if stop_after_s is None else loop.call_later(stop_after_s, self.request_stop)
        self.notifier.status("starting")
        log.info(
            "hlcopy starting",
            version=__version__,
            network=self.config.network.name,
            mode=self.config.account.mode,
            state_dir=str(self.config.state.dir),
        )
        code = 0
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._replay_early_signals()
                self._spawn(self._lag_monitor(), "daemon:loop-lag")
                self._spawn(self._watchdog(), "daemon:watchdog")
                if await self._start_all(tg):
                    names = [s.component.name for s in self._slots]
                    log.info("hlcopy ready", components=names)
                    self.notifier.ready(f"running: {len(names)} components ready")
                    # What start-up built (modules, classes, functions, the components) lives
                    # as long as the process: kept out of the collector's full passes, which
                    # otherwise walk it all (pauses of ~50 ms in a copy decision's way).
                    gc.freeze()
                await self._stop.wait()
                await self._shutdown()
        except* ComponentFailed as group:
            code = 1
            for exc in group.exceptions:
                log.error("hlcopy stopping after a fatal error", error=str(exc))
            self.notifier.stopping()
        finally:
            if timer is not None:
                timer.cancel()
            gc.unfreeze()  # a process that runs the daemon again (tests) collects it as usual
            self._remove_signals(loop)
            self._tg = None
            if self._own_notifier:
                self.notifier.close()
        if code == 0:
            log.info("hlcopy stopped")
        return code

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=name)
        self._own_tasks.add(task)
        task.add_done_callback(self._own_tasks.discard)
        return task

    async def _start_all(self, tg: asyncio.TaskGroup) -> bool:
        for slot in self._slots:
            slot.task = tg.create_task(
                self._supervise(slot), name=f"component:{slot.component.name}"
            )
            self.notifier.status(f"starting {slot.component.name}")
            # Wait for this component's first ready (or a stop request) before the next starts.
            while not slot.first_ready and not self._stop.is_set():
                self._wake.clear()
                await self._wake.wait()
            if self._stop.is_set():
                return False
        return True

    async def _supervise(self, slot: _Slot) -> None:
        comp = slot.component
        backoff = Backoff(*self._backoff, clock=self.clock)

        def on_change(is_ready: bool, reason: str | None) -> None:
            if is_ready:
                self._mark_ready(slot, backoff)
            else:
                self._mark_unready(slot, reason or "not ready")

        while True:
            ready = Ready(on_change)
            self._set_state(slot, "starting")
            try:
                await comp.run(ready)
            except asyncio.CancelledError:
                self._set_state(slot, "stopped")
                raise
            except Exception as exc:
                if not _transient(exc):
                    slot.last_error = f"{type(exc).__name__}: {exc}"
                    self._set_state(slot, "failed")
                    if isinstance(exc, HlcopyError):  # ours and explained: one line
                        log.error("component failed fatally", component=comp.name, error=str(exc))
                    else:
                        log.error("component failed fatally", component=comp.name, exc_info=exc)
                    raise ComponentFailed(f"{comp.name}: {slot.last_error}") from exc
                if self._stopping:
                    self._set_state(slot, "stopped")
                    return
                slot.restarts += 1
                first = _first_leaf(exc)
                slot.last_error = f"{type(first).__name__}: {first}"
                self._set_state(slot, "restarting")
                delay = backoff.next_delay()
                log.warning(
                    "component failed; restarting",
                    component=comp.name,
                    error=slot.last_error,
                    restart_in_s=round(delay, 3),
                    restarts=slot.restarts,
                )
                if await self._stopped_within(delay):
                    self._set_state(slot, "stopped")
                    return
                continue
            if self._stopping:
                self._set_state(slot, "stopped")
                return
            slot.last_error = "run() returned while the daemon was running"
            self._set_state(slot, "failed")
            raise ComponentFailed(f"{comp.name}: {slot.last_error}")

    async def _stopped_within(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless a stop is requested first; True when it was."""
        return await sleep_unless(self.clock, self._stop, delay_s)

    def _set_state(self, slot: _Slot, state: str) -> None:
        now = self.clock.monotonic()
        if state == "ready":
            slot.down_since = None
        elif slot.first_ready and slot.down_since is None:
            slot.down_since = now
        slot.state = state
        slot.since = now

    def _mark_ready(self, slot: _Slot, backoff: Backoff) -> None:
        self._set_state(slot, "ready")
        backoff.healthy()
        if slot.first_ready:
            log.info("component ready again", component=slot.component.name)
        else:
            log.info("component ready", component=slot.component.name)
        slot.first_ready = True
        self._wake.set()

    def _mark_unready(self, slot: _Slot, reason: str) -> None:
        slot.last_error = reason
        self._set_state(slot, "unready")
        log.warning("component not ready", component=slot.component.name, reason=reason)

    async def _shutdown(self) -> None:
        self._stopping = True
        self.notifier.stopping()
        log.info("hlcopy stopping", drain_timeout_s=self._drain_timeout_s)
        deadline = self.clock.monotonic() + self._drain_timeout_s
        for slot in reversed(self._slots):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                break
            try:
                async with self.clock.timeout(remaining):
                    await slot.component.drain()
            except TimeoutError:
                log.warning("drain timed out", component=slot.component.name)
                break
            except Exception as exc:
                log.error("drain failed", component=slot.component.name, exc_info=exc)
        running = [s.task for s in self._slots if s.task is not None and not s.task.done()]
        remaining = deadline - self.clock.monotonic()
        if running and remaining > 0:
            try:
                async with self.clock.timeout(remaining):
                    await asyncio.wait(running)
            except TimeoutError:
                pass
        left = [s.component.name for s in self._slots if s.task is not None and not s.task.done()]
        if left:
            log.warning("cancelling components that did not finish draining", components=left)
        for task in [*(s.task for s in self._slots if s.task is not None), *self._own_tasks]:
            task.cancel()

    # -- signals and reload ---------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if signals.captured():
            signals.capture()  # a late SIGHUP while we wind down must not kill the process

    def _replay_early_signals(self) -> None:
        """Act on signals that arrived before our handlers were installed."""
        for sig in signals.take():
            if sig == signal.SIGHUP:
                self._on_hup()
            else:
                self._on_stop_signal(sig.name)

    def _on_stop_signal(self, name: str) -> None:
        log.info("stop requested", signal=name)
        self.request_stop()

    def _on_hup(self) -> None:
        log.info("reload requested", signal="SIGHUP")
        if self._tg is not None and not self._stopping:
            self._spawn(self.reload(), "daemon:reload")

    async def reload(self) -> ReloadResult:
        """Re-read and validate the TOML; apply it, or keep the running config and say why.

        Never raises (but for cancellation): it runs as a task of the daemon's TaskGroup, where an
        exception would bring the whole daemon down over a bad file.
        """
        async with self._reload_lock:
            if self.config_path is None:
                return ReloadResult(False, ["the daemon was started without a config file"])
            self.notifier.reloading(round(self.clock.monotonic() * 1_000_000))
            try:
                new = await load_config_async(self.config_path, self._reload_timeout_s)
                return self._apply(new)
            except ConfigError as exc:
                problems = exc.problems
            except Exception as exc:
                log.error("config reload failed", path=str(self.config_path), exc_info=exc)
                problems = [f"the file could not be loaded: {type(exc).__name__}"]
            finally:
                self.notifier.ready("running")
            for problem in problems:
                log.error("config reload refused", path=str(self.config_path), problem=problem)
            log.error("keeping the running config", problems=len(problems))
            return ReloadResult(False, problems)

    def _apply(self, new: HlcopyConfig) -> ReloadResult:
        changed = changed_sections(self.config, new)
        restart = [s for s in changed if s in RESTART_SECTIONS]
        if restart:
            log.warning("these sections change only after a restart", sections=restart)
            new = new.model_copy(update={s: getattr(self.config, s) for s in restart})
        self.config = new
        set_level(new.logging.level)
        for slot in self._slots:
            try:
                slot.component.reconfigure(new)
            except Exception as exc:
                log.error(
                    "component could not apply the new config",
                    component=slot.component.name,
                    exc_info=exc,
                )
        log.info("config reloaded", changed=changed)
        return ReloadResult(True, [], changed, restart)

    # -- liveness -------------------------------------------------------------------------

    async def _lag_monitor(self, period_s: float = 0.25) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(period_s)
            self.loop_lag_s = max(0.0, loop.time() - t0 - period_s)

    def liveness_problem(self) -> str | None:
        """Why the process should not tell systemd it is alive, or None when it is fine."""
        if self.loop_lag_s > self._max_loop_lag_s:
            return f"event loop lagging {self.loop_lag_s:.3f} s"
        now = self.clock.monotonic()
        for s in self._slots:
            if not s.component.core:
                continue
            if s.state == "failed":
                return f"{s.component.name} failed"
            down = s.down_since
            if down is not None and now - down > self._dead_after_s:
                return f"{s.component.name} down for {now - down:.0f} s"
        return None

    async def _watchdog(self) -> None:
        interval = watchdog_interval_s()
        if interval is None or not self.notifier.enabled:
            return
        while True:
            await self.clock.sleep(interval)
            problem = self.liveness_problem()
            if problem is None:
                self.notifier.watchdog()
            else:
                log.error("withholding the watchdog ping", reason=problem)

    # -- introspection (for the API) ------------------------------------------------------

    def _components(self) -> dict[str, dict[str, Any]]:
        now = self.clock.monotonic()
        return {
            s.component.name: {
                "state": s.state,
                "restarts": s.restarts,
                "since_s": round(now - s.since, 3),
                "down_s": None if s.down_since is None else round(now - s.down_since, 3),
                "last_error": s.last_error,
            }
            for s in self._slots
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self._slots) and all(s.state == "ready" for s in self._slots)
        status = "ok" if ok else ("stopping" if self._stopping else "degraded")
        return ok, {
            "status": status,
            "uptime_s": round(self.clock.monotonic() - self._started, 3),
            "components": self._components(),
        }

    def stats(self) -> dict[str, Any]:
        comps = self._components()
        for s in self._slots:
            comps[s.component.name].update(s.component.stats())
        return {
            "version": __version__,
            "uptime_s": round(self.clock.monotonic() - self._started, 3),
            "loop_lag_ms": round(self.loop_lag_s * 1000, 3),
            "mode": self.config.account.mode,
            "network": self.config.network.name,
            "components": comps,
            "queues": {name: q.stats() for name, q in self.queues.items()},
            **{name: source() for name, source in self._extra_stats.items()},
        }

    def metrics(self) -> list[MetricFamily]:
        def family(name: str, kind: Any, help_: str) -> MetricFamily:
            return MetricFamily(f"hlcopy_{name}", kind, help_)

        up = family("component_up", "gauge", "1 when the component is ready, else 0")
        restarts = family("component_restarts", "counter", "restarts after transient failures")
        figures = family("component_stat", "gauge", "numeric figures each component reports")
        own: list[MetricFamily] = []
        for s in self._slots:
            labels = {"component": s.component.name}
            up.samples.append((labels, 1.0 if s.state == "ready" else 0.0))
            restarts.samples.append((labels, float(s.restarts)))
            for key, value in _numeric_leaves(s.component.stats()):
                figures.samples.append(({**labels, "stat": key}, value))
            own.extend(s.component.metric_families())
        shared = []
        for name, source in self._extra_stats.items():
            fam = family(name, "gauge", f"figures of the shared {name}")
            fam.samples.extend(({"stat": key}, value) for key, value in _numeric_leaves(source()))
            shared.append(fam)
        depth = family("queue_depth", "gauge", "items waiting in a bounded queue")
        capacity = family("queue_capacity", "gauge", "most items a bounded queue holds")
        dropped = family("queue_dropped", "counter", "items dropped by drop-oldest queues")
        for name, q in self.queues.items():
            labels = {"queue": name}
            depth.samples.append((labels, float(q.qsize())))
            capacity.samples.append((labels, float(q.maxsize)))
            dropped.samples.append((labels, float(q.dropped)))
        uptime = family("uptime_seconds", "gauge", "seconds since the daemon started")
        uptime.samples.append(({}, self.clock.monotonic() - self._started))
        lag = family("loop_lag_seconds", "gauge", "how late the event loop ran a 250 ms timer")
        lag.samples.append(({}, self.loop_lag_s))
        return [uptime, lag, up, restarts, figures, *own, *shared, depth, capacity, dropped]


def _numeric_leaves(stats: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Flatten nested stats into ``("a.b", 1.0)`` pairs, keeping only numbers."""
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            yield name, 1.0 if value else 0.0
        elif isinstance(value, int | float):
            yield name, float(value)
        elif isinstance(value, dict):
            yield from _numeric_leaves(value, name + ".")
