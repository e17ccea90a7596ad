"""The hlcopy.toml file as frozen pydantic models, validated before any I/O.

Validation has two stages: the schema (types, ranges, unknown keys) and then the rules that tie
fields together. Both report one ``dotted.key[index]: message`` line per problem so a user can
find the line to fix. Secrets never live here: keys and tokens come from files (see
``credentials.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import stat
import threading
import tomllib
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from hlcopy.errors import ConfigError
from hlcopy.keys import parse_address

MAX_CONFIG_BYTES = 1024 * 1024

NETWORK_URLS: dict[str, tuple[str, str]] = {
    "mainnet": ("https://api.hyperliquid.xyz", "wss://api.hyperliquid.xyz/ws"),
    "testnet": ("https://api.hyperliquid-testnet.xyz", "wss://api.hyperliquid-testnet.xyz/ws"),
}

# Sections whose change needs a restart: they own sockets, processes or the database.
RESTART_SECTIONS = frozenset({"network", "database", "state", "api"})


def _path(value: Any) -> Path:
    # Strict: a TOML string, nothing else; a NUL byte would only fail later, deep in an OS call.
    if not isinstance(value, str):
        raise ValueError("must be a string (a file system path)")
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty path without NUL characters")
    return Path(value).expanduser()


def _decimal(value: Any) -> Any:
    """A TOML number, or a decimal string for exactness ("250.50"); never a bool or a word."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest string that round-trips: 0.1 stays 0.1
    if isinstance(value, str) and len(value) <= 64:
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            pass
    if isinstance(value, Decimal):
        return value
    raise ValueError("must be a number")


Address = Annotated[str, AfterValidator(parse_address)]
UserPath = Annotated[Path, BeforeValidator(_path)]
Money = Annotated[Decimal, BeforeValidator(_decimal), Field(allow_inf_nan=False)]
PositiveUsd = Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Url = Annotated[str, Field(min_length=1, max_length=2048)]
Coin = Annotated[str, Field(min_length=1, max_length=64)]


class _Section(BaseModel):
    # strict: "8080", 8080.0 and "yes" are errors, not silently converted.
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, strict=True
    )


class NetworkConfig(_Section):
    name: Literal["mainnet", "testnet", "custom"] = "mainnet"
    """Which exchange to talk to; "custom" reaches any Hyperliquid-compatible server (the sim)."""
    rest_url: Url | None = None
    """Base URL for /info and /exchange; only with name = "custom"."""
    ws_url: Url | None = None
    """WebSocket URL; only with name = "custom"."""
    chain: Literal["mainnet", "testnet"] | None = None
    """The chain signatures are made for; only with name = "custom", where it is required."""
    request_timeout_s: Finite = Field(default=10.0, gt=0, le=120)
    """Timeout of one REST request, in seconds."""
    batch_clearinghouse_states: bool = False
    """Use the undocumented batchClearinghouseStates request (weight unknown upstream)."""
    ws_ping_interval_s: Finite = Field(default=50.0, ge=0.1, le=3600)
    """How often each WebSocket connection pings the exchange, in seconds."""
    ws_silence_timeout_s: Finite = Field(default=60.0, ge=0.5, le=3600)
    """A WebSocket connection that received nothing for this long is taken for half-open and
    reconnected, in seconds (the exchange itself closes a connection idle for 60 s)."""
    ws_reconnect_base_s: Finite = Field(default=0.5, ge=0.01, le=60)
    """First delay before reconnecting a dropped WebSocket; it doubles with each drop that
    follows within a minute (jittered), in seconds."""
    ws_reconnect_cap_s: Finite = Field(default=30.0, ge=0.01, le=600)
    """Longest delay before reconnecting a dropped WebSocket, in seconds."""

    @property
    def rest(self) -> str:
        """The REST base URL, without a trailing slash."""
        url = self.rest_url if self.name == "custom" else NETWORK_URLS[self.name][0]
        return (url or "").rstrip("/")

    @property
    def ws(self) -> str:
        """The WebSocket URL."""
        return (self.ws_url if self.name == "custom" else NETWORK_URLS[self.name][1]) or ""

    @property
    def is_mainnet(self) -> bool:
        """Whether signatures are made for mainnet (phantom agent source "a")."""
        if self.name == "custom":
            return self.chain == "mainnet"
        return self.name == "mainnet"


class DatabaseConfig(_Section):
    dsn: Url | None = None
    """PostgreSQL DSN; absent means an embedded PostgreSQL in <state.dir>/pg. No password here."""
    password_file: UserPath | None = None
    """File holding the database password (or the systemd credential "db-password")."""
    pool_min_size: int = Field(default=1, ge=1, le=64)
    """Connections the pool keeps open."""
    pool_max_size: int = Field(default=8, ge=1, le=256)
    """Most connections the pool opens."""
    command_timeout_s: Finite = Field(default=30.0, gt=0, le=3600)
    """Timeout of one SQL statement, in seconds."""


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere follow XDG.
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path("~/.local/state/hlcopy").expanduser()


class StateConfig(_Section):
    dir: UserPath = Field(default_factory=_default_state_dir)
    """Where hlcopy keeps its files: embedded PostgreSQL data, generated API token."""


class ApiConfig(_Section):
    enabled: bool = True
    """Serve the JSON API, /health and /metrics."""
    host: str = Field(default="127.0.0.1", max_length=255)
    """IP address to bind ("localhost" works too). Keep it on loopback; reach it through an SSH
    tunnel. All interfaces ("0.0.0.0", "::") need read_auth = true and allow_public = true."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port; 0 picks a free one."""
    token_file: UserPath | None = None
    """File holding the bearer token for mutating routes (or the credential "api-token").
    Absent: a token is generated once into <state.dir>/api-token."""
    read_auth: bool = False
    """Also require the token for read routes (everything except /health)."""
    allow_public: bool = False
    """Allow binding to all interfaces; only together with read_auth = true."""
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    """Largest request body accepted; larger ones get 413."""


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["auto", "json", "console"] = "auto"
    """"auto": JSON when stdout is not a terminal (systemd), console rendering otherwise."""


class BudgetConfig(_Section):
    weight_per_minute: int = Field(default=1200, gt=0, le=100_000)
    """REST weight the exchange allows this IP per minute."""
    headroom_pct: Finite = Field(default=2.5, ge=0, lt=90)
    """Share of the budget reads never use, kept for orders and cancels, in percent (one order
    action costs 1 weight: 2.5% of 1200 is 30 actions a minute that never wait for a read;
    orders go before every read in any case)."""


class DiscoveryConfig(_Section):
    enabled: bool = True
    """Watch the public trade stream to find every active trader."""
    coins: list[Coin] = Field(default_factory=list, max_length=1000)
    """Coins to watch; empty means every perp on the first dex."""
    builder_dexes: bool = False
    """Also watch builder-deployed (HIP-3) perp dexes."""
    spot: bool = False
    """Also watch spot pairs."""
    persist_batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    """Changed addresses written to the database per batch."""
    flush_interval_ms: int = Field(default=500, ge=10, le=60_000)
    """Longest a change to an address's activity waits before it is written."""
    queue_size: int = Field(default=100_000, ge=100, le=10_000_000)
    """Changed addresses waiting to be written; beyond this (the database is slow or away) the
    oldest changes are dropped and counted."""
    calibrate: bool = True
    """At start, check which of a trade's two addresses is the buyer with one userFillsByTime
    lookup; until then, leader fills seen on the trade stream are only hints."""
    seed_leaderboard: bool = False
    """Fetch the exchange's public leaderboard once a day to seed tracking priorities (outside
    the REST weight budget; about 40 MB on mainnet)."""
    seed_url: Url | None = None
    """Where the public leaderboard is; absent: the network's own (stats-data for mainnet,
    <rest_url>/leaderboard for a custom network such as the simulator)."""


class TrackingConfig(_Section):
    max_tracked_traders: int = Field(default=2000, ge=0, le=1_000_000)
    """Traders whose positions are polled."""
    follower_poll_interval_s: Finite = Field(default=10.0, ge=1, le=86400)
    """How often the follower's own positions are read from the exchange."""
    leader_poll_interval_s: Finite = Field(default=15.0, ge=1, le=86400)
    """How often each followed leader's positions are read."""
    reconcile_interval_s: Finite = Field(default=30.0, ge=5, le=86400)
    """How often follower positions are compared with their targets."""
    scoring_interval_s: Finite = Field(default=3600.0, ge=60, le=7 * 86400)
    """How often a tracked trader's statistics are refreshed."""
    user_fills_subscriptions: int = Field(default=8, ge=0, le=10)
    """Leaders followed through userFills WebSocket subscriptions (the exchange allows 10 users)."""
    workers: int = Field(default=6, ge=1, le=64)
    """Requests the tracker keeps in flight; the weight budget, not this, sets the pace."""
    positions_interval_s: Finite = Field(default=120.0, ge=5, le=86400)
    """Shortest time between two position reads of the same tracked trader."""
    scoring_top_n: int = Field(default=20, ge=0, le=10_000)
    """Traders near the top of the leaderboard or the losers list whose fills are fetched
    (userFillsByTime) to complete their score."""
    inactive_after_days: Finite = Field(default=14.0, gt=0, le=3650)
    """Traders not seen trading for this long stop being tracked (their metrics stay)."""


class LeaderboardConfig(_Section):
    refresh_interval_s: Finite = Field(default=10.0, ge=1, le=3600)
    """How often the in-memory ranking is rebuilt from the latest metrics."""
    follower_equity_usd: PositiveUsd | None = None
    """Equity used for copyable_share; absent: account.paper_equity_usd (paper) or the
    follower's account value (live)."""
    losers_window: Literal["day", "week", "month", "allTime"] = "month"
    """The default window of the losers list."""


class RetentionConfig(_Section):
    events_days: Finite = Field(default=30.0, gt=0, le=3650)
    """Position events older than this are deleted."""
    fills_days: Finite = Field(default=30.0, gt=0, le=3650)
    """Stored fills older than this are deleted."""
    prune_interval_s: Finite = Field(default=3600.0, ge=60, le=7 * 86400)
    """How often old rows are deleted."""


class AccountConfig(_Section):
    mode: Literal["paper", "live"] = "paper"
    """"paper" simulates fills and never signs; "live" sends real orders."""
    address: Address | None = None
    """The follower's account (master or sub-account) address, not the agent's."""
    agent_key_file: UserPath | None = None
    """File with the API (agent) wallet private key, mode 0600 (or the credential "hl-agent")."""
    paper_equity_usd: PositiveUsd = Decimal(10000)
    """Starting equity of the paper account."""
    order_expires_after_s: Finite = Field(default=5.0, ge=1, le=60)
    """Live orders carry ``expiresAfter`` = send time + this: the exchange refuses an order that
    arrives later, so an order whose reply was lost is settled by ``orderStatus(cloid)`` once
    this has passed (never by sending it again). A few seconds: long enough for a slow path to
    the exchange, short enough that the copier decides again soon."""
    dead_man_switch_s: Annotated[float, Field(ge=10, le=86400, allow_inf_nan=False)] | None = None
    """Live mode: arm the exchange's dead man's switch (scheduleCancel) this many seconds ahead,
    re-armed every third of that, so the exchange cancels every resting order of the account
    when hlcopy has been gone that long. Copies are IOC and never rest: what it cancels are the
    protective stops (follow.protective_stop_pct), leaving the positions unprotected, and orders
    placed by hand; use one or the other. The exchange takes it only from accounts with
    $1,000,000 traded volume (hlcopy then retries hourly). Absent: off."""


class RiskConfig(_Section):
    max_total_notional_usd: PositiveUsd = Decimal(10000)
    """Largest sum of absolute position notionals across all coins."""
    max_position_notional_usd: PositiveUsd = Decimal(2500)
    """Largest absolute notional in one coin."""
    max_order_notional_usd: PositiveUsd = Decimal(1000)
    """Largest notional of one order; bigger deltas are sent in several steps."""
    max_leverage: Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, le=100)] = Decimal(5)
    """Largest total notional divided by account equity (a ratio: 5 means 5x)."""
    max_daily_loss_usd: PositiveUsd = Decimal(500)
    """Loss since 00:00 UTC that halts trading."""
    max_drawdown_pct: Money = Field(default=Decimal(20), gt=0, le=100)
    """Drawdown from the equity high-water mark that switches to reduce-only, in percent."""
    max_slippage_bps: int = Field(default=50, ge=1, le=5000)
    """Worst price an IOC order accepts, away from mid, in basis points."""
    max_consecutive_rejects: int = Field(default=5, ge=1, le=1000)
    """Rejected orders in a row that halt trading."""
    max_errors_per_minute: int = Field(default=20, ge=1, le=10_000)
    """Order errors within a minute that halt trading."""
    max_signal_age_s: Finite = Field(default=30.0, gt=0, le=86400)
    """Leader fills older than this are recorded but not chased."""
    leader_leverage_multiple: Annotated[
        Decimal | None, BeforeValidator(_decimal), Field(gt=1, le=1000)
    ] = Decimal(3)
    """A leader whose leverage (notional / account value) passes this multiple of its 30-day
    norm puts the follows of it in reduce-only until it is back within 90% of that; unset
    judges nothing."""
    leader_norm_min_days: int = Field(default=7, ge=1, le=30)
    """Days of a leader's own history (sampled from its position reads while followed) before
    its norm exists; until then its leverage is judged on nothing."""


FollowUsd = Annotated[
    Decimal, BeforeValidator(_decimal), Field(gt=0, le=Decimal(10) ** 12, allow_inf_nan=False)
]
FollowId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
FOLLOW_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class FollowTemplate(_Section):
    """A follow's rules without its leader and name: the body of a ``[[follow]]`` table, and
    the ``template`` of an ``[[auto_follow]]`` rule."""

    mode: Literal["copy", "inverse"] = "copy"
    """"copy": hold the leader's side; "inverse": hold the opposite side (fade the leader)."""
    sizing: Literal["ratio", "equity", "fixed_notional"] = "ratio"
    """"ratio": ratio x the leader's size; "equity": the leader's size x follower equity /
    leader equity x ratio; "fixed_notional": fixed_notional_usd per position, the leader's sign."""
    ratio: Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, le=1000)] = Decimal(1)
    """Multiplier applied to the leader's position (ratio and equity sizing)."""
    fixed_notional_usd: FollowUsd | None = None
    """Notional of each copied position; required with sizing = "fixed_notional"."""
    coins: list[Coin] = Field(default_factory=list, max_length=1000)
    """Only copy these coins; empty means all."""
    exclude_coins: list[Coin] = Field(default_factory=list, max_length=1000)
    """Never copy these coins."""
    max_notional_per_coin_usd: FollowUsd | None = None
    """Largest notional this follow holds in one coin; absent: no per-follow cap (risk.* still
    applies to the account)."""
    max_total_notional_usd: FollowUsd | None = None
    """Largest notional this follow holds across all coins."""
    max_leverage: Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, le=100)] | None = None
    """Largest notional of this follow divided by the follower's equity (5 means 5x)."""
    min_notional_policy: Literal["skip", "round_up"] = "skip"
    """An order under the exchange's $10 minimum: "skip" it, or "round_up" to the smallest size
    worth $10 when that breaks no limit (never silently doubles an order otherwise)."""
    slippage_bps: int = Field(default=50, ge=0, le=5000)
    """The IOC limit price: mid plus (buy) or minus (sell) this many basis points."""
    max_fill_age_ms: int = Field(default=30_000, ge=1, le=86_400_000)
    """A leader fill older than this never opens or adds (reductions still go)."""
    entry: Literal["wait", "adopt"] = "wait"
    """At the start: "wait" for the leader's next change (a fill streamed once the follow is on
    counts even if stamped up to 0.5 s before it: the exchange stamps fills with its block's
    time), or "adopt" its current positions when the price is within adopt_max_deviation_bps of
    the leader's entry."""
    adopt_max_deviation_bps: int = Field(default=50, ge=0, le=10_000)
    """With entry = "adopt": how far the price may be from the leader's entry, in basis points."""
    delay_ms: int = Field(default=0, ge=0, le=600_000)
    """Wait this long after a leader's change before acting on it."""
    active_hours_utc: list[int] | None = Field(default=None, min_length=2, max_length=2)
    """[start, end]: copy only from hour start (0-23, inclusive) to end (1-24, exclusive), UTC;
    may wrap midnight ([22, 6]). Outside, only reductions go. Absent: always."""
    daily_loss_limit_usd: FollowUsd | None = None
    """This follow's loss since 00:00 UTC that halts it."""
    max_drawdown_pct: Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, le=100)] | None = (
        None
    )
    """This follow's drawdown from its high-water mark that makes it reduce-only, in percent."""
    priority: int = Field(default=0, ge=0, le=1000)
    """Higher first when the ≤ 10 userFills WebSocket slots are handed out (then by notional)."""
    protective_stop_pct: (
        Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, lt=100)] | None
    ) = None
    """Live mode: keep a reduce-only stop-market trigger order on the exchange for each coin this
    follow holds, this many percent beyond the worse of the entry and the mark (a long's below,
    a short's above), moved as the position changes: it stays when hlcopy dies. One stop per
    coin covers hlcopy's whole net position in it, at the tightest percent of the follows
    holding the coin; it is reduce-only and never larger than the account's position. Absent:
    no stop."""
    enabled: bool = True
    """A disabled follow keeps its state and positions but places no orders."""


class FollowConfig(FollowTemplate):
    """One ``[[follow]]`` table, or a follow added over the API."""

    leader: Address
    """The address to copy (or fade)."""
    name: FollowId | None = None
    """Stable identifier of this follow (letters, digits, . _ -); defaults to the leader
    address. Part of every cloid."""

    @property
    def id(self) -> str:
        """The follow's stable id: its name, or the leader address."""
        return self.name or self.leader


class AutoFollowConfig(_Section):
    """One ``[[auto_follow]]`` rule: leaders picked from the leaderboard or the losers list."""

    name: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[A-Za-z0-9_-]+$")]
    """Stable name of the rule (letters, digits, _ -); its follows are "<name>.<leader>"."""
    source: Literal["leaderboard", "losers"]
    """"leaderboard": the top traders by score; "losers": the worst of the losers list."""
    top_n: int = Field(default=2, ge=1, le=50)
    """How many leaders the rule follows."""
    window: Literal["day", "week", "month", "allTime"] = "month"
    """The metrics window the ranking is read from."""
    min_trades: int = Field(default=0, ge=0, le=1_000_000)
    """Only traders with at least this many closed round trips in the window."""
    min_copyable_share: Finite = Field(default=0.0, ge=0, le=1)
    """Only traders whose positions the follower can copy at least this share of (0-1)."""
    risk_levels: list[Literal["LOW", "MEDIUM", "HIGH", "EXTREME"]] = Field(
        default_factory=list, max_length=4
    )
    """Only these risk levels; empty means any."""
    styles: list[Literal["scalper", "day", "swing", "position"]] = Field(
        default_factory=list, max_length=4
    )
    """Only these trading styles; empty means any."""
    mode: Literal["copy", "inverse"] | None = None
    """"copy" or "inverse"; absent: copy for the leaderboard, inverse for the losers."""
    template: FollowTemplate = Field(default_factory=FollowTemplate)
    """Sizing, limits and filters of each follow the rule creates ([auto_follow.template];
    every [[follow]] key except leader, name and mode)."""
    max_follows: int = Field(default=5, ge=1, le=100)
    """Most follows this rule holds at once, including those winding down."""
    reevaluate_interval_s: Finite = Field(default=300.0, ge=10, le=86400)
    """How often the selection is recomputed."""
    drop_after_s: Finite = Field(default=3600.0, ge=0, le=30 * 86400)
    """A leader is dropped only after ranking worse than drop_rank for this long."""
    drop_rank: int | None = Field(default=None, ge=1, le=10_000)
    """The rank a followed leader must fall below to start being dropped; absent: 2 x top_n."""

    @property
    def follow_mode(self) -> Literal["copy", "inverse"]:
        """The mode of the rule's follows."""
        if self.mode is not None:
            return self.mode
        return "inverse" if self.source == "losers" else "copy"

    @property
    def effective_drop_rank(self) -> int:
        """``drop_rank``, or twice ``top_n`` when absent."""
        return self.drop_rank if self.drop_rank is not None else 2 * self.top_n


def _horizons(value: list[int]) -> list[int]:
    if any(h < 1 or h > 30 * 86400 for h in value):
        raise ValueError("each horizon must be 1 to 2592000 seconds (30 days)")
    if len(set(value)) != len(value):
        raise ValueError("horizons must be distinct")
    return sorted(value)


class OpportunitiesConfig(_Section):
    """``[opportunities]``: counter-trade opportunities from the worst of the losers list."""

    enabled: bool = True
    """Record an opportunity when a top loser opens or adds, and its outcome later."""
    losers_top_n: int = Field(default=20, ge=1, le=1000)
    """Only traders ranked this high (1 = the worst) on the losers list."""
    window: Literal["day", "week", "month", "allTime"] | None = None
    """The losers list's window; absent: leaderboard.losers_window."""
    notional_usd: PositiveUsd = Field(default=Decimal(500), ge=10, le=Decimal(10) ** 9)
    """The suggested position for the follower, in USD at the price of the moment: the size is
    notional_usd / price, rounded down to the coin's size decimals (the outcome's PnL is for
    that size)."""
    horizons_s: Annotated[list[int], AfterValidator(_horizons)] = Field(
        default_factory=lambda: [3600, 14400, 86400], min_length=1, max_length=8
    )
    """When each outcome is measured, in seconds after the opportunity (distinct)."""
    late_after_s: Finite = Field(default=60.0, ge=1, le=3600)
    """An outcome measured more than this after it fell due (the daemon was down or busy), or
    when no fresh mid is at hand, takes its price from the exchange's candles instead."""
    retention_days: Finite = Field(default=90.0, gt=0, le=3650)
    """Opportunities older than this are deleted, with their outcomes."""


class HlcopyConfig(_Section):
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    """Which exchange to talk to."""
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    """PostgreSQL."""
    state: StateConfig = Field(default_factory=StateConfig)
    """Local files."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    """JSON API, /health, /metrics."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Structured logs."""
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    """REST weight budget."""
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    """Finding traders on the public trade stream."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Polling positions within the budget."""
    leaderboard: LeaderboardConfig = Field(default_factory=LeaderboardConfig)
    """Ranking traders."""
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    """Keeping the database bounded."""
    account: AccountConfig = Field(default_factory=AccountConfig)
    """The follower's own account."""
    risk: RiskConfig = Field(default_factory=RiskConfig)
    """Account-wide limits and kill switches."""
    follow: list[FollowConfig] = Field(default_factory=list, max_length=1000)
    """The leaders to copy, one [[follow]] table each."""
    auto_follow: list[AutoFollowConfig] = Field(default_factory=list, max_length=20)
    """Rules that pick leaders from the leaderboard or the losers list, one [[auto_follow]]
    table each."""
    opportunities: OpportunitiesConfig = Field(default_factory=OpportunitiesConfig)
    """Counter-trade opportunities: the losers' opens, faded on paper, and how that went."""


def _dsn_has_password(dsn: str) -> bool:
    """A password in the user part (``user:pw@``) or in the query (``?password=``), in any case."""
    try:
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError:
        return True  # unparseable: refuse rather than risk a secret in the file
    if userinfo.partition(":")[2]:
        return True
    return any(key.lower() == "password" and any(values) for key, values in query.items())


_ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - the values we refuse


def _api_host_problems(api: ApiConfig) -> list[str]:
    host = api.host
    if host in _ALL_INTERFACES:
        if not (api.read_auth and api.allow_public):
            return [
                f"api.host: {host or '(empty)'!s} binds every interface and would expose the API; "
                "set api.read_auth = true and api.allow_public = true to allow it"
            ]
        return []
    if host == "localhost":
        return []
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return [f'api.host: must be an IP address or "localhost", got {host!r}']
    return []


def _rule_problems(cfg: HlcopyConfig) -> list[str]:
    """Rules tying fields together, each reported at the key the user should edit."""
    problems: list[str] = []
    net = cfg.network
    if net.name == "custom":
        for key in ("rest_url", "ws_url", "chain"):
            if getattr(net, key) is None:
                problems.append(f'network.{key}: required when network.name = "custom"')
        for key, schemes in (
            ("rest_url", ("http://", "https://")),
            ("ws_url", ("ws://", "wss://")),
        ):
            url = getattr(net, key)
            if url is not None and not url.startswith(schemes):
                problems.append(f"network.{key}: must start with {' or '.join(schemes)}")
    else:
        for key in ("rest_url", "ws_url", "chain"):
            if getattr(net, key) is not None:
                problems.append(f'network.{key}: only used when network.name = "custom"')
    if net.ws_reconnect_base_s > net.ws_reconnect_cap_s:
        problems.append("network.ws_reconnect_base_s: must not exceed network.ws_reconnect_cap_s")
    if net.ws_ping_interval_s >= net.ws_silence_timeout_s:
        problems.append(
            "network.ws_ping_interval_s: must be below network.ws_silence_timeout_s (a quiet"
            " connection would be taken for a dead one)"
        )

    db = cfg.database
    if db.dsn is not None:
        if not db.dsn.startswith(("postgres://", "postgresql://")):
            problems.append("database.dsn: must start with postgresql://")
        elif _dsn_has_password(db.dsn):
            problems.append(
                "database.dsn: must not contain a password; use database.password_file, "
                "the systemd credential db-password, or peer authentication"
            )
    elif db.password_file is not None:
        problems.append("database.password_file: only used with database.dsn")
    if db.pool_min_size > db.pool_max_size:
        problems.append("database.pool_min_size: must not exceed database.pool_max_size")

    problems.extend(_api_host_problems(cfg.api))

    if cfg.account.mode == "live" and cfg.account.address is None:
        problems.append('account.address: required when account.mode = "live"')

    seen: dict[str, int] = {}
    for i, f in enumerate(cfg.follow):
        where = f"follow[{i}]"
        problems.extend(f"{where}.{key}: {msg}" for key, msg in follow_rule_problems(f))
        if cfg.account.address is not None and f.leader == cfg.account.address:
            problems.append(f"{where}.leader: is the follower's own account")
        if f.id in seen:
            problems.append(
                f"{where}.name: follow id {f.id!r} already used by follow[{seen[f.id]}]"
            )
        seen.setdefault(f.id, i)

    rules: dict[str, int] = {}
    for i, a in enumerate(cfg.auto_follow):
        where = f"auto_follow[{i}]"
        if "mode" in a.template.model_fields_set:
            problems.append(f"{where}.template.mode: set {where}.mode instead")
        problems.extend(
            f"{where}.template.{key}: {msg}" for key, msg in follow_rule_problems(a.template)
        )
        if a.max_follows < a.top_n:
            problems.append(f"{where}.max_follows: must be at least top_n ({a.top_n})")
        if a.drop_rank is not None and a.drop_rank < a.top_n:
            problems.append(f"{where}.drop_rank: must be at least top_n ({a.top_n})")
        if a.name in rules:
            problems.append(
                f"{where}.name: {a.name!r} already used by auto_follow[{rules[a.name]}]"
            )
        rules.setdefault(a.name, i)
    return problems


def follow_rule_problems(f: FollowTemplate) -> list[tuple[str, str]]:
    """Rules tying a follow's fields together, as (key, message) pairs."""
    out: list[tuple[str, str]] = []
    if f.sizing == "fixed_notional" and f.fixed_notional_usd is None:
        out.append(("fixed_notional_usd", 'required when sizing = "fixed_notional"'))
    if f.sizing != "fixed_notional" and f.fixed_notional_usd is not None:
        out.append(("fixed_notional_usd", 'only used when sizing = "fixed_notional"'))
    both = sorted(set(f.coins) & set(f.exclude_coins))
    if both:
        out.append(("exclude_coins", f"also listed in coins: {', '.join(both)}"))
    if f.active_hours_utc is not None:
        start, end = f.active_hours_utc
        if not 0 <= start <= 23:
            out.append(("active_hours_utc", "the start hour must be 0-23"))
        elif not 0 <= end <= 24:
            out.append(("active_hours_utc", "the end hour must be 0-24"))
        elif start == end % 24:
            out.append(("active_hours_utc", "start and end must differ; leave it out for always"))
    return out


def check_follow(
    data: Any, account: str | None = None
) -> tuple[FollowConfig | None, list[tuple[str, str]]]:
    """Validate one follow given as data (a [[follow]] table, an API body) like the TOML is:
    the follow, or None and every problem as (key path, message)."""
    try:
        follow = FollowConfig.model_validate(data)
    except ValidationError as exc:
        return None, [(_key_path(e["loc"]), _message(e)) for e in exc.errors()[:50]]
    except RecursionError:
        return None, [("(top level)", "nested too deeply")]
    problems = follow_rule_problems(follow)
    if account is not None and follow.leader == account:
        problems.append(("leader", "is the follower's own account"))
    return (None if problems else follow), problems


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _message(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Input should be "):
        return "must be " + msg[len("Input should be ") :]
    return msg


def parse_config(data: dict[str, Any], source: str | None = None) -> HlcopyConfig:
    """Validate a decoded TOML document; raise ConfigError listing every problem."""
    try:
        cfg = HlcopyConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_key_path(e['loc'])}: {_message(e)}" for e in exc.errors()[:50]]
        raise ConfigError(problems, source) from exc
    except RecursionError as exc:
        raise ConfigError(["the document is nested too deeply"], source) from exc
    problems = _rule_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def parse_toml(text: str, source: str | None = None) -> HlcopyConfig:
    """Parse and validate TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 puts the position only in the message: "... (at line 3, column 5)".
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            msg = f"line {m[1]}, column {m[2]}: TOML syntax error: {msg[: m.start()].strip()}"
        else:
            msg = f"TOML syntax error: {msg}"
        raise ConfigError([msg], source) from exc
    except RecursionError as exc:
        # tomllib recurses once per nesting level: a file of [[[[... exhausts the stack.
        raise ConfigError(["TOML syntax error: the document is nested too deeply"], source) from exc
    return parse_config(data, source)


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The file's text, refusing anything that is not a small regular UTF-8 file.

    Opened non-blocking, so a FIFO at the path cannot hang us; checked with fstat on the opened
    descriptor, so the file cannot be swapped between the check and the read.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], str(p)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(["cannot read the file: not a regular file"], str(p))
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"cannot read the file: larger than {MAX_CONFIG_BYTES // 1024} KiB"], str(p)
            )
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc}"], str(p)) from exc
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"cannot read the file: larger than {MAX_CONFIG_BYTES // 1024} KiB"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"cannot read the file: not UTF-8 text ({exc.reason})"], str(p)) from exc


def load_config(path: str | os.PathLike[str]) -> HlcopyConfig:
    """Read and validate the TOML file at ``path``."""
    return parse_toml(read_config_text(path), str(Path(path)))


async def load_config_async(
    path: str | os.PathLike[str],
    timeout_s: float = 5.0,
    loader: Callable[[str | os.PathLike[str]], HlcopyConfig] = load_config,
) -> HlcopyConfig:
    """``loader(path)`` off the event loop, given up after ``timeout_s``.

    It runs in a daemon thread of its own, not the loop's executor: a read stuck on a hung file
    system cannot be cancelled, and an executor thread would then hold up shutdown.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[HlcopyConfig] = loop.create_future()

    def deliver(result: HlcopyConfig | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def work() -> None:
        try:
            result: HlcopyConfig | None = loader(path)
            error: BaseException | None = None
        except BaseException as exc:  # handed to the loop, which re-raises it there
            result, error = None, exc
        # A read that outlived its timeout may find the loop gone: nobody waits for it then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=work, name="hlcopy-config-read", daemon=True).start()
    try:
        async with asyncio.timeout(timeout_s):
            return await future
    except TimeoutError:
        raise ConfigError(
            [f"cannot read the file: no answer within {timeout_s:g} s (hung file system?)"],
            str(Path(path)),
        ) from None


def changed_sections(old: HlcopyConfig, new: HlcopyConfig) -> list[str]:
    """Names of top-level sections that differ between two configs."""
    return [name for name in HlcopyConfig.model_fields if getattr(old, name) != getattr(new, name)]
