"""Bad input never breaks the simulator: generated malformed bodies to every ``/info``,
``/exchange`` and ``/_sim/`` route and every WebSocket method, against a simulator that runs in
real time. No answer is a 5xx, no connection is closed on the sender, nothing is logged as an
internal error or restarted, and the market keeps ticking. Plus the cases that broke it once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.hl import ExchangeClient, Signer, wire
from hlcopy.sim import SimConfig, Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

D = Decimal
INFO_TYPES = [
    "meta",
    "spotMeta",
    "metaAndAssetCtxs",
    "spotMetaAndAssetCtxs",
    "allMids",
    "l2Book",
    "recentTrades",
    "candleSnapshot",
    "fundingHistory",
    "batchClearinghouseStates",
    "clearinghouseState",
    "spotClearinghouseState",
    "openOrders",
    "frontendOpenOrders",
    "orderStatus",
    "userFills",
    "userFillsByTime",
    "historicalOrders",
    "userFunding",
    "userNonFundingLedgerUpdates",
    "portfolio",
    "userRole",
    "userRateLimit",
    "extraAgents",
    "exchangeStatus",
    "noSuchType",
]
ACTION_TYPES = [
    "order",
    "cancel",
    "cancelByCloid",
    "modify",
    "batchModify",
    "scheduleCancel",
    "updateLeverage",
    "noop",
    "approveAgent",
    "somethingElse",
]
FUNDED = Signer.from_key("0x" + "5a" * 32)
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------------------------

huge = st.integers(min_value=-(2**70), max_value=2**70)
numbers_as_text = st.sampled_from(
    [
        "1e1000000",
        "1e999999",
        "-1",
        "0",
        "0.0",
        "inf",
        "NaN",
        "-0",
        "1E5",
        "0." + "0" * 40 + "1",
        "9" * 60,
        "12.345",
        "97250",
        "0.00000001",
        "",
        " 1",
        "0x10",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    huge,
    st.floats(allow_nan=False, allow_infinity=False),
    numbers_as_text,
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
addresses = st.one_of(
    st.just("0x" + "ab" * 20),
    st.just(FUNDED.address),
    st.just("0X" + "AB" * 20),
    st.text(max_size=44),
    st.just("0x" + "g" * 40),
)
info_keys = {
    "user": st.one_of(addresses, json_values),
    "users": st.one_of(st.lists(addresses, max_size=150), json_values),
    "coin": st.one_of(st.sampled_from(["BTC", "ETH", "@1", "test:ABC", "nope"]), json_values),
    "dex": st.one_of(st.sampled_from(["", "test", "nope"]), json_values),
    "startTime": st.one_of(huge, json_values),
    "endTime": st.one_of(huge, json_values),
    "oid": st.one_of(huge, st.just("0x" + "00" * 16), json_values),
    "nSigFigs": st.one_of(st.integers(-3, 8), json_values),
    "mantissa": st.one_of(st.integers(-3, 8), json_values),
    "aggregateByTime": json_values,
    "req": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "coin": st.sampled_from(["BTC", "ETH", "x"]),
                "interval": st.one_of(st.sampled_from(["1m", "1h", "1M", "7x"]), json_values),
                "startTime": st.one_of(huge, json_values),
                "endTime": st.one_of(huge, json_values),
            },
        ),
        json_values,
    ),
}
info_bodies = st.one_of(
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(INFO_TYPES), json_values)}, optional=info_keys
    ),
    json_values,
)
orders = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "a": st.one_of(st.integers(-5, 120_005), huge, json_values),
            "b": json_values,
            "p": st.one_of(numbers_as_text, json_values),
            "s": st.one_of(numbers_as_text, json_values),
            "r": json_values,
            "t": st.one_of(
                st.just({"limit": {"tif": "Gtc"}}),
                st.just({"trigger": {"isMarket": True, "triggerPx": "1e999", "tpsl": "tp"}}),
                json_values,
            ),
            "c": json_values,
        },
    ),
    json_values,
)
actions = st.one_of(
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(ACTION_TYPES), json_values)},
        optional={
            "orders": st.one_of(st.lists(orders, max_size=5), json_values),
            "cancels": st.one_of(st.lists(json_values, max_size=5), json_values),
            "modifies": st.one_of(st.lists(json_values, max_size=5), json_values),
            "grouping": json_values,
            "builder": json_values,
            "asset": st.one_of(huge, json_values),
            "isCross": json_values,
            "leverage": st.one_of(huge, json_values),
            "time": st.one_of(huge, json_values),
            "oid": json_values,
            "order": orders,
            "signatureChainId": st.one_of(
                st.sampled_from(["0x66eee", "zz", "0x" + "f" * 99]), json_values
            ),
            "hyperliquidChain": st.one_of(st.sampled_from(["Testnet", "Mainnet"]), json_values),
            "agentAddress": st.one_of(addresses, json_values),
            "agentName": json_values,
            "nonce": st.one_of(huge, json_values),
        },
    ),
    json_values,
)
signatures = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "r": st.one_of(st.just("0x" + "1" * 64), st.text(max_size=70), json_values),
            "s": st.one_of(st.just("0x" + "2" * 64), json_values),
            "v": st.one_of(st.sampled_from([27, 28, 0, -1, 2**70]), json_values),
        },
    ),
    json_values,
)
exchange_bodies = st.one_of(
    st.fixed_dictionaries(
        {"action": actions, "nonce": st.one_of(huge, json_values), "signature": signatures},
        optional={"vaultAddress": st.one_of(addresses, json_values), "expiresAfter": json_values},
    ),
    json_values,
)
control = {
    "/_sim/fund": st.fixed_dictionaries(
        {},
        optional={
            "address": st.one_of(addresses, json_values),
            "usdc": st.one_of(numbers_as_text, huge, st.floats(), json_values),
            "spot_usdc": st.one_of(numbers_as_text, st.floats(), json_values),
        },
    ),
    "/_sim/price": st.fixed_dictionaries(
        {},
        optional={
            "coin": st.one_of(st.sampled_from(["BTC", "SOL", "x"]), json_values),
            "px": st.one_of(numbers_as_text, huge, st.floats(), json_values),
        },
    ),
    "/_sim/trade": st.fixed_dictionaries(
        {},
        optional={
            "address": st.one_of(addresses, json_values),
            "coin": st.one_of(st.sampled_from(["BTC", "SOL", "x"]), json_values),
            "is_buy": json_values,
            "usd": st.one_of(numbers_as_text, huge, st.floats(), json_values),
            "sz": st.one_of(numbers_as_text, huge, st.floats(), json_values),
            "reduce_only": json_values,
        },
    ),
    "/_sim/step": st.fixed_dictionaries({}, optional={"ticks": st.one_of(huge, json_values)}),
}


# -- the simulator under fire -------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimConfig(
        port=0,
        traders=30,
        rate=50,
        warmup_s=0,
        warm_pasts=False,
        # The limits are tested elsewhere: let every body and connection through.
        weight_per_minute=10**9,
        ws_max_messages_per_min=10**9,
        ws_max_new_connections_per_min=10**9,
    )
    async with Simulator(config) as s:
        s.fund(FUNDED.address, 1_000_000)
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def send(session: aiohttp.ClientSession, url: str, body: Any) -> int:
    data = body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    async with session.post(url, data=data) as r:
        await r.read()
        return r.status


def healthy(sim: Simulator) -> None:
    """Nothing failed inside, and the market's clock still runs."""
    stats = sim.snapshot()
    assert stats["internal_errors"] == 0
    assert stats["task_restarts"] == 0
    (ticker,) = [t for t in sim._tasks if t.get_name() == "sim:ticker"]
    assert not ticker.done()


async def ticking(sim: Simulator) -> None:
    """The market advances (a few ticks of real time)."""
    ticks = sim.engine.ticks
    async with asyncio.timeout(5):
        while sim.engine.ticks < ticks + 3:
            await asyncio.sleep(0.05)


def encodable(value: Any) -> bool:
    try:
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # integers past 64 bits: sent as raw text below instead
        return False
    return True


@SETTINGS
@given(body=info_bodies)
async def test_fuzzed_info_bodies(
    sim: Simulator, session: aiohttp.ClientSession, body: Any
) -> None:
    raw = body if encodable(body) else repr(body).encode()
    assert await send(session, sim.url + "/info", raw) < 500
    healthy(sim)


@SETTINGS
@given(body=exchange_bodies, sign=st.booleans())
async def test_fuzzed_exchange_bodies(
    sim: Simulator, session: aiohttp.ClientSession, body: Any, sign: bool
) -> None:
    if sign and isinstance(body, dict) and isinstance(body.get("action"), dict) and encodable(body):
        # Signed by a funded account, so malformed values get past the signature check too.
        ex = ExchangeClient(session, sim.url, FUNDED, WeightBudget(), is_mainnet=False)
        with contextlib.suppress(Exception):  # actions msgpack cannot hash stay unsigned
            body = ex.actions._signed_body(body["action"], ex.nonces.next())
    raw = body if encodable(body) else repr(body).encode()
    assert await send(session, sim.url + "/exchange", raw) < 500
    healthy(sim)


plain_numbers = st.one_of(
    st.decimals(min_value=0, max_value=10**12, places=8, allow_nan=False).map(
        lambda d: format(d.normalize(), "f")
    ),
    st.sampled_from(["0", "0.00000001", "99999999999", "1", "97250", "3420.5"]),
)
well_formed = st.fixed_dictionaries(
    {
        "a": st.one_of(
            st.sampled_from([0, 1, 3, 5, 10_000, 110_000, 110_001]), st.integers(0, 2**31)
        ),
        "b": st.booleans(),
        "p": plain_numbers,
        "s": plain_numbers,
        "r": st.booleans(),
        "t": st.sampled_from(
            [
                {"limit": {"tif": "Gtc"}},
                {"limit": {"tif": "Ioc"}},
                {"limit": {"tif": "Alo"}},
                {"trigger": {"isMarket": True, "triggerPx": "100", "tpsl": "sl"}},
            ]
        ),
    }
)


@SETTINGS
@given(
    batch=st.lists(well_formed, min_size=1, max_size=8),
    kind=st.sampled_from(["order", "modify", "leverage"]),
)
async def test_fuzzed_well_formed_signed_actions(
    sim: Simulator, session: aiohttp.ClientSession, batch: list[dict[str, Any]], kind: str
) -> None:
    """Orders the parser accepts, with numbers the exchange does not: the engine answers them
    per order, with the exchange's errors, and stays whole."""
    ex = ExchangeClient(session, sim.url, FUNDED, WeightBudget(), is_mainnet=False)
    if kind == "order":
        action: dict[str, Any] = wire.order_action(batch)
    elif kind == "modify":
        action = {"type": "batchModify", "modifies": [{"oid": 1, "order": o} for o in batch]}
    else:
        o = batch[0]
        action = {
            "type": "updateLeverage",
            "asset": o["a"],
            "isCross": o["b"],
            "leverage": int(D(o["s"])) % 100,
        }
    try:
        body = ex.actions._signed_body(action, ex.nonces.next())
    except Exception:  # a number hlcopy's own signer will not hash (more than 8 decimals)
        return
    async with session.post(sim.url + "/exchange", data=orjson.dumps(body)) as r:
        assert r.status in (200, 422)
        if r.status == 200:
            reply = await r.json()
            assert reply["status"] in ("ok", "err")
    healthy(sim)


@pytest.mark.slow(7)
@SETTINGS
@given(route=st.sampled_from(sorted(control)), data=st.data())
async def test_fuzzed_control_bodies(
    sim: Simulator, session: aiohttp.ClientSession, route: str, data: st.DataObject
) -> None:
    body = data.draw(st.one_of(control[route], json_values))
    raw = body if encodable(body) else repr(body).encode()
    assert await send(session, sim.url + route, raw) < 500
    async with session.get(sim.url + "/leaderboard") as r:  # everyone else still served
        assert r.status == 200
    healthy(sim)


@SETTINGS
@given(body=st.one_of(json_values, st.fixed_dictionaries({"drop_ws": json_values})))
async def test_fuzzed_fault_switches(
    sim: Simulator, session: aiohttp.ClientSession, body: Any
) -> None:
    raw = body if encodable(body) else repr(body).encode()
    assert await send(session, sim.url + "/_sim/faults", raw) in (200, 400)
    assert await send(session, sim.url + "/_sim/faults", {"clear": True}) == 200
    assert sim.faults.exchange_delay_s <= 60


async def ping(ws: ClientConnection) -> None:
    """The connection is open and answers."""
    await ws.send('{"method":"ping"}')
    async with asyncio.timeout(5):
        while True:
            if await ws.recv() == '{"channel":"pong"}':
                return


@SETTINGS
@given(
    messages=st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"method": st.just("post"), "id": json_values},
                optional={
                    "request": st.one_of(
                        st.fixed_dictionaries({"type": st.just("info"), "payload": info_bodies}),
                        st.fixed_dictionaries(
                            {"type": st.just("action"), "payload": exchange_bodies}
                        ),
                        json_values,
                    )
                },
            ),
            st.fixed_dictionaries(
                {
                    "method": st.sampled_from(["subscribe", "unsubscribe"]),
                    "subscription": json_values,
                }
            ),
            st.fixed_dictionaries(
                {
                    "method": st.sampled_from(["subscribe", "unsubscribe"]),
                    "subscription": st.fixed_dictionaries(
                        {
                            "type": st.sampled_from(
                                ["l2Book", "candle", "userFills", "bbo", "trades"]
                            )
                        },
                        optional={
                            "coin": json_values,
                            "user": json_values,
                            "interval": json_values,
                            "nSigFigs": json_values,
                            "mantissa": json_values,
                            "aggregateByTime": json_values,
                        },
                    ),
                }
            ),
            json_values,
            st.text(max_size=50),
        ),
        min_size=1,
        max_size=6,
    )
)
async def test_fuzzed_websocket_messages(sim: Simulator, messages: list[Any]) -> None:
    async with connect(sim.ws_url, max_size=2**24) as ws:
        for message in messages:
            if isinstance(message, str):
                await ws.send(message)
            elif encodable(message):
                await ws.send(orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode())
            else:
                await ws.send(repr(message))
        await ping(ws)  # every bad message got an answer; the connection stayed
    healthy(sim)


async def test_the_market_ticks_through_a_storm_of_bad_requests(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    bodies = [
        {"type": "l2Book", "coin": [1]},
        {"type": "userFillsByTime", "user": "0x" + "ab" * 20, "startTime": -1},
        {"action": {"type": "order", "orders": [None] * 200}, "nonce": -1, "signature": {}},
    ]
    ticks = sim.engine.ticks
    for _ in range(10):
        results = await asyncio.gather(
            *(
                send(session, sim.url + route, body)
                for route in ("/info", "/exchange")
                for body in bodies
            )
        )
        assert all(r < 500 for r in results)
    await ticking(sim)
    assert sim.engine.ticks > ticks
    healthy(sim)


# -- the cases that broke it --------------------------------------------------------------------


def signed(ex: ExchangeClient, action: dict[str, Any]) -> dict[str, Any]:
    return ex.actions._signed_body(action, ex.nonces.next())


async def test_values_of_the_wrong_kind_where_names_belong(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """Found by the fuzzing above: a dict where a name was expected is refused, not hashed."""
    for body in (
        {"type": "candleSnapshot", "req": {"coin": "BTC", "interval": {}, "startTime": 0}},
        {"type": "l2Book", "coin": {"a": 1}},
    ):
        assert await send(session, sim.url + "/info", body) == 422
    async with connect(sim.ws_url) as ws:
        subs: list[dict[str, Any]] = [
            {"type": {}},
            {"type": "candle", "coin": "BTC", "interval": []},
        ]
        for sub in subs:
            await ws.send(orjson.dumps({"method": "subscribe", "subscription": sub}).decode())
        await ping(ws)
    healthy(sim)


async def test_the_inputs_that_once_broke_the_simulator(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    ex = ExchangeClient(session, sim.url, FUNDED, WeightBudget(), is_mainnet=False)
    good = wire.order_wire(1, True, D("3000"), D("0.01"), False, "Gtc")
    bad_bodies: list[Any] = [
        dict(signed(ex, wire.noop_action()), nonce=-5),
        {
            "action": {"type": "order", "orders": [1, "x", None], "grouping": "na"},
            "nonce": 1,
            "signature": {},
        },
        {
            "action": {"type": "cancel", "cancels": [1, []]},
            "nonce": 1,
            "signature": {"r": "0x1", "s": "0x1", "v": 27},
        },
        {
            "action": {"type": "batchModify", "modifies": ["x"]},
            "nonce": 1,
            "signature": {"r": "0x1", "s": "0x1", "v": 27},
        },
        signed(ex, wire.order_action([dict(good, p="1e1000000")])),
        signed(ex, wire.order_action([dict(good, s="0." + "0" * 30 + "1")])),
        dict(
            signed(ex, wire.noop_action()),
            action={
                "type": "approveAgent",
                "signatureChainId": "not hex",
                "hyperliquidChain": "Testnet",
                "agentAddress": "0x" + "ab" * 20,
                "nonce": 1,
            },
            nonce=1,
        ),
    ]
    for body in bad_bodies:
        assert await send(session, sim.url + "/exchange", body) == 422, body
    # Numbers the exchange accepts but that make no sense are refused per order, not broken on.
    # Sent as written (an OrderSpec would be rounded onto the grid by the client first).
    for p, s in (("0.00000001", "0.01"), ("99999999999", "0.01"), ("3000", "99999999")):
        action = wire.order_action([dict(good, p=p, s=s)])
        (status,) = await ex.send_orders(ex.actions._prepare(action, 1, None, None))
        assert status.outcome == "error"
    # A thousand orders priced 1e999999: refused at once, without the arithmetic.
    batch = {
        "action": {"type": "order", "orders": [dict(good, p="1e999999")] * 1000, "grouping": "na"},
        "nonce": int(time.time() * 1000),
        "signature": {"r": "0x" + "1" * 64, "s": "0x" + "2" * 64, "v": 27},
    }
    async with asyncio.timeout(1.0):  # the acceptance bound; it was 11 s and 3 GB
        assert await send(session, sim.url + "/exchange", batch) == 422
    # Control routes: infinite prices and NaN deposits are refused, the market goes on.
    assert await send(session, sim.url + "/_sim/price", {"coin": "BTC", "px": "inf"}) == 400
    assert await send(session, sim.url + "/_sim/price", {"coin": "BTC", "px": 1e309}) == 400
    assert (
        await send(session, sim.url + "/_sim/fund", {"address": "0x" + "cd" * 20, "usdc": "NaN"})
        == 400
    )
    assert (
        await send(
            session, sim.url + "/_sim/fund", b'{"address": "0x' + b"cd" * 20 + b'", "usdc": NaN}'
        )
        == 400
    )
    assert "0x" + "cd" * 20 not in sim.engine.accounts
    async with session.get(sim.url + "/leaderboard") as r:
        assert r.status == 200
        rows = (await r.json())["leaderboardRows"]
    assert all("." in row["accountValue"] for row in rows)
    healthy(sim)
    await ticking(sim)
    # A WebSocket post with a bad payload gets an error reply, on a connection that stays open.
    async with connect(sim.ws_url) as ws:
        for payload in (
            {"type": "info", "payload": [1]},
            {"type": "action", "payload": {"nonce": -1}},
            "x",
        ):
            await ws.send(orjson.dumps({"method": "post", "id": 7, "request": payload}).decode())
            async with asyncio.timeout(5):
                while True:
                    raw = str(await ws.recv())
                    msg = orjson.loads(raw) if raw.startswith("{") else {}
                    if msg.get("channel") == "post":
                        break
            assert msg["data"]["id"] == 7
            assert msg["data"]["response"]["type"] == "error"
        await ping(ws)


async def test_a_failing_background_task_is_logged_and_restarted() -> None:
    async with Simulator(SimConfig(port=0, traders=10, warmup_s=0, warm_pasts=False)) as sim:
        real_step = sim.engine.step
        failures = {"left": 2}

        def flaky(now_ms: int | None = None) -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("a bug in a tick")
            real_step(now_ms)

        sim.engine.step = flaky  # type: ignore[method-assign]
        ticks = sim.engine.ticks
        async with asyncio.timeout(10):
            while sim.engine.ticks < ticks + 5:
                await asyncio.sleep(0.05)
        assert sim.snapshot()["task_restarts"] == 2
        assert not failures["left"]
