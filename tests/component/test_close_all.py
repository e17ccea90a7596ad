"""``POST /api/v1/close-all`` against the simulator and real PostgreSQL, paper and live: the
global scope goes to REDUCING first, then one reduce-only IOC per coin closes exactly what
hlcopy opened (the executor's attribution, netted per coin, capped by the account's
position), positions opened outside hlcopy stay, and a wrong confirmation or no token sends
nothing. The planning core is checked on its own first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hlcopy.api.app import build_app
from hlcopy.api.close import CloseAll, close_cloid, plan_close
from hlcopy.budget import WeightBudget
from hlcopy.component import MetricFamily, Ready, ReloadResult
from hlcopy.config import ApiConfig, parse_config
from hlcopy.credentials import Secret
from hlcopy.events import EventBus
from hlcopy.follow.copier import Transfer
from hlcopy.follow.executor import PaperExecutor
from hlcopy.follow.risk import Cause, RiskState, TradingState, Trip
from hlcopy.follow.riskkeeper import RiskKeeper, follow_scope
from hlcopy.hl import ExchangeClient, InfoClient
from hlcopy.model import Asset, OrderIntent, OrderOutcome, OrderSpec
from hlcopy.queues import BoundedQueue
from hlcopy.sim import SimConfig, Simulator
from hlcopy.store import Store
from hlcopy.store.copies import CopyStore
from hlcopy.store.risk import RiskStore

from tests.component.test_live_executor import asset_of, intent, live_on, sim_orders, sim_szi
from tests.component.test_sim_server import pool_on

D = Decimal
TOKEN = "close-all-test-token-" + "x" * 16
CONFIRMED = {"confirm": "close-all", "reason": "test"}


@pytest.fixture
async def stepped() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(port=0, realtime=False, traders=20)) as s:
        yield s


# --- the plan, pure ---------------------------------------------------------------------------


def test_the_plan_closes_the_net_and_never_flips_the_account() -> None:
    mid = D(100)
    plan = plan_close("ETH", {"f1": D("0.3"), "f2": D("0.1")}, D("0.5"), mid)
    assert (plan.is_buy, plan.sz, plan.transfers) == (False, D("0.4"), ())
    assert dict(plan.attribution) == {"f1": D("0.3"), "f2": D("0.1")}
    # The account holds less than hlcopy's part (reduced outside): capped, shares pro rata.
    plan = plan_close("ETH", {"f1": D("0.3"), "f2": D("0.1")}, D("0.2"), mid)
    assert plan.sz == D("0.2")
    assert dict(plan.attribution) == {"f1": D("0.15"), "f2": D("0.05")}
    # ... on the coin's lot: no follow is left holding a size no order can trade.
    plan = plan_close("ETH", {"f1": D("0.02"), "f2": D("0.01")}, D("0.01"), mid, 2)
    assert plan.attribution == (("f1", D("0.01")),)
    # Opposite follows are netted by a transfer first, long to short, at the mid.
    plan = plan_close("ETH", {"f1": D("0.3"), "f2": D("-0.1")}, D("0.2"), mid)
    assert plan.transfers == (Transfer("ETH", "f1", "f2", D("0.1"), mid),)
    assert (plan.is_buy, plan.sz, dict(plan.attribution)) == (False, D("0.2"), {"f1": D("0.2")})
    plan = plan_close("ETH", {"f1": D("0.1"), "f2": D("-0.3")}, D("-0.5"), mid)
    assert plan.transfers == (Transfer("ETH", "f1", "f2", D("0.1"), mid),)
    assert (plan.is_buy, plan.sz, dict(plan.attribution)) == (True, D("0.2"), {"f2": D("0.2")})
    # Fully netted, or the account is flat or on the other side: nothing is sent.
    assert plan_close("ETH", {"f1": D("0.1"), "f2": D("-0.1")}, D(0), mid).sz == 0
    assert plan_close("ETH", {"f1": D("0.1")}, D(0), mid).sz == 0
    assert plan_close("ETH", {"f1": D("0.1")}, D("-1"), mid).sz == 0


def test_cloids_are_derived_from_the_request_and_coin() -> None:
    assert close_cloid("r1", "ETH") == close_cloid("r1", "ETH")
    assert len({close_cloid("r1", "ETH"), close_cloid("r2", "ETH"), close_cloid("r1", "BTC")}) == 3
    assert close_cloid("r1", "ETH", 1) != close_cloid("r1", "ETH")


# --- the API ----------------------------------------------------------------------------------


class _Daemon:
    """The Supervisor protocol the app needs for its own routes (not under test here)."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    def stats(self) -> dict[str, Any]:
        return {}

    def metrics(self) -> list[MetricFamily]:
        return []

    async def reload(self) -> ReloadResult:
        raise NotImplementedError


@dataclass
class Api:
    url: str
    session: aiohttp.ClientSession

    async def post(
        self, body: Any, *, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = raw if raw is not None else orjson.dumps(body)
        async with self.session.post(
            self.url + "/api/v1/close-all", data=data, headers=headers
        ) as r:
            return r.status, orjson.loads(await r.read())


@contextlib.asynccontextmanager
async def api_on(keeper: RiskKeeper, closer: CloseAll) -> AsyncIterator[Api]:
    app = build_app(_Daemon(), ApiConfig(port=0), Secret(TOKEN), risk=keeper, closer=closer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", session)
    finally:
        await runner.cleanup()


async def refused_without_sending(api: Api, keeper: RiskKeeper) -> None:
    """Every wrong request is refused, names the field, and changes nothing."""
    cases: list[tuple[bytes | None, Any, str]] = [
        (b"", None, "confirm"),
        (b"{", None, "confirm"),
        (None, [], "confirm"),
        (None, {}, "confirm"),
        (None, {"confirm": "yes"}, "confirm"),
        (None, {"confirm": True}, "confirm"),
        (None, {"confirm": "close-all", "reason": 5}, "reason"),
        (None, {"confirm": "close-all", "reason": ""}, "reason"),
        (None, {"confirm": "close-all", "force": True}, "force"),
    ]
    for raw, body, named in cases:
        status, answer = await api.post(body, raw=raw)
        assert status == 400, (raw, body, answer)
        assert answer["error"]["parameter"] == named, answer
    status, answer = await api.post(CONFIRMED, token=None)
    assert status == 401, answer
    status, answer = await api.post(CONFIRMED, token="wrong")
    assert status == 401, answer
    assert keeper.trading_state() == TradingState.ACTIVE


# --- paper --------------------------------------------------------------------------------------


@dataclass
class Paper:
    executor: PaperExecutor
    outcomes: BoundedQueue[OrderOutcome]
    copies: CopyStore
    seen: list[OrderOutcome] = field(default_factory=list)


@contextlib.asynccontextmanager
async def paper_on(sim: Simulator, store: Store) -> AsyncIterator[Paper]:
    async with aiohttp.ClientSession() as session, pool_on(sim) as pool:
        info = InfoClient(session, sim.url, WeightBudget())
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
            latency_ms=0,
        )
        up = asyncio.Event()
        task = asyncio.create_task(
            executor.run(Ready(lambda ok, _: up.set() if ok else None)), name="test:executor"
        )
        try:
            await asyncio.wait_for(up.wait(), 10)
            yield Paper(executor, outcomes, CopyStore(store))
        finally:
            await executor.drain()
            await asyncio.wait_for(task, 10)


async def outcome(env: Any, cloid: str, timeout: float = 10) -> OrderOutcome:
    async with asyncio.timeout(timeout):
        while True:
            for i, got in enumerate(env.seen):
                if got.cloid == cloid:
                    return env.seen.pop(i)  # type: ignore[no-any-return]
            env.seen.append(await env.outcomes.get())


def attributed_to(order: OrderIntent, follow: str) -> OrderIntent:
    return OrderIntent(
        order.cloid,
        order.coin,
        order.is_buy,
        order.sz,
        order.limit_px,
        order.reduce_only,
        order.reason,
        ((follow, order.sz),),
        order.leader,
    )


async def test_close_all_in_paper_flattens_what_hlcopy_opened(
    stepped: Simulator, store: Store
) -> None:
    keeper = RiskKeeper(store, EventBus())
    async with paper_on(stepped, store) as env:
        opened = [
            intent(stepped, True, "0.03"),  # f1 long ETH
            attributed_to(intent(stepped, False, "0.01"), "f2"),  # f2 short ETH
            intent(stepped, False, "0.2", coin="SOL"),  # f1 short SOL
        ]
        for order in opened:
            env.executor.submit(order)
        for order in opened:
            assert (await outcome(env, order.cloid)).status == "filled"
        assert env.executor.positions() == {"ETH": D("0.02"), "SOL": D("-0.2")}
        assert env.executor.attributed() == {
            "f1": {"ETH": D("0.03"), "SOL": D("-0.2")},
            "f2": {"ETH": D("-0.01")},
        }
        closer = CloseAll(env.executor, keeper, asset_of(stepped))
        async with api_on(keeper, closer) as api:
            await refused_without_sending(api, keeper)
            assert env.executor.counters["intents"] == 3

            status, body = await api.post(CONFIRMED)
        assert status == 202, body
        assert body["state"] == "reducing"
        assert keeper.trading_state() == TradingState.REDUCING  # stopped new exposure first
        closes = {c["coin"]: c for c in body["closes"]}
        assert set(closes) == {"ETH", "SOL"}
        assert (closes["ETH"]["side"], closes["ETH"]["sz"]) == ("A", "0.02")
        assert (closes["SOL"]["side"], closes["SOL"]["sz"]) == ("B", "0.2")
        for coin, close in closes.items():
            assert close["cloid"] == close_cloid(body["request_id"], coin)
            assert (await outcome(env, close["cloid"])).status == "filled"
        assert body["left_alone"] == {}
        assert env.executor.positions() == {}
        assert env.executor.attributed() == {}
        rows = {r["cloid"]: r for r in await env.copies.copies(None, None, 100)}
        for close in closes.values():
            row = rows[close["cloid"]]
            assert (row["intent"]["reduce_only"], row["intent"]["reason"]) == (True, "close-all")
            assert row["status"] == "filled"


# --- live ---------------------------------------------------------------------------------------


async def test_close_all_live_closes_only_what_hlcopy_opened(
    stepped: Simulator, store: Store
) -> None:
    keeper = RiskKeeper(store, EventBus())

    async def outside(exchange: ExchangeClient, master: str) -> None:
        """Positions opened outside hlcopy, placed directly with the agent before it starts."""
        for coin, sz in (("ETH", "0.05"), ("AVAX", "1")):
            a = stepped.engine.by_name[coin]
            order = intent(stepped, True, sz, coin=coin)
            asset = Asset(coin, a.asset_id, a.sz_decimals, a.max_leverage)
            spec = OrderSpec(asset, True, order.limit_px, order.sz, False, "Ioc", order.cloid)
            (status,) = await exchange.place([spec])
            assert status.outcome == "filled", status

    def risk_of(order: OrderIntent) -> TradingState:
        return keeper.trading_state(*(follow_scope(f) for f in order.follow_ids))

    async with live_on(stepped, store, before=outside, risk_of=risk_of) as env:
        assert sim_szi(env, "ETH") == D("0.05")
        opened = [
            intent(stepped, True, "0.02"),  # f1 long ETH, on top of the outside 0.05
            attributed_to(intent(stepped, False, "0.0002", coin="BTC"), "f2"),  # ~$19
        ]
        for order in opened:
            env.executor.submit(order)
        for order in opened:
            assert (await outcome(env, order.cloid)).status == "filled"
        assert sim_szi(env, "ETH") == D("0.07")
        closer = CloseAll(env.executor, keeper, asset_of(stepped))
        sent = stepped.stats["exchange_requests"]
        async with api_on(keeper, closer) as api:
            await refused_without_sending(api, keeper)
            assert stepped.stats["exchange_requests"] == sent
            status, body = await api.post(CONFIRMED)
        assert status == 202, body
        assert keeper.trading_state() == TradingState.REDUCING
        closes = {c["coin"]: c for c in body["closes"]}
        assert set(closes) == {"ETH", "BTC"}
        assert (closes["ETH"]["side"], closes["ETH"]["sz"]) == ("A", "0.02")
        assert (closes["BTC"]["side"], closes["BTC"]["sz"]) == ("B", "0.0002")
        for coin, close in closes.items():
            assert close["cloid"] == close_cloid(body["request_id"], coin)
            assert (await outcome(env, close["cloid"])).status == "filled"
            status, records = await sim_orders(stepped, close["cloid"])
            assert status == 200
            assert [r["record"]["order"]["reduceOnly"] for r in records] == [True]
        assert {c: D(s) for c, s in body["left_alone"].items()} == {"AVAX": 1, "ETH": D("0.05")}
        # What hlcopy opened is flat; what was opened outside it stays.
        assert sim_szi(env, "ETH") == D("0.05")
        assert sim_szi(env, "BTC") == 0
        assert sim_szi(env, "AVAX") == D("1")
        assert env.executor.attributed() == {}
        assert stepped.stats["exchange_requests"] == sent + 2

        # REDUCING holds afterwards: a copy that adds exposure is refused before sending.
        more = intent(stepped, True, "0.01")
        env.executor.submit(more)
        refused = await outcome(env, more.cloid)
        assert refused.status == "rejected"
        assert "REDUCING" in (refused.error or "")
        assert stepped.stats["exchange_requests"] == sent + 2


async def test_close_all_lowers_the_apis_own_halt_to_reducing_and_closes(
    stepped: Simulator, store: Store
) -> None:
    """The operator halted over the API before: the same cause, so close-all lowers it to
    REDUCING (the closes need it) and goes on."""
    keeper = RiskKeeper(store, EventBus())
    async with paper_on(stepped, store) as env:
        order = intent(stepped, True, "0.02")
        env.executor.submit(order)
        assert (await outcome(env, order.cloid)).status == "filled"
        await keeper.halt("global", "before", TradingState.HALTED)
        closer = CloseAll(env.executor, keeper, asset_of(stepped))
        async with api_on(keeper, closer) as api:
            status, body = await api.post(CONFIRMED)
        assert status == 202, body
        assert keeper.trading_state() == TradingState.REDUCING
        assert (await outcome(env, body["closes"][0]["cloid"])).status == "filled"
        assert env.executor.positions() == {}


async def test_a_halted_follows_coin_is_reported_not_sent(stepped: Simulator, store: Store) -> None:
    keeper = RiskKeeper(store, EventBus())
    keeper.set_scopes([follow_scope("f1"), follow_scope("f2")])
    async with paper_on(stepped, store) as env:
        eth = intent(stepped, True, "0.02")  # f1
        sol = attributed_to(intent(stepped, True, "0.1", coin="SOL"), "f2")
        for order in (eth, sol):
            env.executor.submit(order)
            assert (await outcome(env, order.cloid)).status == "filled"
        await keeper.halt(follow_scope("f2"), "that one only", TradingState.HALTED)
        closer = CloseAll(env.executor, keeper, asset_of(stepped))
        async with api_on(keeper, closer) as api:
            status, body = await api.post(CONFIRMED)
        assert status == 202, body
        closes = {c["coin"]: c for c in body["closes"]}
        assert (closes["SOL"]["sent"], closes["SOL"]["cloid"]) == (False, None)
        assert "HALTED" in closes["SOL"]["error"]
        assert closes["ETH"]["sent"] is True
        assert (await outcome(env, closes["ETH"]["cloid"])).status == "filled"
        assert env.executor.positions() == {"SOL": D("0.1")}
        assert env.executor.attributed() == {"f2": {"SOL": D("0.1")}}


async def test_close_all_under_another_halt_sends_nothing(stepped: Simulator, store: Store) -> None:
    """A trip other than the API's (a reject streak, stored by a previous run) holds the
    account HALTED: the reduce-only closes would be refused anyway, so the answer says so
    (409) and nothing is submitted."""
    streak = Trip(Cause.REJECT_STREAK, TradingState.HALTED, 1, "5 rejections in a row")
    await RiskStore(store).save(RiskState("global", trips=(streak,)), (), 1)
    keeper = RiskKeeper(store, EventBus())
    up = asyncio.Event()
    task = asyncio.create_task(
        keeper.run(Ready(lambda ok, _: up.set() if ok else None)), name="test:risk"
    )
    try:
        await asyncio.wait_for(up.wait(), 10)
        assert keeper.trading_state() == TradingState.HALTED
        async with paper_on(stepped, store) as env:
            order = intent(stepped, True, "0.02")
            env.executor.submit(order)
            assert (await outcome(env, order.cloid)).status == "filled"
            closer = CloseAll(env.executor, keeper, asset_of(stepped))
            async with api_on(keeper, closer) as api:
                status, body = await api.post(CONFIRMED)
            assert status == 409, body
            assert body["error"]["code"] == "halted"
            assert keeper.trading_state() == TradingState.HALTED
            assert env.executor.counters["intents"] == 1
            assert env.executor.positions() == {"ETH": D("0.02")}
    finally:
        await keeper.drain()
        await asyncio.wait_for(task, 10)
