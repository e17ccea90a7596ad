"""What the supervisor runs, and what the API may ask of the supervisor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any, Literal, Protocol

from hlcopy.config import HlcopyConfig
from hlcopy.record import record


class Ready:
    """Handed to ``Component.run``: how a component tells the supervisor whether it can serve.

    ``set()`` once it can; ``lost(reason)`` when it no longer can but is still trying (a feed gone
    quiet, a dependency down) and ``set()`` again when it can. While not ready, ``/health`` is 503
    and, for a core component that stays that way, the systemd watchdog stops being fed.
    """

    __slots__ = ("_is_set", "_on_change")

    def __init__(self, on_change: Callable[[bool, str | None], None] | None = None) -> None:
        self._is_set = False
        self._on_change = on_change

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        if not self._is_set:
            self._is_set = True
            if self._on_change is not None:
                self._on_change(True, None)

    def lost(self, reason: str) -> None:
        if self._is_set:
            self._is_set = False
            if self._on_change is not None:
                self._on_change(False, reason)


class Component:
    """A long-running part of the daemon.

    ``run`` does the work and calls ``ready.set()`` once it can serve; it returns only after
    ``drain`` (or when cancelled). Raising ``TransientError`` gets it restarted with backoff; any
    other exception stops the daemon. Collaborators come in through the constructor.

    ``run`` is re-entrant: after a transient failure the supervisor calls it again on the same
    object. What the constructor built survives a restart (its collaborators, queues, counters,
    and what callers registered with it, such as the stream pool's subscriptions, which are
    replayed on the new connections); what ``run`` builds (tasks, connections, sockets) must be
    built again by ``run``, and anything it started must be stopped before it returns or raises.
    State that must outlive a restart of the whole process lives in the store.
    """

    name: str = "component"
    #: The systemd watchdog stops being fed when a core component stays down.
    core: bool = True

    async def run(self, ready: Ready) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Stop taking new work and finish what is in flight; ``run`` should then return."""

    def reconfigure(self, config: HlcopyConfig) -> None:
        """Adopt a reloaded configuration (sections that need a restart are already excluded)."""

    def stats(self) -> dict[str, Any]:
        return {}

    def metric_families(self) -> list[MetricFamily]:
        """Metrics of its own beyond ``stats`` (labelled, e.g. per follow), for /metrics."""
        return []


@record
class ReloadResult:
    """What a configuration reload did."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


@record
class MetricFamily:
    """One metric and its samples, independent of any exposition library.

    A counter's ``name`` has no ``_total``: the exposition adds it, as Prometheus requires.
    """

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


class Supervisor(Protocol):
    """The daemon as seen by the API: health, figures and reload."""

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def metrics(self) -> list[MetricFamily]: ...

    async def reload(self) -> ReloadResult: ...
