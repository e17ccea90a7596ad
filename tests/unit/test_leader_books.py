"""The leader book's rules without I/O: the component is built (never run) and fed directly."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hlcopy.budget import WeightBudget
from hlcopy.clock import VirtualClock
from hlcopy.config import DatabaseConfig
from hlcopy.follow.leaders import LeaderBooks, LeaderChange, _CoinBook, _Hint
from hlcopy.hl import InfoClient, StreamPool, new_session
from hlcopy.model import (
    ZERO,
    AccountState,
    Fill,
    LeaderFill,
    MarginSummary,
    Position,
    Side,
    UserFills,
)
from hlcopy.queues import BoundedQueue
from hlcopy.store import Store

from tests.conftest import make_config

L = "0x" + "ab" * 20
D = Decimal


@pytest.fixture
async def books(tmp_path: Path) -> AsyncIterator[LeaderBooks]:
    async with new_session(1) as session:
        b = LeaderBooks(
            StreamPool("ws://127.0.0.1:9"),
            InfoClient(session, "http://127.0.0.1:9", WeightBudget(1200, 5)),
            Store(DatabaseConfig(dsn="postgresql://127.0.0.1:9/none"), tmp_path),
            BoundedQueue[LeaderFill]("firehose", 100),
            BoundedQueue[LeaderChange]("changes", 1000),
            make_config(tmp_path),
            VirtualClock(),
            seen_per_leader=50,
        )
        b.set_leaders({L: 1})
        yield b


def changes(b: LeaderBooks) -> list[LeaderChange]:
    q = b._changes
    assert isinstance(q, BoundedQueue)
    return q.drain_nowait()


def state(time_ms: int, **szi: str) -> AccountState:
    zero = D(0)
    return AccountState(
        tuple(
            Position(c, D(s), D(100), None, None, None, None, None, None) for c, s in szi.items()
        ),
        MarginSummary(D(5000), zero, zero, zero),
        None,
        None,
        None,
        time_ms,
    )


_tids = itertools.count(1)


def fill(
    side: Side,
    sz: str,
    time_ms: int,
    start: str | None,
    *,
    tid: int | None = None,
    coin: str = "ETH",
    confirmed: bool = True,
) -> LeaderFill:
    return LeaderFill(
        L,
        coin,
        side,
        D(sz),
        D(100),
        time_ms,
        next(_tids) if tid is None else tid,
        "firehose" if start is None else "userFills",
        None if start is None else D(start),
        confirmed,
    )


def szi(b: LeaderBooks, coin: str = "ETH") -> Decimal | None:
    view = b.view(L, coin)
    return None if view is None else view.szi


async def test_exact_fills_in_any_order_end_where_the_last_one_does(books: LeaderBooks) -> None:
    a = fill("B", "1", 10, "0")
    b = fill("B", "2", 20, "1")
    c = fill("A", "4", 30, "3")
    for f in (c, a, b):  # reordered: the newest first
        books.ingest(f)
    assert szi(books) == D(-1)
    moved = changes(books)
    assert [ch.fill for ch in moved] == [c]  # the older ones were already inside c's start
    assert books.view(L, "ETH").confirmed  # type: ignore[union-attr]


async def test_same_millisecond_fills_chain_through_start_position(books: LeaderBooks) -> None:
    first = fill("B", "1", 10, "0")
    second = fill("B", "1", 10, "1")
    books.ingest(second)
    books.ingest(first)  # same ms, but it ends where the second starts: older
    assert szi(books) == D(2)
    books2_first = fill("B", "1", 50, "2")
    books2_second = fill("B", "1", 50, "3")
    books.ingest(books2_first)
    books.ingest(books2_second)  # same ms, starts where the book is: newer
    assert szi(books) == D(4)


async def test_a_hint_is_unconfirmed_until_its_exact_version_arrives(books: LeaderBooks) -> None:
    books.snapshot(L, state(5))
    hint = fill("B", "1", 10, None, tid=777, confirmed=False)
    assert books.ingest(hint)
    view = books.view(L, "ETH")
    assert view is not None
    assert view.szi == 1
    assert not view.confirmed
    exact = fill("B", "1", 10, "0", tid=777)
    assert books.ingest(exact)  # same position, now confirmed: a change
    view = books.view(L, "ETH")
    assert view is not None
    assert view.szi == 1
    assert view.confirmed
    assert not books.ingest(hint)
    assert not books.ingest(exact)
    assert books.stats()["upgraded"] == 1


async def test_snapshot_fills_are_history_and_gap_fill_makes_them_changes(
    books: LeaderBooks,
) -> None:
    books.snapshot(L, state(5))
    changes(books)
    missed = fill("A", "2", 10, "0", tid=900)
    assert not books.ingest(missed, snapshot=True)
    assert szi(books) == 0
    assert not changes(books)
    rest = LeaderFill(L, "ETH", "A", D(2), D(100), 10, 900, "rest", D(0))
    assert books.ingest(rest)
    assert szi(books) == D(-2)
    assert [c.fill for c in changes(books)] == [rest]


async def test_snapshots_correct_drift_but_never_undo_a_newer_fill(books: LeaderBooks) -> None:
    books.snapshot(L, state(5, ETH="1"))
    assert [(c.fill, c.szi) for c in changes(books)] == [(None, D(1))]
    books.ingest(fill("B", "1", 10, None))  # a hint on top of the snapshot
    assert szi(books) == 2
    books.snapshot(L, state(20, ETH="3"))  # truth says 3: a hint went missing
    assert szi(books) == 3
    assert [(c.fill, c.szi) for c in changes(books)][-1] == (None, D(3))
    books.ingest(fill("A", "1", 30, "3"))
    books.snapshot(L, state(25, ETH="3"))  # read before that fill: ignored for ETH
    assert szi(books) == 2
    books.snapshot(L, state(40))  # flat everywhere now
    assert szi(books) == 0
    assert books.coins(L) == set()
    view = books.view(L, "BTC")  # never traded: flat as of the snapshot
    assert view is not None
    assert view.szi == 0
    assert view.equity == 5000


async def test_a_position_first_seen_in_a_snapshot_has_no_change_time(
    books: LeaderBooks,
) -> None:
    # Found by chaos (b): a leader already holding ETH when the daemon first starts. Stamping
    # the first read as a change made entry "wait" copy the whole old position at once.
    books.snapshot(L, state(5_000, ETH="2"))
    view = books.view(L, "ETH")
    assert view is not None
    assert (view.szi, view.last_change_ms) == (D(2), None)
    assert [(c.fill, c.szi) for c in changes(books)] == [(None, D(2))]  # still handed over
    books.snapshot(L, state(6_000, ETH="3"))  # a change between two reads: dated by the read
    view = books.view(L, "ETH")
    assert view is not None
    assert (view.szi, view.last_change_ms) == (D(3), 6_000)


async def test_a_position_first_seen_takes_its_change_time_from_the_fills_history(
    books: LeaderBooks,
) -> None:
    # Found by chaos (d): after a restart, a position the leader opened while hlcopy was
    # running (the follower's copy lost to a kill) had no change time, and entry "wait" kept
    # the follower flat until the leader's next trade. The userFills snapshot dates it.
    assert not books.ingest(fill("B", "1", 4_000, "1"), snapshot=True)
    assert not books.ingest(fill("B", "1", 4_500, "2"), snapshot=True)
    books.snapshot(L, state(5_000, ETH="2"))
    view = books.view(L, "ETH")
    assert view is not None
    assert (view.szi, view.last_change_ms) == (D(2), 4_500)
    # History arriving after the first state dates it too; a coin without history stays
    # undated.
    other = "0x" + "cd" * 20
    books.set_leaders({L: 1, other: 1})
    books.snapshot(other, state(6_000, BTC="1", SOL="5"))

    def history(side: Side, time_ms: int, start: str) -> None:
        old = replace(fill(side, "1", time_ms, start, coin="BTC"), leader=other)
        assert not books.ingest(old, snapshot=True)

    history("B", 3_000, "0")
    btc = books.view(other, "BTC")
    assert btc is not None
    assert btc.last_change_ms == 3_000
    # Found by chaos (d) again: a snapshot listed oldest first (the simulator's order) dated the
    # position by its oldest fill, so a copy lost to a kill two seconds before was "stale".
    history("A", 3_500, "1")
    history("B", 3_200, "0")
    btc = books.view(other, "BTC")
    assert btc is not None
    assert btc.last_change_ms == 3_500  # the newest, in either order
    sol = books.view(other, "SOL")
    assert sol is not None
    assert sol.last_change_ms is None


async def test_a_coin_a_later_state_shows_first_moved_between_the_two_reads(
    books: LeaderBooks,
) -> None:
    """Found by CI (the norm test on 06d504b): the leader's state was read after its trade but
    before the userFills message came. The leader was known flat, so the new position is a
    change dated by the read (taken for one that predated the follow, entry "wait" never
    copied it), and the fills coming after are inside it."""
    books.snapshot(L, state(5_000))  # flat
    changes(books)
    books.snapshot(L, state(8_000, ETH="2"))
    view = books.view(L, "ETH")
    assert view is not None
    assert (view.szi, view.last_change_ms) == (D(2), 8_000)
    assert [(c.fill, c.szi) for c in changes(books)] == [(None, D(2))]
    assert not books.ingest(fill("B", "2", 7_000, "0"))  # its fill, late: inside the state
    assert not changes(books)


async def test_a_hint_older_than_the_snapshot_is_inside_it(books: LeaderBooks) -> None:
    books.snapshot(L, state(50, ETH="1"))
    assert not books.ingest(fill("B", "1", 40, None))
    assert szi(books) == 1


async def test_dedupe_memory_is_bounded(books: LeaderBooks) -> None:
    for i in range(200):
        books.ingest(fill("B", "1", 10 + i, str(i)))
    assert szi(books) == D(200)
    assert len(books._books[L].seen) == 50
    # A forgotten tid that comes back is older than the book's anchor: nothing moves.
    assert not books.ingest(fill("B", "1", 10, "0", tid=1))
    assert szi(books) == D(200)


async def test_slots_go_to_priority_then_notional(books: LeaderBooks) -> None:
    others = {"0x" + f"{i:02x}" * 20: 1 for i in range(3)}
    books.set_leaders({L: 5, **others})
    low, mid, high = sorted(others)
    books.snapshot(mid, state(1, ETH="10"))
    books.snapshot(high, state(1, ETH="1"))
    assert books.ranked() == [L, mid, high, low]
    assert books.view(low, "ETH") is None  # nothing known yet
    books.set_leaders({mid: 1})
    assert books.leaders == {mid}


def _wire_fill(tid: int, side: Side, sz: str, start: str, coin: str = "ETH") -> Fill:
    return Fill(coin, D(100), D(sz), side, 50, D(start), None, None, None, 1, tid, True, None)


async def test_a_message_of_several_fills_is_one_change_per_coin(books: LeaderBooks) -> None:
    """A leader's trade that sweeps three makers arrives as three fills in one message: the
    engine hears one change per coin (the first fill's, with the book where the last one ends),
    so it orders the whole trade at once instead of a sliver per maker."""
    books.snapshot(L, state(10))
    changes(books)
    msg = UserFills(
        L,
        False,
        (
            _wire_fill(901, "B", "1", "0"),
            _wire_fill(902, "B", "2", "1"),
            _wire_fill(903, "A", "1", "0", coin="BTC"),
            _wire_fill(904, "B", "0.5", "3"),
        ),
    )
    books.user_fills.offer(msg)
    moved = changes(books)
    assert [(c.coin, c.fill.tid if c.fill else None, c.szi) for c in moved] == [
        ("ETH", 901, D("3.5")),
        ("BTC", 903, D(-1)),
    ]
    assert books.stats()["changes"] == 2
    # Outside a message each fill is its own change, as before.
    books.ingest(fill("B", "1", 60, "3.5", tid=905))
    assert [c.szi for c in changes(books)] == [D("4.5")]


async def test_a_book_is_synced_once_its_state_and_its_fills_snapshot_are_in(
    books: LeaderBooks,
) -> None:
    """Before its userFills snapshot, a leader's trade would arrive inside that snapshot as
    history: a caller waiting for the book to be live waits for both reads."""
    assert not books.synced(L)
    books.snapshot(L, state(10))
    assert not books.synced(L)
    books.user_fills.offer(UserFills(L, True, (_wire_fill(950, "B", "1", "0"),)))
    assert books.synced(L)
    assert books.synced(L.upper().replace("0X", "0x"))
    assert not books.synced("0x" + "cd" * 20)  # not followed


@pytest.mark.parametrize(
    ("anchor", "hints", "expected"),
    [
        (None, [], None),  # nothing known
        (D("2"), [], (D("2"), True)),  # exact (userFills): confirmed
        (D("-0"), [], (D("0"), True)),  # no -0 out of the book
        (None, [(D("1"), True)], (D("1"), False)),  # hints without an anchor: unconfirmed
        (D("2"), [(D("1"), True), (D("-0.5"), True)], (D("2.5"), True)),
        (D("2"), [(D("1"), True), (D("-0.5"), False)], (D("2.5"), False)),
        (D("1"), [(D("-1"), True)], (D("0"), True)),
    ],
)
def test_a_coin_book_reads_its_size_and_confirmation_at_once(
    anchor: Decimal | None, hints: list[tuple[Decimal, bool]], expected: tuple[Decimal, bool] | None
) -> None:
    c = _CoinBook()
    if anchor is not None:
        c.reanchor(anchor, 1_000, from_fill=True)
    c.hints = [_Hint(tid, 2_000 + tid, delta, ok) for tid, (delta, ok) in enumerate(hints)]
    state = c.state()
    assert state == expected
    if state is not None and expected is not None:
        assert str(state[0]) == str(expected[0])  # the sign of zero too
    assert c.known is (expected is not None)
    assert c.szi == (ZERO if expected is None else expected[0])
    assert c.confirmed is (expected is not None and expected[1])
