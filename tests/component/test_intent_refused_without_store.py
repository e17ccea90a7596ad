"""Found by chaos (f): an intent the database cannot take is refused before anything is sent
(no durable intent, no order) — and that refusal is ours, not the exchange's: it must not count
as a rejection for the reject-streak breaker, or a database gone for a few seconds while a
leader trades leaves trading halted after it is back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hlcopy.follow.risk import REFUSED_BEFORE_SENDING, result_of
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store

from tests.component.test_live_executor import intent, live_on, outcome_of, sim_szi


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        yield s


async def test_an_intent_the_store_cannot_take_is_refused_and_is_no_rejection(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        await store.close()  # the database is gone
        order = intent(stepped, True, "0.01")
        env.executor.submit(order)
        out = await outcome_of(env, order)
        assert out.status == "rejected"
        assert (out.error or "").startswith(REFUSED_BEFORE_SENDING), out.error
        assert result_of(out).kind == "unfilled"  # neither extends nor resets a streak
        assert env.executor.counters["refused"] == 1
        assert sim_szi(env) == 0  # nothing was sent
        assert env.venue.counters["sent"] == 0
