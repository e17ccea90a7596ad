"""Fault switches, flipped at runtime through ``POST /_sim/faults`` or the Python API."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Faults:
    """What is currently going wrong on purpose."""

    exchange_delay_s: float = 0.0  # the next ``exchange_delay_count`` actions wait this long
    exchange_delay_count: int = 0
    exchange_lose_count: int = 0  # the next N actions are applied and their reply is lost
    http_status: int | None = None  # every REST request answers this status (5xx or 429) ...
    http_until: float = 0.0  # ... until this monotonic time
    http_paths: tuple[str, ...] = ("/info", "/exchange")
    ws_silent: bool = False  # WebSockets stay open but nothing is sent
    ws_duplicate: bool = False  # every data message is sent twice
    ws_reorder: bool = False  # data messages are sent in swapped pairs
    drops: int = field(default=0)  # WebSocket connections dropped on purpose so far

    def http_error(self, path: str) -> int | None:
        """The status to answer ``path`` with right now, if a REST fault is on."""
        if self.http_status is not None and path in self.http_paths:
            if time.monotonic() < self.http_until:
                return self.http_status
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

    def update(self, spec: dict[str, Any]) -> None:
        """Apply a ``/_sim/faults`` body (see the server docs); ValueError on nonsense."""
        if spec.get("clear"):
            drops = self.drops
            self.__init__()  # type: ignore[misc]
            self.drops = drops
        if "exchange_delay" in spec:
            d = spec["exchange_delay"]
            self.exchange_delay_s = float(d["seconds"])
            self.exchange_delay_count = int(d.get("count", 1))
        if "exchange_lose_reply" in spec:
            self.exchange_lose_count = int(spec["exchange_lose_reply"])
        if "http_error" in spec:
            e = spec["http_error"]
            status = int(e["status"])
            if not (status == 429 or 500 <= status <= 599):
                raise ValueError("http_error.status must be 429 or 5xx")
            self.http_status = status
            self.http_until = time.monotonic() + float(e.get("seconds", 10))
            self.http_paths = tuple(e.get("paths", ("/info", "/exchange")))
        for key in ("ws_silent", "ws_duplicate", "ws_reorder"):
            if key in spec:
                setattr(self, key, bool(spec[key]))

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        out["http_remaining_s"] = max(0.0, round(self.http_until - time.monotonic(), 3))
        return out
