"""The leaderboard: an in-memory ranked snapshot of every scored trader, per window.

Requests never sort in SQL nor per request: the tracker ``put``s a trader's metrics when it has
scored them, ``refresh()`` makes every staged change visible at once (between two requests), and
queries read orders that are already sorted.

Layout, chosen for 100,000 traders: one slot per trader; per window one float64 column per figure
(NaN for None) and one packed string of the exact money figures; a trader's account value and
update time are per-trader columns. About 1.3 kB per trader over the four windows, plus 4 bytes
per trader and cached view (~150 MB resident for 100,000 scored traders and 50 views).

A *view* is one window ordered by one key under one set of filters. It is built on first use, by
a stable sort of the address-ordered members, and from then on kept current by ``refresh()``,
which takes out and puts back only the traders that changed (bisect), so a view is sorted once,
not once per refresh. A view holds the ascending order; a descending query reads it backwards.
So ties are broken by address: ascending in an ascending list, descending in a descending one.
Views live in an LRU bounded by their total length.

Missing figures: a trader whose sort key is None comes after every trader that has one, in
either direction, by address. The exceptions are ``score`` and ``badness``: a trader without a
score (too little data, a market maker, a vault; see ``analytics``) is not ranked by score at
all, and the losers are only the traders whose badness is positive (they lost with confidence).
They still appear when sorting by any other key.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import operator
import struct
import sys
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableSequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import HlcopyConfig, LeaderboardConfig
from hlcopy.errors import StoreError
from hlcopy.record import record
from hlcopy.scout.analytics import WINDOWS, RiskLevel, Style, TraderMetrics
from hlcopy.store import Store
from hlcopy.store.board import BoardQueries, StoredBoard, StoredFigures

log = structlog.get_logger()

ROW_FIELDS: Final = (
    "address",
    "account_value",
    "pnl",
    "return",
    "max_drawdown",
    "win_rate",
    "win_rate_lower",
    "profit_factor",
    "sharpe",
    "total_volume_usd",
    "trade_count",
    "account_age_days",
    "avg_risk_ratio",
    "avg_leverage",
    "max_profit_usd",
    "max_loss_usd",
    "risk_level",
    "style",
    "copyable_share",
    "score",
    "updated_at",
)
"""The fields of a leaderboard row, in order."""

SORT_KEYS: Final = ROW_FIELDS[1:]
"""Every figure of a row can order the board (risk level and style by their rank: LOW first,
scalper first)."""

MONEY_FIELDS: Final = ("account_value", "pnl", "total_volume_usd", "max_profit_usd", "max_loss_usd")
"""Row fields that are exact decimal strings (sorted by their value)."""

RISK_LEVELS: Final = tuple(RiskLevel)
STYLES: Final = tuple(Style)
DEFAULT_WINDOW: Final = "month"

# Per-window columns, in the order _figures fills them: the numbers (as the stored JSON names
# them in STORED_NUMBERS), then the ranks of the two labels.
_COLUMNS: Final = (
    "pnl",
    "return",
    "max_drawdown",
    "win_rate",
    "win_rate_lower",
    "profit_factor",
    "sharpe",
    "total_volume_usd",
    "trade_count",
    "account_age_days",
    "avg_risk_ratio",
    "avg_leverage",
    "max_profit_usd",
    "max_loss_usd",
    "copyable_share",
    "score",
    "badness",
    "risk_level",
    "style",
)
_STORED_NUMBERS: Final = tuple("volume" if c == "total_volume_usd" else c for c in _COLUMNS[:-2])
# The money packed per window, then the window's account value (used when the trader has none).
_STORED_TEXTS: Final = ("pnl", "volume", "max_profit_usd", "max_loss_usd", "account_value")
_STORED_LABELS: Final = ("risk_level", "style")
_SCORE: Final = _COLUMNS.index("score")
_TRADER_COLUMNS: Final = ("account_value", "updated_at")
_RANKED_ONLY: Final = frozenset({"score", "badness"})  # traders without one are left out
_SEP: Final = "\x1f"  # joins a window's exact money strings: pnl, volume, max profit, max loss
_NO_MONEY: Final = _SEP * 3
_NAN: Final = float("nan")
_RISK_RANK: Final[dict[str | None, float]] = {r.value: float(i) for i, r in enumerate(RISK_LEVELS)}
_STYLE_RANK: Final[dict[str | None, float]] = {s.value: float(i) for i, s in enumerate(STYLES)}
# The packed figures (``traders.board_figures``, see ``pack_metrics``): a header (the layout's
# fingerprint, one bit per window present, the stats_at_ms they belong to, a CRC-32 of the rest),
# then every window's columns as little-endian float64 (NaN throughout for a missing window),
# then UTF-8 text: every window's packed money strings and the account value to use when the
# trader has none, separated by _RS. Fixed-size floats, so a batch of traders is sliced into
# columns without a Python loop. The fingerprint covers what the bytes mean (windows, columns,
# label ranks): figures packed by a build with another layout, packed for other stats or damaged
# read as missing (then from the JSON), never as wrong figures.
_PACK_FORMAT: Final = 1  # bump when the meaning of the bytes changes in a way the rest misses
_PACK_HEAD: Final = struct.Struct("<IBqI")
_PACK_FLOATS: Final = len(WINDOWS) * len(_COLUMNS)
_PACK_TEXT_AT: Final = _PACK_HEAD.size + 8 * _PACK_FLOATS
_PACK_FINGERPRINT: Final = zlib.crc32(
    "\x1f".join(
        [str(_PACK_FORMAT), *WINDOWS, *_COLUMNS, *(r.value for r in RISK_LEVELS)]
        + [s.value for s in STYLES]
    ).encode()
)
_RS: Final = "\x1e"
_NAN_WINDOW: Final = (_NAN,) * len(_COLUMNS)
_SWAP: Final = sys.byteorder != "little"
# Per window, bytes.translate's table from a mask of windows to 1 when the window is in it.
_WINDOW_BIT: Final = tuple(bytes(m >> i & 1 for m in range(256)) for i in range(len(WINDOWS)))
# Keeping a view current costs a bisect and a move of the array per changed trader (~30 us at
# 100,000 traders); rebuilding it, a sort (~40 ms). A refresh with more changes than this (or
# than 1/64 of the board) drops the views instead: they are rebuilt when next asked for.
_REBUILD_MIN: Final = 64
# A view nobody asked for in this long is dropped at the next refresh: updating it costs every
# refresh, rebuilding it costs one request.
VIEW_IDLE_S: Final = 600.0


def _num(value: float | int | Decimal | None) -> float:
    if value is None:
        return _NAN
    f = float(value)
    return f if math.isfinite(f) else _NAN


def _money(value: Decimal | None) -> str:
    return "" if value is None or not value.is_finite() else str(value)


def _plain(value: Decimal) -> str:
    """Without an exponent, as PostgreSQL prints a numeric: the stored account value reads back
    the same as it went in."""
    return format(value, "f") if value.is_finite() else ""


def _opt(value: float) -> float | None:
    return None if value != value else value


def _figures(m: TraderMetrics) -> tuple[tuple[float, ...], str]:
    """A window's columns (in ``_COLUMNS`` order) and its packed money strings."""
    nums = (
        _num(m.pnl),
        _num(m.return_),
        _num(m.max_drawdown),
        _num(m.win_rate),
        _num(m.win_rate_lower),
        _num(m.profit_factor),
        _num(m.sharpe),
        _num(m.volume),
        _num(m.trade_count),
        _num(m.account_age_days),
        _num(m.avg_risk_ratio),
        _num(m.avg_leverage),
        _num(m.max_profit_usd),
        _num(m.max_loss_usd),
        _num(m.copyable_share),
        _num(m.score),
        _num(m.badness),
        _NAN if m.risk_level is None else _RISK_RANK[m.risk_level],
        _NAN if m.style is None else _STYLE_RANK[m.style],
    )
    money = _SEP.join(
        (_money(m.pnl), _money(m.volume), _money(m.max_profit_usd), _money(m.max_loss_usd))
    )
    return nums, money


def _fallback_value(metrics: Mapping[str, TraderMetrics]) -> str:
    """The account value of a trader who has none of its own: the last portfolio point of the
    first window that has one."""
    return next(
        (
            _money(m.account_value)
            for w in WINDOWS
            if (m := metrics.get(w)) is not None and m.account_value is not None
        ),
        "",
    )


def _pack(figures: Mapping[str, tuple[tuple[float, ...], str]], fallback: str, at_ms: int) -> bytes:
    mask = 0
    nums = array("d")
    money = []
    for i, w in enumerate(WINDOWS):
        fig = figures.get(w)
        if fig is None:
            nums.extend(_NAN_WINDOW)
            money.append(_NO_MONEY)
        else:
            mask |= 1 << i
            nums.extend(fig[0])
            money.append(fig[1])
    if _SWAP:
        nums.byteswap()
    body = nums.tobytes() + _RS.join([*money, fallback]).encode()
    return _PACK_HEAD.pack(_PACK_FINGERPRINT, mask, at_ms, zlib.crc32(body)) + body


def pack_metrics(metrics: Mapping[str, TraderMetrics], *, updated_ms: int) -> bytes:
    """A trader's figures as the board holds them, for ``traders.board_figures``: what ``put``
    would show, for a start to load without taking the stored JSON apart. ``updated_ms`` is the
    stats_at_ms stored with them (figures stored with another one are not read)."""
    figures = {w: _figures(metrics[w]) for w in WINDOWS if w in metrics}
    return _pack(figures, _fallback_value(metrics), updated_ms)


def pack_stored(rows: Iterable[StoredFigures]) -> list[StoredBoard]:
    """Traders read out of the stored JSON by ``BoardQueries.stored_figures`` (rows of one
    trader together), packed as ``pack_metrics`` packs them: for ``Leaderboard.load``, and to be
    written back so the next start need not read the JSON."""
    n = len(_STORED_NUMBERS)
    out: list[StoredBoard] = []
    current: str | None = None
    figures: dict[str, tuple[tuple[float, ...], str]] = {}
    values: dict[str, str] = {}
    value: str | None = None
    updated = 0

    def done() -> None:
        if current is not None:
            fallback = next((values[w] for w in WINDOWS if w in values), "")
            out.append((current, value, updated, _pack(figures, fallback, updated)))

    for row in rows:
        address, window = row[0], row[1]
        if address != current:
            done()
            current, figures, values = address, {}, {}
            value, updated = row[2], int(row[3])
        if window not in WINDOWS:
            continue
        money = row[4 + n : 8 + n]
        if row[8 + n] is not None:
            values[window] = row[8 + n]
        risk, style = row[9 + n], row[10 + n]
        nums = (*row[4 : 4 + n], _RISK_RANK.get(risk, _NAN), _STYLE_RANK.get(style, _NAN))
        figures[window] = (nums, _SEP.join([m or "" for m in money]))
    done()
    return out


def _value_of(stored: str | None, fallback: str) -> str:
    return stored if stored and math.isfinite(float(stored)) else fallback


def _columns(traders: Mapping[str, tuple[str, int, int, bytes, list[str]]]) -> _Loaded:
    """Packed traders (address: value, stats_at_ms, windows present, packed floats, texts) as
    columns."""
    rows = traders.values()
    floats = array("d", b"".join([r[3] for r in rows]))
    if _SWAP:
        floats.byteswap()
    masks = bytes([r[2] for r in rows])
    texts = list(zip(*[r[4] for r in rows], strict=True))  # per window, then the fallbacks
    return _Loaded(
        addresses=list(traders),
        values=[r[0] for r in rows],
        updated=array("d", [r[1] for r in rows]),
        floats=floats,
        present=[bytearray(masks.translate(table)) for table in _WINDOW_BIT],
        money=[list(texts[i]) for i in range(len(WINDOWS))],
    )


def _unpacked(
    packed_floats: bytes, mask: int, parts: list[str]
) -> dict[str, tuple[tuple[float, ...], str]]:
    """One trader's packed figures, as ``put`` stages them."""
    floats, n = array("d", packed_floats), len(_COLUMNS)
    if _SWAP:
        floats.byteswap()
    return {
        w: (tuple(floats[i * n : (i + 1) * n]), parts[i])
        for i, w in enumerate(WINDOWS)
        if mask >> i & 1
    }


@record
class Filters:
    """Which traders a query keeps. A missing figure fails a minimum (as zero would) and any
    set of risk levels or styles."""

    min_trades: int = 0
    min_volume_usd: Decimal = Decimal(0)
    risk_levels: frozenset[RiskLevel] | None = None
    styles: frozenset[Style] | None = None
    min_copyable_share: float | None = None


NO_FILTERS: Final = Filters()


@record
class Page:
    """One page of a ranking: how many traders match, and the rows asked for."""

    total: int
    rows: list[dict[str, Any]]


class _Window:
    """One window's columns."""

    __slots__ = ("col_list", "cols", "money", "name", "present", "ranked")

    def __init__(self, name: str) -> None:
        self.name = name
        self.cols = {c: array("d") for c in _COLUMNS}
        self.col_list = list(self.cols.values())  # in _COLUMNS order
        self.present = bytearray()  # 1 when the trader has metrics in this window
        self.money: list[str] = []
        self.ranked = 0  # traders with a score


@dataclass(slots=True)
class _Staged:
    figures: dict[str, tuple[tuple[float, ...], str]]
    account_value: str
    updated_ms: int


@dataclass(slots=True)
class _Loaded:
    """Stored traders new to the board, as columns: ``load`` writes them in one go."""

    addresses: list[str]
    values: list[str]
    updated: array[float]
    floats: array[float]  # per trader, every window's columns (the packed layout)
    present: list[bytearray]  # per window: 1 when the trader has it
    money: list[list[str]]  # per window


class _View:
    """One window ordered by one key under filters: the ascending order of the traders that
    have the key, and those without it (by address)."""

    __slots__ = ("key_of", "keyed", "nulls", "passes", "used")

    def __init__(
        self,
        keyed: array[int],
        nulls: array[int],
        passes: Callable[[int], bool],
        key_of: Callable[[int], tuple[float, str]],
        used: float,
    ) -> None:
        self.keyed = keyed
        self.nulls = nulls
        self.passes = passes
        self.key_of = key_of
        self.used = used  # monotonic seconds of the last query

    def __len__(self) -> int:
        return len(self.keyed) + len(self.nulls)

    def slots(self, descending: bool, offset: int, limit: int) -> list[int]:
        """The slots at ``offset`` .. ``offset + limit`` of the order; nulls always last."""
        keyed, n = self.keyed, len(self.keyed)
        out: list[int] = []
        if offset < n:
            end = min(n, offset + limit)
            if descending:
                out = list(keyed[n - end : n - offset])
                out.reverse()
            else:
                out = list(keyed[offset:end])
        rest = limit - len(out)
        if rest > 0:
            start = max(0, offset - n)
            out.extend(self.nulls[start : start + rest])
        return out


class Leaderboard:
    """Ranked, filtered, paged views of the scored traders. See the module docstring.

    ``put`` and ``drop`` are staged; ``refresh`` applies them (``load`` is a refresh too).
    Everything runs on the event loop: ``refresh`` is synchronous, so no request ever sees half
    of it.
    """

    def __init__(
        self,
        *,
        losers_window: str = DEFAULT_WINDOW,
        view_budget: int = 8_000_000,
        clock: Clock = SYSTEM,
    ) -> None:
        if losers_window not in WINDOWS:
            raise ValueError(f"unknown window {losers_window!r}")
        self.losers_window = losers_window
        self._view_budget = view_budget
        self._clock = clock
        self._addresses: list[str] = []  # by slot; "" for a free slot
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._by_address: list[int] = []  # live slots in address order
        self._account_value = array("d")
        self._account_value_str: list[str] = []
        self._updated = array("d")
        self._windows = {w: _Window(w) for w in WINDOWS}
        self._staged: dict[str, _Staged | None] = {}
        self._views: OrderedDict[tuple[str, str, Filters], _View] = OrderedDict()
        self._view_entries = 0
        #: Bumped by every refresh that changed something: a cache of rendered pages keys on it.
        self.version = 0
        #: Set while the stored state is being loaded at start: the API then says "loading".
        self.loading = False
        #: When the snapshot was last rebuilt, and when it last changed.
        self.refreshed_ms: int | None = None
        self.version_ms: int | None = None
        self.last_refresh_s = 0.0
        self.last_changes = 0
        self.refreshes = 0
        self.view_builds = 0
        self.view_evictions = 0

    # -- input ------------------------------------------------------------------------------

    def put(
        self,
        address: str,
        metrics: Mapping[str, TraderMetrics],
        *,
        account_value: Decimal | None,
        updated_ms: int,
    ) -> None:
        """Stage a trader's metrics per window (visible after ``refresh``). A window missing
        from ``metrics`` takes the trader off that window's board. Older than what is already
        held or staged (by ``updated_ms``): ignored.

        Put when a trader was re-scored, not on every position poll: each changed trader costs
        every cached view a bisect and an array move (~30 us at 100,000 traders) at the next
        refresh."""
        address = address.lower()
        if self._stale(address, updated_ms):
            return
        value = _fallback_value(metrics) if account_value is None else _plain(account_value)
        figures = {w: _figures(metrics[w]) for w in WINDOWS if w in metrics}
        self._stage(address, figures, value, updated_ms)

    def _stage(
        self,
        address: str,
        figures: dict[str, tuple[tuple[float, ...], str]],
        account_value: str,
        updated_ms: int,
    ) -> None:
        self._staged[address] = _Staged(figures, account_value, updated_ms)

    def _stale(self, address: str, updated_ms: int) -> bool:
        staged = self._staged.get(address)
        if staged is not None:
            return staged.updated_ms > updated_ms
        slot = self._slots.get(address)
        return slot is not None and self._updated[slot] > updated_ms

    def load(self, rows: Iterable[StoredBoard]) -> tuple[int, list[str]]:
        """Put traders read back by ``BoardQueries.stored_boards`` on the board, with whatever
        else is staged, in one refresh: the same as ``put`` and ``refresh``, from the packed
        figures (``pack_metrics``), and for traders new to the board column by column rather
        than trader by trader, for a fast start. Rows older than what the board holds or has
        staged are ignored. Returns how many traders were put, and the addresses whose packed
        figures are missing or unreadable (to be read from the stored JSON instead)."""
        unreadable: list[str] = []
        fresh: dict[str, tuple[str, int, int, bytes, list[str]]] = {}
        restaged: set[str] = set()
        head, head_size, text_at, crc32 = _PACK_HEAD, _PACK_HEAD.size, _PACK_TEXT_AT, zlib.crc32
        windows = len(WINDOWS)
        for address, stored_value, at_ms, packed in rows:
            try:
                if packed is None or len(packed) < text_at:
                    raise ValueError("too short")
                fingerprint, mask, packed_at, crc = head.unpack_from(packed)
                floats, text = packed[head_size:text_at], packed[text_at:]
                if (
                    fingerprint != _PACK_FINGERPRINT
                    or packed_at != at_ms
                    or crc32(text, crc32(floats)) != crc
                ):
                    raise ValueError("another layout, other stats or damaged")
                parts = text.decode().split(_RS)  # as pack_metrics wrote it: the CRC holds
                if len(parts) != windows + 1:
                    raise ValueError("not packed by pack_metrics")
            except ValueError:  # UnicodeDecodeError is one
                unreadable.append(address)
                continue
            if self._stale(address, at_ms) or (address in fresh and fresh[address][1] > at_ms):
                continue
            value = _value_of(stored_value, parts[-1])
            if address in self._slots or address in self._staged:
                self._stage(address, _unpacked(floats, mask, parts), value, at_ms)
                restaged.add(address)
            else:
                fresh[address] = (value, at_ms, mask, floats, parts)
        self._refresh(_columns(fresh) if fresh else None)
        return len(restaged) + len(fresh), unreadable

    def drop(self, address: str) -> None:
        """Stage taking a trader off every window."""
        self._staged[address.lower()] = None

    def refresh(self) -> None:
        """Apply every staged change at once."""
        self._refresh(None)

    def _refresh(self, loaded: _Loaded | None) -> None:
        started = self._clock.monotonic()
        staged, self._staged = self._staged, {}
        now_ms = self._clock.time_ms()
        if staged or loaded or self.version == 0:
            self._apply(staged, loaded)
            self.version += 1
            self.version_ms = now_ms
        self.refreshes += 1
        self.last_changes = len(staged) + (len(loaded.addresses) if loaded else 0)
        self.refreshed_ms = now_ms
        self.last_refresh_s = self._clock.monotonic() - started

    def _apply(self, staged: dict[str, _Staged | None], loaded: _Loaded | None) -> None:
        """``loaded`` holds traders that are neither on the board nor in ``staged``."""
        known = [s for a in staged if (s := self._slots.get(a)) is not None]
        changes = len(staged) + (len(loaded.addresses) if loaded else 0)
        incremental = changes <= max(_REBUILD_MIN, len(self._slots) // 64)
        if not incremental:
            self._views.clear()
        idle = self._clock.monotonic() - VIEW_IDLE_S
        for vk in [vk for vk, v in self._views.items() if v.used < idle]:
            del self._views[vk]
        # 1. Take the changed traders out of every view while their old figures still place them.
        broken = [vk for vk, view in self._views.items() if not self._take_out(view, known)]
        if broken:  # cannot happen while the views are kept right; never serve a wrong order
            log.error("leaderboard views out of order; rebuilding them", views=len(broken))
            for vk in broken:
                del self._views[vk]
        for s in known:  # and out of the ranked counts
            for w in self._windows.values():
                if w.present[s] and w.cols["score"][s] == w.cols["score"][s]:
                    w.ranked -= 1
        # 2. Write the new figures.
        changed: list[int] = []
        new: list[int] = []
        for address, entry in staged.items():
            slot = self._slots.get(address)
            if entry is None:
                if slot is not None:
                    self._free_slot(address, slot)
                continue
            if slot is None:
                slot = self._new_slot(address)
                new.append(slot)
            self._write(slot, entry)
            changed.append(slot)
        if loaded is not None:
            slots = self._write_loaded(loaded)
            new += slots
            changed += slots
        if len(new) > 64:  # many at once (the start): one adaptive sort beats many insertions
            by_address, address_of = self._by_address, self._addresses.__getitem__
            new.sort(key=address_of)
            after = not by_address or address_of(by_address[-1]) < address_of(new[0])
            by_address.extend(new)
            if not after:  # a start loads in address order: each batch goes after the last
                by_address.sort(key=address_of)
        else:
            for slot in new:
                bisect.insort(self._by_address, slot, key=self._addresses.__getitem__)
        # 3. Put them back where their new figures place them.
        for view in self._views.values():
            for s in changed:
                self._put_in(view, s)
        self._view_entries = sum(len(v) for v in self._views.values())

    def _write_loaded(self, loaded: _Loaded) -> list[int]:
        """Give the loaded traders slots and write their figures, a column at a time."""
        k = len(loaded.addresses)
        if len(self._free) < k:  # then the k slots taken next are one ascending run
            self._grow(max(k, 64, len(self._addresses) // 4))
        slots = [self._new_slot(a) for a in loaded.addresses]
        first = slots[0]
        run = slots == list(range(first, first + k))

        def write(column: MutableSequence[Any], values: MutableSequence[Any]) -> None:
            if run:
                column[first : first + k] = values
            else:
                for s, v in zip(slots, values, strict=True):
                    column[s] = v

        write(self._account_value_str, loaded.values)
        write(self._account_value, array("d", [float(v) if v else _NAN for v in loaded.values]))
        write(self._updated, loaded.updated)
        floats, per_trader, per_window = loaded.floats, _PACK_FLOATS, len(_COLUMNS)
        for i, w in enumerate(self._windows.values()):  # in WINDOWS order, as packed
            present = loaded.present[i]
            write(w.present, present)
            write(w.money, loaded.money[i])
            for j, column in enumerate(w.col_list):
                write(column, floats[i * per_window + j :: per_trader])
            score = floats[i * per_window + _SCORE :: per_trader]
            w.ranked += sum(map(operator.and_, present, map(operator.eq, score, score)))
        return slots

    def _grow(self, k: int) -> None:
        """Make room for ``k`` more slots at once (appending column by column is slow)."""
        nans = array("d", [_NAN]) * k
        self._addresses.extend([""] * k)
        self._free.extend(range(len(self._addresses) - 1, len(self._addresses) - k - 1, -1))
        self._account_value.extend(nans)
        self._account_value_str.extend([""] * k)
        self._updated.extend(array("d", [0.0]) * k)
        for w in self._windows.values():
            for col in w.col_list:
                col.extend(nans)
            w.present.extend(bytes(k))
            w.money.extend([_NO_MONEY] * k)

    def _new_slot(self, address: str) -> int:
        if not self._free:
            self._grow(max(64, len(self._addresses) // 4))
        slot = self._free.pop()
        self._addresses[slot] = address
        self._slots[address] = slot
        return slot

    def _free_slot(self, address: str, slot: int) -> None:
        i = bisect.bisect_left(self._by_address, address, key=self._addresses.__getitem__)
        del self._by_address[i]
        del self._slots[address]
        self._addresses[slot] = ""
        for w in self._windows.values():
            w.present[slot] = 0
        self._free.append(slot)

    def _write(self, slot: int, entry: _Staged) -> None:
        self._account_value_str[slot] = entry.account_value
        self._account_value[slot] = float(entry.account_value) if entry.account_value else _NAN
        self._updated[slot] = float(entry.updated_ms)
        for name, w in self._windows.items():
            fig = entry.figures.get(name)
            if fig is None:
                w.present[slot] = 0
                continue
            nums, money = fig
            w.present[slot] = 1
            w.money[slot] = money
            for col, value in zip(w.col_list, nums, strict=True):
                col[slot] = value
            if nums[_SCORE] == nums[_SCORE]:
                w.ranked += 1

    # -- views ------------------------------------------------------------------------------

    def _column(self, w: _Window, key: str) -> array[float]:
        if key == "account_value":
            return self._account_value
        if key == "updated_at":
            return self._updated
        return w.cols[key]

    def _predicate(self, w: _Window, key: str, f: Filters) -> Callable[[int], bool]:
        """Whether a slot belongs in the view (with or without the key)."""
        present, cols = w.present, w.cols
        tests: list[Callable[[int], bool]] = []
        if key == "badness":  # the losers: only who lost with confidence
            bad = cols["badness"]
            tests.append(lambda s: bad[s] > 0)
        elif key == "score":  # no score, no rank
            score = cols["score"]
            tests.append(lambda s: score[s] == score[s])
        if f.min_trades > 0:
            trades, m = cols["trade_count"], float(f.min_trades)
            tests.append(lambda s: trades[s] >= m)
        if f.min_volume_usd > 0:
            vol, v = cols["total_volume_usd"], float(f.min_volume_usd)
            tests.append(lambda s: vol[s] >= v)
        if f.risk_levels is not None:
            risk, levels = cols["risk_level"], {_RISK_RANK[r.value] for r in f.risk_levels}
            tests.append(lambda s: risk[s] in levels)
        if f.styles is not None:
            style, styles = cols["style"], {_STYLE_RANK[x.value] for x in f.styles}
            tests.append(lambda s: style[s] in styles)
        if f.min_copyable_share is not None:
            share, c = cols["copyable_share"], f.min_copyable_share
            tests.append(lambda s: share[s] >= c)

        def passes(s: int) -> bool:
            if not present[s]:
                return False
            for test in tests:  # noqa: SIM110 - a loop is faster than all() over a generator
                if not test(s):
                    return False
            return True

        return passes

    def _build(self, window: str, key: str, f: Filters) -> _View:
        w = self._windows[window]
        col = self._column(w, key)
        present, cols = w.present, w.cols
        # One comprehension per filter (what _predicate tests one trader at a time).
        members = [s for s in self._by_address if present[s]]
        if key == "badness":
            bad = cols["badness"]
            members = [s for s in members if bad[s] > 0]
        if f.min_trades > 0:
            trades, m = cols["trade_count"], float(f.min_trades)
            members = [s for s in members if trades[s] >= m]
        if f.min_volume_usd > 0:
            vol, v = cols["total_volume_usd"], float(f.min_volume_usd)
            members = [s for s in members if vol[s] >= v]
        if f.risk_levels is not None:
            risk, levels = cols["risk_level"], {_RISK_RANK[r.value] for r in f.risk_levels}
            members = [s for s in members if risk[s] in levels]
        if f.styles is not None:
            style, styles = cols["style"], {_STYLE_RANK[x.value] for x in f.styles}
            members = [s for s in members if style[s] in styles]
        if f.min_copyable_share is not None:
            share, c = cols["copyable_share"], f.min_copyable_share
            members = [s for s in members if share[s] >= c]
        keyed = [s for s in members if col[s] == col[s]]
        keyed.sort(key=col.__getitem__)  # stable over address order: ties by address
        nulls = [] if key in _RANKED_ONLY else [s for s in members if col[s] != col[s]]
        addresses = self._addresses

        def key_of(s: int) -> tuple[float, str]:
            return (col[s], addresses[s])

        self.view_builds += 1
        return _View(
            array("i", keyed),
            array("i", nulls),
            self._predicate(w, key, f),
            key_of,
            self._clock.monotonic(),
        )

    def _view(self, window: str, key: str, f: Filters) -> _View:
        vk = (window, key, f)
        view = self._views.get(vk)
        if view is not None:
            self._views.move_to_end(vk)
            view.used = self._clock.monotonic()
            return view
        view = self._build(window, key, f)
        self._views[vk] = view
        self._view_entries += len(view)
        while self._view_entries > self._view_budget and len(self._views) > 1:
            _, old = self._views.popitem(last=False)
            self._view_entries -= len(old)
            self.view_evictions += 1
        return view

    def _take_out(self, view: _View, slots: Iterable[int]) -> bool:
        """Remove ``slots`` from ``view`` (by their current figures); False if one is not
        where it should be."""
        addresses = self._addresses
        for s in slots:
            if not view.passes(s):
                continue
            key = view.key_of(s)
            if key[0] == key[0]:
                seq, i = view.keyed, bisect.bisect_left(view.keyed, key, key=view.key_of)
            else:
                seq = view.nulls
                i = bisect.bisect_left(seq, addresses[s], key=addresses.__getitem__)
            if i >= len(seq) or seq[i] != s:
                return False
            del seq[i]
        return True

    def _put_in(self, view: _View, s: int) -> None:
        if not view.passes(s):
            return
        key = view.key_of(s)
        if key[0] == key[0]:
            view.keyed.insert(bisect.bisect_left(view.keyed, key, key=view.key_of), s)
        else:
            addresses = self._addresses
            i = bisect.bisect_left(view.nulls, addresses[s], key=addresses.__getitem__)
            view.nulls.insert(i, s)

    # -- queries ----------------------------------------------------------------------------

    def ranking(
        self,
        window: str = DEFAULT_WINDOW,
        sort_by: str = "score",
        *,
        descending: bool = True,
        filters: Filters = NO_FILTERS,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """One page of the board (raises ValueError for an unknown window or key)."""
        self._check(window, sort_by)
        view = self._view(window, sort_by, filters)
        slots = view.slots(descending, offset, limit)
        w = self._windows[window]
        return Page(len(view), [self._row(w, s) for s in slots])

    def losers(self, window: str | None = None, *, limit: int = 100, offset: int = 0) -> Page:
        """The traders who lost with confidence, worst first; rows carry ``badness`` too."""
        window = window or self.losers_window
        self._check(window, "score")
        view = self._view(window, "badness", NO_FILTERS)
        w = self._windows[window]
        bad = w.cols["badness"]
        rows = []
        for s in view.slots(True, offset, limit):
            row = self._row(w, s)
            row["badness"] = bad[s]
            rows.append(row)
        return Page(len(view), rows)

    def top(
        self,
        n: int,
        window: str = DEFAULT_WINDOW,
        *,
        min_trades: int = 0,
        risk_levels: Iterable[RiskLevel] | None = None,
        min_copyable_share: float | None = None,
    ) -> list[str]:
        """The ``n`` best-scored addresses that pass the filters (auto-follow's pick)."""
        self._check(window, "score")
        f = Filters(
            min_trades=min_trades,
            risk_levels=None if risk_levels is None else frozenset(risk_levels),
            min_copyable_share=min_copyable_share,
        )
        return [self._addresses[s] for s in self._view(window, "score", f).slots(True, 0, n)]

    def worst(self, n: int, window: str | None = None) -> list[str]:
        """The ``n`` worst losers' addresses (auto-fade's pick)."""
        window = window or self.losers_window
        self._check(window, "score")
        view = self._view(window, "badness", NO_FILTERS)
        return [self._addresses[s] for s in view.slots(True, 0, n)]

    def rank(self, address: str, window: str = DEFAULT_WINDOW) -> int | None:
        """The 1-based place by score, None when not ranked in ``window``."""
        self._check(window, "score")
        slot = self._slots.get(address.lower())
        if slot is None:
            return None
        view = self._view(window, "score", NO_FILTERS)
        if not view.passes(slot):
            return None
        key = view.key_of(slot)
        if key[0] != key[0]:
            return None
        i = bisect.bisect_left(view.keyed, key, key=view.key_of)
        return len(view.keyed) - i

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.lower() in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def _check(self, window: str, key: str) -> None:
        if window not in self._windows:
            raise ValueError(f"unknown window {window!r}; allowed: {', '.join(WINDOWS)}")
        if key not in SORT_KEYS:
            raise ValueError(f"unknown sort key {key!r}; allowed: {', '.join(SORT_KEYS)}")

    def _row(self, w: _Window, s: int) -> dict[str, Any]:
        c = w.cols
        pnl, volume, max_profit, max_loss = w.money[s].split(_SEP)
        trades, risk, style = c["trade_count"][s], c["risk_level"][s], c["style"][s]
        return {
            "address": self._addresses[s],
            "account_value": self._account_value_str[s] or None,
            "pnl": pnl or None,
            "return": _opt(c["return"][s]),
            "max_drawdown": _opt(c["max_drawdown"][s]),
            "win_rate": _opt(c["win_rate"][s]),
            "win_rate_lower": _opt(c["win_rate_lower"][s]),
            "profit_factor": _opt(c["profit_factor"][s]),
            "sharpe": _opt(c["sharpe"][s]),
            "total_volume_usd": volume or None,
            "trade_count": None if trades != trades or trades % 1 else int(trades),
            "account_age_days": _opt(c["account_age_days"][s]),
            "avg_risk_ratio": _opt(c["avg_risk_ratio"][s]),
            "avg_leverage": _opt(c["avg_leverage"][s]),
            "max_profit_usd": max_profit or None,
            "max_loss_usd": max_loss or None,
            "risk_level": None if risk != risk else RISK_LEVELS[int(risk)].value,
            "style": None if style != style else STYLES[int(style)].value,
            "copyable_share": _opt(c["copyable_share"][s]),
            "score": _opt(c["score"][s]),
            "updated_at": int(self._updated[s]),
        }

    def stats(self) -> dict[str, Any]:
        age = None
        if self.refreshed_ms is not None:
            age = round(max(0, self._clock.time_ms() - self.refreshed_ms) / 1000, 3)
        return {
            "traders": len(self._slots),
            "ranked": {name: w.ranked for name, w in self._windows.items()},
            "staged": len(self._staged),
            "version": self.version,
            "refreshes": self.refreshes,
            "refresh_ms": round(self.last_refresh_s * 1000, 3),
            "refresh_changes": self.last_changes,
            "age_s": age,
            "views": len(self._views),
            "view_entries": self._view_entries,
            "view_builds": self.view_builds,
            "view_evictions": self.view_evictions,
        }


class LeaderboardService(Component):
    """Loads the stored metrics into the board at start, then refreshes it periodically.

    Ready once the stored state is loaded: a restart serves the last rankings without polling
    the exchange again, from the packed figures the tracker stores with the stats (see
    ``pack_metrics``). The tracker ``put``s fresh metrics into the same board as it scores.
    """

    name = "leaderboard"
    core = False  # copying goes on without a leaderboard

    def __init__(
        self,
        board: Leaderboard,
        store: Store,
        cfg: LeaderboardConfig,
        *,
        clock: Clock = SYSTEM,
        batch_size: int = 2000,
    ) -> None:
        self.board = board
        self._queries = BoardQueries(store)
        self._interval_s = cfg.refresh_interval_s
        self._clock = clock
        self._batch = batch_size
        self._draining = asyncio.Event()
        self._loaded = False
        self._packing_back: asyncio.Task[None] | None = None
        self.loaded_traders = 0
        self.loaded_from_json = 0  # of which read from the stored JSON
        self.packed_back = 0  # packed figures written back for them
        self.load_s: float | None = None

    async def run(self, ready: Ready) -> None:
        try:
            if not self._loaded:  # once per process: after a restart of run the board is current
                await self._load()
                self._loaded = True
            self.board.refresh()
            ready.set()
            while not await sleep_unless(self._clock, self._draining, self._interval_s):
                self.board.refresh()
        finally:
            if self._packing_back is not None:  # the load failed: the next start writes them
                self._packing_back.cancel()
                self._packing_back = None

    async def _load(self) -> None:
        """Every stored trader's figures, in address batches, each put on the board as it
        arrives, so no more than one batch is held at a time; the API says "loading"
        meanwhile. The packed figures take about a second per 100,000 traders; the JSON, read
        for traders stored without them (before migration 0003), about ten."""
        started = self._clock.monotonic()
        board = self.board
        board.loading = True
        try:
            after = ""
            while True:
                rows = await self._queries.stored_boards(after, self._batch)
                if not rows:
                    break
                put, unreadable = board.load(rows)
                self.loaded_traders += put
                if unreadable:
                    await self._load_json(unreadable)
                after = rows[-1][0]
            if self._packing_back is not None:  # so everything is packed back once ready
                await self._packing_back
                self._packing_back = None
        finally:
            board.loading = False
        self.load_s = self._clock.monotonic() - started
        log.info(
            "leaderboard loaded",
            traders=self.loaded_traders,
            from_json=self.loaded_from_json,
            seconds=round(self.load_s, 3),
        )

    async def _load_json(self, addresses: list[str]) -> None:
        """Traders whose packed figures are missing (stored before there were any) or
        unreadable: from the stored JSON, which is slow, so their packed figures are written
        back for the next start."""
        rows = await self._queries.stored_figures(
            addresses,
            windows=WINDOWS,
            numbers=_STORED_NUMBERS,
            texts=_STORED_TEXTS,
            labels=_STORED_LABELS,
        )
        stored = pack_stored(rows)
        put, _ = self.board.load(stored)
        self.loaded_traders += put
        self.loaded_from_json += len(stored)
        packed = [(address, at_ms, p) for address, _, at_ms, p in stored if p is not None]
        # Written while the next batches are read (PostgreSQL has the other core), one batch at
        # a time, so no more than one batch of them is held.
        if self._packing_back is not None:
            await self._packing_back
        self._packing_back = asyncio.create_task(
            self._pack_back(packed), name="leaderboard:pack-back"
        )

    async def _pack_back(self, packed: list[tuple[str, int, bytes]]) -> None:
        try:
            self.packed_back += await self._queries.save_boards(packed)
        except StoreError as exc:  # they are on the board; the next start reads the JSON again
            log.warning("leaderboard: packed figures not written back", error=str(exc))

    async def drain(self) -> None:
        self._draining.set()

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._interval_s = config.leaderboard.refresh_interval_s
        self.board.losers_window = config.leaderboard.losers_window

    def stats(self) -> dict[str, Any]:
        return {
            **self.board.stats(),
            "loaded_traders": self.loaded_traders,
            "load_from_json": self.loaded_from_json,
            "load_packed_back": self.packed_back,
            "load_careful_batches": self._queries.careful_batches,
            "load_s": None if self.load_s is None else round(self.load_s, 3),
        }
