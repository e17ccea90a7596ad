"""Drift between the exchange's positions and hlcopy's books (live mode): the pure core.

In each coin hlcopy owns a part of the account's position: the follows' attributed sizes,
summing to T. The rest was opened outside hlcopy: the *outside* baseline O, left alone. The
reconciler reads the exchange's position R; where R != T + O in a coin that stayed quiet while
it looked (the shell's job: nothing in flight, nothing booked, the same R on two reads), the
difference is one of two things:

* **drift**, in a coin hlcopy holds or targets: a fill it never booked, a liquidation or
  auto-deleveraging, a protective stop that fired, a hand on the account. The follows' parts
  absorb it — scaled together so they sum to R - O (or, when hlcopy held nothing there, spread
  over the follows that target the coin) — and the copier, deciding the coin again, brings each
  part back to its target with one correcting order, under every limit and risk state. A part
  that *shrank* where a protective stop fired, or while hlcopy was not running, is not bought
  back at once: those follows wait for their leader's next change in the coin, as a new follow
  does (``gated``), since re-entering blindly after a stop or a gap would undo the protection;
* **outside**, in a coin hlcopy neither holds nor targets: a position opened by someone else.
  The baseline takes it; nothing is traded; it is reported.

At start-up the same rules run with no baseline yet: in a coin hlcopy holds, a position larger
on the same side is taken as outside (hlcopy cannot tell a hand's addition from its own), a
smaller one, or one on the other side, as drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Final, Literal

from hlcopy.record import record

ZERO: Final = Decimal(0)

Kind = Literal["drift", "outside"]


@record
class CoinDrift:
    """What the exchange showed in one coin and what hlcopy makes of it.

    ``parts``: every follow's new attributed size in the coin (those absent or zero hold
    nothing); unchanged for ``outside``. ``outside``: the new baseline. ``gated``: follows that
    wait for their leader's next change before buying back what they lost."""

    coin: str
    kind: Kind
    real: Decimal
    expected: Decimal
    parts: Mapping[str, Decimal]
    outside: Decimal
    gated: tuple[str, ...] = ()

    @property
    def size(self) -> Decimal:
        """The signed difference found: real - expected."""
        return self.real - self.expected


def _lot(sz_decimals: int) -> Decimal:
    return Decimal(1).scaleb(-sz_decimals)


def _toward_zero(x: Decimal, lot: Decimal) -> Decimal:
    return (x / lot).to_integral_value(ROUND_DOWN) * lot


def _largest(weights: Mapping[str, Decimal]) -> str:
    return min(weights, key=lambda k: (-abs(weights[k]), k))


def scale_parts(
    parts: Mapping[str, Decimal], total: Decimal, sz_decimals: int
) -> dict[str, Decimal]:
    """The parts scaled together to sum to ``total`` (their sum must not be zero): each on the
    lot grid, rounded toward zero, the leftover lots on the largest part."""
    current = sum(parts.values(), ZERO)
    if current == 0:
        raise ValueError("cannot scale parts that sum to zero")
    lot = _lot(sz_decimals)
    out = {k: _toward_zero(v * total / current, lot) for k, v in parts.items()}
    key = _largest(parts)
    out[key] += total - sum(out.values(), ZERO)
    return out


def spread(total: Decimal, weights: Mapping[str, Decimal], sz_decimals: int) -> dict[str, Decimal]:
    """``total`` split over ``weights`` (their sizes, sign ignored; not all zero) in proportion,
    on the lot grid, the leftover lots on the largest weight."""
    w = {k: abs(v) for k, v in weights.items() if v != 0}
    whole = sum(w.values(), ZERO)
    if whole == 0:
        raise ValueError("cannot spread over zero weights")
    lot = _lot(sz_decimals)
    out = {k: _toward_zero(total * v / whole, lot) for k, v in w.items()}
    out[_largest(w)] += total - sum(out.values(), ZERO)
    return out


def _shrunk(old: Decimal, new: Decimal) -> bool:
    """Whether ``new`` holds less of ``old``'s side than ``old`` did."""
    return (old > 0 and new < old) or (old < 0 and new > old)


def reconcile_coin(
    coin: str,
    real: Decimal,
    parts: Mapping[str, Decimal],
    outside: Decimal,
    targets: Mapping[str, Decimal],
    sz_decimals: int,
    *,
    gate_shrink: bool = False,
) -> CoinDrift | None:
    """One coin during the run: None when the exchange agrees with the books (R == T + O).
    ``targets``: each follow's wanted size in the coin (the copier's last decision);
    ``gate_shrink``: a protective stop fired in the coin since the last look."""
    held = {k: v for k, v in parts.items() if v != 0}
    total = sum(held.values(), ZERO)
    expected = total + outside
    if real == expected:
        return None
    wanted = {k: v for k, v in targets.items() if v != 0}
    new_total = real - outside
    if held:
        new_parts = scale_parts(held, new_total, sz_decimals)
    elif wanted:
        new_parts = spread(new_total, wanted, sz_decimals)
    else:
        return CoinDrift(coin, "outside", real, expected, dict(held), real - total)
    gated: tuple[str, ...] = ()
    if gate_shrink:
        gated = tuple(sorted(k for k, v in held.items() if _shrunk(v, new_parts.get(k, ZERO))))
    return CoinDrift(coin, "drift", real, expected, new_parts, outside, gated)


def reconcile_at_start(
    coin: str, real: Decimal, parts: Mapping[str, Decimal], sz_decimals: int
) -> CoinDrift | None:
    """One coin at start-up, before any baseline: see the module docstring. None when hlcopy's
    parts are exactly the exchange's position."""
    held = {k: v for k, v in parts.items() if v != 0}
    total = sum(held.values(), ZERO)
    if real == total:
        return None
    if not held or (total > 0 and real > total) or (total < 0 and real < total):
        return CoinDrift(coin, "outside", real, total, dict(held), real - total)
    new_parts = scale_parts(held, real, sz_decimals)
    gated = tuple(sorted(k for k, v in held.items() if _shrunk(v, new_parts.get(k, ZERO))))
    return CoinDrift(coin, "drift", real, total, new_parts, ZERO, gated)
