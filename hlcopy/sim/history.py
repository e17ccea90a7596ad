"""Each synthetic trader's past: ninety days of positions, fills, funding, deposits and
withdrawals before the live market opened, with the exchange's hourly account samples.

Built on first use and deterministic per account (its own seeded generator, the coins' pasts),
so start-up stays fast and any order of requests sees the same history. Three steps:

1. plan the positions forward in time with the same draws as the live population (when to
   open, which coin, which side given the trend, leverage, holding time, fills in and out);
2. size them walking *backwards* from the balance the trader has when the live market opens,
   adding the deposits and withdrawals that keep the account plausible (losers top up, winners
   take profits) plus the trader's ordinary money moves, and find liquidations on the path;
3. replay everything forwards in exact integer micro-USD: fills with their closed PnL and fees,
   hourly funding, the ledger, and an account-value sample every hour. The first deposit is
   whatever makes the replay end exactly at the opening balance.

Only step 3's totals and hourly samples are kept; fills, funding rows and ledger rows are
rebuilt on demand (a few recent accounts are cached).
"""

from __future__ import annotations

import bisect
import random
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hlcopy.record import record
from hlcopy.sim.archetypes import (
    REACTION_MS,
    Plan,
    Profile,
    choose_coin,
    follows_trend,
    next_flow_ms,
    next_open_ms,
    plan_position,
    seed_for,
)
from hlcopy.sim.engine import (
    FillRecord,
    FundingRecord,
    LedgerRecord,
    _tid,
    tx_hash,
)
from hlcopy.sim.fmt import MICRO, from_micro, num
from hlcopy.sim.market import tick_round
from hlcopy.sim.past import PAST_DAYS, CoinPast

D = Decimal
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HALF_SPREAD = 0.00015
TAKER_IMPACT = 0.0001
CHUNK_GAP_MS = (30_000, 600_000)
FLOOR, CEILING = 0.25, 4.0  # the account stays between these multiples of its opening balance
MIN_FIRST_DEPOSIT = 0.2
LUCKY_LEVERAGE = 3
OID_BASE = 10**12  # past order ids sit far below nothing and above the live ones' range


@record
class CoinSpec:
    name: str
    sz_decimals: int
    max_leverage: int
    strict_isolated: bool


@dataclass(slots=True)
class _Position:
    coin: str
    plan: Plan
    entries: list[int]
    exits: list[int]
    units: int = 0  # lots
    liq_ms: int | None = None
    liq_px: float = 0.0
    cross: bool = True


@dataclass(slots=True)
class Detail:
    """What an account's past holds, row by row."""

    fills: list[FillRecord] = field(default_factory=list)
    fundings: list[FundingRecord] = field(default_factory=list)
    ledger: list[LedgerRecord] = field(default_factory=list)


@dataclass(slots=True)
class AccountPast:
    """An account's past in totals and hourly samples (integer micro-USD)."""

    address: str
    start_ms: int  # the first deposit, on the hour; samples every hour from here
    first_deposit: int
    av: array[int]  # account value at each hour, without the first deposit
    flows: array[int]  # net deposits at each hour, without the first deposit
    volume: array[int]
    final_av: int = 0  # when the live market opens (everything closed): cash, without the
    final_flows: int = 0  # first deposit, like the samples
    final_volume: int = 0
    deposits: int = 0  # totals, first deposit included
    withdrawals: int = 0
    n_deposits: int = 0
    n_withdrawals: int = 0
    realized: int = 0
    fees: int = 0
    funding: int = 0
    fills: int = 0
    liquidations: int = 0

    def sample(self, i: int) -> tuple[int, int, int, int]:
        """(time, account value, net deposits, volume) of hour ``i``."""
        return (
            self.start_ms + i * HOUR_MS,
            self.av[i] + self.first_deposit,
            self.flows[i] + self.first_deposit,
            self.volume[i],
        )

    @property
    def end_flows(self) -> int:
        """Net deposits when the live market opened."""
        return self.final_flows + self.first_deposit


def _lots(units: float, lot: Decimal) -> int:
    return max(1, round(units / float(lot)))


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Builder:
    """Builds one account's past (see the module docstring)."""

    def __init__(
        self,
        address: str,
        profile: Profile,
        opening: Decimal,
        end_ms: int,
        seed: int,
        coin: Callable[[str], CoinPast],
        specs: dict[str, CoinSpec],
        lucky: bool = False,
        days: int = PAST_DAYS,
    ) -> None:
        self.address = address
        self.profile = profile
        self.opening = float(opening)
        self.opening_micro = int(opening * MICRO)
        self.end_ms = end_ms
        self.start_ms = (end_ms // HOUR_MS) * HOUR_MS - days * DAY_MS
        self.close_by = end_ms - 60_000  # every past position is closed before the market opens
        self.coin = coin
        self.specs = specs
        self.lucky = lucky
        self.rng = random.Random(seed_for(seed, f"trader-past:{address}"))
        self.oid_base = OID_BASE + seed_for(seed, f"oids:{address}") % 10**15
        self.max_leverage = {c: s.max_leverage for c, s in specs.items()}

    # -- 1. plan ----------------------------------------------------------------------------

    def _plan(self) -> list[_Position]:
        p, rng = self.profile, self.rng
        positions: list[_Position] = []
        active: list[tuple[int, str]] = []
        t = self.start_ms
        while True:
            t += next_open_ms(p, rng)
            if t >= self.close_by - HOUR_MS:
                break
            active = [a for a in active if a[0] > t]
            if len(active) >= p.concurrent:
                continue
            busy = {c for _, c in active}
            free = [c for c in p.coins if c not in busy]
            if not free:
                continue
            trending = [c for c in free if self.coin(c).regime_at(t)]
            coin = choose_coin(p, rng, free, trending, self.max_leverage)
            position = self._position(coin, t)
            positions.append(position)
            active.append((position.exits[-1], coin))
        if self.lucky:
            self._lucky(positions)
        return positions

    def _position(self, coin: str, t: int, plan: Plan | None = None) -> _Position:
        rng = self.rng
        spec = self.specs[coin]
        if plan is None:
            plan = plan_position(
                self.profile,
                rng,
                self.coin(coin).regime_at(t),
                spec.max_leverage,
                self.opening,
                spec.strict_isolated,
            )
        entries = [t]
        for _ in range(plan.entries - 1):
            entries.append(entries[-1] + rng.randint(*CHUNK_GAP_MS))
        exit_at = entries[-1] + plan.hold_ms
        if follows_trend(self.profile):  # out early when the trend turns against it
            turn = self.coin(coin).turn_against(entries[-1], exit_at, plan.is_buy)
            if turn is not None and rng.random() < self.profile.kind.skill:
                exit_at = turn + rng.randint(*REACTION_MS)
        exits = [exit_at]
        for _ in range(plan.exits - 1):
            exits.append(exits[-1] + rng.randint(*CHUNK_GAP_MS))
        exits = [min(x, self.close_by) for x in exits]
        entries = [min(x, exits[0]) for x in entries]
        return _Position(coin, plan, entries, exits, cross=plan.cross)

    def _lucky(self, positions: list[_Position]) -> None:
        """The trade that made a lucky account: large, leveraged, held for a day or two, on the
        biggest move among a few candidate windows."""
        rng = self.rng
        best: tuple[float, str, int, int] | None = None
        for _ in range(40):
            coin = rng.choice(self.profile.coins)
            start = rng.randint(self.start_ms + 10 * DAY_MS, self.close_by - 4 * DAY_MS)
            hold = rng.randint(DAY_MS, 3 * DAY_MS)
            past = self.coin(coin)
            move = past.price(start + hold) / past.price(start) - 1
            lev = min(LUCKY_LEVERAGE, self.specs[coin].max_leverage)
            low = past.price(start) * (1 - 1.5 / lev) if move > 0 else 0.0
            high = past.price(start) * (1 + 1.5 / lev) if move < 0 else 0.0
            safe = (
                past.first_cross(start, start + hold, low, below=True) is None
                if move > 0
                else past.first_cross(start, start + hold, high, below=False) is None
            )
            if safe and (best is None or abs(move) > best[0]):
                best = (abs(move), coin, start, hold)
        if best is None:
            return
        _, coin, start, hold = best
        past = self.coin(coin)
        lev = min(LUCKY_LEVERAGE, self.specs[coin].max_leverage)
        is_buy = past.price(start + hold) > past.price(start)
        plan = Plan(is_buy, lev, True, 0.4 * self.opening * lev, hold, 1, 1, False, False)
        lucky = self._position(coin, start, plan)
        end = lucky.exits[-1]
        positions[:] = [
            x for x in positions if x.coin != coin or x.exits[-1] < start or x.entries[0] > end
        ]
        positions.append(lucky)

    # -- 2. size, find liquidations, add money moves ------------------------------------------

    def _size(self, positions: list[_Position]) -> list[tuple[int, float]]:
        """Sizes from the equity at each position's open, found walking back from the opening
        balance (no position is sized by its own outcome); the money moves, as (time, USD:
        positive in, negative out)."""
        p, rng = self.profile, self.rng
        moves: list[tuple[int, float]] = []
        natural: list[int] = []
        t = self.start_ms
        while True:
            t += next_flow_ms(p, rng)
            if t >= self.close_by:
                break
            natural.append(t)
        order: list[tuple[int, int, int]] = [(x.exits[-1], 1, i) for i, x in enumerate(positions)]
        order += [(t, 0, -1) for t in natural]
        order.sort(reverse=True)
        equity = self.opening
        lo, hi = FLOOR * self.opening, CEILING * self.opening
        for t, kind, i in order:
            if kind == 0:
                amount = equity * rng.uniform(0.1, 0.4)
                if rng.random() < 0.55 and equity - amount >= lo:
                    moves.append((t, amount))
                    equity -= amount
                else:
                    moves.append((t, -amount))
                    equity += amount
                continue
            x = positions[i]
            past = self.coin(x.coin)
            spec = self.specs[x.coin]
            px0 = past.price(x.entries[0])
            long = x.plan.is_buy
            # The position as a fraction of the equity it was opened with, and what it did to
            # that equity: the equity at the open is what the equity after it implies.
            share = x.plan.notional / self.opening
            mmr = 1 / (2 * spec.max_leverage)
            adverse = (1 / share if x.cross else 1 / x.plan.leverage) - mmr
            adverse = min(0.9, max(0.002, adverse))
            x.liq_px = px0 * (1 - adverse) if long else px0 * (1 + adverse)
            x.liq_ms = past.first_cross(x.entries[0], x.exits[-1], x.liq_px, below=long)
            if x.liq_ms is not None:
                ret = -adverse
            else:
                ret = (past.price(x.exits[-1]) / px0 - 1) * (1 if long else -1)
            multiple = max(0.01, 1 + share * (ret - 0.0006))
            opened = equity / multiple
            if not lo <= opened <= hi:
                # The equity the trader had is its usual one; the difference moved in or out
                # of the account after the position closed (re-deposits after a wipe-out,
                # profits taken).
                opened = self.opening * rng.uniform(0.6, 1.6)
                after = opened * multiple
                moves.append(
                    (
                        min(self.close_by, x.exits[-1] + rng.randint(60_000, 3_600_000)),
                        equity - after,
                    )
                )
            notional = share * opened
            x.units = _lots(notional / px0, D(1).scaleb(-spec.sz_decimals))
            equity = opened
        return moves

    # -- 3. replay --------------------------------------------------------------------------

    def build(self, detail: bool = False) -> tuple[AccountPast, Detail | None]:
        positions = self._plan()
        moves = self._size(positions)
        past, rows = self._replay(positions, moves, detail)
        first = self.opening_micro - past.final_av
        if first < MIN_FIRST_DEPOSIT * self.opening_micro:
            # The sizing walk was too optimistic: the trader took the excess out before the
            # market opened, so the first deposit stays a real deposit.
            extra = int(MIN_FIRST_DEPOSIT * self.opening_micro) - first
            moves.append((self.close_by - 1_800_000, -extra / MICRO))
            past, rows = self._replay(positions, moves, detail)
            first = self.opening_micro - past.final_av
        past.first_deposit = first
        past.deposits += first
        past.n_deposits += 1
        if rows is not None:
            rows.ledger.insert(
                0, (self.start_ms, tx_hash(self.oid_base), "deposit", from_micro(first), ())
            )
        return past, rows

    def _events(self, positions: list[_Position]) -> list[tuple[Any, ...]]:
        """Fills as (time, seq, coin, is_buy, lots | -1 for all, price, crossed, reduce only,
        liquidation, margin type)."""
        out: list[tuple[Any, ...]] = []
        seq = 0
        for x in positions:
            spec = self.specs[x.coin]
            past = self.coin(x.coin)
            szd = spec.sz_decimals
            buy = x.plan.is_buy
            for lots, t in zip(_split(x.units, len(x.entries)), x.entries, strict=False):
                if x.liq_ms is not None and t >= x.liq_ms:
                    break
                px = self._px(past, t, buy, x.plan.maker_entry, szd)
                out.append((t, seq, x.coin, buy, lots, px, not x.plan.maker_entry, False, None, ""))
                seq += 1
            if x.liq_ms is not None:
                px = tick_round(x.liq_px, szd, False)
                liq = (self.address, num(px), "market")
                kind = "Cross" if x.cross else "Isolated"
                out.append((x.liq_ms, seq, x.coin, not buy, -1, px, True, True, liq, kind))
                seq += 1
                continue
            for j, t in enumerate(x.exits):
                last = j == len(x.exits) - 1
                lots = -1 if last else max(1, x.units // len(x.exits))
                # A position's last exit takes liquidity (it must be done), except for a trader
                # who only ever quotes: a market maker's whole life is on the book.
                maker = x.plan.maker_exit and (not last or self.profile.kind.maker >= 1.0)
                px = self._px(past, t, not buy, maker, szd)
                out.append((t, seq, x.coin, not buy, lots, px, not maker, True, None, ""))
                seq += 1
        out.sort(key=lambda e: (e[0], e[1]))
        return out

    @staticmethod
    def _px(past: CoinPast, t: int, buy: bool, maker: bool, szd: int) -> Decimal:
        mid = past.price(t)
        if maker:  # a limit on our side of the spread
            return tick_round(
                mid * (1 - HALF_SPREAD if buy else 1 + HALF_SPREAD), szd, False, -1 if buy else 1
            )
        slip = HALF_SPREAD + TAKER_IMPACT
        return tick_round(mid * (1 + slip if buy else 1 - slip), szd, False, 1 if buy else -1)

    def _replay(
        self, positions: list[_Position], moves: list[tuple[int, float]], detail: bool
    ) -> tuple[AccountPast, Detail | None]:
        fills = self._events(positions)
        money = sorted((t, round(usd * MICRO)) for t, usd in moves)
        n_hours = (self.end_ms - self.start_ms) // HOUR_MS + 1
        av = array("q", bytes(8 * n_hours))
        flows = array("q", bytes(8 * n_hours))
        volume = array("q", bytes(8 * n_hours))
        past = AccountPast(self.address, self.start_ms, 0, av, flows, volume)
        rows = Detail() if detail else None
        held: dict[str, list[int]] = {}  # coin -> [signed lots, cost of |lots| in micro-USD]
        lot_of = {c: D(1).scaleb(-s.sz_decimals) for c, s in self.specs.items()}
        cash = nf = vol = 0
        fi = mi = 0
        n_oid = 0
        for h in range(1, n_hours + 1):
            hour = self.start_ms + h * HOUR_MS if h < n_hours else self.end_ms + 1
            # Everything before the hour, in time order: fills and money moves.
            while True:
                ft = fills[fi][0] if fi < len(fills) else None
                mt = money[mi][0] if mi < len(money) else None
                if (ft is None or ft >= hour) and (mt is None or mt >= hour):
                    break
                if mt is not None and (ft is None or mt <= ft):
                    t, amount = money[mi]
                    mi += 1
                    if amount >= 0:
                        cash += amount
                        nf += amount
                        past.deposits += amount
                        past.n_deposits += 1
                        if rows is not None:
                            rows.ledger.append(
                                (
                                    t,
                                    tx_hash(self.oid_base + 7 * mi + 1),
                                    "deposit",
                                    from_micro(amount),
                                    (),
                                )
                            )
                    else:
                        cash += amount - MICRO  # the $1 withdrawal fee
                        nf += amount - MICRO
                        past.withdrawals += -amount
                        past.n_withdrawals += 1
                        if rows is not None:
                            rows.ledger.append(
                                (
                                    t,
                                    tx_hash(self.oid_base + 7 * mi + 2),
                                    "withdraw",
                                    from_micro(-amount),
                                    (t, D(1)),
                                )
                            )
                    continue
                t, _, coin, is_buy, lots, px, crossed, reduce, liq, kind = fills[fi]
                fi += 1
                state = held.setdefault(coin, [0, 0])
                signed, cost = state
                if reduce and (signed == 0 or (signed > 0) == is_buy):
                    continue  # nothing left to reduce
                if lots == -1:
                    lots = abs(signed)
                lot = lot_of[coin]
                ntl = int(px * lots * lot * MICRO)
                fee = (ntl * (45 if crossed else 15) + 50_000) // 100_000
                start = signed
                closed = 0
                if signed == 0 or (signed > 0) == is_buy:
                    state[0] = signed + (lots if is_buy else -lots)
                    state[1] = cost + ntl
                    direction = "Open Long" if is_buy else "Open Short"
                else:
                    size = abs(signed)
                    lots = min(lots, size)
                    ntl = int(px * lots * lot * MICRO)
                    fee = (ntl * (45 if crossed else 15) + 50_000) // 100_000
                    basis = (2 * cost * lots + size) // (2 * size)
                    closed = ntl - basis if signed > 0 else basis - ntl
                    state[0] = signed + (lots if is_buy else -lots)
                    state[1] = cost - basis
                    direction = "Close Short" if is_buy else "Close Long"
                cash += closed - fee
                vol += ntl
                past.realized += closed
                past.fees += fee
                past.fills += 1
                if liq is not None:
                    past.liquidations += 1
                if rows is not None:
                    n_oid += 1
                    oid = self.oid_base + n_oid
                    rows.fills.append(
                        (
                            coin,
                            num(px),
                            num(lots * lot),
                            is_buy,
                            t,
                            start * lot,
                            direction,
                            from_micro(closed),
                            tx_hash(oid),
                            oid,
                            crossed,
                            from_micro(fee),
                            _tid(oid, oid ^ 0x5A5A5A),
                            None,
                            liq,
                        )
                    )
                    if liq is not None:
                        rows.ledger.append(
                            (
                                t,
                                tx_hash(oid),
                                "liquidation",
                                from_micro(ntl),
                                (D(0), kind, ((coin, num(start * lot)),)),
                            )
                        )
            if h == n_hours:  # past the last sample: only the events up to the opening
                break
            # The hour: funding on what is held, then the sample.
            for coin, (signed, _) in held.items():
                if signed:
                    past_coin = self.coin(coin)
                    rate = past_coin.funding_at(hour)
                    ntl = int(past_coin.mark(hour) * signed * lot_of[coin] * MICRO)
                    received = -int((ntl * rate).to_integral_value())
                    if received:
                        cash += received
                        past.funding += received
                        if rows is not None:
                            rows.fundings.append(
                                (hour, coin, from_micro(received), signed * lot_of[coin], rate)
                            )
            upnl = 0
            for coin, (signed, cost) in held.items():
                if signed:
                    value = int(self.coin(coin).mark(hour) * abs(signed) * lot_of[coin] * MICRO)
                    upnl += value - cost if signed > 0 else cost - value
            av[h] = cash + upnl
            flows[h] = nf
            volume[h] = vol
        past.final_av, past.final_flows, past.final_volume = cash, nf, vol
        return past, rows


class Pasts:
    """The market's past and every synthetic trader's, built on first use and kept (details
    of a few recently asked-about accounts are cached)."""

    DETAILS_KEPT = 8

    def __init__(
        self,
        seed: int,
        end_ms: int,
        coin_args: dict[str, tuple[int, bool, float, float]],
        specs: dict[str, CoinSpec],
        traders: dict[str, tuple[Profile, Decimal]],
        days: int = PAST_DAYS,
    ) -> None:
        self.seed = seed
        self.end_ms = end_ms
        self.days = days
        self._coin_args = coin_args  # name -> (szDecimals, is_spot, daily vol, opening price)
        self._specs = specs
        self._traders = traders  # address -> (profile, opening balance)
        self._coins: dict[str, CoinPast] = {}
        self._accounts: dict[str, AccountPast] = {}
        self._details: OrderedDict[str, Detail] = OrderedDict()

    @property
    def start_ms(self) -> int:
        return (self.end_ms // HOUR_MS) * HOUR_MS - self.days * DAY_MS

    def has(self, address: str) -> bool:
        return address in self._traders

    def coin(self, name: str) -> CoinPast | None:
        past = self._coins.get(name)
        if past is None:
            args = self._coin_args.get(name)
            if args is None:
                return None
            szd, spot, vol, price = args
            past = CoinPast(name, szd, spot, vol, price, self.end_ms, self.seed, self.days)
            self._coins[name] = past
        return past

    def _coin(self, name: str) -> CoinPast:
        past = self.coin(name)
        assert past is not None
        return past

    def _builder(self, address: str) -> Builder:
        profile, opening = self._traders[address]
        return Builder(
            address,
            profile,
            opening,
            self.end_ms,
            self.seed,
            self._coin,
            self._specs,
            lucky=profile.kind.name == "lucky",
            days=self.days,
        )

    def account(self, address: str) -> AccountPast | None:
        """The account's past, or None when it has none (accounts funded during the run)."""
        past = self._accounts.get(address)
        if past is None and address in self._traders:
            past, _ = self._builder(address).build()
            self._accounts[address] = past
        return past

    def detail(self, address: str) -> Detail | None:
        """Fills, funding and ledger rows of the account's past."""
        if address not in self._traders:
            return None
        rows = self._details.get(address)
        if rows is None:
            past, rows = self._builder(address).build(detail=True)
            self._accounts.setdefault(address, past)
            assert rows is not None
            self._details[address] = rows
            while len(self._details) > self.DETAILS_KEPT:
                self._details.popitem(last=False)
        else:
            self._details.move_to_end(address)
        return rows

    def pending(self) -> list[str]:
        """Traders whose past is not built yet."""
        return [a for a in self._traders if a not in self._accounts]

    def fills_between(self, address: str, start: int, end: int | None) -> list[FillRecord]:
        rows = self.detail(address)
        if rows is None:
            return []
        times = [f[4] for f in rows.fills]
        i = bisect.bisect_left(times, start)
        j = len(times) if end is None else bisect.bisect_right(times, end)
        return rows.fills[i:j]
