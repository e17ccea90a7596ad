"""Who trades in the simulated market: archetypes as distributions, and the draws that turn an
archetype into one trader's habits and one position's plan.

The live population and the synthesized past use the same draws, so a trader's ninety days of
history look like what it does while you watch. Every draw takes the caller's seeded generator.

* skilled: trades with the coin's current trend most of the time, holds for hours to days,
  modest leverage, often as a maker (positive expectancy: the copy targets);
* unskilled: mostly against the trend, often, short holds, high leverage (some at the maximum,
  which gets them liquidated): the counter-trade targets;
* market makers: own the quoted depth, the other side of most taker flow;
* whales: large, rare, long holds, mildly skilled, low leverage;
* noise: the market's background flow, random direction, minutes-long holds;
* lucky: small and aimless, except for one large trade that went their way;
* vault: a managed account (userRole ``vault``), moderately skilled, money in and out often.
"""

from __future__ import annotations

import hashlib
import math
import random

from hlcopy.record import record


@record
class Archetype:
    name: str
    share: float  # of the population
    equity_usd: tuple[float, float]  # lognormal: median, sigma
    hold_minutes: tuple[float, float, float, float]  # lognormal median, sigma; clipped min, max
    leverage: tuple[float, float]  # lognormal median, sigma; clipped to [1, the asset's max]
    isolated: float  # share of positions on isolated margin
    margin: tuple[float, float]  # fraction of equity put up as margin for one position
    opens_per_day: tuple[float, float]  # a trader's rate of new positions, drawn uniformly
    concurrent: tuple[int, int]  # positions held at once, at most
    maker: float  # share of entries and exits placed as resting limit orders
    chunks: tuple[int, int]  # fills to build (and to unwind) a position
    skill: float  # probability of trading with the trend
    flows_per_day: float  # deposits and withdrawals of a flow-active trader
    flow_active: float  # share of traders who move money in and out
    degen: float = 0.0  # share who always run the asset's maximum leverage
    flow_driven: bool = False  # acts with the market's flow rate rather than on its own clock


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        "skilled",
        share=0.15,
        equity_usd=(120_000, 0.7),
        hold_minutes=(240, 1.0, 20, 4320),
        leverage=(4, 0.45),
        isolated=0.3,
        margin=(0.08, 0.2),
        opens_per_day=(2, 5),
        concurrent=(1, 2),
        maker=0.6,
        chunks=(1, 3),
        skill=0.75,
        flows_per_day=1.2,
        flow_active=0.45,
    ),
    Archetype(
        "unskilled",
        share=0.25,
        equity_usd=(25_000, 0.8),
        hold_minutes=(40, 1.2, 2, 2880),
        leverage=(12, 0.5),
        isolated=0.5,
        margin=(0.25, 0.6),
        opens_per_day=(5, 14),
        concurrent=(1, 2),
        maker=0.25,
        chunks=(1, 2),
        skill=0.3,
        flows_per_day=1.5,
        flow_active=0.5,
        degen=0.35,
    ),
    Archetype(
        "market_maker",
        share=0.04,
        equity_usd=(50_000_000, 0.0),
        hold_minutes=(5, 0.5, 1, 60),
        leverage=(1, 0.0),
        isolated=0.0,
        margin=(0.01, 0.02),
        opens_per_day=(20, 30),
        concurrent=(1, 3),
        maker=1.0,
        chunks=(1, 1),
        skill=0.5,
        flows_per_day=0.0,
        flow_active=0.0,
    ),
    Archetype(
        "whale",
        share=0.04,
        equity_usd=(3_000_000, 0.6),
        hold_minutes=(1440, 0.8, 120, 10080),
        leverage=(2, 0.4),
        isolated=0.1,
        margin=(0.1, 0.3),
        opens_per_day=(0.4, 1.5),
        concurrent=(1, 3),
        maker=0.6,
        chunks=(2, 4),
        skill=0.55,  # big, not especially good: size is what makes a whale
        flows_per_day=0.6,
        flow_active=0.4,
    ),
    Archetype(
        "noise",
        share=0.44,
        equity_usd=(12_000, 0.9),
        hold_minutes=(12, 1.3, 0.5, 1440),
        leverage=(3, 0.8),
        isolated=0.3,
        margin=(0.05, 0.25),
        opens_per_day=(4, 12),
        concurrent=(1, 3),
        maker=0.5,
        chunks=(1, 2),
        skill=0.5,
        flows_per_day=1.2,
        flow_active=0.4,
        flow_driven=True,
    ),
    Archetype(
        "lucky",
        share=0.03,
        equity_usd=(15_000, 0.6),
        hold_minutes=(60, 1.0, 5, 1440),
        leverage=(3, 0.5),
        isolated=0.2,
        margin=(0.05, 0.15),
        opens_per_day=(0.5, 2),
        concurrent=(1, 1),
        maker=0.4,
        chunks=(1, 1),
        skill=0.47,
        flows_per_day=0.5,
        flow_active=0.3,
    ),
    Archetype(
        "vault",
        share=0.02,
        equity_usd=(4_000_000, 0.5),
        hold_minutes=(600, 0.9, 60, 4320),
        leverage=(3, 0.3),
        isolated=0.0,
        margin=(0.1, 0.25),
        opens_per_day=(2, 5),
        concurrent=(2, 4),
        maker=0.7,
        chunks=(2, 4),
        skill=0.63,
        flows_per_day=2.0,
        flow_active=1.0,
    ),
)
BY_NAME = {a.name: a for a in ARCHETYPES}


def counts(n: int) -> dict[str, int]:
    """How many of each archetype a population of ``n`` has (every archetype once there is
    room for it; noise takes the remainder)."""
    out = {a.name: int(n * a.share) for a in ARCHETYPES}
    if n >= len(ARCHETYPES):
        for a in ARCHETYPES:
            out[a.name] = max(1, out[a.name])
    out["noise"] += max(0, n - sum(out.values()))
    return out


def address_for(seed: int, label: str | int) -> str:
    return "0x" + hashlib.blake2b(f"hlcopy-sim:{seed}:{label}".encode(), digest_size=20).hexdigest()


def seed_for(seed: int, label: str) -> int:
    """A generator seed for one labelled stream (a trader's past, a coin's past)."""
    return int.from_bytes(
        hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=8).digest(), "big"
    )


@record
class Profile:
    """One trader's habits, drawn from its archetype."""

    kind: Archetype
    equity: float
    coins: tuple[str, ...]
    leverage: float
    margin: float
    opens_per_day: float
    concurrent: int
    degen: bool
    flows_per_day: float


REACTION_MS = (60_000, 900_000)  # how soon a trend follower acts on a turn


def follows_trend(p: Profile) -> bool:
    """Traders with an edge also leave when the trend turns against them."""
    return p.kind.skill >= 0.6


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(sigma * rng.gauss(0.0, 1.0)) if sigma else median


def draw_profile(kind: Archetype, rng: random.Random, coins: list[str]) -> Profile:
    picks = tuple(rng.sample(coins, k=min(len(coins), rng.randint(2, 6))))
    return Profile(
        kind,
        lognormal(rng, *kind.equity_usd),
        picks,
        lognormal(rng, *kind.leverage),
        rng.uniform(*kind.margin),
        rng.uniform(*kind.opens_per_day),
        rng.randint(*kind.concurrent),
        rng.random() < kind.degen,
        kind.flows_per_day if rng.random() < kind.flow_active else 0.02,
    )


@record
class Plan:
    """How one position will be traded."""

    is_buy: bool
    leverage: int
    cross: bool
    notional: float  # USD at entry
    hold_ms: int
    entries: int
    exits: int
    maker_entry: bool
    maker_exit: bool


def plan_position(
    p: Profile, rng: random.Random, regime: int, max_leverage: int, equity: float, strict_iso: bool
) -> Plan:
    """Draw one position's plan: side (skill against the coin's trend), leverage, size,
    holding time, how many fills in and out, maker or taker."""
    kind = p.kind
    trend = regime or rng.choice((-1, 1))
    with_trend = rng.random() < kind.skill
    is_buy = (trend > 0) == with_trend
    median, sigma, lo, hi = kind.hold_minutes
    hold_min = max(lo, min(hi, lognormal(rng, median, sigma)))
    margin = p.margin * rng.uniform(0.6, 1.4)
    if p.degen:  # the maximum, isolated, a big stake, and no hurry: liquidations come from here
        lev = max_leverage
        cross = not strict_iso and rng.random() < 0.2
        margin = max(margin, rng.uniform(0.3, 0.6))
        hold_min = min(hi, hold_min * 4)
    else:
        lev = max(1, min(max_leverage, round(lognormal(rng, p.leverage, 0.25))))
        cross = not strict_iso and rng.random() >= kind.isolated
    return Plan(
        is_buy,
        lev,
        cross,
        max(12.0, min(0.95, margin) * equity * lev),
        int(hold_min * 60_000),
        rng.randint(*kind.chunks),
        rng.randint(*kind.chunks),
        rng.random() < kind.maker,
        rng.random() < kind.maker,
    )


def choose_coin(
    p: Profile,
    rng: random.Random,
    free: list[str],
    trending: list[str],
    max_leverage: dict[str, int],
) -> str:
    """Which coin a new position goes in: a trending one when there is one (most of the time),
    the one with the most leverage available for those who want leverage."""
    if p.degen and rng.random() < 0.7:
        return max(free, key=lambda c: (max_leverage[c], c))
    return rng.choice(trending if trending and rng.random() < 0.8 else free)


def habitual_leverage(p: Profile, rng: random.Random, max_leverage: int) -> int:
    """The leverage a flow trader sets on a coin before its first trade there."""
    if p.degen:
        return max_leverage
    return max(1, min(max_leverage, round(lognormal(rng, p.leverage, 0.25))))


OPENING_SPREAD_MS = 60_000
"""The first minute of a market, in which the traders already holding a position open it."""


def in_position_share(p: Profile) -> float:
    """The share of its time a trader holds a position: opens a day x median holding time
    (capped: even the busiest trader is flat now and then)."""
    return min(0.8, p.opens_per_day * p.kind.hold_minutes[0] / 1440)


def next_open_ms(p: Profile, rng: random.Random) -> int:
    """Time until this trader next considers a new position."""
    return max(1000, int(rng.expovariate(p.opens_per_day) * 86_400_000))


def next_flow_ms(p: Profile, rng: random.Random) -> int:
    return max(60_000, int(rng.expovariate(max(p.flows_per_day, 1e-6)) * 86_400_000))
