"""Acceptance: ten hours of market time with the default population — what ``hlcopy sim
--speed 60`` shows in ten minutes — stepped as fast as the machine allows (one-second ticks),
then read through the simulator's own ``/info`` answers.

Holding times, leverage, liquidations, the maker/taker mix, money moving in and out, positions
built over several fills and held together, resting orders, portfolio windows at the exchange's
sampling, and the ground truth agreeing with the portfolio arithmetic.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hlcopy.sim import SimConfig, Simulator, views

D = Decimal
OPENS = 1_790_000_000_000
HOURS = 10
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hyperliquid"


@dataclass
class Run:
    sim: Simulator
    leverage: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # kinds and values
    effective: dict[str, float] = field(default_factory=dict)  # most notional / account value
    most_coins: dict[str, int] = field(default_factory=dict)  # positions held at once
    _fills: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def info(self, body: dict[str, Any]) -> Any:
        """What ``POST /info`` answers (the server's own dispatcher)."""
        return views.answer(self.sim.engine, body, self.sim.pasts)

    @property
    def kinds(self) -> dict[str, str]:
        return self.sim.population.archetypes()

    def fills(self, address: str) -> list[dict[str, Any]]:
        """The account's fills since the live market opened, paging through userFillsByTime
        (2000 a page, bounds inclusive: the boundary fills come twice and are kept once)."""
        cached = self._fills.get(address)
        if cached is not None:
            return cached
        out: list[dict[str, Any]] = []
        seen: set[tuple[int, int]] = set()
        start = self.sim.engine.start_ms
        while True:
            page = self.info({"type": "userFillsByTime", "user": address, "startTime": start})
            for f in page:
                if (f["tid"], f["oid"]) not in seen:
                    seen.add((f["tid"], f["oid"]))
                    out.append(f)
            if len(page) < 2000:
                break
            start = page[-1]["time"]
        self._fills[address] = out
        return out


pytestmark = pytest.mark.slow(16)  # most of it building the module's market


@pytest.fixture(scope="module")
def run() -> Run:
    sim = Simulator(SimConfig(realtime=False, start_ms=OPENS, tick_ms=1000))
    state = Run(sim)
    for half_hour in range(HOURS * 2):
        sim.step(1800)
        for address in sim.population.archetypes():
            ch = views.clearinghouse_state(sim.engine, sim.engine.accounts[address])
            held = ch["assetPositions"]
            seen = state.leverage.setdefault(address, set())
            for p in held:
                lev = p["position"]["leverage"]
                seen.add((lev["type"], lev["value"]))
            value = D(ch["marginSummary"]["accountValue"])
            if value > 0:
                ratio = float(D(ch["marginSummary"]["totalNtlPos"]) / value)
                state.effective[address] = max(state.effective.get(address, 0.0), ratio)
            state.most_coins[address] = max(state.most_coins.get(address, 0), len(held))
        assert half_hour < 2 * HOURS
    return state


def round_trips(fills: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(open time, close time) of each position that went from flat to flat."""
    opened: dict[str, int] = {}
    out = []
    for f in fills:
        start = D(f["startPosition"])
        after = start + D(f["sz"]) * (1 if f["side"] == "B" else -1)
        coin = f["coin"]
        if start == 0:
            opened[coin] = f["time"]
        elif after == 0 or (after > 0) != (start > 0):
            if coin in opened:
                out.append((opened.pop(coin), f["time"]))
            if after != 0:
                opened[coin] = f["time"]
    return out


def test_skilled_traders_hold_for_more_than_half_an_hour(run: Run) -> None:
    holds = [
        (close - open_) / 60_000
        for address, kind in run.kinds.items()
        if kind == "skilled"
        for open_, close in round_trips(run.fills(address))
    ]
    assert len(holds) >= 10
    assert statistics.median(holds) >= 30
    noise = [
        (c - o) / 60_000
        for a, k in run.kinds.items()
        if k == "noise"
        for o, c in round_trips(run.fills(a))
    ]
    assert statistics.median(noise) < statistics.median(holds)  # holding times differ by kind
    assert max(holds) > 240  # and spread over hours


def test_a_tenth_of_accounts_trade_above_five_times_leverage(run: Run) -> None:
    above = [a for a, seen in run.leverage.items() if any(v > 5 for _, v in seen)]
    assert len(above) >= 0.1 * len(run.kinds)
    effective = [a for a, ratio in run.effective.items() if ratio > 5]
    assert effective  # notional over account value, not only the setting


def test_leverage_ranges_from_1x_to_the_maximum_in_both_margin_modes(run: Run) -> None:
    values = {v for seen in run.leverage.values() for _, v in seen}
    modes = {m for seen in run.leverage.values() for m, _ in seen}
    assert modes == {"cross", "isolated"}
    assert min(values) <= 2
    assert {40, 25} & values  # somebody runs BTC or ETH at its maximum


def test_someone_is_liquidated(run: Run) -> None:
    liquidated = {
        a
        for a in run.kinds
        for f in run.fills(a)
        if "liquidation" in f and f["liquidation"]["liquidatedUser"] == a
    }
    assert liquidated
    for address in liquidated:
        ledger = run.info(
            {"type": "userNonFundingLedgerUpdates", "user": address, "startTime": OPENS}
        )
        assert any(u["delta"]["type"] == "liquidation" for u in ledger)


def test_the_taker_share_of_non_market_maker_fills_is_between_30_and_80_percent(run: Run) -> None:
    crossed = [
        f["crossed"] for a, k in run.kinds.items() if k != "market_maker" for f in run.fills(a)
    ]
    share = sum(crossed) / len(crossed)
    assert 0.3 <= share <= 0.8


def test_at_least_15_percent_of_accounts_move_money(run: Run) -> None:
    movers = [
        a
        for a in run.kinds
        if any(
            u["delta"]["type"] in ("deposit", "withdraw")
            for u in run.info(
                {"type": "userNonFundingLedgerUpdates", "user": a, "startTime": OPENS}
            )
        )
    ]
    assert len(movers) >= 0.15 * len(run.kinds)


def test_positions_are_built_over_several_fills_and_held_together(run: Run) -> None:
    built = 0
    for address, kind in run.kinds.items():
        if kind not in ("skilled", "whale", "vault"):
            continue
        opening_fills: dict[str, int] = {}
        for f in run.fills(address):
            if f["dir"].startswith("Open"):
                opening_fills[f["coin"]] = opening_fills.get(f["coin"], 0) + 1
        built += sum(1 for n in opening_fills.values() if n >= 2)
    assert built >= 5
    assert sum(1 for n in run.most_coins.values() if n >= 2) >= 10


def test_limit_orders_rest_and_fill_later(run: Run) -> None:
    rested = 0
    for address, kind in run.kinds.items():
        if kind in ("market_maker", "noise"):
            continue
        for f in run.fills(address):
            if f["crossed"]:
                continue
            status = run.info({"type": "orderStatus", "user": address, "oid": f["oid"]})
            if status["status"] == "order" and status["order"]["order"]["timestamp"] < f["time"]:
                rested += 1
    assert rested >= 10


def test_funding_is_paid_every_hour_to_whoever_holds_a_position(run: Run) -> None:
    hours: set[int] = set()
    for address in run.kinds:
        for row in run.info({"type": "userFunding", "user": address, "startTime": OPENS}):
            assert row["time"] % 3_600_000 == 0
            hours.add(row["time"])
    assert len(hours) == HOURS


FIXTURE_POINTS = {
    name: len(data["accountValueHistory"])
    for name, data in json.loads((FIXTURES / "info_portfolio.json").read_text())["response"]
}


def test_portfolio_windows_differ_and_have_the_exchange_point_counts(run: Run) -> None:
    for address, kind in run.kinds.items():
        if kind == "market_maker":
            continue
        periods = dict(run.info({"type": "portfolio", "user": address}))
        assert set(periods) == set(FIXTURE_POINTS)
        for name in ("day", "week", "month", "allTime"):
            history = periods[name]["accountValueHistory"]
            assert abs(len(history) - FIXTURE_POINTS[name]) <= 0.3 * FIXTURE_POINTS[name], name
            assert [t for t, _ in history] == sorted(t for t, _ in history)
            assert history[-1][0] == run.sim.engine.now_ms
            assert periods[name]["pnlHistory"][0][1] == "0.0"
        spans = [
            periods[n]["accountValueHistory"][-1][0] - periods[n]["accountValueHistory"][0][0]
            for n in ("day", "week", "month", "allTime")
        ]
        assert spans == sorted(spans)
        assert len(set(spans)) == 4  # four different windows
        assert spans[0] >= 86_400_000 - 2 * 3_600_000
        assert spans[3] >= 90 * 86_400_000


def product_return(period: dict[str, Any]) -> float:
    """The chain-linked return a client computes from the portfolio strings."""
    values = [D(v) for _, v in period["accountValueHistory"]]
    pnls = [D(p) for _, p in period["pnlHistory"]]
    index = D(1)
    for i in range(1, len(values)):
        if values[i - 1] > 0:
            index *= 1 + (pnls[i] - pnls[i - 1]) / values[i - 1]
    return float(index - 1)


def test_the_truth_agrees_with_the_portfolio_and_with_itself(run: Run) -> None:
    engine, pasts = run.sim.engine, run.sim.pasts
    for address in run.kinds:
        truth = views.account_truth(engine, pasts, engine.accounts[address])
        periods = dict(run.info({"type": "portfolio", "user": address}))
        for name, window in truth["windows"].items():
            assert window["points"] == len(periods[name]["accountValueHistory"])
            assert product_return(periods[name]) == pytest.approx(window["return"], abs=1e-9)
        identity = (
            D(truth["netDeposits"])
            + D(truth["realizedPnl"])
            - D(truth["fees"])
            + D(truth["funding"])
            + D(truth["unrealizedPnl"])
            + D(truth["badDebtForgiven"])
        )
        assert abs(identity - D(truth["accountValue"])) < D("0.01"), address
        assert D(truth["pnl"]) == D(truth["accountValue"]) - D(truth["netDeposits"])


def test_vaults_sub_accounts_and_agents_have_their_roles(run: Run) -> None:
    engine = run.sim.engine
    roles = {a: run.info({"type": "userRole", "user": a})["role"] for a in run.kinds}
    assert {a for a, r in roles.items() if r == "vault"} == {
        a for a, k in run.kinds.items() if k == "vault"
    }
    subs = [a for a, r in roles.items() if r == "subAccount"]
    assert subs
    for sub in subs:
        master = run.info({"type": "userRole", "user": sub})["data"]["master"]
        assert master in run.kinds
    for agent, master in list(engine.agents.items())[:5]:
        assert run.info({"type": "userRole", "user": agent}) == {
            "role": "agent",
            "data": {"user": master},
        }
        assert run.info({"type": "clearinghouseState", "user": agent})["assetPositions"] == []
    named = [(m, a, n) for m, agents in engine.agent_names.items() for a, n in agents.items() if n]
    assert named
    master, agent, name = named[0]
    listed = run.info({"type": "extraAgents", "user": master})
    assert {"name": name, "address": agent, "validUntil": None} in listed


def test_the_truth_as_served_is_the_last_portfolio_a_client_read() -> None:
    sim = Simulator(SimConfig(realtime=False, traders=20, start_ms=OPENS, tick_ms=1000))
    sim.step(600)
    engine, pasts = sim.engine, sim.pasts
    address = next(
        a for a, acct in engine.accounts.items() if any(p.szi for p in acct.positions.values())
    )
    acct = engine.accounts[address]
    periods = dict(views.answer(engine, {"type": "portfolio", "user": address}, pasts))
    sim.step(600)  # the market moves on; the open positions with it
    served = views.account_truth(engine, pasts, acct, served=acct.served[-1])
    now = views.account_truth(engine, pasts, acct)
    for name, window in served["windows"].items():
        assert product_return(periods[name]) == pytest.approx(window["return"], abs=1e-9)
    assert served["windows"]["day"]["end"] < now["windows"]["day"]["end"]


def test_positions_at_a_time_are_rebuilt_from_the_fills() -> None:
    sim = Simulator(SimConfig(realtime=False, traders=20, start_ms=OPENS, tick_ms=1000))
    sim.step(900)
    engine = sim.engine
    traded = [a for a in engine.accounts.values() if len(a.fills) >= 4]
    assert traded
    for acct in traded:
        held = {c: str(p.szi.normalize()) for c, p in acct.positions.items() if p.szi}
        perps = {c: v for c, v in held.items() if not engine.by_name[c].is_spot}
        assert views.positions_at(engine, acct, engine.now_ms) == perps
        # Halfway through its fills: each coin where its last fill so far left it.
        fills = list(acct.fills)
        half = fills[len(fills) // 2][4]
        want: dict[str, Decimal] = {}
        for coin, _, sz, is_buy, t, start, *_ in fills:
            if t <= half and not engine.by_name[coin].is_spot:
                want[coin] = start + (Decimal(sz) if is_buy else -Decimal(sz))
        got = views.positions_at(engine, acct, half)
        for coin, szi in want.items():
            assert Decimal(got.get(coin, "0")) == szi, (acct.address, coin)
