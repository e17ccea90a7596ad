"""What ``hlcopy demo`` tells its user while it runs: the leaderboard as it fills, whom the
account copies and fades, and a backtest of the top trader.

Read from the daemon's own public API, as any client would, so the demo shows what a user of
the API sees and nothing the API does not serve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import aiohttp

from hlcopy.api.backtest import follow_body
from hlcopy.clock import SYSTEM, Clock

EVERY_S = 30.0


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:+.1f}%"


def _fraction(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def _usd(value: Any) -> str:
    return "-" if value is None else f"{Decimal(value):,.0f}"


def render_board(
    elapsed_s: float,
    stats: Mapping[str, Any],
    board: Mapping[str, Any],
    losers: Mapping[str, Any],
) -> str:
    """A few lines for a terminal: the best traders to copy and the worst to fade."""
    components = stats.get("components", {})
    discovered = components.get("discovery", {}).get("addresses", 0)
    tracker = components.get("tracker", {})
    minutes, seconds = divmod(int(elapsed_s), 60)
    budget = stats.get("budget", {})
    head = (
        f"hlcopy demo: {minutes}:{seconds:02d} in: {discovered} traders discovered, "
        f"{tracker.get('scored', 0)} scorings, {board.get('total', 0)} ranked "
        f"({board.get('window', 'month')}), REST budget {_fraction(budget.get('utilization'))} "
        "used; /api/v1/leaderboard"
    )
    rows: Sequence[Mapping[str, Any]] = board.get("rows", ())
    if not rows:
        return head + "\n  (no complete score yet: portfolios first, then the top traders' fills)"
    columns = "     #  trader        return  drawdown  win%  trades  risk      style     score"
    lines = [head, columns]
    for i, r in enumerate(rows, 1):
        win = "-" if r.get("win_rate") is None else f"{float(r['win_rate']) * 100:.0f}"
        lines.append(
            f"  {i:4d}  {_short(r['address'])}  {_pct(r.get('return')):>7}  "
            f"{_fraction(r.get('max_drawdown')):>8}  {win:>4}  {r.get('trade_count') or '-':>6}  "
            f"{r.get('risk_level') or '-':<8}  {r.get('style') or '-':<8}  "
            f"{float(r['score']):6.2f}"
        )
    if any(float(r["score"]) < 0 for r in rows):
        lines.append(
            "  (a score below 0: a record still too short or erratic to be sure of; the score is "
            "a lower bound, see the README's 'The score')"
        )
    worst: Sequence[Mapping[str, Any]] = losers.get("rows", ())
    if worst:
        fade = ", ".join(
            f"{_short(r['address'])} {_pct(r.get('return'))} on {_usd(r.get('account_value'))} USD"
            for r in worst
        )
        lines.append(f"  worst losers (to fade; /api/v1/losers): {fade}")
    return "\n".join(lines)


def render_backtest(job: Mapping[str, Any]) -> str:
    """One line for a finished backtest of the leader the demo copies (see ``backtest_body``)."""
    who = ", ".join(_short(a) for a in job.get("addresses", ()))
    if job.get("state") != "done" or not job.get("result"):
        return f"hlcopy demo: backtest of {who}: {job.get('state')} {job.get('error') or ''}"
    r = job["result"]["results"][0]
    parts = ", ".join(f"{k} {float(v):+.2f}" for k, v in r["parts"].items() if float(v))
    return (
        f"hlcopy demo: backtest of copying {who} over its last day by its follow's rules"
        f" ({r.get('options', '')}; GET /api/v1/backtest/{job['id']}, or the dashboard's"
        f" Backtest): our PnL {float(r['pnl']):+.2f} USD ({_pct(r['return'])}) against the"
        f" leader's {float(r['leader_scaled_pnl']):+.2f} "
        f"scaled; {r['orders']} orders, gap {float(r['gap']):+.2f}"
        + (f" ({parts})" if parts else "")
    )


def _signed(value: Any) -> str:
    return "-" if value is None else f"{Decimal(value):+,.2f}"


def _money(value: Any) -> str:
    return "-" if value is None else f"{Decimal(value):,.2f}"


def render_copying(follows: Mapping[str, Any], positions: Mapping[str, Any]) -> str:
    """One line: whom the account copies or fades (the auto-follow rules' picks), its paper
    equity and PnL, and what it holds."""
    rows: Sequence[Mapping[str, Any]] = follows.get("follows", ())
    if not rows:
        return (
            "hlcopy demo: no follow yet: the auto-follow rules pick leaders once the board has "
            "them; /api/v1/follows"
        )
    who = []
    for f in rows:
        inverse = f.get("spec", {}).get("mode") == "inverse"
        state = "paused" if f.get("paused") else "winding down" if f.get("winding_down") else ""
        label = f"{'fading' if inverse else 'copying'} {_short(str(f.get('leader', '')))}"
        who.append(f"{label} ({state})" if state else label)
    held = [
        f"{p['coin']} {Decimal(p['szi']):+f}"
        for p in positions.get("positions", ())
        if Decimal(p.get("szi", 0)) != 0
    ]
    return (
        f"hlcopy demo: {positions.get('mode', 'paper')}: {', '.join(who)}; equity "
        f"{_usd(positions.get('equity'))} USD, realised {_signed(positions.get('realized_pnl'))}, "
        f"fees {_money(positions.get('fees'))}; holds {', '.join(held) or 'nothing yet'}; "
        "/api/v1/positions"
    )


async def narrate(
    api_url: str,
    token: str | None,
    *,
    every_s: float = EVERY_S,
    top: int = 5,
    clock: Clock = SYSTEM,
) -> None:
    """Print the board every ``every_s`` seconds, until cancelled."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = clock.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    backtest: str | None = None  # the id of the one backtest the demo runs, once it started
    async with aiohttp.ClientSession(api_url, headers=headers, timeout=timeout) as http:
        while True:
            await clock.sleep(every_s)
            try:
                stats = await _get(http, "/api/v1/stats")
                board = await _get(http, f"/api/v1/leaderboard?limit={top}")
                losers = await _get(http, "/api/v1/losers?limit=3")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue  # starting, stopping or busy: the next round will tell
            print(render_board(clock.monotonic() - started, stats, board, losers), flush=True)
            try:
                follows = await _get(http, "/api/v1/follows")
                positions = await _get(http, "/api/v1/positions")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue  # loading: the next round will tell
            print(render_copying(follows, positions), flush=True)
            backtest = await _backtest_top(http, board, follows, backtest)


def backtest_body(board: Mapping[str, Any], follows: Mapping[str, Any]) -> dict[str, Any] | None:
    """The demo's one backtest: the best-ranked leader it copies, over its last day, by that
    follow's rules (an address's defaults would copy it at its own size: a ratio of 1); None
    while it copies nobody on the board."""
    copied = {
        f["leader"]: f["spec"]
        for f in follows.get("follows", ())
        if f.get("active") and f.get("spec", {}).get("mode") == "copy"
    }
    for row in board.get("rows", ()):
        spec = copied.get(row["address"])
        if spec is not None:
            return {"addresses": [row["address"]], "days": 1, **follow_body(spec)}
    return None


async def _backtest_top(
    http: aiohttp.ClientSession,
    board: Mapping[str, Any],
    follows: Mapping[str, Any],
    job_id: str | None,
) -> str | None:
    """Once the demo copies a leader on the board: backtest copying it over its last day
    through the API, and print the result when it is done (an empty string once printed)."""
    try:
        body = backtest_body(board, follows) if job_id is None else None
        if body is not None:
            async with http.post("/api/v1/backtest", json=body) as r:
                if r.status != 202:
                    return None  # another one runs, or none can: try again next round
                started: dict[str, Any] = await r.json()
                return str(started["id"])
        if job_id:
            job = await _get(http, f"/api/v1/backtest/{job_id}")
            if job.get("state") in ("queued", "running"):
                return job_id
            print(render_backtest(job), flush=True)
            return ""
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        pass
    return job_id


async def _get(http: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    async with http.get(path) as r:
        if r.status != 200:
            raise ValueError(f"{path}: HTTP {r.status}")
        body: dict[str, Any] = await r.json()
        return body
