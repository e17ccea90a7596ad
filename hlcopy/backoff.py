"""Capped, jittered exponential backoff, shared by the supervisor and the WebSocket pool."""

from __future__ import annotations

import random

from hlcopy.clock import SYSTEM, Clock


def backoff_delay(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Delay before retry ``attempt`` (0-based): "equal jitter" in [d/2, d], d = min(cap, base*2^n).

    Half the delay is fixed so a burst of failures cannot retry at once; the other half is random so
    many clients do not retry in step.
    """
    d = min(cap_s, base_s * 2.0 ** min(attempt, 32))
    return d / 2 + (rng or random).uniform(0, d / 2)


class Backoff:
    """Counts consecutive failures; forgets them after ``reset_after_s`` of health."""

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        reset_after_s: float = 60.0,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
    ) -> None:
        self.base_s, self.cap_s, self.reset_after_s = base_s, cap_s, reset_after_s
        self._clock = clock
        self._rng = rng
        self.attempt = 0
        self._healthy_since: float | None = None

    def healthy(self) -> None:
        """Mark the start of a healthy period."""
        self._healthy_since = self._clock.monotonic()

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before trying again."""
        if (
            self._healthy_since is not None
            and self._clock.monotonic() - self._healthy_since >= self.reset_after_s
        ):
            self.attempt = 0
        self._healthy_since = None
        delay = backoff_delay(self.attempt, self.base_s, self.cap_s, self._rng)
        self.attempt += 1
        return delay
