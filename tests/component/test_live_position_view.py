"""Found by chaos (a): the live executor's view of the follower's position counts a fill of ours
twice when the exchange's account snapshot already holds it but carries an exchange time earlier
than the local time the reply was booked at.

``PaperExecutor._sync_live`` rebuilds the account from the newest ``clearinghouseState`` and
replays the fills booked "after" it, comparing the snapshot's exchange ``time`` with each booked
fill's *local* reply time. Those are two clocks: on the exchange a snapshot served after our
order landed is stamped before our reply arrives (the reply's transit, plus clock skew); in the
simulator the account's time is the market's 100 ms tick (and frozen in a stepped one). The fill
is then replayed on top of a snapshot that already contains it: the view is off by the fill
until a snapshot stamped later than the booking comes (never, in a stepped simulator).

What it costs (chaos (a), a leader trading around flat, 0.3 ratio): reduce-only orders sized
from the doubled view are refused by the exchange ("Reduce only order would increase position",
"Order must have minimum value of $10"), and those refusals feed the reject-streak breaker,
which halted trading in about one run in five; a doubled fill against the next trade's
direction also makes the copier over-trade by that fill until the next snapshot.

The view now tells on our own clock whether a read holds a fill (``AccountRead``): asked for
after the fill's reply, it does; answered before its order was sent, it does not; in between, the
coin keeps its view and the executor reads again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from hlcopy.model import AccountRead
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store

from tests.component.test_live_executor import intent, live_on, outcome_of, sim_szi


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        yield s


async def test_a_snapshot_that_holds_our_fill_does_not_count_it_twice(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        order = intent(stepped, True, "0.01")
        env.executor.submit(order)
        assert (await outcome_of(env, order)).status == "filled"
        assert env.executor.positions() == {"ETH": Decimal("0.01")}
        await env.executor.read_state()  # the exchange's account, with our fill in it
        assert sim_szi(env) == Decimal("0.01")
        assert env.executor.positions() == {"ETH": Decimal("0.01")}  # was 0.02 before the fix


async def test_a_read_is_told_by_our_own_clock_whether_it_holds_a_fill(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        flat = await env.info.clearinghouse_state(env.master)  # read before the order
        sent_ms = int(time.time() * 1000)
        order = intent(stepped, True, "0.01")
        env.executor.submit(order)
        assert (await outcome_of(env, order)).status == "filled"
        replied_ms = int(time.time() * 1000)
        holding = await env.info.clearinghouse_state(env.master)  # with our fill in it
        view = env.executor
        assert view.positions() == {"ETH": Decimal("0.01")}
        # Asked for before the reply, answered after the send: it may hold the fill or not.
        # The coin keeps its view (never 0.02, never 0) ...
        view._sync_live(AccountRead(holding, sent_ms, replied_ms + 1))
        assert view.positions() == {"ETH": Decimal("0.01")}
        view._sync_live(AccountRead(flat, sent_ms + 1, replied_ms + 1))
        assert view.positions() == {"ETH": Decimal("0.01")}
        # ... answered before the order went out, it cannot hold it: replayed on it ...
        view._sync_live(AccountRead(flat, sent_ms - 10, sent_ms - 5))  # older: ignored
        view._sync_live(AccountRead(flat, sent_ms + 2, sent_ms - 1))
        assert view.positions() == {"ETH": Decimal("0.01")}
        # ... asked for after the reply, it holds it: taken as it is, the fill forgotten.
        view._sync_live(AccountRead(holding, replied_ms + 2, replied_ms + 3))
        assert view.positions() == {"ETH": Decimal("0.01")}
        view._sync_live(AccountRead(flat, replied_ms + 4, replied_ms + 5))
        assert view.positions() == {}  # the exchange's word: nothing left to replay
