"""The online backtest against the simulator over HTTP: a synthetic trader's fills fetched with
``userFillsByTime`` page by page (more than one answer of 2,000), candles and funding, every
request charged to the weight budget; a costless copy realises the simulated exchange's own
``closedPnl`` on every round trip, and with costs the gap splits into parts that add up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext

import pytest
from hlcopy.backtest import (
    LeaderHistory,
    MarketData,
    build_options,
    chart_svg,
    fetch_history,
    prepare,
    run_backtest,
)
from hlcopy.budget import WeightBudget
from hlcopy.hl import InfoClient, new_session
from hlcopy.scout.analytics import round_trips
from hlcopy.sim import SimConfig, Simulator

from tests.unit.test_backtest import COSTLESS as UNIT_COSTLESS
from tests.unit.test_backtest import our_fills_as_exchange_fills

D = Decimal
CENT = D("0.01")
DAY_MS = 86_400_000
# The unit tests' costless copy, blind to what the leader held before the window.
COSTLESS = {**UNIT_COSTLESS, "initial": "ignore"}
WEIGHT = 1_000_000  # the budget is checked, not waited for: a generous one on both sides


@dataclass
class Fetched:
    address: str
    since: int
    until: int
    truth_tids: list[int]
    leader: LeaderHistory
    market: MarketData
    phases: list[str]
    counts: dict[str, int]


async def fetch() -> Fetched:
    async with Simulator(
        SimConfig(port=0, realtime=False, traders=20, weight_per_minute=WEIGHT)
    ) as sim:
        now = sim.engine.now_ms
        # The busiest synthetic trader of the last 90 days, over a window with 2,100 fills.
        truth, address = max(
            (
                (sim.pasts.fills_between(t.address, now - 90 * DAY_MS, None), t.address)
                for t in sim.population.traders
            ),
            key=lambda pair: len(pair[0]),
        )
        assert len(truth) > 2_100
        since = truth[-2_100][4]
        phases: list[str] = []
        budget = WeightBudget(WEIGHT)
        async with new_session() as session:
            info = InfoClient(session, sim.url, budget)
            leaders, market = await fetch_history(
                info,
                [address],
                since,
                now,
                latency_ms=200,
                progress=lambda phase, done, total: phases.append(phase),
            )
        counts = {
            "requests": info.requests,
            "budget_requests": budget.stats()["lanes"]["enrichment"]["requests"],
            "sim_requests": sim.stats["info_requests"],
            "rate_limited": sim.stats["rate_limited"],
        }
        tids = [r[12] for r in sim.pasts.fills_between(address, since, now)]
        return Fetched(address, since, now, tids, leaders[0], market, phases, counts)


@pytest.fixture(scope="module")
def fetched() -> Fetched:
    """One online fetch (about 5 s: 1-minute candles over 52 days), shared by the tests."""
    return asyncio.run(fetch())


@pytest.mark.slow(10)  # most of it the module's fetch
def test_fills_are_fetched_page_by_page_within_the_budget(
    fetched: Fetched,
) -> None:
    address, since, now, leader, market, phases, counts = (
        fetched.address,
        fetched.since,
        fetched.until,
        fetched.leader,
        fetched.market,
        fetched.phases,
        fetched.counts,
    )
    assert len(leader.fills) == len(fetched.truth_tids) == 2_100
    assert [f.tid for f in leader.fills] == fetched.truth_tids
    # Two answers: 2,000 fills, then the rest from the last time seen (deduplicated).
    pages = [p for p in phases if p.startswith(f"fills of {address} (")]
    assert pages == [f"fills of {address} (2000)", f"fills of {address} (2100)"]
    # Every request went through the budget's lowest lane, and the exchange limited none.
    assert counts["requests"] == counts["budget_requests"] == counts["sim_requests"]
    assert counts["rate_limited"] == 0
    coins = {f.coin for f in leader.fills}
    assert set(market.paths) == coins
    assert set(market.funding) == coins
    for coin in coins:
        # 1-minute candles around the fills (the latency's prices), hourly funding.
        assert len(market.paths[coin]) > 2 * (now - since) // 3_600_000
        assert len(market.funding[coin]) >= (now - since) // 3_600_000 - 1
        assert market.assets[coin].sz_decimals >= 0


def test_a_costless_copy_realises_the_exchanges_closed_pnl_on_every_round_trip(
    fetched: Fetched,
) -> None:
    address, since, now, leader, market = (
        fetched.address,
        fetched.since,
        fetched.until,
        fetched.leader,
        fetched.market,
    )
    options = build_options([address], COSTLESS)
    result = run_backtest([leader], market, options, since, now)
    theirs = round_trips(leader.fills)
    ours = {
        (t.coin, t.open_ms, t.close_ms): t for t in round_trips(our_fills_as_exchange_fills(result))
    }
    assert len(theirs) > 1_000
    for trip in theirs:
        copy = ours[(trip.coin, trip.open_ms, trip.close_ms)]
        assert copy.closed_pnl.quantize(CENT) == trip.closed_pnl.quantize(CENT), trip
    # Nothing between the copy and the leader but funding (the leader scaled pays none) and,
    # when the window opens on a position of the leader's (ignored here), that entry.
    held = {k: v for k, v in prepare([leader], since, now).initial.items() if v}
    parts = result.parts
    assert (parts["latency_slippage"], parts["skipped"], parts["limits"]) == (D(0), D(0), D(0))
    assert (parts["entry"] != 0) == bool(held), held
    assert result.gap.quantize(CENT) == (parts["fees_funding"] + parts["entry"]).quantize(CENT)
    assert result.funding != 0
    assert result.fees == 0


def test_a_window_opening_on_a_leaders_position_puts_its_move_in_entry(
    fetched: Fetched,
) -> None:
    """Ignored, what the leader held at the window's start is the gap's "entry" part; with no
    costs, nothing else but funding stands between the copy and the leader."""
    leader, now = fetched.leader, fetched.until
    since = next(
        f.time_ms for f in leader.fills if any(prepare([leader], f.time_ms, now).initial.values())
    )
    options = build_options([fetched.address], COSTLESS)
    result = run_backtest([leader], fetched.market, options, since, now)
    parts = result.parts
    assert parts["entry"] != 0
    assert (parts["latency_slippage"], parts["skipped"], parts["limits"]) == (D(0), D(0), D(0))
    assert result.gap.quantize(CENT) == (parts["fees_funding"] + parts["entry"]).quantize(CENT)


@pytest.mark.parametrize(
    "given",
    [{}, {"latency_ms": 1500, "slippage_bps": "5", "ratio": "0.05", "risk": False}],
    ids=["defaults", "slow-small"],
)
def test_online_with_costs_the_parts_add_up_to_the_gap(
    fetched: Fetched,
    given: dict[str, object],
) -> None:
    address = fetched.address
    options = build_options([address], given)
    result = run_backtest([fetched.leader], fetched.market, options, fetched.since, fetched.until)
    assert result.source == "candles"
    assert result.filled > 0
    assert result.fees > 0
    assert result.funding != 0
    with localcontext(Context(prec=200)):
        assert sum(result.parts.values(), D(0)) == result.gap
    assert result.parts["latency_slippage"] != 0
    assert result.curve[-1].ours.quantize(CENT) == result.pnl.quantize(CENT)
    svg = chart_svg([result], [address])
    assert svg.count("<polyline") == 2
