"""The counter-trade opportunity core, with numbers worked out by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hlcopy.config import parse_config
from hlcopy.errors import ConfigError
from hlcopy.follow.opportunities import (
    HorizonSummary,
    Opportunity,
    Outcome,
    Skip,
    Tally,
    candle_price,
    decide,
    event_from_json,
    opened,
    outcome,
    ranks_of,
    suggested_size,
    summarize,
    tally,
)
from hlcopy.model import Candle, PositionEvent
from hlcopy.scout.tracker import event_json

D = Decimal
LOSER = "0x" + "11" * 20
OTHER = "0x" + "22" * 20
T0 = 1_700_000_000_000
RANKS = ranks_of([OTHER, LOSER])  # LOSER is the second worst


def event(
    kind: str, prev: str, new: str, px: str | None = "2000", who: str = LOSER
) -> PositionEvent:
    return PositionEvent(
        address=who,
        coin="ETH",
        kind=kind,  # type: ignore[arg-type]
        prev_szi=D(prev),
        new_szi=D(new),
        time_ms=T0,
        px=None if px is None else D(px),
    )


def test_ranks_are_one_based_worst_first() -> None:
    assert RANKS == {OTHER: 1, LOSER: 2}


@pytest.mark.parametrize(
    ("kind", "prev", "new", "want"),
    [
        ("open", "0", "1.5", ("long", D("1.5"))),
        ("open", "0", "-2", ("short", D(2))),
        ("increase", "1", "3", ("long", D(2))),
        ("increase", "-1", "-1.25", ("short", D("0.25"))),
        ("flip", "2", "-0.5", ("short", D("0.5"))),  # only the new side counts
        ("flip", "-3", "4", ("long", D(4))),
        ("decrease", "3", "1", None),
        ("close", "3", "0", None),
        ("liquidated", "3", "0", None),
        ("increase", "3", "2", None),  # mislabelled: not an add
    ],
)
def test_what_the_trader_opened(
    kind: str, prev: str, new: str, want: tuple[str, Decimal] | None
) -> None:
    assert opened(kind, D(prev), D(new)) == want


def test_suggested_size_rounds_down_to_the_lot() -> None:
    assert suggested_size(D(500), D(2000), 4) == D("0.25")
    assert suggested_size(D(500), D(3), 0) == D(166)  # 166.66... -> 166
    assert suggested_size(D(500), D(60123), 5) == D("0.00831")  # 0.008316... -> 0.00831
    assert suggested_size(D(10), D(60000), 2) == D(0)  # under one lot


def test_a_top_losers_long_open_is_an_opportunity_to_short() -> None:
    got = decide(event("open", "0", "1.5"), RANKS, 4, D(500), "month")
    assert got == Opportunity(
        trader=LOSER,
        coin="ETH",
        kind="open",
        trader_side="long",
        our_side="short",
        trader_sz=D("1.5"),
        size=D("0.25"),
        price=D(2000),
        time_ms=T0,
        losers_rank=2,
        window="month",
    )
    assert got.notional_usd == D(500)


def test_the_open_side_of_a_flip_is_faded() -> None:
    got = decide(event("flip", "2", "-0.5"), RANKS, 4, D(500), "week")
    assert isinstance(got, Opportunity)
    assert (got.trader_side, got.our_side, got.trader_sz) == ("short", "long", D("0.5"))


@pytest.mark.parametrize(
    ("ev", "sz_decimals", "mid", "reason"),
    [
        (event("decrease", "3", "1"), 4, None, "not_opening"),
        (event("close", "3", "0"), 4, None, "not_opening"),
        (event("liquidated", "3", "0"), 4, None, "not_opening"),
        (event("open", "0", "1", who="0x" + "33" * 20), 4, None, "not_a_top_loser"),
        (event("open", "0", "1", px=None), 4, None, "no_price"),
        (event("open", "0", "1"), None, None, "unknown_coin"),
        (event("open", "0", "1", px="600"), 0, None, "below_lot"),  # 500 / 600 -> 0 lots
    ],
)
def test_what_is_no_opportunity(
    ev: PositionEvent, sz_decimals: int | None, mid: Decimal | None, reason: str
) -> None:
    assert decide(ev, RANKS, sz_decimals, D(500), "month", mid) == Skip(reason)


def test_the_mid_stands_in_when_the_event_has_no_price() -> None:
    got = decide(event("open", "0", "-1", px=None), RANKS, 4, D(500), "month", mid=D(2500))
    assert isinstance(got, Opportunity)
    assert (got.price, got.size, got.our_side) == (D(2500), D("0.2"), "long")


def test_outcome_of_the_opposite_position() -> None:
    # We short 0.25 ETH at 2000; at 1900 the short made 0.25 x 100 = 25 USD, the market
    # moved -500 bps and the short returned +500 bps.
    o = outcome("short", D("0.25"), D(2000), 3600, T0 + 3_600_000, D(1900), "mid", T0 + 3_600_100)
    assert o == Outcome(
        3600, T0 + 3_600_000, D(1900), "mid", D(-500), D(500), D(25), T0 + 3_600_100
    )
    assert o.hit
    # Long 0.2 at 2500, then 2512.3: +12.3 x 0.2 = 2.46 USD, move +49.2 bps.
    o = outcome("long", D("0.2"), D(2500), 60, 1, D("2512.3"), "candle_1m", 2)
    assert (o.move_bps, o.return_bps, o.pnl_usd, o.hit) == (D("49.20"), D("49.20"), D("2.46"), True)
    # Short 1 at 3, then 3.0001: lost 0.0001 USD, a miss; the move rounds to 0.33 bps.
    o = outcome("short", D(1), D(3), 60, 1, D("3.0001"), "mid", 2)
    assert (o.move_bps, o.return_bps, o.pnl_usd, o.hit) == (
        D("0.33"),
        D("-0.33"),
        D("-0.0001"),
        False,
    )
    # Flat is no hit.
    assert not outcome("long", D(1), D(3), 60, 1, D(3), "mid", 2).hit


def candle(open_ms: int, close: str) -> Candle:
    return Candle(open_ms, open_ms + 59_999, "ETH", "1m", D(1), D(close), D(1), D(1), D(0), 0)


def test_the_candle_price_is_the_close_of_the_closed_bar_holding_the_due_time() -> None:
    bars = [candle(0, "10"), candle(60_000, "11"), candle(120_000, "12")]
    assert candle_price(bars, 60_000, 500_000) == (D(11), 119_999)
    assert candle_price(bars, 119_999, 500_000) == (D(11), 119_999)
    assert candle_price(bars, 59_999, 500_000) == (D(10), 59_999)
    assert candle_price(bars, 150_000, 170_000) is None  # its bar has not closed yet
    assert candle_price(bars, 200_000, 500_000) is None  # no bar holds it


def test_hit_rate_and_means_per_horizon() -> None:
    def o(h: int, pnl: str, ret: str) -> Outcome:
        return Outcome(h, 0, D(1), "mid", D(0), D(ret), D(pnl), 0)

    pairs = [
        (3600, o(3600, "25", "500")),
        (3600, o(3600, "-5", "-100")),
        (3600, o(3600, "2.46", "49.2")),
        (3600, None),  # not yet due
        (14400, o(14400, "-1", "-20")),
        (14400, None),
    ]
    tallies = tally([3600, 14400, 86400], pairs)
    assert tallies == [
        Tally(3600, 4, 3, 2, D("22.46"), D("449.2")),
        Tally(14400, 2, 1, 0, D(-1), D(-20)),
        Tally(86400, 0, 0, 0, D(0), D(0)),
    ]
    assert summarize(tallies) == [
        # 2 hits of 3 resolved; 22.46 / 3 = 7.486666..; 449.2 / 3 = 149.7333..
        HorizonSummary(3600, 4, 3, 2, D("0.6667"), D("7.486667"), D("149.73")),
        HorizonSummary(14400, 2, 1, 0, D(0), D(-1), D(-20)),
        HorizonSummary(86400, 0, 0, 0, None, None, None),
    ]
    assert summarize(tallies)[2].to_json() == {
        "horizon_s": 86400,
        "count": 0,
        "resolved": 0,
        "hits": 0,
        "hit_rate": None,
        "mean_pnl_usd": None,
        "mean_return_bps": None,
    }


def test_events_come_back_from_the_trackers_json() -> None:
    e = PositionEvent(LOSER, "ETH", "flip", D("2"), D("-0.5"), T0, D(1990), D("2000.5"))
    back = event_from_json(event_json(e))
    assert back == PositionEvent(LOSER, "ETH", "flip", D("2"), D("-0.5"), T0, px=D("2000.5"))


@pytest.mark.parametrize(
    "broken",
    [
        {"kind": "teleport"},
        {"address": "0x12"},
        {"new_szi": "NaN"},
        {"new_szi": "lots"},
        {"px": "Infinity"},
        {"time_ms": "now"},
        {"time_ms": True},
        {"coin": ""},
        {"prev_szi": None},
    ],
)
def test_a_malformed_event_is_ignored(broken: dict[str, object]) -> None:
    data = event_json(event("open", "0", "1")) | broken
    got = event_from_json(data)
    if "px" in broken:  # an unusable price is dropped, the event kept
        assert got is not None
        assert got.px is None
    else:
        assert got is None


def test_the_config_section_checks_its_horizons_and_notional() -> None:
    cfg = parse_config({}).opportunities
    assert (cfg.enabled, cfg.losers_top_n, cfg.notional_usd) == (True, 20, D(500))
    assert cfg.horizons_s == [3600, 14400, 86400]
    assert parse_config({"opportunities": {"horizons_s": [600, 60]}}).opportunities.horizons_s == [
        60,
        600,
    ]
    for bad, field in [
        ({"horizons_s": [60, 60]}, "horizons_s"),
        ({"horizons_s": [0]}, "horizons_s"),
        ({"horizons_s": []}, "horizons_s"),
        ({"notional_usd": 5}, "notional_usd"),
        ({"losers_top_n": 0}, "losers_top_n"),
        ({"window": "year"}, "window"),
    ]:
        with pytest.raises(ConfigError, match=f"opportunities.{field}"):
            parse_config({"opportunities": bad})
