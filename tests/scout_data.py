"""Realistic traders for the leaderboard's tests: generated portfolios, fills and account
snapshots, scored by the real analytics (``analyze``), plus the recorded fixture trader."""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from hlcopy.hl.parse import parse_fill, parse_portfolio
from hlcopy.model import AccountState, Fill, MarginSummary, Portfolio, PortfolioPeriod, UserRole
from hlcopy.scout.analytics import WINDOWS, TraderMetrics, analyze

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hyperliquid"
HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_760_000_000_000
KINDS = ("skilled", "unskilled", "lucky", "maker", "vault", "new", "whale")
SZ_DECIMALS = {"BTC": 5, "ETH": 4, "SOL": 2, "DOGE": 0}
PRICES = {"BTC": Decimal(60000), "ETH": Decimal(3000), "SOL": Decimal(150), "DOGE": Decimal("0.2")}


@dataclass(frozen=True, slots=True)
class Trader:
    address: str
    kind: str
    metrics: dict[str, TraderMetrics]
    account_value: Decimal | None
    updated_ms: int


def address(rng: random.Random) -> str:
    return f"0x{rng.getrandbits(160):040x}"


def _portfolio(rng: random.Random, mu: float, sigma: float, start: float) -> Portfolio:
    """One hourly equity path over 120 days, sampled like the exchange's windows."""
    hours = 120 * 24
    value, pnl = start, 0.0
    path: list[tuple[int, float, float]] = []
    for h in range(hours + 1):
        t = NOW - (hours - h) * HOUR
        if h:
            r = rng.gauss(mu, sigma)
            pnl += value * r
            value = max(1.0, value * (1 + r))
            if rng.random() < 0.002:  # a deposit: moves the value, not the PnL
                value += start * 0.5
        path.append((t, value, pnl))

    def period(step_h: int, span_h: int, vlm: float) -> PortfolioPeriod:
        pts = path[-span_h - 1 :: step_h]
        return PortfolioPeriod(
            account_value_history=tuple((t, Decimal(f"{v:.2f}")) for t, v, _ in pts),
            pnl_history=tuple((t, Decimal(f"{p:.2f}")) for t, _, p in pts),
            vlm=Decimal(f"{vlm:.2f}"),
        )

    turnover = start * rng.uniform(0.5, 20)
    return Portfolio(
        {
            "day": period(2, 24, turnover / 30),
            "week": period(4, 7 * 24, turnover / 4),
            "month": period(24, 30 * 24, turnover),
            "allTime": period(48, hours, turnover * 4),
        }
    )


def _fills(rng: random.Random, kind: str, edge: float, n_trips: int) -> list[Fill]:
    fills: list[Fill] = []
    tid = rng.getrandbits(40)
    maker = kind == "maker"
    span = 29 * DAY
    for i in range(n_trips):
        coin = rng.choice(list(SZ_DECIMALS))
        px = PRICES[coin]
        sz = (Decimal(rng.randint(1, 400)) / 100 * 1000 / px).quantize(
            Decimal(1).scaleb(-SZ_DECIMALS[coin])
        ) or Decimal(1).scaleb(-SZ_DECIMALS[coin])
        opened = NOW - span + i * span // max(1, n_trips)
        hold = rng.randint(20, 120) * 1000 if maker else rng.randint(5 * 60, 3 * DAY // 1000) * 1000
        closed = min(NOW - 1, opened + hold)
        result = Decimal(f"{rng.gauss(edge, 25):.2f}")
        side, back = ("B", "A") if rng.random() < 0.5 else ("A", "B")
        signed = sz if side == "B" else -sz
        crossed = rng.random() < (0.1 if maker else 0.9)
        for t, s, start, pnl in (
            (opened, side, Decimal(0), Decimal(0)),
            (closed, back, signed, result),
        ):
            tid += 1
            fills.append(
                Fill(
                    coin=coin,
                    px=px,
                    sz=sz,
                    side=s,  # type: ignore[arg-type]
                    time_ms=t,
                    start_position=start,
                    dir=None,
                    closed_pnl=pnl,
                    hash=None,
                    oid=tid,
                    tid=tid,
                    crossed=crossed,
                    fee=Decimal("0.05"),
                )
            )
    return fills


def _snapshots(rng: random.Random, value: float, leverage: float) -> list[AccountState]:
    out = []
    for i in range(6):
        lev = max(0.0, rng.gauss(leverage, leverage / 4))
        v = Decimal(f"{value:.2f}")
        ntl = Decimal(f"{value * lev:.2f}")
        margin = (ntl / 10).quantize(Decimal("0.01"))
        out.append(
            AccountState((), MarginSummary(v, margin, ntl, v), None, None, None, NOW - i * DAY)
        )
    return out


def generated(rng: random.Random, kind: str | None = None) -> Trader:
    """A trader of one ``kind`` (random if None), scored by ``analyze``."""
    kind = kind or rng.choice(KINDS)
    start = rng.uniform(2_000, 200_000) * (50 if kind == "whale" else 1)
    mu, sigma, edge, trips, lev = {
        "skilled": (0.0006, 0.004, 30.0, rng.randint(12, 60), 3.0),
        "unskilled": (-0.0008, 0.006, -25.0, rng.randint(12, 60), 8.0),
        "lucky": (0.0, 0.01, 0.0, rng.randint(1, 4), 15.0),
        "maker": (0.0001, 0.001, 2.0, rng.randint(120, 200), 1.0),
        "vault": (0.0004, 0.003, 20.0, rng.randint(12, 40), 2.0),
        "new": (0.001, 0.005, 10.0, rng.randint(0, 3), 2.0),
        "whale": (0.0002, 0.002, 100.0, rng.randint(8, 30), 1.5),
    }[kind]
    portfolio = _portfolio(rng, mu, sigma, start)
    fills = _fills(rng, kind, edge, trips)
    metrics = analyze(
        portfolio,
        now_ms=NOW,
        fills=None if kind == "new" and rng.random() < 0.5 else fills,
        snapshots=_snapshots(rng, start, lev),
        role=UserRole("vault" if kind == "vault" else "user"),
        follower_equity=Decimal(10_000),
        sz_decimals=SZ_DECIMALS,
    )
    if kind == "new" and rng.random() < 0.5:
        metrics = {w: m for w, m in metrics.items() if w in ("day", "week")}
    value = metrics["day"].account_value if "day" in metrics else None
    return Trader(address(rng), kind, metrics, value, NOW - rng.randint(0, 600_000))


def recorded() -> Trader:
    """The real trader of the recorded fixtures."""

    def raw(name: str) -> Any:
        return json.loads((FIXTURES / name).read_text())["response"]

    portfolio = parse_portfolio(raw("info_portfolio.json"))
    fills = [parse_fill(f) for f in raw("info_user_fills.json")]
    now = max(f.time_ms for f in fills)
    metrics = analyze(portfolio, now_ms=now, fills=fills)
    return Trader("0x" + "ab" * 20, "recorded", metrics, None, now)


def population(n: int, seed: int = 7) -> list[Trader]:
    """``n`` traders of every kind (the recorded one among them)."""
    return list(_population(n, seed))


@functools.cache
def _population(n: int, seed: int) -> tuple[Trader, ...]:
    rng = random.Random(seed)
    out = [recorded()]
    while len(out) < n:
        out.append(generated(rng, KINDS[len(out) % len(KINDS)]))
    return tuple(out)


def stored_stats(trader: Trader) -> dict[str, Any]:
    """``traders.stats`` as the tracker writes it."""
    return {w: m.as_dict() for w, m in trader.metrics.items() if w in WINDOWS}
