"""Signals that arrive before the event loop handles them are remembered, not fatal.

SIGHUP's default action kills the process and SIGTERM's skips every cleanup, yet a daemon spends
its first second importing and reading files. ``capture()`` is called first thing by the CLI
(this module imports only the standard library); the supervisor replays what was caught once its
own handlers are installed, and hands the signals back here when it stops.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType

CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: The commands that run a daemon: only they remember signals (a short command stops at once).
LONG_RUNNING = frozenset({"run", "demo"})
_pending: list[signal.Signals] = []
_guard = threading.Lock()
_installed = False


def _remember(signum: int, frame: FrameType | None) -> None:
    with _guard:
        _pending.append(signal.Signals(signum))


def capture() -> None:
    """Remember SIGTERM, SIGINT and SIGHUP until ``take`` (main thread only)."""
    global _installed
    for sig in CAUGHT:
        signal.signal(sig, _remember)
    _installed = True


def capture_for(argv: Sequence[str]) -> None:
    """``capture`` when ``argv`` (without the program name) runs a daemon: called before the
    CLI's own imports, which take a tenth of a second or more, so a stop asked meanwhile is
    remembered."""
    if argv and argv[0] in LONG_RUNNING:
        capture()


def captured() -> bool:
    """Whether ``capture`` is in force (the supervisor gives the signals back to it)."""
    return _installed


def take() -> list[signal.Signals]:
    """The signals caught so far, oldest first; forgets them."""
    with _guard:
        out = list(_pending)
        _pending.clear()
    return out
