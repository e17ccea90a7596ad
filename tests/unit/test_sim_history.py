"""The simulator's past: ninety days per synthetic account, deterministic, built on demand, with
a ledger that adds up, archetypes that earn (or lose) what they are named for, and candles of
every interval from one price path."""

from __future__ import annotations

import itertools
import statistics
from decimal import Decimal

import pytest
from hlcopy.sim import SimConfig, Simulator, views
from hlcopy.sim.candles import INTERVAL_MINUTES, merge
from hlcopy.sim.engine import fill_wire
from hlcopy.sim.fmt import MICRO
from hlcopy.sim.history import Pasts
from hlcopy.sim.truth import chain

D = Decimal
OPENS = 1_790_000_000_000
HOUR = 3_600_000


pytestmark = pytest.mark.slow(8)  # most of it building the module's market


@pytest.fixture(scope="module")
def sim() -> Simulator:
    """The default population, not started: only its pasts are looked at."""
    return Simulator(SimConfig(realtime=False, start_ms=OPENS))


def kinds(sim: Simulator) -> dict[str, str]:
    return sim.population.archetypes()


def of_kind(sim: Simulator, kind: str) -> list[str]:
    return [a for a, k in kinds(sim).items() if k == kind]


def fresh_pasts(sim: Simulator) -> Pasts:
    return Pasts(
        sim.config.seed,
        sim.engine.start_ms,
        sim.pasts._coin_args,
        sim.pasts._specs,
        sim.pasts._traders,
    )


def test_the_past_is_built_on_demand_not_at_start(sim: Simulator) -> None:
    big = Simulator(SimConfig(realtime=False, traders=500, start_ms=OPENS))
    assert len(big.pasts.pending()) == 500  # nothing built yet: start-up stays fast
    address = next(iter(kinds(big)))
    assert big.pasts.account(address) is not None
    assert len(big.pasts.pending()) == 499


def test_a_past_is_deterministic_whatever_the_order_it_is_built_in(sim: Simulator) -> None:
    picks = [of_kind(sim, k)[0] for k in ("skilled", "unskilled", "noise", "lucky")]
    one, two = fresh_pasts(sim), fresh_pasts(sim)
    first = [one.account(a) for a in picks]
    second = [two.account(a) for a in reversed(picks)][::-1]
    for a, b in zip(first, second, strict=True):
        assert a is not None
        assert b is not None
        assert (a.first_deposit, list(a.av), list(a.flows), list(a.volume)) == (
            b.first_deposit,
            list(b.av),
            list(b.flows),
            list(b.volume),
        )
    rows_one, rows_two = one.detail(picks[0]), two.detail(picks[0])
    assert rows_one is not None
    assert rows_two is not None
    assert rows_one.fills == rows_two.fills
    assert rows_one.ledger == rows_two.ledger


def test_a_past_covers_ninety_days_hourly_and_ends_at_the_opening_balance(sim: Simulator) -> None:
    for address in [of_kind(sim, k)[0] for k in ("skilled", "unskilled", "whale", "vault")]:
        past = sim.pasts.account(address)
        assert past is not None
        times = [past.sample(i)[0] for i in range(len(past.av))]
        assert times[0] <= OPENS - 90 * 24 * HOUR
        assert times[-1] <= OPENS < times[-1] + HOUR
        assert {b - a for a, b in itertools.pairwise(times)} == {HOUR}
        opening = sim.engine.accounts[address].opening
        assert D(past.first_deposit + past.final_av).scaleb(-6) == opening
        assert past.first_deposit > 0
        assert min(past.sample(i)[1] for i in range(len(past.av))) > 0  # never wiped out


def test_the_ledger_of_a_past_adds_up(sim: Simulator) -> None:
    for kind in ("skilled", "unskilled", "noise", "lucky", "market_maker"):
        address = of_kind(sim, kind)[0]
        past = sim.pasts.account(address)
        rows = sim.pasts.detail(address)
        assert past is not None
        assert rows is not None
        fills = [fill_wire(f) for f in rows.fills]
        assert len(fills) == past.fills
        assert sum(D(f["closedPnl"]) for f in fills) == D(past.realized) / MICRO
        assert sum(D(f["fee"]) for f in fills) == D(past.fees) / MICRO
        assert sum(r[2] for r in rows.fundings) == D(past.funding) / MICRO
        deposits = sum(r[3] for r in rows.ledger if r[2] == "deposit")
        withdrawals = sum(r[3] + r[4][1] for r in rows.ledger if r[2] == "withdraw")
        assert deposits == D(past.deposits) / MICRO
        # Flat when the market opens: cash is all there is, and cash is the ledger.
        closing = deposits - withdrawals + (past.realized - past.fees + past.funding) / D(MICRO)
        assert closing == sim.engine.accounts[address].opening
        # Every fill starts where the previous one on its coin left the position.
        held: dict[str, Decimal] = {}
        for f in fills:
            assert D(f["startPosition"]) == held.get(f["coin"], D(0)), f
            held[f["coin"]] = D(f["startPosition"]) + D(f["sz"]) * (1 if f["side"] == "B" else -1)
        assert all(v == 0 for v in held.values())
        assert [f["time"] for f in fills] == sorted(f["time"] for f in fills)


def all_time_returns(sim: Simulator) -> dict[str, float]:
    """Each account's deposit-independent return over its whole past."""
    out = {}
    for address in kinds(sim):
        points = views.windows(sim.engine, sim.pasts, sim.engine.accounts[address])["allTime"]
        out[address] = chain(points)[0]
    return out


def test_skilled_traders_win_and_unskilled_lose_over_the_past(sim: Simulator) -> None:
    returns = all_time_returns(sim)
    by_kind: dict[str, list[float]] = {}
    for address, r in returns.items():
        by_kind.setdefault(kinds(sim)[address], []).append(r)
    skilled, unskilled = by_kind["skilled"], by_kind["unskilled"]
    assert statistics.median(skilled) > 0.2
    assert sum(r > 0 for r in skilled) >= 0.8 * len(skilled)
    assert sum(r < 0 for r in unskilled) >= 0.9 * len(unskilled)
    assert statistics.median(unskilled) < -0.5
    assert all(abs(r) < 0.15 for r in by_kind["market_maker"])  # the spread, not a strategy
    ranked = sorted(
        (a for a in returns if kinds(sim)[a] not in ("market_maker", "vault")),
        key=lambda a: returns[a],
        reverse=True,
    )
    assert sum(kinds(sim)[a] == "skilled" for a in ranked[:10]) >= 7
    assert sum(kinds(sim)[a] == "unskilled" for a in ranked[-10:]) >= 7


def test_lucky_accounts_made_their_money_in_one_trade(sim: Simulator) -> None:
    for address in of_kind(sim, "lucky"):
        rows = sim.pasts.detail(address)
        past = sim.pasts.account(address)
        assert rows is not None
        assert past is not None
        by_position: list[Decimal] = []
        for f in (fill_wire(f) for f in rows.fills):
            if D(f["startPosition"]) == 0:
                by_position.append(D(0))
            by_position[-1] += D(f["closedPnl"])
        total = D(past.realized) / MICRO
        assert total > 0
        assert max(by_position) > D("0.6") * total
        assert len(by_position) > 20  # many trades; one of them counted


def test_the_past_has_liquidations_and_money_moving(sim: Simulator) -> None:
    liquidated = [
        a for a in of_kind(sim, "unskilled") if (p := sim.pasts.account(a)) and p.liquidations
    ]
    assert len(liquidated) >= 5
    rows = sim.pasts.detail(liquidated[0])
    assert rows is not None
    liq_fills = [fill_wire(f) for f in rows.fills if f[14] is not None]
    assert liq_fills[0]["liquidation"] == {
        "liquidatedUser": liquidated[0],
        "markPx": liq_fills[0]["px"],
        "method": "market",
    }
    assert [r[2] for r in rows.ledger].count("liquidation") == len(liq_fills)
    movers = [
        a for a in kinds(sim) if (p := sim.pasts.account(a)) and p.n_deposits + p.n_withdrawals > 1
    ]
    assert len(movers) >= 0.3 * len(kinds(sim))


def test_fill_pages_walk_the_past_with_inclusive_bounds(sim: Simulator) -> None:
    busiest = {a: p.fills for a in of_kind(sim, "unskilled") if (p := sim.pasts.account(a))}
    address = max(busiest, key=lambda a: busiest[a])
    acct = sim.engine.accounts[address]
    past = sim.pasts.account(address)
    assert past is not None
    assert past.fills > 2000
    seen: list[int] = []
    start = 0
    while True:
        page = views.user_fills_by_time(sim.engine, sim.pasts, address, acct, start, None)
        assert len(page) <= 2000
        fresh = [f for f in page if f["tid"] not in seen]
        seen.extend(f["tid"] for f in fresh)
        if len(page) < 2000:
            break
        start = page[-1]["time"]  # inclusive: the last one comes again
        assert views.user_fills_by_time(sim.engine, sim.pasts, address, acct, start, start)
    assert len(seen) == past.fills
    newest = views.user_fills(sim.engine, sim.pasts, address, acct)
    assert len(newest) == 2000
    assert [f["tid"] for f in newest] == seen[::-1][:2000]


def test_candles_of_every_interval_come_from_one_price_path(sim: Simulator) -> None:
    e = sim.engine
    btc = e.by_name["BTC"]
    for _ in range(6_000):  # ten minutes of the live market
        sim.step()
    past = sim.pasts.coin("BTC")
    assert past is not None
    last_past_minute = past.minute_bar(e.start_ms // 60_000 - 1)
    assert last_past_minute is not None
    assert last_past_minute[3] == btc.candles.minute(e.start_ms // 60_000)[0]  # type: ignore[index]
    start = e.now_ms - 20 * 86_400_000
    snap = {
        i: views.candle_snapshot(e, sim.pasts, {"coin": "BTC", "interval": i, "startTime": start})
        for i in INTERVAL_MINUTES
    }
    assert all(snap.values())
    assert len(snap["1m"]) == 5000  # the newest 5000
    assert snap["1d"][-1]["t"] <= e.now_ms <= snap["1d"][-1]["T"]
    # A coarser candle is exactly the finer ones inside it.
    for fine, coarse in (("1m", "5m"), ("5m", "1h"), ("1h", "1d"), ("1h", "4h"), ("1d", "1w")):
        parts = {c["t"]: c for c in snap[fine]}
        for candle in snap[coarse][1:-1]:
            inside = [parts[t] for t in sorted(parts) if candle["t"] <= t <= candle["T"]]
            if not inside or inside[0]["t"] != candle["t"]:
                continue  # beyond the finer snapshot's reach
            assert candle["o"] == inside[0]["o"]
            assert candle["c"] == inside[-1]["c"]
            assert candle["h"] == max((c["h"] for c in inside), key=D)
            assert candle["l"] == min((c["l"] for c in inside), key=D)
            assert candle["n"] == sum(c["n"] for c in inside)
    for c in snap["1h"]:
        assert D(c["l"]) <= min(D(c["o"]), D(c["c"])) <= max(D(c["o"]), D(c["c"])) <= D(c["h"])
    month = snap["1M"][-1]
    assert month["T"] - month["t"] + 1 in {d * 86_400_000 for d in (28, 29, 30, 31)}
    week = snap["1w"][-1]
    assert (week["t"] // 86_400_000) % 7 == 0  # weeks start on the epoch's Thursday
    day = snap["1d"][-2]
    hours = [
        views.hour_bar(e, sim.pasts, btc, h)
        for h in range(day["t"] // HOUR, (day["T"] + 1) // HOUR)
    ]
    assert all(hours)
    merged = merge(h for h in hours if h is not None)
    assert merged is not None
    assert D(day["v"]) == merged[4]
