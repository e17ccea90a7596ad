"""The leaderboard against a plain recomputation: every order, filter and page it serves is
what sorting the traders' metrics by hand gives, before and after any sequence of changes."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hlcopy.bench import synthetic_traders
from hlcopy.clock import VirtualClock
from hlcopy.scout.analytics import WINDOWS, RiskLevel, Style
from hlcopy.scout.leaderboard import (
    NO_FILTERS,
    ROW_FIELDS,
    SORT_KEYS,
    VIEW_IDLE_S,
    Filters,
    Leaderboard,
    pack_metrics,
)
from hlcopy.store.board import StoredBoard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scout_data import Trader, population

POPULATION = population(120)
RISK_RANK = {r.value: i for i, r in enumerate(RiskLevel)}
STYLE_RANK = {s.value: i for i, s in enumerate(Style)}


# --- the plain way -------------------------------------------------------------------------------


def expected_row(t: Trader, window: str) -> dict[str, Any]:
    """A leaderboard row straight from the trader's metrics."""
    m = t.metrics[window]
    value = t.account_value
    if value is None:
        value = next(
            (
                t.metrics[w].account_value
                for w in WINDOWS
                if w in t.metrics and t.metrics[w].account_value is not None
            ),
            None,
        )

    def s(d: Decimal | None) -> str | None:
        return None if d is None else str(d)

    return {
        "address": t.address,
        "account_value": s(value),
        "pnl": s(m.pnl),
        "return": m.return_,
        "max_drawdown": m.max_drawdown,
        "win_rate": m.win_rate,
        "win_rate_lower": m.win_rate_lower,
        "profit_factor": m.profit_factor,
        "sharpe": m.sharpe,
        "total_volume_usd": s(m.volume),
        "trade_count": m.trade_count,
        "account_age_days": m.account_age_days,
        "avg_risk_ratio": m.avg_risk_ratio,
        "avg_leverage": m.avg_leverage,
        "max_profit_usd": s(m.max_profit_usd),
        "max_loss_usd": s(m.max_loss_usd),
        "risk_level": None if m.risk_level is None else m.risk_level.value,
        "style": None if m.style is None else m.style.value,
        "copyable_share": m.copyable_share,
        "score": m.score,
        "updated_at": t.updated_ms,
    }


def _value(row: dict[str, Any], key: str) -> Decimal | float | None:
    v = row[key]
    if v is None:
        return None
    if key == "risk_level":
        return RISK_RANK[v]
    if key == "style":
        return STYLE_RANK[v]
    return Decimal(v) if isinstance(v, str) else v


def _passes(t: Trader, window: str, f: Filters) -> bool:
    m = t.metrics[window]
    if f.min_trades and (m.trade_count or 0) < f.min_trades:
        return False
    if f.min_volume_usd and (m.volume or 0) < f.min_volume_usd:
        return False
    if f.risk_levels is not None and m.risk_level not in f.risk_levels:
        return False
    if f.styles is not None and m.style not in f.styles:
        return False
    return f.min_copyable_share is None or (
        m.copyable_share is not None and m.copyable_share >= f.min_copyable_share
    )


def expected_order(
    traders: Iterable[Trader], window: str, key: str, descending: bool, f: Filters = NO_FILTERS
) -> list[dict[str, Any]]:
    """Sorted by the key then the address (both reversed for descending); traders without the
    key last by address, or left out when the key is the score."""
    rows = [
        expected_row(t, window) for t in traders if window in t.metrics and _passes(t, window, f)
    ]
    keyed = [r for r in rows if _value(r, key) is not None]
    nulls = [r for r in rows if _value(r, key) is None]
    keyed.sort(key=lambda r: (_value(r, key), r["address"]), reverse=descending)
    if key == "score":
        return keyed
    return keyed + sorted(nulls, key=lambda r: r["address"])


def expected_losers(traders: Iterable[Trader], window: str) -> list[str]:
    bad = [
        (t.metrics[window].badness, t.address)
        for t in traders
        if window in t.metrics and (t.metrics[window].badness or 0) > 0
    ]
    return [a for _, a in sorted(bad, reverse=True)]


def board_of(traders: Iterable[Trader], **kwargs: Any) -> Leaderboard:
    board = Leaderboard(**kwargs)
    for t in traders:
        board.put(t.address, t.metrics, account_value=t.account_value, updated_ms=t.updated_ms)
    board.refresh()
    return board


def all_rows(
    board: Leaderboard, window: str, key: str, desc: bool, f: Filters = NO_FILTERS
) -> list[dict[str, Any]]:
    return board.ranking(window, key, descending=desc, filters=f, limit=100_000).rows


# --- orders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", SORT_KEYS)
def test_every_key_orders_like_the_plain_recomputation(key: str) -> None:
    board = board_of(POPULATION)
    for window in WINDOWS:
        for desc in (True, False):
            assert all_rows(board, window, key, desc) == expected_order(
                POPULATION, window, key, desc
            )


def test_rows_carry_exactly_the_issue_fields_with_exact_money() -> None:
    board = board_of(POPULATION)
    rows = board.ranking("month", "pnl", limit=1000).rows
    assert rows
    for row in rows:
        assert tuple(row) == ROW_FIELDS
    by_address = {t.address: t for t in POPULATION}
    for row in rows:
        m = by_address[row["address"]].metrics["month"]
        assert row["pnl"] == str(m.pnl)
        assert row["total_volume_usd"] == str(m.volume)


def test_default_is_score_descending_and_unscored_traders_are_not_ranked() -> None:
    board = board_of(POPULATION)
    page = board.ranking()
    scored = [
        t for t in POPULATION if "month" in t.metrics and t.metrics["month"].score is not None
    ]
    unscored = [t for t in POPULATION if "month" in t.metrics and t.metrics["month"].score is None]
    assert unscored
    assert scored
    assert page.total == len(scored)
    assert len(page.rows) == 50
    scores = [r["score"] for r in page.rows]
    assert scores == sorted(scores, reverse=True)
    # ... but they appear when sorting by another key, after everyone who has it.
    pnl = {r["address"] for r in all_rows(board, "month", "pnl", True)}
    assert {t.address for t in unscored} <= pnl
    sharpe = all_rows(board, "month", "sharpe", False)
    missing = [r["sharpe"] is None for r in sharpe]
    assert missing == sorted(missing)  # None only at the end


def test_skilled_traders_lead_and_market_makers_vaults_lucky_are_not_ranked() -> None:
    board = board_of(POPULATION)
    kinds = {t.address: t.kind for t in POPULATION}
    top = [kinds[a] for a in board.top(10, "month")]
    assert top.count("skilled") + top.count("whale") >= 7
    ranked = {kinds[r["address"]] for r in all_rows(board, "month", "score", True)}
    assert not ranked & {"maker", "vault", "lucky"}
    worst = [kinds[a] for a in board.worst(10, "month")]
    assert worst
    assert worst.count("unskilled") >= 0.7 * len(worst)


@pytest.mark.parametrize(
    "f",
    [
        Filters(min_trades=20),
        Filters(min_volume_usd=Decimal(100_000)),
        Filters(risk_levels=frozenset({RiskLevel.LOW, RiskLevel.MEDIUM})),
        Filters(styles=frozenset({Style.SWING})),
        Filters(min_copyable_share=0.5),
        Filters(
            min_trades=15,
            risk_levels=frozenset({RiskLevel.HIGH, RiskLevel.EXTREME}),
            styles=frozenset({Style.DAY, Style.SWING}),
        ),
    ],
    ids=["trades", "volume", "risk", "style", "copyable", "combined"],
)
def test_filters_match_the_plain_recomputation(f: Filters) -> None:
    board = board_of(POPULATION)
    for key in ("score", "return", "trade_count", "risk_level"):
        for window in ("day", "month"):
            got = all_rows(board, window, key, True, f)
            assert got == expected_order(POPULATION, window, key, True, f)
    assert board.ranking("month", filters=f, limit=1).total == len(
        expected_order(POPULATION, "month", "score", True, f)
    )


def test_pages_tile_the_order() -> None:
    board = board_of(POPULATION)
    for desc in (True, False):
        whole = [r["address"] for r in all_rows(board, "week", "sharpe", desc)]
        pages: list[str] = []
        offset = 0
        while True:
            page = board.ranking("week", "sharpe", descending=desc, limit=7, offset=offset)
            assert page.total == len(whole)
            if not page.rows:
                break
            pages += [r["address"] for r in page.rows]
            offset += 7
        assert pages == whole
    assert board.ranking("week", "sharpe", offset=10**6).rows == []


def test_losers_are_the_confident_losers_worst_first_with_their_badness() -> None:
    board = board_of(POPULATION)
    for window in WINDOWS:
        page = board.losers(window, limit=1000)
        assert [r["address"] for r in page.rows] == expected_losers(POPULATION, window)
        assert all(r["badness"] > 0 for r in page.rows)
        for row in page.rows:
            assert tuple(row) == (*ROW_FIELDS, "badness")
    assert board.losers().total == len(expected_losers(POPULATION, "month"))  # the default window


def test_rank_is_the_place_by_score() -> None:
    board = board_of(POPULATION)
    order = [r["address"] for r in all_rows(board, "allTime", "score", True)]
    for place, address in enumerate(order, 1):
        assert board.rank(address, "allTime") == place
    unscored = next(t for t in POPULATION if t.kind == "maker")
    assert board.rank(unscored.address, "allTime") is None
    assert board.rank("0x" + "00" * 20) is None


def test_top_applies_auto_follow_filters() -> None:
    board = board_of(POPULATION)
    f = Filters(
        min_trades=20,
        risk_levels=frozenset({RiskLevel.LOW, RiskLevel.MEDIUM}),
        min_copyable_share=0.2,
    )
    expected = [r["address"] for r in expected_order(POPULATION, "month", "score", True, f)][:5]
    got = board.top(
        5,
        "month",
        min_trades=20,
        risk_levels=[RiskLevel.LOW, RiskLevel.MEDIUM],
        min_copyable_share=0.2,
    )
    assert got == expected


def test_unknown_window_or_key_is_refused() -> None:
    board = board_of(POPULATION[:3])
    with pytest.raises(ValueError, match="allowed"):
        board.ranking("year")
    with pytest.raises(ValueError, match="allowed"):
        board.ranking("month", "badness")


# --- changes -------------------------------------------------------------------------------------


def _variant(t: Trader, rng: random.Random, updated_ms: int) -> Trader:
    """The same trader re-scored: other figures, maybe a window fewer."""
    donor = rng.choice(POPULATION)
    metrics = {w: replace(m, window=w) for w, m in donor.metrics.items()}
    if rng.random() < 0.2 and len(metrics) > 1:
        metrics.pop(rng.choice(list(metrics)))
    return Trader(t.address, donor.kind, metrics, donor.account_value, updated_ms)


def test_puts_are_staged_until_refresh_and_older_puts_are_ignored() -> None:
    board = board_of(POPULATION[:10])
    version = board.version
    newcomer = POPULATION[10]
    board.put(
        newcomer.address, newcomer.metrics, account_value=None, updated_ms=newcomer.updated_ms
    )
    assert newcomer.address not in board
    assert board.version == version
    board.refresh()
    assert newcomer.address in board
    assert board.version == version + 1
    board.refresh()  # nothing staged: same version, so cached pages stay valid
    assert board.version == version + 1

    t = POPULATION[0]
    older = _variant(t, random.Random(1), t.updated_ms - 1)
    board.put(t.address, older.metrics, account_value=None, updated_ms=older.updated_ms)
    board.refresh()
    assert all_rows(board, "month", "pnl", True) == expected_order(
        POPULATION[:11], "month", "pnl", True
    )


def test_drop_takes_a_trader_off_every_window() -> None:
    board = board_of(POPULATION[:30])
    gone = POPULATION[5]
    board.drop(gone.address)
    board.refresh()
    assert gone.address not in board
    assert len(board) == 29
    for window in WINDOWS:
        assert gone.address not in {r["address"] for r in all_rows(board, window, "pnl", True)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "put", "drop", "refresh", "query", "query"]),
            st.integers(0, len(POPULATION) - 1),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_views_kept_current_equal_views_built_afresh(
    seed: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever sequence of puts, drops, refreshes and queries: every cached view (updated in
    place by refresh) serves what a board built from scratch serves."""
    rng = random.Random(seed)
    held = {t.address: t for t in POPULATION[:60]}
    board = board_of(held.values())
    visible = dict(held)
    clock_ms = 2_000_000_000_000
    queries = [
        ("month", "score", True, NO_FILTERS),
        ("month", "pnl", False, NO_FILTERS),
        ("day", "trade_count", True, Filters(min_trades=3)),
        ("week", "risk_level", False, Filters(styles=frozenset({Style.SWING, Style.DAY}))),
        ("allTime", "account_value", True, NO_FILTERS),
    ]
    for action, i in steps:
        t = POPULATION[i]
        if action == "put":
            clock_ms += 1
            v = _variant(t, rng, clock_ms)
            board.put(v.address, v.metrics, account_value=v.account_value, updated_ms=v.updated_ms)
            held[v.address] = v
        elif action == "drop":
            board.drop(t.address)
            held.pop(t.address, None)
        elif action == "refresh":
            board.refresh()
            visible = dict(held)
        else:
            window, key, desc, f = queries[i % len(queries)]
            got = all_rows(board, window, key, desc, f)
            assert got == expected_order(visible.values(), window, key, desc, f)
    board.refresh()
    builds = board.view_builds
    for window, key, desc, f in queries:
        assert all_rows(board, window, key, desc, f) == expected_order(
            held.values(), window, key, desc, f
        )
    assert board.losers("month", limit=1000).total == len(expected_losers(held.values(), "month"))
    assert board.view_builds - builds <= len(queries) + 1  # cached views were kept, not rebuilt


def test_a_large_change_drops_the_views_and_they_come_back_right() -> None:
    traders = [Trader(a, "synthetic", m, v, 1) for a, m, v in synthetic_traders(3000, seed=5)]
    board = board_of(traders)
    assert all_rows(board, "month", "sharpe", True) == expected_order(
        traders, "month", "sharpe", True
    )
    assert board.stats()["views"] == 1
    replacements = [
        Trader(t.address, "synthetic", m, v, 2)
        for t, (_, m, v) in zip(traders, synthetic_traders(3000, seed=6), strict=True)
    ]
    for t in replacements:
        board.put(t.address, t.metrics, account_value=t.account_value, updated_ms=2)
    board.refresh()
    assert board.stats()["views"] == 0  # 3000 changes: cheaper to rebuild than to update
    assert all_rows(board, "month", "sharpe", True) == expected_order(
        replacements, "month", "sharpe", True
    )


def test_small_view_budget_evicts_but_stays_right() -> None:
    board = board_of(POPULATION, view_budget=150)
    for key in SORT_KEYS:
        assert all_rows(board, "month", key, True) == expected_order(POPULATION, "month", key, True)
    stats = board.stats()
    assert stats["view_evictions"] > 0
    assert stats["view_entries"] <= 150 or stats["views"] == 1


async def test_idle_views_are_dropped_at_refresh() -> None:
    clock = VirtualClock()
    board = board_of(POPULATION[:20], clock=clock)
    board.ranking("month", "pnl")
    board.ranking("month", "sharpe")
    assert board.stats()["views"] == 2
    await clock.advance(VIEW_IDLE_S + 1)
    board.ranking("month", "pnl")
    t = POPULATION[0]
    board.put(t.address, t.metrics, account_value=None, updated_ms=t.updated_ms + 1)
    board.refresh()
    assert board.stats()["views"] == 1


def test_stats_count_the_ranked_traders_per_window() -> None:
    board = board_of(POPULATION)
    stats = board.stats()
    assert stats["traders"] == len(POPULATION)
    for window in WINDOWS:
        assert stats["ranked"][window] == sum(
            1 for t in POPULATION if window in t.metrics and t.metrics[window].score is not None
        )
    assert stats["version"] == 1
    assert stats["age_s"] is not None


def test_non_finite_figures_read_as_missing() -> None:
    t = POPULATION[1]
    m = replace(t.metrics["month"], return_=float("inf"), pnl=Decimal("NaN"), sharpe=float("nan"))
    board = Leaderboard()
    board.put(t.address, {"month": m}, account_value=Decimal("Infinity"), updated_ms=1)
    board.refresh()
    row = board.ranking("month", "return").rows[0]
    assert row["return"] is None
    assert row["pnl"] is None
    assert row["sharpe"] is None
    assert row["account_value"] is None


# --- loading the packed figures ------------------------------------------------------------------


def packed_rows(traders: Iterable[Trader]) -> list[StoredBoard]:
    """What ``BoardQueries.stored_boards`` reads back of traders the tracker stored: the
    account value as PostgreSQL prints a numeric, the figures as ``pack_metrics`` packed them."""
    return [
        (
            t.address,
            None if t.account_value is None else format(t.account_value, "f"),
            t.updated_ms,
            pack_metrics(t.metrics, updated_ms=t.updated_ms),
        )
        for t in traders
    ]


def assert_same_board(got: Leaderboard, want: Leaderboard) -> None:
    assert len(got) == len(want)
    assert got.stats()["ranked"] == want.stats()["ranked"]
    for window in WINDOWS:
        for key in SORT_KEYS:
            for desc in (True, False):
                assert all_rows(got, window, key, desc) == all_rows(want, window, key, desc), (
                    window,
                    key,
                    desc,
                )
        assert got.losers(window, limit=10**6).rows == want.losers(window, limit=10**6).rows


def test_loading_packed_figures_serves_what_the_puts_served() -> None:
    rows = packed_rows(POPULATION)
    board = Leaderboard()
    for i in range(0, len(rows), 50):  # in batches, as the service loads them
        put, unreadable = board.load(rows[i : i + 50])
        assert (put, unreadable) == (len(rows[i : i + 50]), [])
    assert_same_board(board, board_of(POPULATION))
    assert board.version == 3  # one refresh per batch


def test_loading_a_synthetic_crowd_with_every_figure_missing_somewhere() -> None:
    crowd = [
        Trader(a, "synthetic", m, v, 1_000 + i)
        for i, (a, m, v) in enumerate(synthetic_traders(500, seed=4))
    ]
    board = Leaderboard()
    board.load(packed_rows(crowd))
    assert_same_board(board, board_of(crowd))


def test_load_into_a_busy_board_keeps_the_newest_of_every_trader() -> None:
    """Slots freed by drops (so the loaded traders do not get one run of slots), views in use,
    a put staged while loading: whichever of the stored row and the board's figures is newer
    wins, as between two puts."""
    rng = random.Random(3)
    first, rest = POPULATION[:40], POPULATION[40:]
    board = board_of(first)
    all_rows(board, "month", "score", True)  # a view to keep current
    for t in first[:10]:
        board.drop(t.address)
    board.refresh()
    newer_held = _variant(first[10], rng, first[10].updated_ms + 5)
    board.put(
        newer_held.address, newer_held.metrics, account_value=None, updated_ms=newer_held.updated_ms
    )
    older_held = first[11]
    board.refresh()
    staged_newer = _variant(rest[0], rng, rest[0].updated_ms + 5)
    board.put(
        staged_newer.address,
        staged_newer.metrics,
        account_value=None,
        updated_ms=staged_newer.updated_ms,
    )
    staged_older = _variant(rest[1], rng, rest[1].updated_ms - 5)
    board.put(
        staged_older.address,
        staged_older.metrics,
        account_value=None,
        updated_ms=staged_older.updated_ms,
    )
    stored_newer = _variant(older_held, rng, older_held.updated_ms + 5)

    put, unreadable = board.load(packed_rows([first[10], stored_newer, *rest]))
    assert unreadable == []
    assert put == len(rest)  # not first[10] (the board's is newer), nor rest[0] (staged newer)
    want = [
        *first[12:],
        Trader(newer_held.address, "", newer_held.metrics, None, newer_held.updated_ms),
        stored_newer,
        Trader(staged_newer.address, "", staged_newer.metrics, None, staged_newer.updated_ms),
        *rest[1:],
    ]
    assert_same_board(board, board_of(want))


def test_loaded_traders_take_the_slots_dropped_traders_left() -> None:
    board = board_of(POPULATION[:40])
    for t in POPULATION[:10]:
        board.drop(t.address)
    board.refresh()
    all_rows(board, "week", "pnl", False)  # a view to keep current
    board.load(packed_rows(POPULATION[40:45]))  # into the ten scattered free slots
    assert_same_board(board, board_of(POPULATION[10:45]))


def _repacked(packed: bytes, body: bytes) -> bytes:
    """``packed`` with another body and a CRC that holds for it."""
    fingerprint, mask, at_ms, _ = struct.unpack_from("<IBqI", packed)
    return struct.pack("<IBqI", fingerprint, mask, at_ms, zlib.crc32(body)) + body


def test_unreadable_packed_figures_are_reported_never_served() -> None:
    t = POPULATION[2]
    good = pack_metrics(t.metrics, updated_ms=t.updated_ms)
    head = struct.calcsize("<IBqI")
    flipped = bytearray(good)
    flipped[head + 3] ^= 0x40  # a bit of a float: only the CRC can tell
    foreign = bytearray(good)
    foreign[0] ^= 1  # packed by a build with another layout
    cases: dict[str, bytes | None] = {
        "0x" + "01" * 20: None,  # stored before there were packed figures
        "0x" + "02" * 20: good[:100],
        "0x" + "03" * 20: bytes(flipped),
        "0x" + "04" * 20: bytes(foreign),
        "0x" + "05" * 20: pack_metrics(t.metrics, updated_ms=t.updated_ms - 1),  # other stats
        "0x" + "06" * 20: _repacked(good, good[head:] + b"\xff\xfe"),  # not UTF-8
        "0x" + "07" * 20: _repacked(good, good[head:] + b"\x1e1"),  # a text too many
    }
    board = Leaderboard()
    put, unreadable = board.load([(a, "10", t.updated_ms, packed) for a, packed in cases.items()])
    assert (put, unreadable) == (0, list(cases))
    assert len(board) == 0
    assert board.load([(t.address, "10", t.updated_ms, good)]) == (1, [])


def test_non_finite_figures_pack_as_missing() -> None:
    t = POPULATION[1]
    m = replace(
        t.metrics["month"],
        return_=float("inf"),
        pnl=Decimal("NaN"),
        sharpe=float("nan"),
        account_value=Decimal("Infinity"),
    )
    board = Leaderboard()
    board.load([(t.address, "NaN", 1, pack_metrics({"month": m}, updated_ms=1))])
    row = board.ranking("month", "return").rows[0]
    assert (row["return"], row["pnl"], row["sharpe"], row["account_value"]) == (None,) * 4
