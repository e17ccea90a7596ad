"""What the API needs from the rest of the daemon, as protocols.

The composition root hands the real objects to ``build_app`` / ``ApiServer``: discovery's
registry, the tracker, the leaderboard, the event bus and the store. Each is optional, so the API
also runs without them (a route whose collaborator is missing answers 503). None of these calls
may do I/O or wait: they run inside a request.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, Protocol


class ActivityView(Protocol):
    """One address as discovery saw it on the trade stream."""

    @property
    def address(self) -> str: ...
    @property
    def first_seen_ms(self) -> int: ...
    @property
    def last_seen_ms(self) -> int: ...
    @property
    def trades(self) -> int: ...
    @property
    def volume_usd(self) -> Decimal: ...
    @property
    def taker(self) -> int: ...
    @property
    def maker(self) -> int: ...
    @property
    def coins(self) -> tuple[str, ...]: ...


class RegistryView(Protocol):
    """Discovery's address registry (``scout.discovery.Registry``), read only."""

    def get(self, address: str) -> ActivityView | None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[ActivityView]: ...

    def search(self, prefix: str, limit: int, offset: int) -> tuple[int, Sequence[ActivityView]]:
        """(total matches, one page ordered by address); ``prefix`` is lowercase "0x..." and
        "" matches every address."""
        ...


class TrackRequests(Protocol):
    """The tracker, as far as ``POST /traders/{address}/track`` goes: raise the address's
    tracking priority. Must not do I/O: the request returns at once."""

    def request_track(self, address: str) -> None: ...


class TraderReads(Protocol):
    """A trader's stored row, events and fills (``store.board.BoardQueries``)."""

    async def trader(self, address: str) -> dict[str, Any] | None: ...

    async def events(self, address: str, limit: int, offset: int = 0) -> list[dict[str, Any]]: ...

    async def fills(self, address: str, limit: int, offset: int = 0) -> list[dict[str, Any]]: ...


def activity_json(a: ActivityView) -> dict[str, Any]:
    """An activity as the API shows it (volume as a decimal string)."""
    return {
        "address": a.address,
        "first_seen_ms": a.first_seen_ms,
        "last_seen_ms": a.last_seen_ms,
        "trades": a.trades,
        "volume_usd": str(a.volume_usd),
        "taker": a.taker,
        "maker": a.maker,
        "coins": list(a.coins),
    }
