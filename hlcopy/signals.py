"""Signals that arrive before the event loop handles them are remembered, not fatal.

SIGHUP's default action kills the process and SIGTERM's skips every cleanup, yet a daemon spends
its first second importing and reading files. ``capture()`` is called first thing by the CLI
(this module imports only the standard library); the supervisor replays what was caught once its
own handlers are installed, and hands the signals back here when it stops.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
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


def captured() -> bool:
    """Whether ``capture`` is in force (the supervisor gives the signals back to it)."""
    return _installed


def take() -> list[signal.Signals]:
    """The signals caught so far, oldest first; forgets them."""
    with _guard:
        out = list(_pending)
        _pending.clear()
    return out
