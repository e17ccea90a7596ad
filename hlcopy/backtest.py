"""The backtest: what copying some addresses would have earned, and why it differs from them.

Leaders' real fills are replayed through the daemon's own parts — the copier's ``decide``, the
risk state machine (``follow/risk.py``), the paper fill model (``simulate_ioc``,
``PaperAccount``, ``attribute_fill``, ``funding_payment``) and the performance attribution
(``follow_performance``, ``FollowLedger``) — on a ``VirtualClock``: the engine schedules every
event on the clock and ``run_due`` fires them in time order, so a decision, the order it sends
and the fill that comes back happen at their own virtual times, with the orders in flight
counted as pending in between, as in the daemon. Nothing here re-implements a rule of theirs;
this module only moves data between them the way ``follow/engine.py`` and
``follow/executor.py`` do.

**The leaders.** Each address becomes one follow (id: the address) of one follower account, so
several addresses net inside the account exactly as live follows do (the copier's transfers),
and each keeps its own attribution. A leader's fills are grouped per coin and millisecond (one
order sweeping several makers arrives as one change, as the leader books hand it over); a group
moves the leader's position from where the previous one left it (``startPosition`` chains the
fills; both sides of a self-trade move nothing and are left out). The group's price is its net
price, Σ signed size x price / net size, so a copy of the net at that price has the leader's
cash flow exactly; a group that bought and sold (with a net price beyond half or twice its
prices) uses the volume-weighted price of the side it netted to.

**Prices.** A decision's mid and an order's fill come from one price model per coin. Offline
(``--fills``) it is the leaders' own fills: the group prices, joined by straight lines, so the
price "at the leader's time + latency" comes from their later fills. Online it is 1-minute
candles (``candleSnapshot``, fetched around the leaders' fills when there is a latency or a
delay to price) and 1-hour candles elsewhere, each candle an open at its start and a close at
its end. An order triggered by a leader's change fills at the leader's price moved by the
model's change over the latency (``px x model(t + latency) / model(t)``: with no latency, the
leader's price exactly), worse by ``slippage_bps``, capped by the copier's IOC limit price (a
fill beyond it does not happen: "could not immediately match"), charged ``fee_bps``. Funding is
paid every hour from ``fundingHistory`` online (none offline), at the model's price.

**Positions before the window** (``initial``): ``adopt`` copies them as if opened at the first
price seen (the window's start online, the leader's first fill in the coin offline);
``ignore`` leaves a coin the leader held at the start alone until that position is closed (or
flipped) and then copies it as usual. Either way the leader's scaled PnL holds them from the
start, so what adopting or ignoring cost shows in the gap's ``entry`` part.

**Reconciliation.** The daemon re-decides every coin each ``tracking.reconcile_interval_s``; a
decision there changes something only when the account is off target and something changed
since. Here a coin is re-decided at the next interval after an order that did not (fully) fill
or a decision without a price, at most ``RECONCILE_TRIES`` times in a row without a fill. Skips
for limits, the $10 minimum, filters and risk wait for the leader's next change (the daemon
would skip them again every interval while prices barely move).

**Risk.** The global and per-follow scopes are evaluated with the same figures the copy engine
gives the risk keeper (equity, PnL, notional, the orders' results), at most once per virtual
second, before each decision. The leader-leverage scope needs 30-day norms a backtest does not
have: it is not judged.

**Out**: the follower's equity curve beside the leader's scaled one, PnL, the
deposit-independent return and max drawdown (``portfolio_stats``, as the leaderboard measures
traders), orders and skips by reason, fees and funding, and per leader ``follow_performance``'s
gap to the leader's scaled PnL in parts that add up to it exactly.

The async shell (``fetch_history``) reads fills (``userFillsByTime``, paged), candles, funding and
— for equity sizing — the leader's account values through ``InfoClient``, so every request is
charged to the weight budget.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from functools import partial
from typing import Any, Final, Literal

from hlcopy.budget import Lane
from hlcopy.chart import PALETTE, Series, line_chart
from hlcopy.clock import VirtualClock
from hlcopy.config import FollowConfig, HlcopyConfig, RiskConfig, check_follow
from hlcopy.errors import BadInput, HlcopyError, WireError
from hlcopy.follow.copier import (
    AccountLimits,
    Decision,
    Follow,
    FollowerView,
    LeaderView,
    Market,
    SkipReason,
    attribute_fill,
    decide,
)
from hlcopy.follow.executor import (
    DEFAULT_TAKER_FEE_RATE,
    NO_MATCH,
    REDUCE_ONLY_REFUSED,
    reduce_only_size,
)
from hlcopy.follow.fills import PaperAccount, gross_notional, simulate_ioc
from hlcopy.follow.follows import to_core
from hlcopy.follow.performance import (
    GAP_PARTS,
    CopyRecord,
    FollowLedger,
    FundingRecord,
    IdealSizing,
    LeaderStart,
    LeaderTrade,
    Part,
    Performance,
    TransferRecord,
    chained,
    follow_performance,
)
from hlcopy.follow.risk import (
    OrderResult,
    RiskEvent,
    RiskInputs,
    RiskLimits,
    RiskState,
    TradingState,
    evaluate,
    result_of,
)
from hlcopy.hl import MIN_NOTIONAL, InfoClient, read_fills
from hlcopy.model import (
    Asset,
    BookLevel,
    Candle,
    Fill,
    LeaderFill,
    OrderIntent,
    OrderOutcome,
    OutcomeStatus,
    PortfolioPeriod,
)
from hlcopy.record import record
from hlcopy.scout.analytics import is_perp, portfolio_stats

ZERO: Final = Decimal(0)
BPS: Final = Decimal(10_000)
MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
GLOBAL: Final = "global"
#: Re-decisions of a coin left off target, in a row without a fill, before waiting for the
#: leader's next change (a daemon would go on every interval; a backtest need not).
RECONCILE_TRIES: Final = 10
#: Skips a reconciliation may undo before the leader's next change (see the module docstring).
RETRY_REASONS: Final = frozenset({SkipReason.NO_PRICE})
#: The curve: about this many points over the window, at least ``SAMPLE_MS`` apart.
CURVE_POINTS: Final = 2_000
SAMPLE_MS: Final = 10_000
#: Points of the curve the return and drawdown are measured on, at most (its extremes kept).
STATS_POINTS: Final = 2_000
#: Events fired between checks for cancellation and progress.
SLICE: Final = 2_000
#: The most candles one ``candleSnapshot`` answer holds, and the weight a new request costs
#: in candles (20 base weight = 1,200 candles at 1 per 60): a gap shorter than that between
#: two ranges is cheaper fetched than skipped.
CANDLES_PER_REQUEST: Final = 5_000
MERGE_GAP_MINUTES: Final = 1_200
MAX_FILL_PAGES: Final = 200
MAX_ADDRESSES: Final = 10
MAX_SWEEP_VALUES: Final = 8
#: The exchange's base taker fee, the paper executor's default, in basis points (4.5).
DEFAULT_FEE_BPS: Final = (DEFAULT_TAKER_FEE_RATE * BPS).normalize()
_EXACT: Final = Context(prec=120)

Initial = Literal["adopt", "ignore"]
Source = Literal["fills", "candles"]


class Cancelled(HlcopyError):
    """The backtest was cancelled (``DELETE`` over the API, Ctrl-C)."""


# -- options ------------------------------------------------------------------------------------

#: Keys a sweep may vary (each value is checked as the option itself is).
SWEEP_KEYS: Final = (
    "ratio",
    "slippage_bps",
    "latency_ms",
    "fee_bps",
    "delay_ms",
    "equity_usd",
    "fixed_notional_usd",
    "ioc_slippage_bps",
)
#: The backtest's own keys (the fill model and the account); every other key is the follow's.
MODEL_KEYS: Final = frozenset(
    {"latency_ms", "slippage_bps", "fee_bps", "equity_usd", "initial", "min_notional", "risk"}
)
#: Follow keys a backtest cannot use (they belong to a running daemon).
_NOT_FOR_BACKTESTS: Final = frozenset({"protective_stop_pct", "priority", "enabled"})


@record
class Options:
    """One backtest's rules. ``follows``: one validated follow per address (the TOML's rules;
    its ``slippage_bps`` is the IOC limit's distance from the mid, called ``ioc_slippage_bps``
    here); the fill model's ``slippage_bps`` is how much worse than the model's price an order
    fills. ``risk``: the account's limits and breakers (None: none)."""

    follows: tuple[FollowConfig, ...]
    latency_ms: int = 200
    slippage_bps: Decimal = Decimal(2)
    fee_bps: Decimal = DEFAULT_FEE_BPS
    equity_usd: Decimal = Decimal(10_000)
    initial: Initial = "adopt"
    min_notional: bool = True
    risk: RiskConfig | None = field(default_factory=RiskConfig)
    reconcile_interval_s: float = 30.0
    label: str = ""

    @property
    def template(self) -> FollowConfig:
        return self.follows[0]

    @property
    def delay_ms(self) -> int:
        return max(f.delay_ms for f in self.follows)

    def describe(self) -> str:
        """One line of the rules, for the table's header."""
        f = self.template
        if f.sizing == "fixed_notional":
            size = f"fixed {f.fixed_notional_usd} USD"
        elif f.sizing == "equity":
            size = f"equity x {f.ratio}"
        else:
            size = f"ratio {f.ratio}"
        parts = [
            f.mode,
            size,
            f"latency {self.latency_ms} ms",
            f"slippage {self.slippage_bps} bps",
            f"fee {self.fee_bps} bps",
            f"IOC cap {f.slippage_bps} bps",
            "min notional " + (f.min_notional_policy if self.min_notional else "off"),
            f"initial {self.initial}",
            f"equity {self.equity_usd} USD",
            "risk " + ("on" if self.risk is not None else "off"),
        ]
        if f.delay_ms:
            parts.insert(3, f"delay {f.delay_ms} ms")
        return ", ".join(parts)


def _problem(key: str, message: str) -> BadInput:
    return BadInput(f"{key}: {message}")


def _decimal(key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _problem(key, "must be a number")
    try:
        out = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise _problem(key, f"must be a number, got {str(value)[:40]!r}") from None
    if not out.is_finite():
        raise _problem(key, "must be a finite number")
    return out


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(key, "must be a whole number")
    if not low <= value <= high:
        raise _problem(key, f"must be between {low} and {high}")
    return value


def build_options(
    addresses: Sequence[str],
    given: Mapping[str, Any],
    config: HlcopyConfig | None = None,
    since_ms: int = 0,
) -> Options:
    """The rules from ``given`` (the CLI's options or the API's body, by key) over ``config``:
    a ``[[follow]]`` of an address there is that address's starting point, ``[risk]`` the
    account's and ``account.paper_equity_usd`` its equity. Follow keys are validated exactly as
    the TOML's (``check_follow``); BadInput names the first bad key."""
    cfg = config or HlcopyConfig()
    model = {k: v for k, v in given.items() if k in MODEL_KEYS and v is not None}
    follow_keys = {
        ("slippage_bps" if k == "ioc_slippage_bps" else k): v
        for k, v in given.items()
        if k not in MODEL_KEYS and v is not None
    }
    for key in sorted(follow_keys):
        if key in _NOT_FOR_BACKTESTS or key in ("leader", "name"):
            raise _problem(key, "not a backtest option")
    follows = []
    for address in addresses:
        base: dict[str, Any] = {}
        for f in cfg.follow:
            if f.leader == address:
                base = f.model_dump(mode="python", exclude_unset=True)
                break
        for key in (*_NOT_FOR_BACKTESTS, "name"):
            base.pop(key, None)
        body = {**base, **follow_keys, "leader": address}
        follow, problems = check_follow(body)
        if follow is None:
            key, message = problems[0]
            raise _problem("ioc_slippage_bps" if key == "slippage_bps" else key, message)
        follows.append(follow)
    if not follows:
        raise BadInput("no address to backtest")
    options = Options(
        follows=tuple(follows),
        equity_usd=cfg.account.paper_equity_usd,
        risk=cfg.risk,
        reconcile_interval_s=cfg.tracking.reconcile_interval_s,
    )
    if "latency_ms" in model:
        options = replace(
            options, latency_ms=_integer("latency_ms", model["latency_ms"], 0, 600_000)
        )
    if "slippage_bps" in model:
        bps = _decimal("slippage_bps", model["slippage_bps"])
        if not ZERO <= bps < BPS:
            raise _problem("slippage_bps", "must be at least 0 and under 10000")
        options = replace(options, slippage_bps=bps)
    if "fee_bps" in model:
        fee = _decimal("fee_bps", model["fee_bps"])
        if not Decimal(-100) <= fee <= Decimal(100):
            raise _problem("fee_bps", "must be between -100 and 100")
        options = replace(options, fee_bps=fee)
    if "equity_usd" in model:
        equity = _decimal("equity_usd", model["equity_usd"])
        if not ZERO < equity <= Decimal(10) ** 12:
            raise _problem("equity_usd", "must be more than 0 and at most 1e12")
        options = replace(options, equity_usd=equity)
    if "initial" in model:
        if model["initial"] not in ("adopt", "ignore"):
            raise _problem("initial", 'must be "adopt" or "ignore"')
        options = replace(options, initial=model["initial"])
    if "min_notional" in model:
        if not isinstance(model["min_notional"], bool):
            raise _problem("min_notional", "must be true or false")
        options = replace(options, min_notional=model["min_notional"])
    if "risk" in model:
        if not isinstance(model["risk"], bool):
            raise _problem("risk", "must be true or false")
        options = replace(options, risk=cfg.risk if model["risk"] else None)
    return options


def parse_sweep(text: str) -> tuple[str, tuple[str, ...]]:
    """``key=v1,v2,...`` for ``--sweep`` (the values are checked when applied)."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in SWEEP_KEYS:
        raise BadInput(f"--sweep: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}")
    picked = tuple(v.strip() for v in values.split(",") if v.strip())
    if not 1 <= len(picked) <= MAX_SWEEP_VALUES:
        raise BadInput(f"--sweep: give 1 to {MAX_SWEEP_VALUES} values for {key}")
    return key, picked


def sweep_variants(
    base: Options,
    key: str,
    values: Sequence[Any],
    addresses: Sequence[str],
    given: Mapping[str, Any],
    config: HlcopyConfig | None,
    since_ms: int = 0,
) -> list[Options]:
    """One ``Options`` per value of ``key`` (the rest as ``base``), each labelled."""
    out = []
    for value in values:
        options = build_options(addresses, {**given, key: value}, config, since_ms)
        out.append(replace(options, label=f"{key}={value}"))
    return out or [base]


# -- the data ------------------------------------------------------------------------------------


@record
class LeaderHistory:
    """One address's fills in the window, oldest first."""

    address: str
    fills: tuple[Fill, ...]


class PricePath:
    """A coin's price over time from samples: straight lines between them, flat beyond."""

    __slots__ = ("pxs", "times")

    def __init__(self, points: Iterable[tuple[int, Decimal]]) -> None:
        pts = sorted(points, key=lambda p: p[0])
        self.times = [t for t, _ in pts]
        self.pxs = [p for _, p in pts]

    def __len__(self) -> int:
        return len(self.times)

    def at(self, t: int) -> Decimal | None:
        """The price at ``t`` (interpolated; the nearest sample outside the samples)."""
        times = self.times
        if not times:
            return None
        i = bisect.bisect_right(times, t)
        if i == 0:
            return self.pxs[0]
        if i == len(times):
            return self.pxs[-1]
        t0, t1 = times[i - 1], times[i]
        p0, p1 = self.pxs[i - 1], self.pxs[i]
        if t == t0 or p0 == p1:
            return p0
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    def last(self, t: int) -> Decimal | None:
        """The latest sample at or before ``t`` (None before the first)."""
        i = bisect.bisect_right(self.times, t)
        return self.pxs[i - 1] if i else None


@record
class MarketData:
    """What the fill model knows besides the leaders' fills. ``paths`` empty: offline, the
    leaders' own fills are the prices. ``funding``: coin -> hour -> rate. ``leader_equity``:
    address -> (time, account value) samples (equity sizing)."""

    assets: Mapping[str, Asset]
    paths: Mapping[str, PricePath] = field(default_factory=dict)
    funding: Mapping[str, Mapping[int, Decimal]] = field(default_factory=dict)
    leader_equity: Mapping[str, Sequence[tuple[int, Decimal]]] = field(default_factory=dict)
    source: Source = "fills"


def candle_points(candles: Iterable[Candle]) -> list[tuple[int, Decimal]]:
    """A candle is its open at its start and its close at its end."""
    out: list[tuple[int, Decimal]] = []
    for c in candles:
        out.append((c.open_ms, c.open))
        out.append((c.close_ms, c.close))
    return out


def price_paths(
    minute: Mapping[str, Sequence[Candle]], hour: Mapping[str, Sequence[Candle]]
) -> dict[str, PricePath]:
    """One path per coin: 1-minute candles where fetched, 1-hour candles in between."""
    out: dict[str, PricePath] = {}
    for coin in sorted(set(minute) | set(hour)):
        fine = sorted(minute.get(coin, ()), key=lambda c: c.open_ms)
        spans = [(c.open_ms, c.close_ms) for c in fine]
        starts = [s for s, _ in spans]
        coarse = []
        for c in hour.get(coin, ()):
            i = bisect.bisect_right(starts, c.close_ms)
            if i and spans[i - 1][1] >= c.open_ms:
                continue  # minutes cover (part of) this hour: they are finer
            coarse.append(c)
        out[coin] = PricePath(candle_points(fine) + candle_points(coarse))
    return out


def infer_assets(fills: Iterable[Fill]) -> dict[str, Asset]:
    """Offline: each coin's lot from the sizes the exchange printed (sizes and start positions
    carry the coin's szDecimals), an id by name order. A lower bound of the true szDecimals
    when the leader never traded the smallest lot, which only coarsens scaled sizes."""
    decimals: dict[str, int] = {}
    for f in fills:
        for value in (f.sz, f.start_position):
            if value is None:
                continue
            exponent = value.as_tuple().exponent
            places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
            decimals[f.coin] = max(decimals.get(f.coin, 0), places)
    return {
        coin: Asset(coin, i, min(decimals[coin], 6), 50) for i, coin in enumerate(sorted(decimals))
    }


@record
class _Group:
    """One leader's change in one coin in one millisecond."""

    leader: str
    coin: str
    time_ms: int
    trades: tuple[LeaderTrade, ...]  # in the order they happened
    start: Decimal
    end: Decimal
    px: Decimal
    index: int  # the coin's n-th group of this leader

    @property
    def side(self) -> bool | None:
        """True (False) when every fill bought (sold), None for a group that did both."""
        buys = {t.is_buy for t in self.trades}
        return next(iter(buys)) if len(buys) == 1 else None


@record
class Prepared:
    """The leaders' fills as the engine uses them."""

    groups: tuple[_Group, ...]
    trades: Mapping[str, tuple[LeaderTrade, ...]]
    initial: Mapping[tuple[str, str], Decimal]
    first_px: Mapping[str, Decimal]  # per coin: the first group's price, any leader's
    breaks: tuple[tuple[str, str, int, int], ...]  # (leader, coin, time, group index)
    self_trades: int
    fills: int


def _delta(t: LeaderTrade) -> Decimal:
    return t.sz if t.is_buy else -t.sz


def group_price(trades: Sequence[LeaderTrade]) -> Decimal:
    """The group's net price (see the module docstring)."""
    if len(trades) == 1:
        return trades[0].px
    net = sum((_delta(t) for t in trades), ZERO)
    if net != 0:
        p = sum((_delta(t) * t.px for t in trades), ZERO) / net
        lo = min(t.px for t in trades)
        hi = max(t.px for t in trades)
        if lo / 2 <= p <= hi * 2:
            return p
        side = [t for t in trades if (t.is_buy) == (net > 0)]
    else:
        side = list(trades)
    size = sum((t.sz for t in side), ZERO)
    return sum((t.px * t.sz for t in side), ZERO) / size


def _chains(run: Sequence[LeaderTrade], head: Decimal) -> bool:
    """Whether ``run``, as given, starts at ``head`` and each fill where the one before left."""
    szi = head
    for t in run:
        if t.start_position != szi:
            return False
        szi += _delta(t)
    return True


def _without_self_trades(run: list[LeaderTrade], fills: Sequence[Fill]) -> list[LeaderTrade]:
    """Drop both sides of each self-trade (same start, size, price and trade; opposite sides):
    together they move nothing."""
    keyed = []
    for t, f in zip(run, fills, strict=True):
        keyed.append((t, (t.start_position, t.sz, t.px, f.tid if f.tid is not None else f.hash)))
    waiting: dict[tuple[Any, ...], list[int]] = {}
    drop: set[int] = set()
    for i, (t, key) in enumerate(keyed):
        if t.start_position is None:
            continue
        twin = waiting.get((*key, not t.is_buy))
        if twin:
            drop.add(twin.pop(0))
            drop.add(i)
        else:
            waiting.setdefault((*key, t.is_buy), []).append(i)
    return [t for i, (t, _) in enumerate(keyed) if i not in drop]


def prepare(leaders: Sequence[LeaderHistory], since_ms: int, until_ms: int) -> Prepared:
    """Group, chain and price the leaders' perp fills in ``[since_ms, until_ms]``."""
    groups: list[_Group] = []
    trades: dict[str, tuple[LeaderTrade, ...]] = {}
    initial: dict[tuple[str, str], Decimal] = {}
    breaks: list[tuple[str, str, int, int]] = []
    self_trades = 0
    count = 0
    for n, leader in enumerate(leaders):
        by_coin: dict[str, list[tuple[LeaderTrade, Fill]]] = defaultdict(list)
        for i, f in enumerate(leader.fills):
            if not is_perp(f.coin) or not since_ms <= f.time_ms <= until_ms:
                continue
            count += 1
            # Old fills carry no tid: one from the position in the file, unique across leaders.
            tid = f.tid if f.tid is not None else -(n * 10**9 + i + 1)
            t = LeaderTrade(tid, f.coin, f.side == "B", f.px, f.sz, f.time_ms, f.start_position)
            by_coin[f.coin].append((t, f))
        mine: list[LeaderTrade] = []
        for coin in sorted(by_coin):
            items = by_coin[coin]
            running: Decimal | None = None
            index = 0
            i = 0
            while i < len(items):
                j = i
                while j < len(items) and items[j][1].time_ms == items[i][1].time_ms:
                    j += 1
                raw = [t for t, _ in items[i:j]]
                one_side = all(t.is_buy == raw[0].is_buy for t in raw)
                if one_side:  # no self-trade: it needs both sides
                    run = raw
                else:
                    run = _without_self_trades(raw, [f for _, f in items[i:j]])
                    self_trades += len(raw) - len(run)
                t_ms = items[i][1].time_ms
                i = j
                if not run:
                    continue
                starts = [t.start_position for t in run if t.start_position is not None]
                if running is not None and running in starts:
                    head = running
                else:
                    if running is not None and starts:
                        breaks.append((leader.address, coin, t_ms, index))
                    ends = {s + _delta(t) for t in run if (s := t.start_position) is not None}
                    heads = [s for s in starts if s not in ends] or starts
                    head = heads[0] if heads else (running if running is not None else ZERO)
                if len(run) == 1:
                    ordered = run
                    end = head + _delta(run[0])
                elif one_side and _chains(run, head):
                    # One side moves the position one way: the chain is unique, and this is it.
                    ordered = run
                    end = head + sum((_delta(t) for t in ordered), ZERO)
                else:
                    ordered = chained(sorted(run, key=lambda t: t.tid), head)
                    end = head + sum((_delta(t) for t in ordered), ZERO)
                px = group_price(ordered)
                if index == 0:
                    initial[(leader.address, coin)] = head
                groups.append(
                    _Group(leader.address, coin, t_ms, tuple(ordered), head, end, px, index)
                )
                mine.extend(ordered)
                running = end
                index += 1
        trades[leader.address] = tuple(mine)
    groups.sort(key=lambda g: (g.time_ms, g.leader, g.coin))
    first_px: dict[str, Decimal] = {}
    for g in groups:
        first_px.setdefault(g.coin, g.px)
    return Prepared(tuple(groups), trades, initial, first_px, tuple(breaks), self_trades, count)


def check_one_account(address: str, prepared: Prepared) -> None:
    """Fills of one account chain: every millisecond of a coin starts where the one before it
    left the position. The first millisecond may be cut by a page boundary (its other fills
    before the window): a break right after it is allowed, any later one is not."""
    for leader, coin, t_ms, index in prepared.breaks:
        if leader == address and index >= 2:
            when = datetime.fromtimestamp(t_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            raise BadInput(
                f"the fills are not one account's: {coin} at {when} UTC starts at a position "
                "the fills before it do not leave (fills of several users, or a gap)"
            )


# -- results -------------------------------------------------------------------------------------


@record
class OurFill:
    """One of the follower's paper fills, with the fields a real fill has."""

    time_ms: int
    coin: str
    is_buy: bool
    sz: Decimal
    px: Decimal
    fee: Decimal
    closed_pnl: Decimal
    start_position: Decimal
    dir: str
    cloid: str
    leader: str | None
    leader_tid: int | None


@record
class CurvePoint:
    """The follower's PnL and the leaders' scaled PnL (summed over the follows) at a time."""

    time_ms: int
    ours: Decimal
    leader_scaled: Decimal


@record
class LeaderResult:
    """One address: its follow's performance and what happened to its copies."""

    address: str
    performance: Performance
    orders: int
    filled: int
    unfilled: int
    skips: Mapping[str, int]
    fills: int


@record
class BacktestResult:
    options: Options
    since_ms: int
    until_ms: int
    source: Source
    equity_start: Decimal
    equity_end: Decimal
    pnl: Decimal
    realized: Decimal
    fees: Decimal
    funding: Decimal
    return_: float
    max_drawdown: float
    leader_scaled: Decimal
    leader_pnl: Decimal
    leader_return: float
    leader_max_drawdown: float
    gap: Decimal
    parts: Mapping[Part, Decimal]
    orders: int
    filled: int
    unfilled: int
    in_flight: int
    skips: Mapping[str, int]
    transfers: int
    leaders: tuple[LeaderResult, ...]
    curve: tuple[CurvePoint, ...]
    fills: tuple[OurFill, ...]
    risk_events: tuple[RiskEvent, ...]
    positions: Mapping[str, Decimal]
    leader_fills: int
    self_trades: int
    chain_breaks: int
    events: int


# -- the engine ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Book:
    """A leader in a coin as the engine knows it."""

    szi: Decimal
    last_change_ms: int | None = None
    hidden: bool = False  # initial = "ignore": a position from before the window, not copied


@dataclass(slots=True)
class _Levels:
    """What a copy of one leader group of several fills meets with no latency: the leader's
    own fills, in proportion to the copy's size, then more at the group's worst price. The legs
    of one decision (a flip's close and open) take from it in turn, so a copy at ratio 1
    repeats the leader's fills price for price. (A group of one fill is its price: one level.)"""

    pxs: list[Decimal]
    left: list[Decimal]
    worst: Decimal


@record
class _Order:
    intent: OrderIntent
    trigger: LeaderFill | None
    anchor: _Group | None
    levels: _Levels | None = None


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def _take(
    levels: _Levels,
    book: Sequence[BookLevel],
    which: Sequence[int],
    is_buy: bool,
    filled: Decimal,
) -> None:
    """Deplete ``levels`` by a fill of ``filled`` against ``book`` (``which`` maps its levels
    to theirs): an IOC takes the best prices first, as ``simulate_ioc`` walks them."""
    order = sorted(range(len(book)), key=lambda i: book[i].px, reverse=not is_buy)
    rest = filled
    for i in order:
        if rest <= 0:
            break
        take = min(book[i].sz, rest)
        rest -= take
        if which[i] >= 0:
            levels.left[which[i]] -= take


def _follow_scope(follow_id: str) -> str:
    return f"follow:{follow_id}"


class _Engine:
    """One backtest on a virtual clock (see the module docstring)."""

    def __init__(
        self,
        prepared: Prepared,
        market: MarketData,
        options: Options,
        since_ms: int,
        until_ms: int,
    ) -> None:
        self.prepared = prepared
        self.market = market
        self.options = options
        self.since_ms = since_ms
        self.until_ms = until_ms
        self.clock = VirtualClock(epoch_ms=since_ms)
        self.follows: list[Follow] = [to_core(f, since_ms, False) for f in options.follows]
        self.specs = {f.id: f for f in options.follows}
        self.by_leader = {f.leader: f for f in self.follows}
        self.equity0 = options.equity_usd
        self.fee_rate = options.fee_bps / BPS
        self.slip = options.slippage_bps / BPS
        self.min_notional = MIN_NOTIONAL if options.min_notional else ZERO
        risk = options.risk
        if risk is None:
            self.limits = AccountLimits()
            self.global_limits: RiskLimits | None = None
        else:
            self.limits = AccountLimits(
                max_coin_notional_usd=risk.max_position_notional_usd,
                max_total_notional_usd=risk.max_total_notional_usd,
                max_leverage=risk.max_leverage,
                max_order_notional_usd=risk.max_order_notional_usd,
            )
            self.global_limits = RiskLimits(
                daily_loss_limit_usd=risk.max_daily_loss_usd,
                max_drawdown_pct=risk.max_drawdown_pct,
                max_notional_usd=risk.max_total_notional_usd,
                max_leverage=risk.max_leverage,
                max_rejects_in_row=risk.max_consecutive_rejects,
                max_errors_per_window=risk.max_errors_per_minute,
            )
        self.follow_limits = {
            f.id: RiskLimits(
                daily_loss_limit_usd=f.daily_loss_limit_usd,
                max_drawdown_pct=f.max_drawdown_pct,
                max_rejects_in_row=None,
                max_errors_per_window=None,
            )
            for f in options.follows
            if f.daily_loss_limit_usd is not None or f.max_drawdown_pct is not None
        }
        self.account = PaperAccount(cash=options.equity_usd)
        self.attributed: dict[str, dict[str, Decimal]] = {}
        self.in_flight: dict[str, _Order] = {}
        self.ledger = FollowLedger()
        self.marks: dict[str, Decimal] = {}
        self.books: dict[tuple[str, str], _Book] = {}
        for (leader, coin), szi in prepared.initial.items():
            hidden = options.initial == "ignore" and szi != 0
            self.books[(leader, coin)] = _Book(szi, None, hidden)
        self.risk: dict[str, RiskState] = {GLOBAL: RiskState(GLOBAL)}
        for fid in self.follow_limits:
            self.risk[_follow_scope(fid)] = RiskState(_follow_scope(fid))
        self.results: defaultdict[str, list[OrderResult]] = defaultdict(list)
        self.last_eval_s = -math.inf
        self.risk_events: list[RiskEvent] = []
        self.records: list[CopyRecord] = []
        self.transfers: list[TransferRecord] = []
        self.funding: list[FundingRecord] = []
        self.our_fills: list[OurFill] = []
        self.epoch = 0
        self.reconciling: set[str] = set()
        self.tries: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.skips: Counter[str] = Counter()
        self.leader_counts: dict[str, Counter[str]] = {f.id: Counter() for f in self.follows}
        self.leader_skips: dict[str, Counter[str]] = {f.id: Counter() for f in self.follows}
        # The leaders' scaled positions and cash, for the chart (follow_performance's ideal).
        self.sizing = {f.id: self._sizing(f) for f in options.follows}
        self.ideal: dict[tuple[str, str], Decimal] = {}
        self.ideal_leader: dict[tuple[str, str], Decimal] = {}
        self.ideal_cash: dict[str, Decimal] = {f.id: ZERO for f in self.follows}
        self.p0: dict[tuple[str, str], Decimal] = {}
        self.curve: list[CurvePoint] = []
        self.fill_paths: dict[str, PricePath | None] = {}
        self.grid_ms = max(SAMPLE_MS, (until_ms - since_ms) // CURVE_POINTS)
        self.flush_armed = False
        self.priced: set[str] = set()  # coins whose first price has been seen
        self.groups_done = 0
        self.events = 0

    # -- setup ---------------------------------------------------------------------------------

    def _leader_equity(self, leader: str, t: int) -> Decimal | None:
        samples = self.market.leader_equity.get(leader)
        if not samples:
            return None
        i = bisect.bisect_right([s for s, _ in samples], t)
        return samples[i - 1][1] if i else samples[0][1]

    def _sizing(self, f: FollowConfig) -> IdealSizing:
        equity_ratio = None
        if f.sizing == "equity":
            theirs = self._leader_equity(f.leader, self.since_ms)
            if theirs is not None and theirs > 0:
                equity_ratio = self.options.equity_usd / theirs
        return IdealSizing(f.mode, f.sizing, f.ratio, f.fixed_notional_usd, equity_ratio)

    def _start_price(self, coin: str) -> Decimal:
        """The first price seen of ``coin``: the window's start online, the leaders' first
        fill in it offline."""
        path = self.market.paths.get(coin)
        if path is not None and len(path):
            px = path.at(self.since_ms)
            if px is not None:
                return px
        return self.prepared.first_px[coin]

    def _at(self, time_ms: int, callback: Callable[[], None]) -> None:
        self.clock.call_later((time_ms - self.clock.time_ms()) / 1000, callback)

    # -- running ---------------------------------------------------------------------------------

    def run(
        self,
        cancelled: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BacktestResult:
        online = self.market.source == "candles"
        for (leader, coin), szi in sorted(self.prepared.initial.items()):
            p0 = self._start_price(coin)
            self.p0[(leader, coin)] = p0
            f = self.by_leader.get(leader)
            if f is None:
                continue
            with localcontext(_EXACT):
                t0 = self.sizing[f.id].target(ZERO, szi, p0)
                self.ideal[(f.id, coin)] = t0
                self.ideal_leader[(f.id, coin)] = szi
                self.ideal_cash[f.id] -= t0 * p0
        if online and self.options.initial == "adopt":
            # The first price seen is the window's: adopt there.
            adopt = sorted({c for (_, c), szi in self.prepared.initial.items() if szi != 0})
            for coin in adopt:
                self._at(self.since_ms, partial(self._adopt, coin))
        for g in self.prepared.groups:
            self._at(g.time_ms, partial(self._on_group, g))
        if self.market.funding:
            first = -(-self.since_ms // HOUR_MS) * HOUR_MS
            if first <= self.until_ms:
                self._at(first, partial(self._fund, first))
        self._sample()
        end_s = (self.until_ms - self.since_ms) / 1000
        total = len(self.prepared.groups)
        while True:
            fired = self.clock.run_due(end_s, max_timers=SLICE)
            self.events += fired
            if progress is not None:
                progress(self.groups_done, total)
            if cancelled is not None and cancelled():
                raise Cancelled("the backtest was cancelled")
            if fired < SLICE:
                break
        return self._result()

    # -- the leaders' changes ------------------------------------------------------------------

    def _view(self, leader: str, coin: str, now: int) -> LeaderView:
        book = self.books.get((leader, coin))
        equity = self._leader_equity(leader, now) if self.market.leader_equity else None
        if book is None:
            return LeaderView(ZERO, True, None, equity, None)
        szi = ZERO if book.hidden else book.szi
        return LeaderView(szi, True, None, equity, book.last_change_ms)

    def _on_group(self, g: _Group) -> None:
        self.groups_done += 1
        key = (g.leader, g.coin)
        book = self.books.setdefault(key, _Book(g.start))
        before = ZERO if book.hidden else book.szi
        book.szi = g.end
        book.last_change_ms = g.time_ms
        if book.hidden and (g.end == 0 or _sign(g.end) != _sign(g.start)):
            book.hidden = False  # the position from before the window is closed (or flipped)
        self.marks[g.coin] = g.px
        if g.coin not in self.priced:
            self._adopt_books(g.coin)
        f = self.by_leader.get(g.leader)
        if f is not None:
            self._ideal(f.id, g)
        after = ZERO if book.hidden else book.szi
        if f is not None and after != before:
            first = g.trades[0]
            trigger = LeaderFill(
                g.leader,
                g.coin,
                "B" if first.is_buy else "A",
                first.sz,
                first.px,
                g.time_ms,
                first.tid,
                "rest",
                first.start_position,
            )
            self.tries[g.coin] = 0
            delay = self.specs[f.id].delay_ms
            if delay:
                self._at(g.time_ms + delay, partial(self._decide, g.coin, trigger, g))
            else:
                self._decide(g.coin, trigger, g)
        if not self.in_flight:  # else the fill samples the curve
            self._sample()

    def _ideal(self, follow_id: str, g: _Group) -> None:
        """The leader's scaled position after each of its fills (follow_performance's ideal:
        every change of the target at the leader's own price)."""
        key = (follow_id, g.coin)
        sizing = self.sizing[follow_id]
        if sizing.scale is None and sizing.sizing != "fixed_notional":
            return
        # For the chart: the figures come from follow_performance, exactly.
        target = self.ideal.get(key, ZERO)
        szi = self.ideal_leader.get(key, g.start)
        cash = self.ideal_cash[follow_id]
        for t in g.trades:
            if t.start_position is not None and t.start_position != szi:
                new = sizing.target(target, t.start_position, t.px)
                cash -= (new - target) * t.px
                target, szi = new, t.start_position
            szi += _delta(t)
            new = sizing.target(target, szi, t.px)
            cash -= (new - target) * t.px
            target = new
        self.ideal[key] = target
        self.ideal_leader[key] = szi
        self.ideal_cash[follow_id] = cash

    def _adopt_books(self, coin: str) -> None:
        """At the first price seen of ``coin``, initial = adopt: the leaders' positions from
        before the window count as changed now (so the copier takes them, entry filters
        aside), whichever leader's fill brought the price."""
        self.priced.add(coin)
        if self.options.initial != "adopt":
            return
        now = self.clock.time_ms()
        for f in self.follows:
            book = self.books.get((f.leader, coin))
            if book is not None and book.szi != 0 and book.last_change_ms is None:
                book.last_change_ms = now

    def _adopt(self, coin: str) -> None:
        """Online, initial = adopt: decide at the window's first price."""
        self._adopt_books(coin)
        self._decide(coin, None, None)

    # -- one decision --------------------------------------------------------------------------

    def _path(self, coin: str) -> PricePath | None:
        path = self.market.paths.get(coin)
        if path is None or not len(path):
            return self._fill_path(coin)
        return path

    def _move(self, coin: str, t: int, anchor: _Group) -> Decimal | None:
        """How the model's price moved from the anchor's time to ``t`` (a factor), None when
        it did not (no latency, no model)."""
        if t == anchor.time_ms:
            return None
        path = self._path(coin)
        if path is None:
            return None
        now, then = path.at(t), path.at(anchor.time_ms)
        if now is None or then is None or then <= 0 or now == then:
            return None
        return now / then

    def _price(self, coin: str, t: int, anchor: _Group | None) -> Decimal | None:
        """The model's price of ``coin`` at ``t``; with an anchor (a leader's group), the
        group's price moved by the model's change since."""
        if anchor is not None:
            move = self._move(coin, t, anchor)
            return anchor.px if move is None else anchor.px * move
        path = self._path(coin)
        if path is not None:
            return path.at(t)
        return self.marks.get(coin)

    def _fill_path(self, coin: str) -> PricePath | None:
        """Offline: the leaders' group prices of ``coin`` (built once)."""
        if coin not in self.fill_paths:
            pts = [(g.time_ms, g.px) for g in self.prepared.groups if g.coin == coin]
            self.fill_paths[coin] = PricePath(pts) if pts else None
        return self.fill_paths[coin]

    def _equity(self) -> Decimal | None:
        try:
            return self.account.equity(self.marks)
        except ValueError:
            return None  # an open position without a price: unknown, not zero

    def _pending(self) -> dict[tuple[str, str], Decimal]:
        out: dict[tuple[str, str], Decimal] = {}
        for order in self.in_flight.values():
            intent = order.intent
            sign = 1 if intent.is_buy else -1
            for follow, share in intent.attribution:
                key = (follow, intent.coin)
                out[key] = out.get(key, ZERO) + sign * share
        return out

    def _decide(self, coin: str, trigger: LeaderFill | None, anchor: _Group | None) -> None:
        asset = self.market.assets.get(coin)
        if asset is None:
            return
        now = self.clock.time_ms()
        mid = self._price(coin, now, anchor)
        if mid is not None:
            self.marks[coin] = mid
        positions = {c: p.szi for c, p in self.account.positions.items()}
        equity = self._equity()
        self._evaluate_risk(positions, equity)
        follows: list[Follow] = []
        leaders: dict[str, LeaderView] = {}
        for f in self.follows:
            view = self._view(f.leader, coin, now)
            holds = self.attributed.get(f.id, {}).get(coin, ZERO) != 0
            triggered = trigger is not None and trigger.leader == f.leader
            if view.szi == 0 and not holds and not triggered:
                continue
            follows.append(f)
            leaders[f.leader] = view
        if not follows:
            return
        pending = self._pending()
        follower = FollowerView(
            szi=positions.get(coin, ZERO),
            attributed={f.id: self.attributed.get(f.id, {}).get(coin, ZERO) for f in follows},
            pending={f.id: pending.get((f.id, coin), ZERO) for f in follows},
            equity=equity,
            other_notional={
                f.id: gross_notional(self.attributed.get(f.id, {}), self.marks, but=coin)
                for f in follows
            },
            other_notional_total=gross_notional(positions, self.marks, but=coin),
        )
        try:
            decision = self._core(coin, asset, mid, now, follows, leaders, follower, trigger)
        except ValueError:
            # As the copy engine: a decision that cannot be made is counted, not fatal.
            self.counters["errors"] += 1
            return
        self.counters["decisions"] += 1
        self._apply(coin, trigger, anchor, decision)

    def _core(
        self,
        coin: str,
        asset: Asset,
        mid: Decimal | None,
        now: int,
        follows: Sequence[Follow],
        leaders: Mapping[str, LeaderView],
        follower: FollowerView,
        trigger: LeaderFill | None,
    ) -> Decision:
        return decide(
            follows=follows,
            leaders=leaders,
            follower=follower,
            market=Market(asset, mid),
            now_ms=now,
            risk={f.id: self._state(_follow_scope(f.id)) for f in follows},
            global_risk=self._state(GLOBAL),
            trigger=trigger,
            epoch=self.epoch,
            account_limits=self.limits,
            min_notional=self.min_notional,
        )

    def _state(self, scope: str) -> TradingState:
        state = self.risk.get(scope)
        return TradingState.ACTIVE if state is None else state.state

    def _apply(
        self,
        coin: str,
        trigger: LeaderFill | None,
        anchor: _Group | None,
        decision: Decision,
    ) -> None:
        """As the copy engine's ``_apply`` and the executor's ``transfer`` / ``record_skip`` /
        ``submit``: transfers move attribution, skips are recorded, intents go in flight."""
        now = self.clock.time_ms()
        for m in decision.transfers:
            give = self.attributed.setdefault(m.from_follow, {})
            take = self.attributed.setdefault(m.to_follow, {})
            give[m.coin] = give.get(m.coin, ZERO) - m.sz
            take[m.coin] = take.get(m.coin, ZERO) + m.sz
            for book in (give, take):
                if book[m.coin] == 0:
                    del book[m.coin]
            record = TransferRecord(m.coin, m.from_follow, m.to_follow, m.sz, m.px, now)
            self.transfers.append(record)
            if self.follow_limits:
                self.ledger.transfer(record)
        off_target = False
        for skip in decision.skips:
            follow = self.specs[skip.follow_id]
            self.skips[skip.reason.value] += 1
            self.leader_skips[skip.follow_id][skip.reason.value] += 1
            off_target = off_target or skip.reason in RETRY_REASONS
            self.records.append(
                CopyRecord(
                    coin=coin,
                    status="skipped",
                    time_ms=now,
                    attribution=((skip.follow_id, abs(skip.szi)),),
                    is_buy=None if skip.szi == 0 else skip.szi > 0,
                    sz=abs(skip.szi),
                    leader=follow.leader,
                    leader_tid=None if trigger is None else trigger.tid,
                    skip_reason=skip.reason.value,
                )
            )
        levels = None
        if anchor is not None and decision.intents and len(anchor.trades) > 1:
            side = anchor.side
            if side is not None and all(i.is_buy == side for i in decision.intents):
                scale = sum((i.sz for i in decision.intents), ZERO) / sum(
                    (t.sz for t in anchor.trades), ZERO
                )
                pxs = [t.px for t in anchor.trades]
                levels = _Levels(
                    pxs, [t.sz * scale for t in anchor.trades], max(pxs) if side else min(pxs)
                )
        for intent in decision.intents:
            self.counters["orders"] += 1
            for fid in intent.follow_ids:
                self.leader_counts[fid]["orders"] += 1
            self.in_flight[intent.cloid] = _Order(intent, trigger, anchor, levels)
            fill = partial(self._fill, intent.cloid)
            if self.options.latency_ms:
                self._at(now + self.options.latency_ms, fill)
            else:
                fill()
        if off_target and not decision.intents:
            self._reconcile_later(coin)

    # -- the fill model ------------------------------------------------------------------------

    def _fill(self, cloid: str) -> None:
        """As ``PaperVenue.execute`` and the executor's booking: the reduce-only cut, one IOC
        against the model's price (worse by the slippage), the fee, the account and the
        attribution, the copy row, the outcome for risk."""
        order = self.in_flight[cloid]
        intent = order.intent
        coin = intent.coin
        now = self.clock.time_ms()
        error: str | None = None
        filled = ZERO
        sz = reduce_only_size(intent, self.account.position(coin))
        anchor = order.anchor
        move = None if anchor is None else self._move(coin, now, anchor)
        if anchor is None:
            px = self._price(coin, now, None)
        else:
            px = anchor.px if move is None else anchor.px * move
        if sz is None:
            error = REDUCE_ONLY_REFUSED
        elif px is None:
            error = f"no price for {coin}"
        else:
            self.marks[coin] = px
            book, which = self._book_for(order, px, sz, move)
            paper = simulate_ioc(book, intent.is_buy, sz, intent.limit_px, self.fee_rate)
            if paper.filled_sz == 0 or paper.avg_px is None:
                error = NO_MATCH
            else:
                filled = paper.filled_sz
                if order.levels is not None:
                    _take(order.levels, book, which, intent.is_buy, filled)
                self._book(order, paper.filled_sz, paper.avg_px, paper.fee, now)
        del self.in_flight[cloid]
        if error is not None:
            self.counters["unfilled"] += 1
            for fid in intent.follow_ids:
                self.leader_counts[fid]["unfilled"] += 1
            self.records.append(
                CopyRecord(
                    coin=coin,
                    status="rejected",
                    time_ms=now,
                    attribution=intent.attribution,
                    is_buy=intent.is_buy,
                    sz=intent.sz,
                    leader=intent.leader,
                    leader_tid=None if order.trigger is None else order.trigger.tid,
                    reason=intent.reason,
                )
            )
            self._outcome(intent, OrderOutcome(cloid, "rejected", error=error, time_ms=now))
        if filled < intent.sz:
            self._reconcile_later(coin)
        else:
            self.tries[coin] = 0
        self._sample()

    def _book_for(
        self, order: _Order, px: Decimal, sz: Decimal, move: Decimal | None
    ) -> tuple[list[BookLevel], list[int]]:
        """The side of the book an order takes from, and which ``_Levels`` entry each level
        is (-1: none): the leader's fills still left, in the order the leader made them, as
        many as the order's size (so a flip's close takes the leader's closing fills and its
        open the rest), then more at the group's worst price; moved by the model over the
        latency. Without leader fills to take: one level at the model's price. Each worse by
        the slippage."""
        worse = 1 + self.slip if order.intent.is_buy else 1 - self.slip
        levels = order.levels
        if levels is None or order.anchor is None:
            return [BookLevel(px * worse, sz, 1)], [-1]
        factor = worse if move is None else worse * move
        book: list[BookLevel] = []
        which: list[int] = []
        need = sz
        for i, (p, left) in enumerate(zip(levels.pxs, levels.left, strict=True)):
            if need <= 0:
                break
            if left <= 0:
                continue
            take = min(left, need)
            book.append(BookLevel(p * factor, take, 1))
            which.append(i)
            need -= take
        book.append(BookLevel(levels.worst * factor, sz, 1))
        which.append(-1)
        return book, which

    def _book(
        self, order: _Order, filled: Decimal, avg_px: Decimal, fee: Decimal, now: int
    ) -> None:
        intent = order.intent
        coin = intent.coin
        booked = self.account.apply_fill(coin, intent.is_buy, filled, avg_px, fee)
        sign = 1 if intent.is_buy else -1
        szd = self.market.assets[coin].sz_decimals if coin in self.market.assets else None
        for follow, part in attribute_fill(intent.attribution, intent.sz, filled, szd):
            coins = self.attributed.setdefault(follow, {})
            szi = coins.get(coin, ZERO) + sign * part
            if szi:
                coins[coin] = szi
            else:
                coins.pop(coin, None)
            if not coins:
                self.attributed.pop(follow, None)
        self.account = booked.account
        status: OutcomeStatus = "filled" if filled == intent.sz else "partial"
        record = CopyRecord(
            coin=coin,
            status=status,
            time_ms=now,
            attribution=intent.attribution,
            is_buy=intent.is_buy,
            sz=intent.sz,
            filled_sz=filled,
            avg_px=avg_px,
            fee=fee,
            leader=intent.leader,
            leader_tid=None if order.trigger is None else order.trigger.tid,
            reason=intent.reason,
            sz_decimals=szd,
        )
        self.records.append(record)
        if self.follow_limits:  # the ledger only feeds the follows' own risk limits
            self.ledger.settled(record)
        self.counters["filled"] += 1
        for fid in intent.follow_ids:
            self.leader_counts[fid]["filled"] += 1
        self.our_fills.append(
            OurFill(
                now,
                coin,
                intent.is_buy,
                filled,
                avg_px,
                fee,
                booked.closed_pnl,
                booked.start_position,
                booked.dir,
                intent.cloid,
                intent.leader,
                None if order.trigger is None else order.trigger.tid,
            )
        )
        self._outcome(
            intent,
            OrderOutcome(intent.cloid, status, filled, avg_px, fee, time_ms=now),
        )

    def _outcome(self, intent: OrderIntent, outcome: OrderOutcome) -> None:
        result = result_of(outcome)
        self.results[GLOBAL].append(result)
        for fid in intent.follow_ids:
            if _follow_scope(fid) in self.risk:
                self.results[_follow_scope(fid)].append(result)

    # -- reconciliation, funding, risk ---------------------------------------------------------

    def _reconcile_later(self, coin: str) -> None:
        if coin in self.reconciling or self.tries[coin] >= RECONCILE_TRIES:
            return
        self.reconciling.add(coin)
        interval_ms = round(self.options.reconcile_interval_s * 1000)
        now = self.clock.time_ms()
        due = self.since_ms + ((now - self.since_ms) // interval_ms + 1) * interval_ms
        self._at(due, partial(self._reconcile, coin))

    def _reconcile(self, coin: str) -> None:
        self.reconciling.discard(coin)
        self.tries[coin] += 1
        self.epoch += 1
        self.counters["reconciles"] += 1
        self._decide(coin, None, None)

    def _fund(self, hour_ms: int) -> None:
        """As the executor's ``fund``: each open position pays or receives one hour."""
        for coin in sorted(self.account.positions):
            rate = self.market.funding.get(coin, {}).get(hour_ms)
            if rate is None:
                continue
            px = self._price(coin, hour_ms, None)
            if px is None:
                continue
            self.account, _ = self.account.apply_funding(coin, px, rate)
            record = FundingRecord(hour_ms, coin, px, rate, 1)
            self.funding.append(record)
            if self.follow_limits:
                self.ledger.fund(record)
        nxt = hour_ms + HOUR_MS
        if nxt <= self.until_ms:
            self._at(nxt, partial(self._fund, nxt))
        self._sample()

    def _evaluate_risk(self, positions: Mapping[str, Decimal], equity: Decimal | None) -> None:
        """As the risk keeper's evaluation (once a second, with the copy engine's figures:
        the account's ``positions`` and ``equity`` now)."""
        now_s = self.clock.monotonic()
        if now_s - self.last_eval_s < 1.0 and not self.results:
            return
        self.last_eval_s = now_s
        now = self.clock.time_ms()
        results = self.results
        self.results = defaultdict(list)
        if self.global_limits is not None and equity is not None:
            inputs = RiskInputs(
                self.global_limits,
                pnl=equity - self.equity0,
                equity=equity,
                notional=gross_notional(positions, self.marks),
                order_results=tuple(results.get(GLOBAL, ())),
            )
            self._step(GLOBAL, inputs, now)
        for fid, limits in self.follow_limits.items():
            figures = self.ledger.figures(fid, self.marks)
            if figures is None:
                continue
            scope = _follow_scope(fid)
            inputs = RiskInputs(
                limits,
                pnl=figures.pnl,
                equity=self.equity0 + figures.pnl,
                notional=figures.notional,
                order_results=tuple(results.get(scope, ())),
            )
            self._step(scope, inputs, now)

    def _step(self, scope: str, inputs: RiskInputs, now: int) -> None:
        state, events = evaluate(self.risk[scope], inputs, now)
        self.risk[scope] = state
        self.risk_events.extend(events)

    # -- figures -------------------------------------------------------------------------------

    def _ideal_pnl(self) -> Decimal:
        """The leaders' scaled PnL now, for the chart (the figures come from
        ``follow_performance``)."""
        total = sum(self.ideal_cash.values(), ZERO)
        for (fid, coin), target in self.ideal.items():
            if target:
                mark = self.marks.get(coin)
                if mark is None:
                    mark = self.p0.get((self.specs[fid].leader, coin), ZERO)
                total += target * mark
        return total

    def _sample(self) -> None:
        """A point of the curve, at most one per ``self.grid_ms`` of virtual time. The state
        only changes at events, so an event too close to the last point arms one timer at the
        next grid time, which records the state the burst left (the curve stays exact at its
        points)."""
        now = self.clock.time_ms()
        if self.curve and now - self.curve[-1].time_ms < self.grid_ms:
            if not self.flush_armed:
                self.flush_armed = True
                self._at(self.curve[-1].time_ms + self.grid_ms, self._flush)
            return
        self._point(now)

    def _flush(self) -> None:
        self.flush_armed = False
        self._point(self.clock.time_ms())

    def _point(self, now: int) -> None:
        equity = self._equity()
        if equity is None:
            return
        point = CurvePoint(now, equity - self.equity0, self._ideal_pnl())
        if self.curve and self.curve[-1].time_ms == now:
            self.curve[-1] = point
        else:
            self.curve.append(point)

    def _final_marks(self) -> dict[str, Decimal]:
        marks = dict(self.marks)
        for coin, path in self.market.paths.items():
            px = path.at(self.until_ms) if len(path) else None
            if px is not None:
                marks[coin] = px
        return marks

    def _result(self) -> BacktestResult:
        self.marks = self._final_marks()
        self._point(self.until_ms)
        leaders = []
        with localcontext(_EXACT):
            parts: dict[Part, Decimal] = dict.fromkeys(GAP_PARTS, ZERO)
            ours = scaled = leader_pnl = ZERO
            for f in self.options.follows:
                starts = {
                    coin: LeaderStart(szi, self.p0[(leader, coin)], self.since_ms)
                    for (leader, coin), szi in self.prepared.initial.items()
                    if leader == f.leader
                }
                perf = follow_performance(
                    follow_id=f.id,
                    leader=f.leader,
                    sizing=self.sizing[f.id],
                    copies=self.records,
                    leader_fills=self.prepared.trades.get(f.leader, ()),
                    marks=self.marks,
                    since_ms=self.since_ms,
                    until_ms=self.until_ms,
                    transfers=self.transfers,
                    funding=self.funding,
                    leader_start=starts,
                )
                for p in GAP_PARTS:
                    parts[p] += perf.parts[p]
                ours += perf.ours
                scaled += perf.leader_scaled
                leader_pnl += perf.leader_pnl
                counts = self.leader_counts[f.id]
                leaders.append(
                    LeaderResult(
                        f.leader,
                        perf,
                        counts["orders"],
                        counts["filled"],
                        counts["unfilled"],
                        dict(self.leader_skips[f.id]),
                        len(self.prepared.trades.get(f.leader, ())),
                    )
                )
            equity_end = self.account.equity(self.marks)
            pnl = equity_end - self.equity0
            gap = ours - scaled
        ours_stats = _stats(self.curve, self.equity0, lambda p: p.ours)
        leader_stats = _stats(self.curve, self.equity0, lambda p: p.leader_scaled)
        return BacktestResult(
            options=self.options,
            since_ms=self.since_ms,
            until_ms=self.until_ms,
            source=self.market.source,
            equity_start=self.equity0,
            equity_end=equity_end,
            pnl=pnl,
            realized=self.account.realized_pnl,
            fees=self.account.fees,
            funding=self.account.funding,
            return_=ours_stats[0],
            max_drawdown=ours_stats[1],
            leader_scaled=scaled,
            leader_pnl=leader_pnl,
            leader_return=leader_stats[0],
            leader_max_drawdown=leader_stats[1],
            gap=gap,
            parts=parts,
            orders=self.counters["orders"],
            filled=self.counters["filled"],
            unfilled=self.counters["unfilled"],
            in_flight=len(self.in_flight),
            skips=dict(self.skips),
            transfers=len(self.transfers),
            leaders=tuple(leaders),
            curve=tuple(self.curve),
            fills=tuple(self.our_fills),
            risk_events=tuple(self.risk_events),
            positions={c: p.szi for c, p in self.account.positions.items()},
            leader_fills=self.prepared.fills,
            self_trades=self.prepared.self_trades,
            chain_breaks=len(self.prepared.breaks),
            events=self.events,
        )


def _stats(
    curve: Sequence[CurvePoint], equity0: Decimal, pick: Callable[[CurvePoint], Decimal]
) -> tuple[float, float]:
    """(return, max drawdown) of a PnL curve on ``equity0``, as ``portfolio_stats`` measures a
    trader: chain-linked, deposit-independent."""
    if len(curve) < 2:
        return 0.0, 0.0
    curve = _extremes(curve, pick, STATS_POINTS)
    period = PortfolioPeriod(
        account_value_history=tuple((p.time_ms, equity0 + pick(p)) for p in curve),
        pnl_history=tuple((p.time_ms, pick(p)) for p in curve),
        vlm=ZERO,
    )
    stats = portfolio_stats(period)
    if stats is None:
        return 0.0, 0.0
    return stats.return_, stats.max_drawdown


def _extremes(
    curve: Sequence[CurvePoint], pick: Callable[[CurvePoint], Decimal], n: int
) -> Sequence[CurvePoint]:
    """At most about ``n`` points of ``curve``: the first, the last, and the lowest and highest
    of each stretch in their order, so the return is exact and every fall from a high to a
    later low is still there."""
    if len(curve) <= n:
        return curve
    size = -(-len(curve) // (n // 2))
    out = [curve[0]]
    for i in range(0, len(curve), size):
        part = curve[i : i + size]
        lo = min(range(len(part)), key=lambda k: pick(part[k]))
        hi = max(range(len(part)), key=lambda k: pick(part[k]))
        out.extend(part[k] for k in sorted({lo, hi}))
    out.append(curve[-1])
    return out


def run_backtest(
    leaders: Sequence[LeaderHistory],
    market: MarketData,
    options: Options,
    since_ms: int,
    until_ms: int,
    *,
    prepared: Prepared | None = None,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Replay ``leaders`` through the copy engine's parts (see the module docstring)."""
    if until_ms < since_ms:
        raise BadInput("the window ends before it starts")
    prep = prepared if prepared is not None else prepare(leaders, since_ms, until_ms)
    engine = _Engine(prep, market, options, since_ms, until_ms)
    return engine.run(cancelled, progress)


# -- output --------------------------------------------------------------------------------------


def _money(v: Decimal) -> str:
    return str(v.quantize(Decimal("0.01")))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def result_json(r: BacktestResult, *, fills: bool = False) -> dict[str, Any]:
    """JSON-safe: money as decimal strings (to the cent where it is a total), ratios as floats."""

    def money(v: Decimal) -> str:
        return _money(v)

    out: dict[str, Any] = {
        "label": r.options.label,
        "options": r.options.describe(),
        "since_ms": r.since_ms,
        "until_ms": r.until_ms,
        "source": r.source,
        "equity_start": money(r.equity_start),
        "equity_end": money(r.equity_end),
        "pnl": money(r.pnl),
        "return": round(r.return_, 6),
        "max_drawdown": round(r.max_drawdown, 6),
        "realized": money(r.realized),
        "fees": money(r.fees),
        "funding": money(r.funding),
        "leader_scaled_pnl": money(r.leader_scaled),
        "leader_pnl": money(r.leader_pnl),
        "leader_return": round(r.leader_return, 6),
        "leader_max_drawdown": round(r.leader_max_drawdown, 6),
        "gap": str(r.gap),
        "parts": {p: str(v) for p, v in r.parts.items()},
        "orders": r.orders,
        "filled": r.filled,
        "unfilled": r.unfilled,
        "in_flight_at_end": r.in_flight,
        "skips": dict(sorted(r.skips.items())),
        "transfers": r.transfers,
        "positions_end": {c: str(s) for c, s in sorted(r.positions.items())},
        "leader_fills": r.leader_fills,
        "self_trades": r.self_trades,
        "chain_breaks": r.chain_breaks,
        "risk_events": [
            {
                "scope": e.scope,
                "time_ms": e.time_ms,
                "cause": e.cause.value,
                "kind": e.kind,
                "to": e.after.value,
                "detail": e.detail,
            }
            for e in r.risk_events
        ],
        "leaders": [
            {
                "address": lr.address,
                "pnl": money(lr.performance.ours),
                "leader_scaled_pnl": money(lr.performance.leader_scaled),
                "leader_pnl": money(lr.performance.leader_pnl),
                "gap": str(lr.performance.gap),
                "parts": {p: str(v) for p, v in lr.performance.parts.items()},
                "fees": money(lr.performance.fees),
                "funding": money(lr.performance.funding),
                "orders": lr.orders,
                "filled": lr.filled,
                "unfilled": lr.unfilled,
                "skips": dict(sorted(lr.skips.items())),
                "leader_fills": lr.fills,
            }
            for lr in r.leaders
        ],
        "curve": [
            [
                p.time_ms,
                str(p.ours.quantize(Decimal("0.0001"))),
                str(p.leader_scaled.quantize(Decimal("0.0001"))),
            ]
            for p in _thin_curve(r.curve, 500)
        ],
    }
    if fills:
        out["fills"] = [
            {
                "time_ms": f.time_ms,
                "coin": f.coin,
                "side": "B" if f.is_buy else "A",
                "sz": str(f.sz),
                "px": str(f.px),
                "fee": str(f.fee),
                "closed_pnl": str(f.closed_pnl),
                "start_position": str(f.start_position),
                "dir": f.dir,
            }
            for f in r.fills
        ]
    return out


def _thin_curve(curve: Sequence[CurvePoint], n: int) -> list[CurvePoint]:
    if len(curve) <= n:
        return list(curve)
    step = len(curve) / n
    out = [curve[int(i * step)] for i in range(n)]
    if out[-1] != curve[-1]:
        out.append(curve[-1])
    return out


def chart_svg(results: Sequence[BacktestResult], addresses: Sequence[str]) -> str:
    """The leader's scaled PnL (of the first variant) beside each variant's own."""
    first = results[0]
    series = [
        Series(
            "leader scaled" + (f" ({first.options.label})" if len(results) > 1 else ""),
            PALETTE[0],
            [(p.time_ms, float(p.leader_scaled)) for p in first.curve],
        )
    ]
    for i, r in enumerate(results):
        name = "copy" + (f" {r.options.label}" if r.options.label else "")
        series.append(
            Series(
                name,
                PALETTE[1 + i % (len(PALETTE) - 1)],
                [(p.time_ms, float(p.ours)) for p in r.curve],
            )
        )
    who = ", ".join(a[:8] + "…" + a[-4:] for a in addresses[:3])
    if len(addresses) > 3:
        who += f" +{len(addresses) - 3}"
    title = f"hlcopy backtest {who}: {_iso(first.since_ms)} to {_iso(first.until_ms)} UTC"
    return line_chart(series, title=title)


_PART_NAMES: Final[dict[str, str]] = {
    "latency_slippage": "latency + slippage",
    "fees_funding": "fees + funding",
    "skipped": "skipped",
    "limits": "limits",
    "entry": "entry",
}


def render_table(results: Sequence[BacktestResult], addresses: Sequence[str]) -> str:
    """The terminal's view: one column per variant."""
    first = results[0]
    span_h = (first.until_ms - first.since_ms) / HOUR_MS
    span = f"{span_h / 24:.1f} days" if span_h >= 48 else f"{span_h:.1f} h"
    source = "online (candles)" if first.source == "candles" else "offline (prices from the fills)"
    lines = [
        f"hlcopy backtest {', '.join(addresses)}",
        f"  {_iso(first.since_ms)} to {_iso(first.until_ms)} UTC ({span}), {source}",
    ]
    if len(results) == 1:
        lines.append(f"  {first.options.describe()}")
    else:
        lines.append(
            f"  {first.options.describe()}; swept: " + ", ".join(r.options.label for r in results)
        )
    heads = [r.options.label or "copy" for r in results]
    width = max(14, *(len(h) + 2 for h in heads))

    def row(name: str, values: Iterable[str]) -> str:
        return f"  {name:<26}" + "".join(f"{v:>{width}}" for v in values)

    def pct(x: float) -> str:
        return f"{x * 100:.2f}%"

    rows = [
        row("", heads),
        row("PnL (USD)", (_money(r.pnl) for r in results)),
        row("return", (pct(r.return_) for r in results)),
        row("max drawdown", (pct(r.max_drawdown) for r in results)),
        row("leader scaled PnL", (_money(r.leader_scaled) for r in results)),
        row("leader scaled return", (pct(r.leader_return) for r in results)),
        row("gap to the leader", (_money(r.gap) for r in results)),
    ]
    for p in GAP_PARTS:
        rows.append(row(f"  {_PART_NAMES[p]}", (_money(r.parts[p]) for r in results)))
    rows += [
        row("fees", (_money(r.fees) for r in results)),
        row("funding", (_money(r.funding) for r in results)),
        row("orders (filled)", (f"{r.orders} ({r.filled})" for r in results)),
        row("orders not filled", (str(r.unfilled) for r in results)),
    ]
    if any(r.transfers for r in results):
        rows.append(row("netted between leaders", (str(r.transfers) for r in results)))
    reasons = sorted({k for r in results for k in r.skips})
    for reason in reasons:
        rows.append(row(f"skipped: {reason}", (str(r.skips.get(reason, 0)) for r in results)))
    if not reasons:
        rows.append(row("skipped", ("0" for _ in results)))
    lines += rows
    if len(first.leaders) > 1:
        lines.append("  per leader (first variant)")
        for lr in first.leaders:
            perf = lr.performance
            lines.append(
                f"    {lr.address}  PnL {_money(perf.ours)}, leader scaled "
                f"{_money(perf.leader_scaled)}, gap {_money(perf.gap)}, "
                f"{lr.orders} orders, {sum(lr.skips.values())} skips"
            )
    trips = [e for e in first.risk_events if e.kind == "trip"]
    for e in trips[:5]:
        lines.append(f"  risk: {e.scope} -> {e.after.value} at {_iso(e.time_ms)} ({e.detail})")
    notes = []
    if first.leader_fills == 0:
        notes.append("no leader fills in the window")
    if first.chain_breaks:
        notes.append(f"{first.chain_breaks} gap(s) in the leaders' fills")
    if first.in_flight:
        notes.append(f"{first.in_flight} order(s) in flight at the end")
    if notes:
        lines.append("  note: " + "; ".join(notes))
    return "\n".join(lines)


# -- the async shell -----------------------------------------------------------------------------

ProgressFn = Callable[[str, int, int], None]


def _ranges(times: Iterable[int], before_ms: int, after_ms: int) -> list[tuple[int, int]]:
    """Minute-aligned spans around ``times``, merged when the gap costs less than a request,
    each at most one answer of candles."""
    spans = sorted(
        ((t - before_ms) // MINUTE_MS * MINUTE_MS, (t + after_ms) // MINUTE_MS * MINUTE_MS)
        for t in times
    )
    out: list[list[int]] = []
    for s, e in spans:
        if out and s - out[-1][1] <= MERGE_GAP_MINUTES * MINUTE_MS:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    limit = (CANDLES_PER_REQUEST - 1) * MINUTE_MS
    split: list[tuple[int, int]] = []
    for s, e in out:
        while e - s > limit:
            split.append((s, s + limit))
            s += limit + MINUTE_MS
        split.append((s, e))
    return split


async def _candles(
    info: InfoClient, coin: str, interval: str, start: int, end: int, lane: Lane
) -> list[Candle]:
    step = CANDLES_PER_REQUEST * (MINUTE_MS if interval == "1m" else HOUR_MS)
    out: list[Candle] = []
    s = start
    while s <= end:
        e = min(end, s + step - 1)
        out.extend(await info.candle_snapshot(coin, interval, s, e, lane=lane))
        s = e + 1
    return out


async def fetch_history(
    info: InfoClient,
    addresses: Sequence[str],
    since_ms: int,
    until_ms: int,
    *,
    latency_ms: int = 0,
    equity_sizing: bool = False,
    progress: ProgressFn | None = None,
    lane: Lane = Lane.ENRICHMENT,
) -> tuple[list[LeaderHistory], MarketData]:
    """Everything an online backtest needs, every request through the weight budget: each
    address's fills (``userFillsByTime``, paged), the perp universe (lots), 1-hour candles of
    every coin traded over the window, 1-minute candles around the fills when ``latency_ms``
    (latency plus delay) is not zero, hourly funding, and the leaders' account values for
    equity sizing."""

    def say(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    leaders: list[LeaderHistory] = []
    for i, address in enumerate(addresses):
        say(f"fills of {address}", i, len(addresses))

        def paged(n: int, newest: int, address: str = address) -> None:
            span = max(1, until_ms - since_ms)
            say(f"fills of {address} ({n})", min(newest - since_ms, span), span)

        fills = await info.user_fills_by_time(
            address, since_ms, until_ms, max_pages=MAX_FILL_PAGES, lane=lane, on_page=paged
        )
        leaders.append(LeaderHistory(address, tuple(sorted(fills, key=lambda f: f.time_ms))))
    say("universe", 0, 1)
    meta = await info.meta(lane=lane)
    assets = {
        a.name: Asset(a.name, i, a.sz_decimals, a.max_leverage, delisted=a.delisted)
        for i, a in enumerate(meta.universe)
    }
    traded: dict[str, list[int]] = defaultdict(list)
    for leader in leaders:
        for f in leader.fills:
            if is_perp(f.coin):
                traded[f.coin].append(f.time_ms)
    inferred = infer_assets(f for leader in leaders for f in leader.fills if f.coin not in assets)
    for coin, asset in inferred.items():
        assets.setdefault(coin, asset)
    coins = sorted(traded)
    hour: dict[str, list[Candle]] = {}
    minute: dict[str, list[Candle]] = {}
    funding: dict[str, dict[int, Decimal]] = {}
    for i, coin in enumerate(coins):
        say(f"prices of {coin}", i, len(coins))
        hour[coin] = await _candles(info, coin, "1h", since_ms // HOUR_MS * HOUR_MS, until_ms, lane)
        if latency_ms > 0:
            got: list[Candle] = []
            for s, e in _ranges(traded[coin], MINUTE_MS, latency_ms + MINUTE_MS):
                got.extend(await info.candle_snapshot(coin, "1m", s, e, lane=lane))
            minute[coin] = got
        rates = await info.funding_history(coin, since_ms, until_ms, lane=lane)
        funding[coin] = {r.time_ms // HOUR_MS * HOUR_MS: r.rate for r in rates}
    equity: dict[str, list[tuple[int, Decimal]]] = {}
    if equity_sizing:
        for address in addresses:
            say(f"account values of {address}", 0, 1)
            portfolio = await info.portfolio(address, lane=lane)
            samples: dict[int, Decimal] = {}
            for period in portfolio.periods.values():
                for t, v in period.account_value_history:
                    samples[t] = v
            equity[address] = sorted(samples.items())
    say("done", 1, 1)
    market = MarketData(
        assets=assets,
        paths=price_paths(minute, hour),
        funding=funding,
        leader_equity=equity,
        source="candles",
    )
    return leaders, market


def load_fills(raw: bytes, address: str, name: str) -> LeaderHistory:
    """An offline fills file of ``address``; BadInput (one line) when it is not one account's
    fills as the exchange returns them."""
    try:
        doc = read_fills(raw)
    except WireError as exc:
        raise BadInput(f"{name}: not fills as the exchange returns them: {exc}") from None
    if len(doc.users) > 1:
        raise BadInput(f"{name}: fills of several users ({', '.join(sorted(doc.users))})")
    if doc.users and address not in doc.users:
        raise BadInput(f"{name}: fills of {next(iter(doc.users))}, not of {address}")
    for i, f in enumerate(doc.fills):
        if not (f.sz > 0 and f.px > 0):
            raise BadInput(f"{name}: fill {i}: size and price must be positive")
    history = LeaderHistory(address, doc.fills)
    check_one_account(address, prepare([history], -(2**62), 2**62))
    return history


def offline_market(leaders: Sequence[LeaderHistory]) -> MarketData:
    return MarketData(assets=infer_assets(f for lh in leaders for f in lh.fills))


async def run_in_thread(
    leaders: Sequence[LeaderHistory],
    market: MarketData,
    variants: Sequence[Options],
    since_ms: int,
    until_ms: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[BacktestResult]:
    """Run every variant off the event loop (a worker thread), cancellable: a cancelled await
    stops the worker at its next slice."""
    stop = threading.Event()
    total = len(variants)

    def work() -> list[BacktestResult]:
        prepared = prepare(leaders, since_ms, until_ms)
        out = []
        for i, options in enumerate(variants):

            def step(done: int, of: int, i: int = i) -> None:
                if progress is not None:
                    progress(i * max(of, 1) + done, total * max(of, 1))

            out.append(
                run_backtest(
                    leaders,
                    market,
                    options,
                    since_ms,
                    until_ms,
                    prepared=prepared,
                    cancelled=stop.is_set,
                    progress=step,
                )
            )
        return out

    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        # The worker ends at its next slice; wait for it so nothing outlives the caller.
        with contextlib.suppress(Cancelled):
            await task
        raise


# -- the command -----------------------------------------------------------------------------------

_ADDRESS_CHARS: Final = frozenset("0123456789abcdef")


def parse_address(text: str) -> str:
    """A leader's address (any case, lowercased); BadInput otherwise."""
    low = text.strip().lower()
    if len(low) != 42 or not low.startswith("0x") or not set(low[2:]) <= _ADDRESS_CHARS:
        raise BadInput(f"{text[:60]!r} is not an address (0x followed by 40 hex digits)")
    return low


def parse_time(text: str, what: str) -> int:
    """Milliseconds since the epoch, or an ISO date or date-time (UTC unless it says)."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"{what} {text[:40]!r} is not a time: give 2024-05-01, 2024-05-01T12:00 (UTC) "
            "or milliseconds since the epoch"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@record
class Window:
    since_ms: int
    until_ms: int


def resolve_window(
    *,
    days: float | None,
    from_ms: int | None,
    to_ms: int | None,
    now_ms: int,
    fills: Sequence[LeaderHistory] | None = None,
) -> Window:
    """The window: ``--from``/``--to``, or the last ``--days`` (7 by default) up to now —
    offline, up to the last fill (plus a minute for its copies to settle), and by default
    the fills' whole span."""
    if days is not None and (from_ms is not None or to_ms is not None):
        raise BadInput("give --days or --from/--to, not both")
    if days is not None and not 0 < days <= 3650:
        raise BadInput("--days must be more than 0 and at most 3650")
    end = now_ms
    if fills is not None:
        times = [f.time_ms for lh in fills for f in lh.fills]
        if times:
            end = max(times) + MINUTE_MS
    until = to_ms if to_ms is not None else end
    if from_ms is not None:
        since = from_ms
    elif days is not None:
        since = until - round(days * DAY_MS)
    elif fills is not None:
        times = [f.time_ms for lh in fills for f in lh.fills]
        since = min(times) if times else until
    else:
        since = until - 7 * DAY_MS
    if since > until:
        raise BadInput(f"--from {_iso(since)} UTC is after --to {_iso(until)} UTC")
    return Window(since, until)


class ProgressBar:
    """One line redrawn on a terminal, nothing elsewhere (a pipe, a log)."""

    def __init__(self, stream: Any) -> None:
        isatty = getattr(stream, "isatty", None)
        self.stream = stream
        self.on = bool(isatty is not None and isatty())
        self._last = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.on:
            return
        share = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
        filled = int(share * 30)
        line = f"\r{phase[:50]:<50} [{'#' * filled}{'.' * (30 - filled)}] {share * 100:3.0f}%"
        if line != self._last:
            self._last = line
            self.stream.write(line)
            self.stream.flush()

    def done(self) -> None:
        if self.on and self._last:
            self.stream.write("\r" + " " * (len(self._last) + 1) + "\r")
            self.stream.flush()
            self._last = ""


@record
class Request:
    """A backtest as asked (the CLI's arguments, the API's body), before anything is read."""

    addresses: tuple[str, ...]
    given: Mapping[str, Any]
    days: float | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    sweep: tuple[str, tuple[Any, ...]] | None = None


def check_request(
    addresses: Sequence[str],
    given: Mapping[str, Any],
    config: HlcopyConfig | None,
    sweep: tuple[str, Sequence[Any]] | None = None,
) -> tuple[tuple[str, ...], list[Options]]:
    """The addresses (checked, lowercased, each once) and the variants to run; BadInput for the
    first problem, before any I/O."""
    if not addresses:
        raise BadInput("give at least one address")
    if len(addresses) > MAX_ADDRESSES:
        raise BadInput(f"at most {MAX_ADDRESSES} addresses at once")
    picked: list[str] = []
    for a in addresses:
        address = parse_address(a)
        if address in picked:
            raise BadInput(f"{address} is given twice")
        picked.append(address)
    base = build_options(picked, given, config)
    variants = [base]
    if sweep is not None:
        key, values = sweep
        variants = sweep_variants(base, key, values, picked, given, config)
    return tuple(picked), variants


def needs_equity(variants: Sequence[Options]) -> bool:
    return any(f.sizing == "equity" for v in variants for f in v.follows)


def check_fetched(leaders: Sequence[LeaderHistory], window: Window) -> None:
    """An empty window is bad input: there is nothing to replay."""
    inside = [
        f
        for lh in leaders
        for f in lh.fills
        if is_perp(f.coin) and window.since_ms <= f.time_ms <= window.until_ms
    ]
    if not inside:
        who = leaders[0].address if len(leaders) == 1 else f"any of the {len(leaders)} addresses"
        raise BadInput(
            f"no perp fills of {who} between {_iso(window.since_ms)} and "
            f"{_iso(window.until_ms)} UTC: nothing to backtest"
        )


def report_json(
    results: Sequence[BacktestResult], addresses: Sequence[str], svg: str | None = None
) -> dict[str, Any]:
    first = results[0]
    out: dict[str, Any] = {
        "addresses": list(addresses),
        "since_ms": first.since_ms,
        "until_ms": first.until_ms,
        "source": first.source,
        "results": [result_json(r) for r in results],
    }
    if svg is not None:
        out["svg"] = svg
    return out


async def _fetch_online(
    config: HlcopyConfig,
    addresses: Sequence[str],
    window: Window,
    variants: Sequence[Options],
    bar: ProgressBar,
) -> tuple[list[LeaderHistory], MarketData]:
    from hlcopy.budget import WeightBudget
    from hlcopy.hl import new_session

    net = config.network
    budget = WeightBudget(config.budget.weight_per_minute, config.budget.headroom_pct)
    async with new_session(net.request_timeout_s) as session:
        info = InfoClient(session, net.rest, budget)
        return await fetch_history(
            info,
            addresses,
            window.since_ms,
            window.until_ms,
            latency_ms=max(v.latency_ms + v.delay_ms for v in variants),
            equity_sizing=needs_equity(variants),
            progress=bar,
        )


def check_equity_data(variants: Sequence[Options], market: MarketData) -> None:
    for v in variants:
        for f in v.follows:
            if f.sizing == "equity" and not market.leader_equity.get(f.leader):
                where = "offline" if market.source == "fills" else "from the exchange"
                raise BadInput(
                    f"sizing equity needs {f.leader}'s account values, not known {where}; "
                    "use ratio or fixed_notional sizing"
                )


def run_cli(
    *,
    addresses: Sequence[str],
    given: Mapping[str, Any],
    days: float | None,
    from_text: str | None,
    to_text: str | None,
    config: HlcopyConfig | None,
    fills_paths: Sequence[str] | None,
    json_out: bool,
    plot_path: str | None,
    sweep_text: str | None,
    now_ms: int,
    stdout: Any,
    stderr: Any,
) -> int:
    """``hlcopy backtest``: BadInput for bad input (the caller prints its one line and exits
    2), other HlcopyErrors for failures on the way (exit 1)."""
    import orjson

    sweep = None if sweep_text is None else parse_sweep(sweep_text)
    picked, variants = check_request(addresses, given, config, sweep)
    from_ms = None if from_text is None else parse_time(from_text, "--from")
    to_ms = None if to_text is None else parse_time(to_text, "--to")
    if from_ms is not None and to_ms is not None and from_ms > to_ms:
        raise BadInput(f"--from {_iso(from_ms)} UTC is after --to {_iso(to_ms)} UTC")
    bar = ProgressBar(stderr)
    if fills_paths:
        if len(fills_paths) != len(picked):
            raise BadInput(
                f"give one --fills file per address ({len(picked)} addresses, "
                f"{len(fills_paths)} files), in the same order"
            )
        leaders = []
        for address, path in zip(picked, fills_paths, strict=True):
            try:
                with open(path, "rb") as fh:
                    raw = fh.read(256 * 1024 * 1024)
            except OSError as exc:
                raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
            leaders.append(load_fills(raw, address, path))
        window = resolve_window(
            days=days, from_ms=from_ms, to_ms=to_ms, now_ms=now_ms, fills=leaders
        )
        check_fetched(leaders, window)
        market = offline_market(leaders)
    else:
        window = resolve_window(days=days, from_ms=from_ms, to_ms=to_ms, now_ms=now_ms)
        cfg = config or HlcopyConfig()
        try:
            leaders, market = asyncio.run(_fetch_online(cfg, picked, window, variants, bar))
        finally:
            bar.done()
        check_fetched(leaders, window)
    check_equity_data(variants, market)

    def computing(done: int, total: int) -> None:
        bar("replaying", done, total)

    try:
        results = asyncio.run(
            run_in_thread(
                leaders, market, variants, window.since_ms, window.until_ms, progress=computing
            )
        )
    finally:
        bar.done()
    svg = chart_svg(results, picked) if plot_path is not None else None
    if plot_path is not None and svg is not None:
        try:
            with open(plot_path, "w", encoding="utf-8") as out:
                out.write(svg)
        except OSError as exc:
            raise BadInput(f"cannot write {plot_path}: {exc.strerror or exc}") from None
    if json_out:
        stdout.write(orjson.dumps(report_json(results, picked)).decode() + "\n")
    else:
        stdout.write(render_table(results, picked) + "\n")
        if plot_path is not None:
            stdout.write(f"  chart: {plot_path}\n")
    return 0
