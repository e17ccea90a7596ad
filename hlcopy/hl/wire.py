"""Hyperliquid wire formats: Decimal in, exchange strings out, never float.

Prices follow the tick rules (HYPERLIQUID.md §8): at most 5 significant figures and at most
``6 - szDecimals`` decimals on perps (``8 - szDecimals`` on spot); integer prices are always
valid. Rounding takes an explicit direction so a buy's limit is never rounded above its cap nor
a sell's below its floor. Action dicts are built in the exact key order the exchange hashes
(msgpack keeps insertion order).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from typing import Any, Literal

from hlcopy.errors import WireError
from hlcopy.keys import parse_address

MAX_SIG_FIGS = 5
MAX_DECIMALS_PERP = 6
MAX_DECIMALS_SPOT = 8
# The exchange hashes numbers on an 8-decimal grid; anything finer cannot be sent exactly.
WIRE_DECIMALS = 8
MIN_NOTIONAL = Decimal(10)
MAX_BATCH = 200

Tif = Literal["Gtc", "Ioc", "Alo"]
Tpsl = Literal["tp", "sl"]
Grouping = Literal["na", "normalTpsl", "positionTpsl"]

_CLOID = re.compile(r"0x[0-9a-f]{32}")
_TIFS = frozenset(("Gtc", "Ioc", "Alo"))


class Rounding(StrEnum):
    """Which way a price or size may move when it is put on the tick or lot grid."""

    DOWN = "down"
    UP = "up"
    NEAREST = "nearest"


_MODES = {Rounding.DOWN: ROUND_FLOOR, Rounding.UP: ROUND_CEILING, Rounding.NEAREST: ROUND_HALF_EVEN}
_QUANTA = {n: Decimal(1).scaleb(-n) for n in range(19)}


def to_wire(value: Decimal) -> str:
    """The exchange's canonical string: no exponent, no trailing zeros (``"100"``, ``"0.0147"``).

    Raises WireError for floats, non-finite values and values finer than 8 decimals, which the
    exchange cannot represent exactly.
    """
    if type(value) is not Decimal:
        raise WireError(f"wire numbers must be Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise WireError(f"cannot send {value}")
    text = str(value)
    if "E" not in text:
        # str() of a Decimal without an exponent is exact: only trailing zeros need to go.
        if "." in text:
            text = text.rstrip("0").rstrip(".")
            if len(text) - text.find(".") - 1 > WIRE_DECIMALS and "." in text:
                raise WireError(
                    f"{value} cannot be represented exactly with {WIRE_DECIMALS} decimals"
                )
        return "0" if text == "-0" else text
    # Exponent form: normalize() rounds to the context's precision, so give it enough.
    normal = value.normalize(Context(prec=max(28, len(value.as_tuple().digits))))
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -WIRE_DECIMALS:
        raise WireError(f"{value} cannot be represented exactly with {WIRE_DECIMALS} decimals")
    text = format(normal, "f")
    return "0" if text == "-0" else text


def max_price_decimals(sz_decimals: int, is_spot: bool) -> int:
    """Decimals the decimal rule allows, before the significant-figure rule."""
    return (MAX_DECIMALS_SPOT if is_spot else MAX_DECIMALS_PERP) - sz_decimals


def price_decimals(px: Decimal, sz_decimals: int, is_spot: bool) -> int:
    """Decimals a price of this magnitude may have: both rules at once."""
    return max(0, min(max_price_decimals(sz_decimals, is_spot), MAX_SIG_FIGS - 1 - px.adjusted()))


def round_price(px: Decimal, sz_decimals: int, is_spot: bool, rounding: Rounding) -> Decimal:
    """Put ``px`` on the tick grid, moving only in the ``rounding`` direction."""
    if not px.is_finite() or px <= 0:
        raise WireError(f"price must be positive, got {px}")
    # Integer prices need no special case: from 10000 up the rule allows no decimals (any
    # integer is valid), below it an integer already has few enough significant figures.
    dec = price_decimals(px, sz_decimals, is_spot)
    out = px.quantize(_QUANTA[dec], rounding=_MODES[rounding])
    if out <= 0:
        raise WireError(f"price {px} rounds {rounding.value} to zero")
    return out


def is_valid_price(px: Decimal, sz_decimals: int, is_spot: bool) -> bool:
    """Whether the exchange accepts ``px`` as a price for this asset."""
    if not px.is_finite() or px <= 0:
        return False
    if px == px.to_integral_value():
        return True
    digits, exponent = px.normalize().as_tuple()[1:]
    assert isinstance(exponent, int)
    return len(digits) <= MAX_SIG_FIGS and -exponent <= max_price_decimals(sz_decimals, is_spot)


def round_size(sz: Decimal, sz_decimals: int, rounding: Rounding = Rounding.DOWN) -> Decimal:
    """Put ``sz`` on the lot grid (``10^-szDecimals``); down by default: never more than asked."""
    if not sz.is_finite() or sz < 0:
        raise WireError(f"size must be non-negative, got {sz}")
    return sz.quantize(_QUANTA[sz_decimals], rounding=_MODES[rounding])


def is_valid_size(sz: Decimal, sz_decimals: int) -> bool:
    """Whether ``sz`` is a positive multiple of the lot size."""
    return sz.is_finite() and sz > 0 and sz == sz.quantize(_QUANTA[sz_decimals])


def meets_min_notional(px: Decimal, sz: Decimal, closes_position: bool = False) -> bool:
    """The $10 minimum (10 quote units on spot); an order closing a whole position is exempt."""
    return closes_position or px * sz >= MIN_NOTIONAL


def check_cloid(cloid: str) -> str:
    """A client order id: ``0x`` + 32 hex digits (16 bytes), returned lowercase."""
    low = cloid.lower()
    if not _CLOID.fullmatch(low):
        raise WireError(f"cloid must be 0x followed by 32 hex digits, got {cloid!r}")
    return low


def check_address(address: str) -> str:
    """An address, returned lowercase (the exchange hashes lowercase addresses)."""
    try:
        return parse_address(address)
    except ValueError:
        raise WireError(f"not an address: {address!r}") from None


def order_wire(
    asset: int,
    is_buy: bool,
    price: Decimal,
    size: Decimal,
    reduce_only: bool,
    tif: Tif | None,
    cloid: str | None = None,
    trigger: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One order, keys in hashed order ``a, b, p, s, r, t[, c]``.

    A limit order takes ``tif``; a trigger order takes ``tif=None`` and ``trigger`` with
    ``triggerPx`` (Decimal), ``isMarket`` (bool) and ``tpsl`` ("tp" | "sl").
    """
    order_type: dict[str, Any]
    if trigger is None:
        if tif not in _TIFS:
            raise WireError(f"tif must be Gtc, Ioc or Alo, got {tif!r}")
        order_type = {"limit": {"tif": tif}}
    else:
        if tif is not None:
            raise WireError("a trigger order takes no tif")
        if trigger.get("tpsl") not in ("tp", "sl"):
            raise WireError(f"trigger tpsl must be 'tp' or 'sl', got {trigger.get('tpsl')!r}")
        order_type = {
            "trigger": {
                "isMarket": bool(trigger["isMarket"]),
                "triggerPx": to_wire(trigger["triggerPx"]),
                "tpsl": trigger["tpsl"],
            }
        }
    wire: dict[str, Any] = {
        "a": asset,
        "b": is_buy,
        "p": to_wire(price),
        "s": to_wire(size),
        "r": reduce_only,
        "t": order_type,
    }
    if cloid is not None:
        wire["c"] = check_cloid(cloid)
    return wire


def order_action(
    wires: Sequence[dict[str, Any]],
    grouping: Grouping | Mapping[str, int] = "na",
    builder: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An order action: ``type, orders, grouping[, builder]``; at most 200 orders."""
    if not wires:
        raise WireError("an order action needs at least one order")
    if len(wires) > MAX_BATCH:
        raise WireError(f"at most {MAX_BATCH} orders per action, got {len(wires)}")
    action: dict[str, Any] = {"type": "order", "orders": list(wires), "grouping": grouping}
    if builder is not None:
        action["builder"] = {"b": check_address(str(builder["b"])), "f": int(builder["f"])}
    return action


def _batch(items: list[Any], what: str) -> list[Any]:
    if not items:
        raise WireError(f"{what} needs at least one item")
    if len(items) > MAX_BATCH:
        raise WireError(f"at most {MAX_BATCH} items per {what}, got {len(items)}")
    return items


def cancel_action(cancels: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """Cancel by exchange order id: ``[(asset, oid), ...]``."""
    return {"type": "cancel", "cancels": _batch([{"a": a, "o": o} for a, o in cancels], "cancel")}


def cancel_by_cloid_action(cancels: Iterable[tuple[int, str]]) -> dict[str, Any]:
    """Cancel by client order id: ``[(asset, cloid), ...]``."""
    items = [{"asset": a, "cloid": check_cloid(c)} for a, c in cancels]
    return {"type": "cancelByCloid", "cancels": _batch(items, "cancelByCloid")}


def modify_action(oid: int | str, order: dict[str, Any]) -> dict[str, Any]:
    """Replace one resting order (by oid or cloid) with ``order``."""
    return {
        "type": "modify",
        "oid": oid if isinstance(oid, int) else check_cloid(oid),
        "order": order,
    }


def batch_modify_action(modifies: Iterable[tuple[int | str, dict[str, Any]]]) -> dict[str, Any]:
    """Replace several resting orders at once."""
    items = [{"oid": o if isinstance(o, int) else check_cloid(o), "order": w} for o, w in modifies]
    return {"type": "batchModify", "modifies": _batch(items, "batchModify")}


def schedule_cancel_action(time_ms: int | None) -> dict[str, Any]:
    """Arm the dead man's switch at ``time_ms`` (>= 5 s ahead), or clear it with None."""
    return (
        {"type": "scheduleCancel"}
        if time_ms is None
        else {"type": "scheduleCancel", "time": time_ms}
    )


def update_leverage_action(asset: int, is_cross: bool, leverage: int) -> dict[str, Any]:
    """Set an asset's leverage and margin mode."""
    if leverage < 1:
        raise WireError(f"leverage must be at least 1, got {leverage}")
    return {"type": "updateLeverage", "asset": asset, "isCross": is_cross, "leverage": leverage}


def noop_action() -> dict[str, Any]:
    """Marks its nonce used; signed with an in-flight order's nonce, it fences that order."""
    return {"type": "noop"}


# User-signed actions: the fields each one signs, in order (EIP-712 struct member order).
APPROVE_AGENT_TYPES: tuple[tuple[str, str], ...] = (
    ("hyperliquidChain", "string"),
    ("agentAddress", "address"),
    ("agentName", "string"),
    ("nonce", "uint64"),
)
SIGNATURE_CHAIN_ID = "0x66eee"


def approve_agent_action(
    agent_address: str, agent_name: str | None, nonce: int, is_mainnet: bool
) -> dict[str, Any]:
    """An approveAgent action as it is signed (an unnamed agent signs ``agentName: ""``)."""
    return {
        "type": "approveAgent",
        "signatureChainId": SIGNATURE_CHAIN_ID,
        "hyperliquidChain": "Mainnet" if is_mainnet else "Testnet",
        "agentAddress": check_address(agent_address),
        "agentName": agent_name or "",
        "nonce": nonce,
    }
