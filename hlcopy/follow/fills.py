"""The fill model: paper execution now, the backtest later. Arithmetic on given data only; which
book to use (the live one after a latency allowance, or a recorded one) is the caller's choice.

- ``simulate_ioc`` walks the opposite side of the book, best price first, for the order's size and
  stops at the first level beyond the IOC limit price, so part or all may not fill. The rest is
  cancelled, as on the exchange. The taker fee is ``rate x filled notional``.
- ``funding_payment`` follows the exchange's sign: the cash change of a position is
  ``-szi x mark x rate``, so longs pay shorts when the rate is positive.
- ``PaperAccount`` books fills as the exchange computes ``closedPnl``: one average entry price
  per coin; an increase moves the average, a reduction realises ``closed x (px - entry)`` (sign
  by side) and keeps the entry, a flip closes the whole position first and opens the rest at the
  fill price. ``closedPnl`` is gross: fees are booked apart, and ``cash`` is the deposit plus
  realised PnL, minus fees, plus funding. Equity is cash plus the unrealised PnL at the mids.

The account is immutable: every operation returns a new one (``Booked`` carries it with the
fill's ``closed_pnl``, ``start_position`` and ``dir``, the same fields a real fill has).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field, replace
from decimal import Context, Decimal, localcontext
from types import MappingProxyType
from typing import Any, Final, Literal

from hlcopy.model import BookLevel, L2Book
from hlcopy.record import record

ZERO = Decimal(0)

Direction = Literal[
    "Open Long", "Open Short", "Close Long", "Close Short", "Long > Short", "Short > Long"
]


@record
class PaperFill:
    """What an IOC got: ``avg_px`` is None when nothing filled; ``levels_used`` counts the book
    levels it touched."""

    filled_sz: Decimal
    avg_px: Decimal | None
    fee: Decimal
    levels_used: int
    notional: Decimal


def simulate_ioc(
    book: L2Book | Sequence[BookLevel],
    is_buy: bool,
    sz: Decimal,
    limit_px: Decimal,
    taker_fee_rate: Decimal,
) -> PaperFill:
    """Fill an IOC against ``book`` (an ``L2Book``, or the levels of the side it takes from)."""
    if not sz > 0:
        raise ValueError(f"order size must be positive, got {sz}")
    if not limit_px > 0:
        raise ValueError(f"limit price must be positive, got {limit_px}")
    if isinstance(book, L2Book):
        levels: Sequence[BookLevel] = book.asks if is_buy else book.bids
    else:
        levels = book
    # Best first, whatever order the levels came in.
    ordered = sorted(levels, key=lambda lvl: lvl.px, reverse=not is_buy)
    remaining = sz
    notional = ZERO
    used = 0
    for level in ordered:
        if remaining == 0:
            break
        if (level.px > limit_px) if is_buy else (level.px < limit_px):
            break
        take = min(level.sz, remaining)
        if take <= 0:
            continue
        notional += take * level.px
        remaining -= take
        used += 1
    filled = sz - remaining
    avg = notional / filled if filled else None
    return PaperFill(filled, avg, notional * taker_fee_rate, used, notional)


def funding_payment(szi: Decimal, mark_px: Decimal, rate: Decimal) -> Decimal:
    """The cash a position receives (negative: pays) at one funding: ``-szi x mark x rate``."""
    return -(szi * mark_px * rate)


@record
class PaperPosition:
    szi: Decimal
    entry_px: Decimal


@record
class Booked:
    """A fill booked into a paper account: the new account and the fill's exchange fields."""

    account: PaperAccount
    closed_pnl: Decimal
    start_position: Decimal
    dir: Direction


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def _freeze(positions: Mapping[str, PaperPosition]) -> Mapping[str, PaperPosition]:
    return MappingProxyType({k: positions[k] for k in sorted(positions)})


def gross_notional(
    sizes: Mapping[str, Decimal], mids: Mapping[str, Decimal], but: str | None = None
) -> Decimal:
    """Gross notional of signed ``sizes`` per coin at ``mids``, ``but`` one coin; a coin
    without a mid counts zero (what the risk caps can price). ``PaperAccount.notional`` is the
    strict one."""
    total = ZERO
    for coin, szi in sizes.items():
        if coin != but and szi:
            total += abs(szi) * mids.get(coin, ZERO)
    return total


@record
class PaperAccount:
    """A paper perp account. ``cash`` = deposits + realised PnL - fees + funding."""

    cash: Decimal
    positions: Mapping[str, PaperPosition] = field(default_factory=lambda: _freeze({}))
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO

    def __post_init__(self) -> None:
        if not isinstance(self.positions, MappingProxyType):
            object.__setattr__(self, "positions", _freeze(self.positions))

    def position(self, coin: str) -> Decimal:
        """Signed size in ``coin`` (0 when flat)."""
        pos = self.positions.get(coin)
        return ZERO if pos is None else pos.szi

    def entry_px(self, coin: str) -> Decimal | None:
        pos = self.positions.get(coin)
        return None if pos is None else pos.entry_px

    def with_position(self, coin: str, szi: Decimal, entry_px: Decimal) -> PaperAccount:
        """Set a coin's position outright (seeding from a snapshot); cash is untouched."""
        positions = dict(self.positions)
        if szi == 0:
            positions.pop(coin, None)
        else:
            positions[coin] = PaperPosition(szi, entry_px)
        return replace(self, positions=_freeze(positions))

    def apply_fill(self, coin: str, is_buy: bool, sz: Decimal, px: Decimal, fee: Decimal) -> Booked:
        """Book one fill: average entry, reductions realise PnL, a flip closes then opens."""
        if not sz > 0:
            raise ValueError(f"fill size must be positive, got {sz}")
        if not px > 0:
            raise ValueError(f"fill price must be positive, got {px}")
        start = self.position(coin)
        entry = self.entry_px(coin) or ZERO
        delta = sz if is_buy else -sz
        closed_pnl = ZERO
        if start == 0 or _sign(start) == _sign(delta):
            new_szi = start + delta
            new_entry = (abs(start) * entry + sz * px) / abs(new_szi)
            direction: Direction = "Open Long" if is_buy else "Open Short"
        else:
            closed = min(sz, abs(start))
            closed_pnl = closed * (px - entry) * _sign(start)
            new_szi = start + delta
            if new_szi == 0 or _sign(new_szi) == _sign(start):
                new_entry = entry
                direction = "Close Long" if start > 0 else "Close Short"
            else:
                new_entry = px
                direction = "Long > Short" if start > 0 else "Short > Long"
        positions = dict(self.positions)
        if new_szi == 0:
            positions.pop(coin, None)
        else:
            positions[coin] = PaperPosition(new_szi, new_entry)
        account = replace(
            self,
            positions=_freeze(positions),
            cash=self.cash + closed_pnl - fee,
            realized_pnl=self.realized_pnl + closed_pnl,
            fees=self.fees + fee,
        )
        return Booked(account, closed_pnl, start, direction)

    def apply_funding(
        self, coin: str, mark_px: Decimal, rate: Decimal
    ) -> tuple[PaperAccount, Decimal]:
        """Pay or receive one funding on ``coin``'s position; returns the account and the cash."""
        payment = funding_payment(self.position(coin), mark_px, rate)
        account = replace(self, cash=self.cash + payment, funding=self.funding + payment)
        return account, payment

    def unrealized_pnl(self, mids: Mapping[str, Decimal]) -> Decimal:
        total = ZERO
        for coin, pos in self.positions.items():
            mid = mids.get(coin)
            if mid is None:
                raise ValueError(f"no mid for {coin}: equity unknown")
            total += pos.szi * (mid - pos.entry_px)
        return total

    def equity(self, mids: Mapping[str, Decimal]) -> Decimal:
        """Cash plus unrealised PnL at ``mids``; a missing mid for an open position raises (an
        unknown equity must never read as a number)."""
        return self.cash + self.unrealized_pnl(mids)

    def notional(self, mids: Mapping[str, Decimal]) -> Decimal:
        """Gross notional at ``mids`` (for leverage and exposure)."""
        total = ZERO
        for coin, pos in self.positions.items():
            mid = mids.get(coin)
            if mid is None:
                raise ValueError(f"no mid for {coin}: notional unknown")
            total += abs(pos.szi) * mid
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (Decimals as strings), for the shell to persist."""
        return {
            "cash": str(self.cash),
            "positions": {
                coin: {"szi": str(p.szi), "entry_px": str(p.entry_px)}
                for coin, p in self.positions.items()
            },
            "realized_pnl": str(self.realized_pnl),
            "fees": str(self.fees),
            "funding": str(self.funding),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaperAccount:
        return cls(
            cash=Decimal(data["cash"]),
            positions={
                coin: PaperPosition(Decimal(p["szi"]), Decimal(p["entry_px"]))
                for coin, p in data["positions"].items()
            },
            realized_pnl=Decimal(data["realized_pnl"]),
            fees=Decimal(data["fees"]),
            funding=Decimal(data["funding"]),
        )


_SHARES_CONTEXT: Final = Context(prec=28)


def fill_shares(
    attribution: Sequence[tuple[str, Decimal]], order_sz: Decimal, filled: Decimal
) -> list[tuple[str, Decimal]]:
    """Each follow's part of ``filled``, in proportion to its share of the order; the parts sum
    to ``filled`` to the context's 28 digits (the rounding remainder goes to the largest share,
    ties by id). In one fixed context, so the executor that books a fill and the performance
    report that replays it split it alike."""
    if not attribution or order_sz <= 0:
        return []
    with localcontext(_SHARES_CONTEXT):
        parts = [(f, share * filled / order_sz) for f, share in attribution]
        rest = filled - sum((p for _, p in parts), Decimal(0))
        if rest:
            i = max(range(len(parts)), key=lambda k: (attribution[k][1], attribution[k][0]))
            parts[i] = (parts[i][0], parts[i][1] + rest)
    return parts
