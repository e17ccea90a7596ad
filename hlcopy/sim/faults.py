"""Fault switches, flipped at runtime through ``POST /_sim/faults`` or the Python API."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

MAX_DELAY_S = 60.0
MAX_FAULT_S = 3600.0
MAX_COUNT = 1_000_000


def _seconds(value: Any, limit: float) -> float:
    """A duration from a fault spec: finite, 0 to ``limit``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= limit:
        raise ValueError(f"a duration must be between 0 and {limit:g} seconds")
    return seconds


def _fraction(value: Any) -> float:
    """A share of requests from a fault spec: above 0, at most 1; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a fraction is a number above 0 and at most 1")
    share = float(value)
    if not math.isfinite(share) or not 0 < share <= 1:
        raise ValueError("a fraction is a number above 0 and at most 1")
    return share


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"a count must be an integer from 0 to {MAX_COUNT}")
    return value


@dataclass
class Faults:
    """What is currently going wrong on purpose."""

    exchange_delay_s: float = 0.0  # the next ``exchange_delay_count`` actions wait this long
    exchange_delay_count: int = 0
    exchange_lose_count: int = 0  # the next N actions are applied and their reply is lost
    http_status: int | None = None  # REST requests answer this status (5xx or 429) ...
    http_until: float = 0.0  # ... until this monotonic time
    http_paths: tuple[str, ...] = ("/info", "/exchange")  # "/ws": WebSocket upgrades too
    http_fraction: float = 1.0  # ... for this share of the requests (drawn from ``rng``)
    exchange_fail_status: int = 502  # the next ``exchange_fail_count`` REST actions are ...
    exchange_fail_count: int = 0  # ... applied, then answered with this 5xx status
    ws_silent: bool = False  # WebSockets stay open but nothing is sent
    ws_duplicate: bool = False  # every data message is sent twice
    ws_reorder: bool = False  # data messages are sent in swapped pairs
    drops: int = field(default=0)  # WebSocket connections dropped on purpose so far
    half_opened: int = field(default=0)  # WebSocket connections made silent on purpose so far
    # Which requests a fractional http_error hits: seeded (``http_error.seed``), so a chaos run
    # replays.
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False, compare=False)
    now: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def http_error(self, path: str) -> int | None:
        """The status to answer ``path`` with right now, if a REST fault is on."""
        if self.http_status is not None and path in self.http_paths:
            if self.now() < self.http_until:
                if self.http_fraction >= 1 or self.rng.random() < self.http_fraction:
                    return self.http_status
                return None
            self.http_status = None
        return None

    def take_delay(self) -> float:
        if self.exchange_delay_count > 0:
            self.exchange_delay_count -= 1
            return self.exchange_delay_s
        return 0.0

    def take_lose(self) -> bool:
        if self.exchange_lose_count > 0:
            self.exchange_lose_count -= 1
            return True
        return False

    def take_fail(self) -> int | None:
        """The 5xx status to answer an action that was just applied with, if one is due."""
        if self.exchange_fail_count > 0:
            self.exchange_fail_count -= 1
            return self.exchange_fail_status
        return None

    def update(self, spec: dict[str, Any]) -> None:
        """Apply a ``/_sim/faults`` body (see the server docs); ValueError on nonsense, before
        anything changes."""
        delay = lose = http = fail = None
        seed: int | None = None
        if "exchange_delay" in spec:
            d = spec["exchange_delay"]
            if not isinstance(d, dict):
                raise ValueError("exchange_delay is {seconds, count}")
            delay = (_seconds(d["seconds"], MAX_DELAY_S), _count(d.get("count", 1)))
        if "exchange_lose_reply" in spec:
            lose = _count(spec["exchange_lose_reply"])
        if "http_error" in spec:
            e = spec["http_error"]
            if not isinstance(e, dict):
                raise ValueError("http_error is {status, seconds, paths}")
            status = e["status"]
            if isinstance(status, bool) or not isinstance(status, int):
                raise ValueError("http_error.status must be 429 or 5xx")
            if not (status == 429 or 500 <= status <= 599):
                raise ValueError("http_error.status must be 429 or 5xx")
            paths = e.get("paths", ("/info", "/exchange"))
            if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
                raise ValueError("http_error.paths must be a list of paths")
            http = (
                status,
                _seconds(e.get("seconds", 10), MAX_FAULT_S),
                tuple(paths),
                _fraction(e.get("fraction", 1.0)),
            )
            if "seed" in e:
                if isinstance(e["seed"], bool) or not isinstance(e["seed"], int):
                    raise ValueError("http_error.seed must be an integer")
                seed = e["seed"]
        if "exchange_fail_after_apply" in spec:
            f = spec["exchange_fail_after_apply"]
            if not isinstance(f, dict):
                raise ValueError("exchange_fail_after_apply is {status, count}")
            status = f.get("status", 502)
            if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
                raise ValueError("exchange_fail_after_apply.status must be 5xx")
            fail = (status, _count(f.get("count", 1)))
        switches = {}
        for key in ("ws_silent", "ws_duplicate", "ws_reorder"):
            if key in spec:
                if not isinstance(spec[key], bool):
                    raise ValueError(f"{key} must be true or false")
                switches[key] = spec[key]
        if spec.get("clear"):
            self.exchange_delay_s, self.exchange_delay_count = 0.0, 0
            self.exchange_lose_count = 0
            self.exchange_fail_status, self.exchange_fail_count = 502, 0
            self.http_status, self.http_until = None, 0.0
            self.http_paths = ("/info", "/exchange")
            self.http_fraction = 1.0
            self.ws_silent = self.ws_duplicate = self.ws_reorder = False
        if delay is not None:
            self.exchange_delay_s, self.exchange_delay_count = delay
        if lose is not None:
            self.exchange_lose_count = lose
        if fail is not None:
            self.exchange_fail_status, self.exchange_fail_count = fail
        if http is not None:
            self.http_status = http[0]
            self.http_until = self.now() + http[1]
            self.http_paths = http[2]
            self.http_fraction = http[3]
        if seed is not None:
            self.rng.seed(seed)
        for key, value in switches.items():
            setattr(self, key, value)

    def snapshot(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("now", "rng")}
        out["http_remaining_s"] = max(0.0, round(self.http_until - self.now(), 3))
        return out
