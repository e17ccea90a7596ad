"""Live execution against the simulator, with real PostgreSQL: the executor shell with the live
venue signs with an approved agent key for a master account and sends IOC orders; fills are
booked once (replies and our own userFills deduped), rejections carry the exchange's message,
a lost reply is settled by cloid after ``expiresAfter`` with no resend, an order that never
arrived settles as ``never_arrived``, and the risk state is checked once more before sending.

The simulator is stepped (``realtime=False``): its market stands still, so a test's order meets
the book it read. Keys are generated per test."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from hlcopy.budget import Lane, WeightBudget
from hlcopy.component import Ready
from hlcopy.config import parse_config
from hlcopy.events import EventBus
from hlcopy.follow.executor import PaperExecutor, _with_intent_fields
from hlcopy.follow.risk import TradingState
from hlcopy.follow.venues import LiveVenue
from hlcopy.hl import ExchangeClient, InfoClient, Rounding, Signer, StreamPool, round_price
from hlcopy.model import Asset, OrderIntent, OrderOutcome, OrderSpec, UserFills
from hlcopy.queues import BoundedQueue
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store
from hlcopy.store.copies import CopyStore

from tests.component.test_sim_server import pool_on

D = Decimal
LEADER = "0x" + "ab" * 20
EXPIRES_S = 1.0


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        yield s


async def sim_post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(sim.url + path, data=orjson.dumps(body)) as r:
        assert r.status == 200, await r.text()
        return orjson.loads(await r.read())


async def sim_orders(sim: Simulator, cloid: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(sim.url + f"/_sim/orders?cloid={cloid}") as r:
        return r.status, orjson.loads(await r.read())


@dataclass
class Env:
    sim: Simulator
    executor: PaperExecutor
    venue: LiveVenue
    outcomes: BoundedQueue[OrderOutcome]
    info: InfoClient
    pool: StreamPool
    copies: CopyStore
    master: str
    risk: list[TradingState]
    seen: list[OrderOutcome] = field(default_factory=list)


def asset_of(sim: Simulator) -> Callable[[str], Asset | None]:
    def lookup(coin: str) -> Asset | None:
        a = sim.engine.by_name.get(coin)
        return None if a is None else Asset(a.name, a.asset_id, a.sz_decimals, a.max_leverage)

    return lookup


@contextlib.asynccontextmanager
async def live_on(
    sim: Simulator,
    store: Store,
    *,
    ws: bool = False,
    before: Callable[[ExchangeClient, str], Awaitable[None]] | None = None,
    risk_of: Callable[[OrderIntent], TradingState] | None = None,
    budget: WeightBudget | None = None,
    **venue_kwargs: Any,
) -> AsyncIterator[Env]:
    master_key, agent_key = "0x" + secrets.token_hex(32), "0x" + secrets.token_hex(32)
    master, agent = Signer.from_key(master_key), Signer.from_key(agent_key)
    await sim_post(sim, "/_sim/fund", {"address": master.address, "usdc": "100000"})
    async with aiohttp.ClientSession() as session, pool_on(sim) as pool:
        by_master = ExchangeClient(session, sim.url, master, WeightBudget(), is_mainnet=False)
        await by_master.approve_agent(master, agent.address, "hlcopy")
        info = InfoClient(session, sim.url, WeightBudget())
        exchange = ExchangeClient(
            session,
            sim.url,
            agent,
            budget or WeightBudget(),
            is_mainnet=False,
            poster=pool if ws else None,
        )
        if before is not None:  # what a previous run left behind
            await before(exchange, master.address)
        risk = [TradingState.ACTIVE]
        venue = LiveVenue(
            exchange,
            info,
            master.address,  # the account, never the agent
            asset_of(sim),
            stream=pool,
            risk=risk_of or (lambda _: risk[0]),
            expires_after_s=EXPIRES_S,
            settle_margin_s=0.2,
            settle_retry_s=0.2,
            **venue_kwargs,
        )
        intents = BoundedQueue[OrderIntent]("test:intents", 100)
        outcomes = BoundedQueue[OrderOutcome]("test:outcomes", 100)
        executor = PaperExecutor(
            intents,
            outcomes,
            pool,
            info,
            store,
            EventBus(),
            parse_config({}),
            funding=False,
            venue=venue,
        )
        up = asyncio.Event()
        task = asyncio.create_task(
            executor.run(Ready(lambda ok, _: up.set() if ok else None)), name="test:executor"
        )
        try:
            await asyncio.wait_for(up.wait(), 10)
            yield Env(
                sim, executor, venue, outcomes, info, pool, CopyStore(store), master.address, risk
            )
        finally:
            await executor.drain()
            await asyncio.wait_for(task, 10)


def intent(
    sim: Simulator, is_buy: bool, sz: str, *, reduce_only: bool = False, coin: str = "ETH"
) -> OrderIntent:
    """An IOC at 1% through the mid (on the price grid)."""
    a = sim.engine.by_name[coin]
    factor = D("1.01") if is_buy else D("0.99")
    px = round_price(a.path.mid * factor, a.sz_decimals, False, Rounding.NEAREST)
    return OrderIntent(
        cloid="0x" + secrets.token_hex(16),
        coin=coin,
        is_buy=is_buy,
        sz=D(sz),
        limit_px=px,
        reduce_only=reduce_only,
        reason="test",
        attribution=(("f1", D(sz)),),
        leader=LEADER,
    )


async def outcome_of(env: Env, order: OrderIntent, timeout: float = 10) -> OrderOutcome:
    async with asyncio.timeout(timeout):
        while True:
            for i, got in enumerate(env.seen):
                if got.cloid == order.cloid:
                    return env.seen.pop(i)
            env.seen.append(await env.outcomes.get())


async def until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def sim_szi(env: Env, coin: str = "ETH") -> Decimal:
    account = env.sim.engine.accounts.get(env.master)
    pos = None if account is None else account.positions.get(coin)
    return D(0) if pos is None else pos.szi


async def copy_row(env: Env, cloid: str) -> dict[str, Any]:
    rows = [r for r in await env.copies.copies(None, None, 100) if r["cloid"] == cloid]
    assert len(rows) == 1
    return rows[0]


async def test_an_intent_fills_on_the_exchange_and_is_booked_once(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        assert env.executor.positions() == {}
        order = intent(stepped, True, "0.01")
        env.executor.submit(order)
        assert env.executor.pending() == {("f1", "ETH"): D("0.01")}
        out = await outcome_of(env, order)
        assert out.status == "filled", out
        assert out.filled_sz == D("0.01")
        assert out.avg_px is not None
        assert out.avg_px <= order.limit_px
        assert out.oid is not None
        # The fee is the taker fee of what filled, within rounding of the exchange's own.
        assert abs(out.fee - out.filled_sz * out.avg_px * D("0.00045")) <= D("0.00001")
        assert sim_szi(env) == D("0.01")
        assert env.executor.positions() == {"ETH": D("0.01")}
        assert env.executor.pending() == {}
        assert env.executor.attributed() == {"f1": {"ETH": D("0.01")}}
        row = await copy_row(env, order.cloid)
        assert row["status"] == "filled"
        assert row["paper"] is False
        assert D(row["fill"]["filled_sz"]) == D("0.01")

        # Our own userFills bring the same fill: deduped, never booked again.
        await until(lambda: env.executor.counters["own_fills"] >= 1)
        counters = env.executor.counters
        assert counters["own_fills_deduped"] >= 1
        assert counters["own_fills_foreign"] == 0
        fills = await env.info.user_fills(env.master)
        assert [f.cloid for f in fills] == [order.cloid] * len(fills)
        env.executor.own_fills(UserFills(env.master, False, tuple(fills)))  # replayed
        assert env.executor.positions() == {"ETH": D("0.01")}
        assert env.executor.attributed() == {"f1": {"ETH": D("0.01")}}
        assert env.executor.counters["filled"] == 1
        assert env.outcomes.qsize() == 0
        assert not env.seen


async def test_an_order_waiting_for_the_ips_weight_is_signed_after_the_wait(store: Store) -> None:
    """A burst of orders can wait for weight behind reads already in the window. Signed before
    the wait, an order arrived with its expiresAfter (1 s here) gone and was refused; signed
    after it, it fills. (A simulator in real time: expiresAfter is judged on its clock.)"""
    budget = WeightBudget(1200, window_s=2.5)
    async with (
        Simulator(SimConfig(port=0, realtime=True, traders=20)) as live,
        live_on(live, store, budget=budget) as env,
    ):
        await budget.acquire(budget.read_limit, Lane.LEADER)  # the reads of the window
        await budget.acquire(budget.limit - budget.read_limit, Lane.ORDER, action=True)
        order = intent(live, True, "0.01")
        env.executor.submit(order)
        out = await outcome_of(env, order)
        assert out.status == "filled", out
        assert env.venue.counters["waited_for_weight"] == 1
        assert sim_szi(env) == D("0.01")


async def test_orders_go_over_a_websocket_post_when_a_connection_is_up(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store, ws=True) as env:
        await until(lambda: env.pool.post_ready)
        rest_before = stepped.stats["exchange_requests"]
        order = intent(stepped, True, "0.01")
        env.executor.submit(order)
        out = await outcome_of(env, order)
        assert out.status == "filled", out
        assert sim_szi(env) == D("0.01")
        assert stepped.stats["ws_actions"] == 1
        assert stepped.stats["exchange_requests"] == rest_before  # nothing over REST
        close = intent(stepped, False, "0.01", reduce_only=True)
        env.executor.submit(close)
        assert (await outcome_of(env, close)).status == "filled"
        assert sim_szi(env) == 0
        assert stepped.stats["ws_actions"] == 2
        assert stepped.stats["exchange_requests"] == rest_before


async def test_rejections_carry_the_exchanges_message(stepped: Simulator, store: Store) -> None:
    async with live_on(stepped, store) as env:
        reduce = intent(stepped, False, "0.01", reduce_only=True)  # nothing to reduce
        small = intent(stepped, True, "0.001")  # about $3: under the $10 minimum
        env.executor.submit(reduce)
        env.executor.submit(small)
        out_reduce = await outcome_of(env, reduce)
        out_small = await outcome_of(env, small)
        assert out_reduce.status == "rejected"
        assert out_reduce.error is not None
        assert out_reduce.error.startswith("Reduce only order would increase position.")
        assert out_small.status == "rejected"
        assert out_small.error is not None
        assert out_small.error.startswith("Order must have minimum value of $10")
        assert (await copy_row(env, small.cloid))["error"] == out_small.error
        assert env.executor.positions() == {}
        assert env.executor.pending() == {}
        assert sim_szi(env) == 0


async def test_a_lost_reply_is_settled_by_cloid_with_no_resend(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        await sim_post(stepped, "/_sim/faults", {"exchange_lose_reply": 1})
        sent_before = stepped.stats["exchange_requests"]
        order = intent(stepped, True, "0.02")
        env.executor.submit(order)
        # While its fate is unknown it stays pending, and its row says so.
        await until(lambda: env.venue.counters["ambiguous"] == 1)
        assert env.executor.pending() == {("f1", "ETH"): D("0.02")}
        await until(lambda: env.seen or env.outcomes.qsize(), timeout=EXPIRES_S + 5)
        out = await outcome_of(env, order)
        assert out.status == "filled", out
        assert out.filled_sz == D("0.02")
        assert out.avg_px is not None
        assert env.venue.counters["settled_by_cloid"] == 1
        assert stepped.stats["exchange_requests"] - sent_before == 1  # sent once, never again
        assert stepped.stats["replies_lost"] == 1
        status, records = await sim_orders(stepped, order.cloid)
        assert status == 200
        assert len(records) == 1
        assert sim_szi(env) == D("0.02")
        assert env.executor.positions() == {"ETH": D("0.02")}
        assert env.executor.pending() == {}
        assert (await copy_row(env, order.cloid))["status"] == "filled"


async def test_an_order_that_never_arrived_settles_as_never_arrived(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        # The gateway answers 502 before the action reaches the exchange: ambiguous to us.
        await sim_post(
            stepped,
            "/_sim/faults",
            {"http_error": {"status": 502, "seconds": 0.5, "paths": ["/exchange"]}},
        )
        order = intent(stepped, True, "0.01")
        env.executor.submit(order)
        out = await outcome_of(env, order, timeout=EXPIRES_S + 5)
        assert out.status == "never_arrived", out
        assert env.venue.counters["ambiguous"] == 1
        assert (await sim_orders(stepped, order.cloid))[0] == 404
        assert env.executor.pending() == {}
        assert env.executor.positions() == {}
        assert (await copy_row(env, order.cloid))["status"] == "never_arrived"


async def test_halted_sends_nothing_and_reducing_only_reduces(
    stepped: Simulator, store: Store
) -> None:
    async with live_on(stepped, store) as env:
        opened = intent(stepped, True, "0.02")
        env.executor.submit(opened)
        assert (await outcome_of(env, opened)).status == "filled"
        sent = stepped.stats["exchange_requests"]

        env.risk[0] = TradingState.HALTED
        close = intent(stepped, False, "0.01")
        env.executor.submit(close)
        out = await outcome_of(env, close)
        assert out.status == "rejected"
        assert out.error is not None
        assert "HALTED" in out.error
        assert stepped.stats["exchange_requests"] == sent  # nothing went out

        env.risk[0] = TradingState.REDUCING
        more = intent(stepped, True, "0.01")
        flip = intent(stepped, False, "0.03")  # crosses zero: not a reduction
        env.executor.submit(more)
        env.executor.submit(flip)
        assert "REDUCING" in ((await outcome_of(env, more)).error or "")
        assert "REDUCING" in ((await outcome_of(env, flip)).error or "")
        assert stepped.stats["exchange_requests"] == sent

        reduce = intent(stepped, False, "0.01")  # not flagged reduce-only by the copier
        env.executor.submit(reduce)
        assert (await outcome_of(env, reduce)).status == "filled"
        assert stepped.stats["exchange_requests"] == sent + 1
        status, records = await sim_orders(stepped, reduce.cloid)
        assert status == 200
        assert [r["record"]["order"]["reduceOnly"] for r in records] == [True]  # sent as such
        assert sim_szi(env) == D("0.01")
        assert env.executor.positions() == {"ETH": D("0.01")}
        assert env.venue.counters["refused_by_risk"] == 3


async def test_a_previous_runs_open_intents_are_settled_before_ready(
    stepped: Simulator, store: Store
) -> None:
    """A run that died mid-order leaves rows behind: one never sent (planned), one sent that
    landed, one sent that never arrived (both ``sending``). The next start settles all three
    before READY: by the row for the first, by ``orderStatus(cloid)`` for the others, and
    sends nothing again."""
    copies = CopyStore(store)
    never_sent = intent(stepped, True, "0.01")
    landed = intent(stepped, True, "0.02")
    lost = intent(stepped, True, "0.03")

    async def previous_run(exchange: ExchangeClient, master: str) -> None:
        now = int(time.time() * 1000)
        for order in (never_sent, landed, lost):
            row = _with_intent_fields(order, None, now, paper=False)
            assert await copies.write_intent(row) is None
        for order in (landed, lost):
            await copies.mark_sending(order.cloid, now, None)
        await copies.release()
        a = stepped.engine.by_name["ETH"]
        spec = OrderSpec(
            Asset("ETH", a.asset_id, a.sz_decimals, a.max_leverage),
            True,
            landed.limit_px,
            landed.sz,
            False,
            "Ioc",
            landed.cloid,
        )
        (status,) = await exchange.place([spec])  # it landed; the run died before the reply
        assert status.outcome == "filled"

    async with live_on(stepped, store, before=previous_run) as env:
        # READY came after the settlement: every row is settled and nothing was sent again.
        assert env.executor.counters["settled_at_start"] == 3
        assert stepped.stats["exchange_requests"] == 2  # the approval and the landed order
        statuses = {o.cloid: o.status for o in [await env.outcomes.get() for _ in range(3)]}
        assert statuses == {
            never_sent.cloid: "never_arrived",
            landed.cloid: "filled",
            lost.cloid: "never_arrived",
        }
        assert (await copy_row(env, landed.cloid))["status"] == "filled"
        assert (await copy_row(env, never_sent.cloid))["status"] == "never_arrived"
        assert (await copy_row(env, lost.cloid))["status"] == "never_arrived"
        assert env.executor.attributed() == {"f1": {"ETH": D("0.02")}}
        assert sim_szi(env) == D("0.02")
        assert env.executor.pending() == {}


async def leverage_of(env: Env, coin: str) -> tuple[str, int] | None:
    """The coin's leverage as the exchange reports it on the account's position."""
    state = await env.info.clearinghouse_state(env.master)
    for p in state.positions:
        if p.coin == coin and p.leverage is not None:
            return p.leverage.type, p.leverage.value
    return None


async def test_leverage_is_set_once_per_coin_before_its_first_order(
    stepped: Simulator, store: Store
) -> None:
    """Where the follows cap leverage, the coin's leverage is set (cross, at most the asset's
    maximum) before its first exposure-increasing order, once per run; an exchange refusal is
    logged and counted, and the order still goes."""

    async def isolated_sol(exchange: ExchangeClient, master: str) -> None:
        # A SOL position opened outside hlcopy on isolated margin: switching it to cross is
        # refused by the exchange while it is open.
        a = stepped.engine.by_name["SOL"]
        asset = Asset("SOL", a.asset_id, a.sz_decimals, a.max_leverage)
        await exchange.update_leverage(asset, 2, is_cross=False)
        order = intent(stepped, True, "0.1", coin="SOL")
        spec = OrderSpec(asset, True, order.limit_px, order.sz, False, "Ioc", order.cloid)
        (status,) = await exchange.place([spec])
        assert status.outcome == "filled", status

    caps = {"ETH": D("3.7"), "ATOM": D(10), "SOL": D(4)}
    async with live_on(
        stepped, store, before=isolated_sol, leverage_cap=lambda i: caps.get(i.coin)
    ) as env:
        sent = stepped.stats["exchange_requests"]
        first = intent(stepped, True, "0.01")
        env.executor.submit(first)
        assert (await outcome_of(env, first)).status == "filled"
        assert await leverage_of(env, "ETH") == ("cross", 3)  # whole, under the cap
        assert stepped.stats["exchange_requests"] == sent + 2  # updateLeverage, then the order
        second = intent(stepped, True, "0.01")
        close = intent(stepped, False, "0.01", reduce_only=True)
        env.executor.submit(second)
        env.executor.submit(close)
        assert (await outcome_of(env, second)).status == "filled"
        assert (await outcome_of(env, close)).status == "filled"
        assert stepped.stats["exchange_requests"] == sent + 4  # once per coin per run

        atom = intent(stepped, True, "2", coin="ATOM")  # ATOM allows 5x at most
        env.executor.submit(atom)
        assert (await outcome_of(env, atom)).status == "filled"
        assert await leverage_of(env, "ATOM") == ("cross", 5)

        sol = intent(stepped, True, "0.1", coin="SOL")
        env.executor.submit(sol)
        assert (await outcome_of(env, sol)).status == "filled"  # the order went anyway
        assert await leverage_of(env, "SOL") == ("isolated", 2)
        assert env.venue.counters["leverage_set"] == 2
        assert env.venue.counters["leverage_errors"] == 1
        assert env.venue.leverage == {"ETH": 3, "ATOM": 5, "SOL": 0}
        assert env.venue.stats()["leverage"] == {"ETH": 3, "ATOM": 5, "SOL": 0}


async def test_a_low_action_budget_refuses_new_exposure_and_keeps_room_for_closes(
    stepped: Simulator, store: Store
) -> None:
    """``userRateLimit`` is read periodically; when the account's budget left falls under the
    reserve, an order that adds exposure is refused before signing (the engine hears why)
    while a reduction still goes, as reduce-only; when the budget recovers, entries resume."""
    async with live_on(stepped, store, rate_limit_every_s=0.1) as env:
        opened = intent(stepped, True, "0.03")
        env.executor.submit(opened)
        assert (await outcome_of(env, opened)).status == "filled"
        figures = env.venue.stats()["rate_limit"]
        assert figures is not None
        assert figures["low"] is False
        assert figures["reserve"] == 1000  # 10% of the 10,000 cap, above the 500 floor

        # The simulator's own count of the account's actions, as if ~9,950 had gone out.
        account = stepped.engine.accounts[env.master]
        cap = 10_000 + int(account.volume)
        account.requests = cap - 50
        reads = env.venue.counters["rate_limit_reads"]
        await until(lambda: env.venue.counters["rate_limit_reads"] > reads)
        assert env.venue.budget_low()
        figures = env.venue.stats()["rate_limit"]
        assert (figures["low"], figures["cap"]) == (True, cap)
        assert figures["left"] <= 50

        sent = stepped.stats["exchange_requests"]
        more = intent(stepped, True, "0.01")
        env.executor.submit(more)
        refused = await outcome_of(env, more)
        assert refused.status == "rejected"
        assert refused.error is not None
        assert refused.error.startswith("refused before sending: the account's action budget")
        assert stepped.stats["exchange_requests"] == sent  # nothing went out
        assert env.venue.counters["refused_by_rate_limit"] == 1

        reduce = intent(stepped, False, "0.01")  # a reduction, not flagged by the copier
        env.executor.submit(reduce)
        assert (await outcome_of(env, reduce)).status == "filled"
        status, records = await sim_orders(stepped, reduce.cloid)
        assert status == 200
        assert [r["record"]["order"]["reduceOnly"] for r in records] == [True]
        assert stepped.stats["exchange_requests"] == sent + 1

        account.requests = 0  # the budget recovers
        reads = env.venue.counters["rate_limit_reads"]
        await until(lambda: env.venue.counters["rate_limit_reads"] > reads)
        assert not env.venue.budget_low()
        again = intent(stepped, True, "0.01")
        env.executor.submit(again)
        assert (await outcome_of(env, again)).status == "filled"
        assert sim_szi(env) == D("0.03")
