"""Numbers as the exchange prints them, and numbers as the exchange accepts them.

Out: every price, size and amount carries a decimal point (``"30135.0"``, ``"0.0"``,
``"0.0147"``), in every endpoint and message (HYPERLIQUID.md §11.16; no numeric string in the
recorded fixtures lacks one). USD amounts have at most 6 decimals.

In: numbers arrive as strings; a string that is not a plain decimal of reasonable length is
refused before any arithmetic, so ``"1e999999"`` or ``"inf"`` cannot cost time or memory.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

D = Decimal
USD = D("0.000001")  # the exchange's USD precision
MICRO = 1_000_000
_PLAIN = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?")
MAX_USD = D(10) ** 12  # bounds control-route amounts: a trillion dollars is not a test case


def num(value: Decimal) -> str:
    """The exchange's string for a number: plain digits, no trailing zeros, a decimal point."""
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0")
        if text[-1] == ".":
            text += "0"
    else:
        text += ".0"
    return "0.0" if text == "-0.0" else text


def usd(value: Decimal) -> str:
    """A USD amount: rounded to the exchange's 6 decimals, then ``num``."""
    return num(value.quantize(USD, rounding=ROUND_HALF_EVEN))


def micro(amount: int) -> str:
    """An amount kept as integer micro-USD, printed like ``usd``."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), MICRO)
    tail = f"{frac:06d}".rstrip("0") or "0"
    return f"{sign}{whole}.{tail}" if (whole or frac) else "0.0"


def to_micro(value: Decimal) -> int:
    """A Decimal amount as integer micro-USD (rounded half-even)."""
    return int(value.quantize(USD, rounding=ROUND_HALF_EVEN).scaleb(6))


def from_micro(amount: int) -> Decimal:
    return D(amount).scaleb(-6)


def rate(value: float) -> str:
    """A rate (funding, premium) with at most 8 decimals, as the exchange prints them."""
    if not math.isfinite(value):
        return "0.0"
    return num(D(f"{value:.8f}"))


def plain(value: object) -> Decimal | None:
    """A wire number string, or None when it is not a plain, bounded, decimal string."""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value):
        return None
    return D(value)


def bounded_usd(value: object) -> Decimal | None:
    """A control-route amount: a finite number (string, int or float) in [0, 1e12], or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = repr(value)
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        out = D(value)
    except InvalidOperation:
        return None
    if not out.is_finite() or out < 0 or out > MAX_USD:
        return None
    return out.quantize(USD)
