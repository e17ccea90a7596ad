"""The userFills stream's fast fill parser gives what the checking parser gives, field for field,
on the real recorded fills and on hostile variants of them (where the checking one raises, so
does the fast one, with the same message)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hlcopy.errors import WireError
from hlcopy.hl.parse import parse_fill, parse_ws_user_fills
from hypothesis import given
from hypothesis import strategies as st

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hyperliquid" / "info_user_fills.json"
FILLS: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["response"]


def both(fill: Any) -> tuple[Any, Any]:
    def run(parse: Any) -> Any:
        try:
            return parse(fill)
        except WireError as exc:
            return ("error", str(exc))

    fast = run(lambda f: parse_ws_user_fills({"user": "0xAB", "fills": [f]})[2][0])
    return fast, run(parse_fill)


def test_the_recorded_fills_parse_the_same() -> None:
    assert len(FILLS) > 10
    user, snapshot, fills = parse_ws_user_fills({"user": "0xAB", "fills": FILLS})
    assert (user, snapshot) == ("0xab", False)
    assert list(fills) == [parse_fill(f) for f in FILLS]


HOSTILE = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["NaN", "Infinity", "-1e999", "1e-9", "B", "A", "", "0x"]),
    st.lists(st.integers(), max_size=2),
)
KEYS = ["coin", "px", "sz", "side", "time", "startPosition", "closedPnl", "fee", "builderFee"]


@given(
    base=st.sampled_from(FILLS),
    key=st.sampled_from(KEYS),
    value=HOSTILE,
    drop=st.booleans(),
)
def test_hostile_fields_give_what_the_checking_parser_gives(
    base: dict[str, Any], key: str, value: Any, drop: bool
) -> None:
    fill = dict(base)
    if drop:
        fill.pop(key, None)
    else:
        fill[key] = value
    fast, checked = both(fill)
    assert fast == checked


@pytest.mark.parametrize("bad", [None, 3, "x", ["fill"]])
def test_a_fill_that_is_not_an_object_is_a_wire_error(bad: Any) -> None:
    fast, checked = both(bad)
    assert fast == checked
    assert fast[0] == "error"
