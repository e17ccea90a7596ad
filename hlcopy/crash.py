"""Crash points for the crash harness (``tests/e2e/test_chaos_crash.py``).

``HLCOPY_CRASH_AT=point:n`` makes the process SIGKILL itself the n-th time it passes ``point``
(``n`` defaults to 1), so a test can stop the daemon exactly between two steps of the order
path, as a power cut or the OOM killer would. The points, in the order an order passes them:

* ``after_commit``: the intent row is committed (paper: ``planned``; live: ``sending``, "it
  may have been sent", in the same commit); nothing was signed;
* ``after_mark``: the row says ``sending``; nothing was sent yet (live: the same moment);
* ``after_ack``: the exchange answered the order; nothing of the answer is recorded;
* ``after_book``: the fill is booked; the engine has not heard of it.

Unset (always, outside that harness), a crash point costs one truth test.
"""

from __future__ import annotations

import os
import signal
from typing import Final

POINTS: Final = ("after_commit", "after_mark", "after_ack", "after_book")


def _armed(spec: str | None) -> dict[str, int]:
    if not spec:
        return {}
    point, _, count = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"HLCOPY_CRASH_AT: unknown point {point!r} (one of {', '.join(POINTS)})")
    n = int(count) if count else 1
    if n < 1:
        raise ValueError("HLCOPY_CRASH_AT: the count must be at least 1")
    return {point: n}


_ARMED: Final = _armed(os.environ.get("HLCOPY_CRASH_AT"))


def crash_point(name: str) -> None:
    """SIGKILL this process if the harness armed ``name`` and this is the n-th pass."""
    if not _ARMED or name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
