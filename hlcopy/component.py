"""What the supervisor runs, and what the API may ask of the supervisor."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from hlcopy.config import HlcopyConfig


class Component:
    """A long-running part of the daemon.

    ``run`` does the work and sets ``ready`` once it can serve; it returns only after ``drain``
    (or when cancelled). Raising ``TransientError`` gets it restarted with backoff; any other
    exception stops the daemon. Collaborators come in through the constructor.
    """

    name: str = "component"
    #: The systemd watchdog stops being fed when a core component stays down.
    core: bool = True

    async def run(self, ready: asyncio.Event) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Stop taking new work and finish what is in flight; ``run`` should then return."""

    def reconfigure(self, config: HlcopyConfig) -> None:
        """Adopt a reloaded configuration (sections that need a restart are already excluded)."""

    def stats(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a configuration reload did."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
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
