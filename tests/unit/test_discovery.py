"""The registry and the users-order calibration: pure code, no I/O."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hlcopy.model import Fill, Side, Trade
from hlcopy.scout.discovery import Registry, party_sides, users_order_from
from hlcopy.store.registry import COIN_SEPARATOR
from hypothesis import given
from hypothesis import strategies as st

D = Decimal
A = [f"0x{i:040x}" for i in range(1, 50)]


def trade(
    buyer: str,
    seller: str,
    side: Side = "B",
    coin: str = "BTC",
    px: str = "100.5",
    sz: str = "0.25",
    time_ms: int = 1_000,
    tid: int = 1,
) -> Trade:
    return Trade(coin, side, D(px), D(sz), time_ms, "0xhash", tid, (buyer, seller))


def fill(tid: int, side: Side, crossed: bool | None, coin: str = "BTC") -> Fill:
    return Fill(coin, D(1), D(1), side, 1_000, D(0), None, None, None, 7, tid, crossed, D(0))


def test_both_parties_are_registered_with_taker_and_maker_per_the_docs() -> None:
    reg = Registry()
    # The aggressor buys: the buyer (users[0]) took; then it sells: the seller (users[1]) took.
    reg.record([trade(A[0], A[1], "B", px="100", sz="2", time_ms=10)])
    reg.record([trade(A[2], A[0], "A", coin="ETH", px="3.5", sz="4", time_ms=20)])
    a0, a1, a2 = (reg.get(a) for a in A[:3])
    assert a0 is not None
    assert a1 is not None
    assert a2 is not None
    assert (a0.trades, a0.taker, a0.maker) == (2, 2, 0)
    assert (a1.trades, a1.taker, a1.maker) == (1, 0, 1)
    assert (a2.trades, a2.taker, a2.maker) == (1, 0, 1)
    assert a0.volume_usd == D("214.0")  # 100 x 2 + 3.5 x 4, exactly
    assert (a0.first_seen_ms, a0.last_seen_ms) == (10, 20)
    assert a0.coins == ("BTC", "ETH")
    assert a1.coins == ("BTC",)
    assert len(reg) == 3
    assert A[2] in reg
    assert reg.get(A[9]) is None
    assert reg.trades == 2


def test_maker_taker_reading_makes_the_second_address_the_taker() -> None:
    reg = Registry()
    reg.record([trade(A[0], A[1], "B"), trade(A[0], A[1], "A")], maker_taker=True)
    a0, a1 = reg.get(A[0]), reg.get(A[1])
    assert a0 is not None
    assert a1 is not None
    assert (a0.taker, a0.maker, a1.taker, a1.maker) == (0, 2, 2, 0)


def test_out_of_order_trades_move_first_seen_back() -> None:
    reg = Registry()
    reg.record([trade(A[0], A[1], time_ms=500)])
    reg.record([trade(A[0], A[1], time_ms=300), trade(A[0], A[1], time_ms=400)])
    a0 = reg.get(A[0])
    assert a0 is not None
    assert (a0.first_seen_ms, a0.last_seen_ms) == (300, 500)


def test_what_is_not_an_address_is_counted_and_ignored() -> None:
    reg = Registry()
    upper = "0x" + "AB" * 20  # parse lowercases; anything else is not an address we keep
    reg.record([trade("nobody", A[1]), trade(upper, A[1]), Trade("BTC", "B", D(1), D(1), 1, "", 2)])
    assert len(reg) == 1
    assert reg.invalid == 2
    assert reg.pending == 1
    a1 = reg.get(A[1])
    assert a1 is not None
    assert a1.trades == 2


def test_changes_are_coalesced_per_address_and_taken_with_absolute_figures() -> None:
    reg = Registry()
    for i in range(10):
        reg.record([trade(A[0], A[1], time_ms=i, tid=i)])
    assert reg.pending == 2
    taken, rows = reg.take(10)
    assert reg.pending == 0
    assert [a.address for a in taken] == [A[0], A[1]]
    assert rows[0] == (A[0], 0, 9, 10, "251.250", 10, 0, "BTC")
    reg.record([trade(A[1], A[2], coin="ETH")])  # changed again: queued again
    _, rows = reg.take(10)
    assert [r[0] for r in rows] == [A[1], A[2]]
    assert rows[0][3] == 11
    assert rows[0][7] == f"BTC{COIN_SEPARATOR}ETH"


def test_over_the_cap_the_oldest_changes_are_dropped_then_swept_back() -> None:
    reg = Registry(queue_size=4)
    for i in range(0, 10, 2):
        reg.record([trade(A[i], A[i + 1], tid=i)])
    assert reg.pending == 4
    assert reg.dropped == 6
    assert reg.stale == 6
    taken, _ = reg.take(100)
    assert {a.address for a in taken} == set(A[6:10])  # the newest four
    # A dropped address that changes again is simply queued again...
    reg.record([trade(A[0], A[7])])
    assert reg.stale == 5
    taken, _ = reg.take(100)
    assert {a.address for a in taken} == {A[0], A[7]}
    # ...and the rest come back by the sweep, within the cap.
    assert reg.sweep() == 4
    assert reg.sweep() == 0  # the queue is full
    taken, _ = reg.take(100)
    assert reg.sweep() == 1
    taken += reg.take(100)[0]
    assert {a.address for a in taken} == set(A[1:6])
    assert reg.stale == 0
    assert reg.swept == 5


def test_a_failed_write_goes_back_to_the_front() -> None:
    reg = Registry(queue_size=3)
    reg.record([trade(A[0], A[1])])
    taken, _ = reg.take(10)
    reg.record([trade(A[2], A[3])])
    reg.requeue(taken)
    order, _ = reg.take(10)
    # In front, as the oldest; past the cap, the very oldest went (and waits for the sweep).
    assert [a.address for a in order] == [A[1], A[2], A[3]]
    assert reg.dropped == 1
    assert reg.stale == 1
    # An address changed again after it was taken is not queued twice.
    reg.record([trade(A[0], A[1])])
    taken, _ = reg.take(10)
    reg.record([trade(A[0], A[4])])
    reg.requeue(taken)
    order, _ = reg.take(10)
    assert sorted(a.address for a in order) == sorted([A[0], A[1], A[4]])


def test_merge_adds_what_the_database_knew() -> None:
    reg = Registry()
    reg.record([trade(A[0], A[1], px="10", sz="1", time_ms=5_000)])
    reg.take(10)
    reg.merge(
        [
            (A[0], 1_000, 2_000, 7, D("70.5"), 3, 4, ["ETH"]),
            (A[5], 1_500, 2_500, 2, D("1.25"), 1, 1, ["SOL", "BTC"]),
        ]
    )
    a0, a5 = reg.get(A[0]), reg.get(A[5])
    assert a0 is not None
    assert a5 is not None
    assert (a0.first_seen_ms, a0.last_seen_ms, a0.trades, a0.taker, a0.maker) == (
        1_000,
        5_000,
        8,
        4,
        4,
    )
    assert a0.volume_usd == D("80.5")
    assert set(a0.coins) == {"BTC", "ETH"}
    assert a5.coins == ("BTC", "SOL")  # in the order the registry first saw each coin
    taken, _ = reg.take(10)
    assert [a.address for a in taken] == [A[0]]  # the sum is written; A[5] is as stored


def test_search_pages_in_address_order() -> None:
    reg = Registry()
    addresses = ["0xab" + f"{i:038x}" for i in range(5)] + ["0xcd" + f"{i:038x}" for i in range(3)]
    for a in reversed(addresses):
        reg.record([trade(a, A[0])])
    total, page = reg.search("0xab", limit=2, offset=1)
    assert total == 5
    assert [a.address for a in page] == addresses[1:3]
    total, page = reg.search("", limit=100, offset=0)
    assert total == 9
    assert [a.address for a in page] == sorted([*addresses, A[0]])
    reg.record([trade("0xab" + "f" * 38, A[0])])  # a newcomer after a search is found
    total, page = reg.search("0xabf", limit=10, offset=0)
    assert total == 1
    assert page[0].address == "0xab" + "f" * 38
    assert reg.search("0xee", 10, 0) == (0, [])
    assert reg.search("0xab", 10, 50) == (6, [])


def test_iteration_is_a_snapshot() -> None:
    reg = Registry()
    reg.record([trade(A[0], A[1])])
    it = iter(reg)
    reg.record([trade(A[2], A[3])])
    assert [a.address for a in it] == [A[0], A[1]]
    assert len(list(reg)) == 4


@dataclass
class Expected:
    taker: int = 0
    maker: int = 0
    volume: Decimal = field(default_factory=Decimal)
    coins: set[str] = field(default_factory=set)
    times: list[int] = field(default_factory=list)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.integers(0, 5),
            st.sampled_from(["B", "A"]),
            st.sampled_from(["BTC", "ETH", "xyz:TSLA", "@107"]),
            st.decimals(D("0.0001"), D("100000"), places=4),
            st.decimals(D("0.00001"), D("1000"), places=5),
            st.integers(0, 10**6),
        ),
        max_size=60,
    ),
    st.booleans(),
)
def test_registry_figures_match_a_naive_count(
    raw: list[tuple[int, int, Side, str, Decimal, Decimal, int]], maker_taker: bool
) -> None:
    trades = [
        Trade(c, s, px, sz, t, "0x", i, (A[b], A[x]))
        for i, (b, x, s, c, px, sz, t) in enumerate(raw)
    ]
    reg = Registry()
    for i in range(0, len(trades), 7):  # frames of a few trades
        reg.record(trades[i : i + 7], maker_taker)
    expected: dict[str, Expected] = defaultdict(Expected)
    for t in trades:
        assert t.users is not None
        taker = t.users[1] if maker_taker or t.side == "A" else t.users[0]
        maker = t.users[0] if taker == t.users[1] else t.users[1]
        for who, took in ((taker, True), (maker, False)):
            e = expected[who]
            e.taker += took
            e.maker += not took
            e.volume += t.px * t.sz
            e.coins.add(t.coin)
            e.times.append(t.time_ms)
    assert len(reg) == len(expected)
    for address, e in expected.items():
        a = reg.get(address)
        assert a is not None
        assert (a.trades, a.taker, a.maker) == (e.taker + e.maker, e.taker, e.maker)
        assert a.volume_usd == e.volume
        assert set(a.coins) == e.coins
        assert (a.first_seen_ms, a.last_seen_ms) == (min(e.times), max(e.times))
    assert reg.pending == len(expected)


# -- calibration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "looked_up", "fill_side", "crossed", "expected"),
    [
        # The aggressor bought. Docs: users[0] is the buyer, who crossed.
        ("B", 0, "B", True, "buyer_seller"),
        # One SDK: users[0] is the maker, who sold.
        ("B", 0, "A", False, "maker_taker"),
        # Looking up the second address tells it too.
        ("B", 1, "A", False, "buyer_seller"),
        ("B", 1, "B", True, "maker_taker"),
        # An old fill without the crossed flag: the side decides.
        ("B", 0, "B", None, "buyer_seller"),
        # A fill that fits neither reading.
        ("B", 0, "B", False, None),
        # The aggressor sold: both readings say the same, nothing is learned.
        ("A", 0, "B", False, None),
        ("A", 1, "A", True, None),
    ],
)
def test_users_order_from_the_fill_of_the_trade(
    side: Side, looked_up: int, fill_side: Side, crossed: bool | None, expected: str | None
) -> None:
    t = trade(A[0], A[1], side, tid=42)
    user = A[looked_up]
    fills = [
        fill(41, "A", False),
        fill(42, fill_side, crossed, coin="ETH"),
        fill(42, fill_side, crossed),
    ]
    assert users_order_from(t, user, fills) == expected


def test_users_order_needs_the_trade_among_the_fills() -> None:
    t = trade(A[0], A[1], "B", tid=42)
    assert users_order_from(t, A[0], [fill(43, "B", True)]) is None
    assert users_order_from(t, A[3], [fill(42, "B", True)]) is None  # not a party
    assert users_order_from(trade(A[0], A[0], "B", tid=42), A[0], [fill(42, "B", True)]) is None


def test_party_sides_under_each_reading() -> None:
    # [buyer, seller]: whoever the aggressor was, the first bought.
    assert party_sides("B", "buyer_seller") == ("B", "A")
    assert party_sides("A", "buyer_seller") == ("B", "A")
    assert party_sides("A", None) == ("B", "A")  # the docs' reading until calibrated
    # [maker, taker]: the second took the aggressor's side.
    assert party_sides("B", "maker_taker") == ("A", "B")
    assert party_sides("A", "maker_taker") == ("B", "A")
