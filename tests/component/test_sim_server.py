"""The simulated exchange over the network: the official SDK as a client, signatures, nonces,
weights, WebSocket limits, every fault switch and the control API."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import eth_account
import orjson
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.clock import VirtualClock
from hlcopy.component import Ready
from hlcopy.errors import AmbiguousOutcome, RateLimited, Rejected, Unavailable
from hlcopy.hl import ExchangeClient, InfoClient, Signer, StreamPool, wire
from hlcopy.model import Asset, OrderSpec, Tif, UserFills
from hlcopy.sim import SimConfig, Simulator
from hyperliquid.exchange import Exchange
from hyperliquid.info import Info
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.component.test_stream import inbox, receive

D = Decimal


@contextlib.asynccontextmanager
async def stepped(**kwargs: Any) -> AsyncIterator[Simulator]:
    """A simulator whose market moves only when told to (deterministic)."""
    kwargs.setdefault("traders", 30)
    async with Simulator(SimConfig(port=0, realtime=False, **kwargs)) as sim:
        yield sim


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(body)) as r:
        raw = await r.read()
        try:
            return r.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return r.status, raw.decode()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


def eth_order(
    sim: Simulator,
    is_buy: bool = True,
    factor: str = "1.01",
    sz: str = "0.01",
    cloid: str | None = None,
    tif: wire.Tif = "Ioc",
) -> dict[str, Any]:
    asset = sim.engine.by_name["ETH"]
    price = wire.round_price(
        asset.path.mid * D(factor), asset.sz_decimals, False, wire.Rounding.NEAREST
    )
    return wire.order_wire(asset.asset_id, is_buy, price, D(sz), False, tif, cloid)


def eth_asset(sim: Simulator) -> Asset:
    """ETH as a client's universe describes it."""
    eth = sim.engine.by_name["ETH"]
    return Asset(eth.name, eth.asset_id, eth.sz_decimals, eth.max_leverage)


def eth_spec(
    sim: Simulator,
    is_buy: bool = True,
    factor: str = "1.01",
    sz: str = "0.01",
    cloid: str | None = None,
    tif: Tif = "Ioc",
) -> OrderSpec:
    """The order ``eth_order`` writes on the wire, in domain terms (its price is on the grid)."""
    asset = sim.engine.by_name["ETH"]
    price = wire.round_price(
        asset.path.mid * D(factor), asset.sz_decimals, False, wire.Rounding.NEAREST
    )
    return OrderSpec(eth_asset(sim), is_buy, price, D(sz), tif=tif, cloid=cloid)


FUNDED_USD = 100_000


def fresh_client(sim: Simulator, session: aiohttp.ClientSession) -> ExchangeClient:
    """A new wallet with a funded account on the simulated exchange."""
    signer = Signer.from_key("0x" + secrets.token_hex(32))
    sim.fund(signer.address, FUNDED_USD)
    return ExchangeClient(session, sim.url, signer, WeightBudget(), is_mainnet=False)


# --- the official SDK -------------------------------------------------------------------------


async def test_the_official_sdk_reads_and_trades_against_the_sim() -> None:
    async with Simulator(SimConfig(port=0, traders=30, warmup_s=20)) as sim:
        wallet = eth_account.Account.create()
        address = wallet.address
        sim.fund(address, FUNDED_USD)  # accounts are funded explicitly, as on the exchange

        def sdk_session() -> dict[str, Any]:
            info = Info(sim.url, skip_ws=False)
            seen: list[Any] = []
            got_fill = threading.Event()

            def on_fills(msg: Any) -> None:
                seen.append(msg)
                if msg["data"].get("fills") and not msg["data"].get("isSnapshot"):
                    got_fill.set()

            out: dict[str, Any] = {
                "meta": info.meta(),
                "mids": info.all_mids(),
                "book": info.l2_snapshot("ETH"),
                "state_before": info.user_state(address),
            }
            info.subscribe({"type": "userFills", "user": address}, on_fills)
            time.sleep(0.5)
            ex = Exchange(wallet, sim.url)
            mid = float(out["mids"]["ETH"])
            resting = ex.order("ETH", True, 0.01, round(mid * 0.95, 1), {"limit": {"tif": "Gtc"}})
            oid = resting["response"]["data"]["statuses"][0]["resting"]["oid"]
            out["modified"] = ex.modify_order(
                oid, "ETH", True, 0.02, round(mid * 0.94, 1), {"limit": {"tif": "Gtc"}}
            )
            out["open"] = info.open_orders(address)
            out["cancel"] = ex.cancel("ETH", out["open"][0]["oid"])
            out["market"] = ex.market_open("ETH", True, 0.05)
            got_fill.wait(10)
            out["fills"] = info.user_fills(address)
            out["state_after"] = info.user_state(address)
            out["ws"] = seen
            info.disconnect_websocket()
            return out

        out = await asyncio.wait_for(asyncio.to_thread(sdk_session), 60)

    assert "ETH" in {a["name"] for a in out["meta"]["universe"]}
    assert float(out["mids"]["BTC"]) > 0
    assert len(out["book"]["levels"][0]) == 20
    assert out["state_before"]["marginSummary"]["accountValue"] == "100000.0"
    assert out["modified"]["status"] == "ok"
    assert "resting" in out["modified"]["response"]["data"]["statuses"][0]
    assert out["open"][0]["sz"] == "0.02"
    assert out["cancel"]["response"]["data"]["statuses"] == ["success"]
    assert out["market"]["response"]["data"]["statuses"][0]["filled"]["totalSz"] == "0.05"
    assert [f["dir"] for f in out["fills"]] == ["Open Long"] * len(out["fills"])
    assert sum(D(f["sz"]) for f in out["fills"]) == D("0.05")
    assert out["state_after"]["assetPositions"][0]["position"]["szi"] == "0.05"
    snapshot, *stream = out["ws"]
    assert snapshot["data"]["isSnapshot"] is True
    assert stream
    assert all(m["data"]["isSnapshot"] is False for m in stream)  # streaming messages say so
    ws_fills = [f for m in stream for f in m["data"]["fills"]]
    assert {f["tid"] for f in ws_fills} == {f["tid"] for f in out["fills"]}


# --- time -----------------------------------------------------------------------------------------


async def test_the_simulator_runs_on_the_clock_it_is_given_at_its_speed() -> None:
    clock = VirtualClock(epoch_ms=1_790_000_000_000)
    config = SimConfig(port=0, traders=20, speed=60, warmup_s=0, warm_pasts=False)
    async with Simulator(config, clock=clock) as sim:
        assert sim.engine.now_ms == 1_790_000_000_000
        await clock.advance(60.0)  # a minute of the clock: an hour of market time
        assert sim.engine.now_ms == pytest.approx(1_790_000_000_000 + 3_600_000, abs=6_000)
        assert 590 <= sim.engine.ticks <= 601  # ten ticks a second of the clock
        assert sim.engine.counters["funding_hours"] == 1
        assert sim.engine.counters["trades"] > 0
        # Nonces are judged by the clients' clock, not by the faster market.
        assert sim._client_now() == clock.time_ms()


async def test_an_unfunded_account_is_empty_and_cannot_trade() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        signer = Signer.from_key("0x" + secrets.token_hex(32))
        ex = ExchangeClient(session, sim.url, signer, WeightBudget(), is_mainnet=False)
        _, state = await post(
            sim.url + "/info", {"type": "clearinghouseState", "user": signer.address}
        )
        assert state["marginSummary"]["accountValue"] == "0.0"
        _, role = await post(sim.url + "/info", {"type": "userRole", "user": signer.address})
        assert role == {"role": "missing"}
        with pytest.raises(
            Rejected, match=f"^L1 error: User or API Wallet {signer.address} does not exist.$"
        ):
            await ex.place([eth_spec(sim)])
        sim.fund(signer.address, 1_000)
        (status,) = await ex.place([eth_spec(sim)])
        assert status.outcome == "filled"


# --- authentication ---------------------------------------------------------------------------


async def test_a_tampered_signature_is_refused_as_an_unknown_user() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        ex = fresh_client(sim, session)
        me = ex.actions.signer.address
        action = wire.order_action([eth_order(sim)])
        nonce = ex.nonces.next()
        body = ex.actions._signed_body(action, nonce)
        bad_r = dict(
            body, signature={**body["signature"], "r": hex(int(body["signature"]["r"], 16) ^ 0xFF)}
        )
        status, reply = await post(sim.url + "/exchange", bad_r)
        assert status == 200
        assert reply["status"] == "err"
        # A damaged r either recovers some other address or no point on the curve at all.
        assert reply["response"] == "Invalid signature" or (
            reply["response"].startswith("L1 error: User or API Wallet 0x")
            and me not in reply["response"]
        )
        # Changing the order after signing it recovers a stranger, whom nobody has funded.
        changed = dict(body, action=wire.order_action([eth_order(sim, sz="0.02")]))
        reply = (await post(sim.url + "/exchange", changed))[1]
        assert reply["status"] == "err"
        assert reply["response"].startswith("L1 error: User or API Wallet 0x")
        assert reply["response"].endswith(" does not exist.")
        assert me not in reply["response"]
        # The untouched body goes through.
        status, reply = await post(sim.url + "/exchange", body)
        assert reply["status"] == "ok"
        assert sum(sim.core.refused[k] for k in ("unknown_user", "signature")) == 2


async def test_numbers_and_key_order_must_be_signed_as_the_exchange_writes_them() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        ex = fresh_client(sim, session)
        good = eth_order(sim)
        padded = dict(good, p=good["p"] + ("0" if "." in good["p"] else ".0"))
        reordered = {"b": good["b"], "a": good["a"], **{k: good[k] for k in "psrt"}}
        for bad in (padded, reordered):
            body = ex.actions._signed_body(wire.order_action([bad]), ex.nonces.next())
            reply = (await post(sim.url + "/exchange", body))[1]
            assert reply["response"].startswith("L1 error: User or API Wallet"), bad
        body = ex.actions._signed_body(wire.order_action([good]), ex.nonces.next())
        assert (await post(sim.url + "/exchange", body))[1]["status"] == "ok"


async def test_reused_nonces_and_expired_actions_are_refused() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        ex = fresh_client(sim, session)
        nonce = ex.nonces.next()
        body = ex.actions._signed_body(wire.noop_action(), nonce)
        assert (await post(sim.url + "/exchange", body))[1] == {
            "status": "ok",
            "response": {"type": "default"},
        }
        assert (await post(sim.url + "/exchange", body))[1] == {
            "status": "err",
            "response": f"Invalid nonce: duplicate nonce {nonce}",
        }
        expired = ex.actions._signed_body(
            wire.noop_action(), ex.nonces.next(), expires_after=sim.engine.now_ms - 1
        )
        assert (await post(sim.url + "/exchange", expired))[1] == {
            "status": "err",
            "response": "Action already expired",
        }


async def test_agents_trade_for_their_master() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        master = Signer.from_key("0x" + secrets.token_hex(32))
        agent = Signer.from_key("0x" + secrets.token_hex(32))
        budget = WeightBudget()
        by_master = ExchangeClient(session, sim.url, master, budget, is_mainnet=False)
        with pytest.raises(Exception, match="Must deposit before performing actions"):
            await by_master.approve_agent(master, agent.address, "bot")
        sim.fund(master.address, FUNDED_USD)
        await by_master.approve_agent(master, agent.address, "bot")
        by_agent = ExchangeClient(session, sim.url, agent, budget, is_mainnet=False)
        (status,) = await by_agent.place([eth_spec(sim)])
        assert status.outcome == "filled"
        assert sim.engine.accounts[master.address].positions["ETH"].szi == D("0.01")
        assert agent.address not in sim.engine.accounts
        role = (await post(sim.url + "/info", {"type": "userRole", "user": agent.address}))[1]
        assert role == {"role": "agent", "data": {"user": master.address}}


# --- weights and limits ------------------------------------------------------------------------


async def test_weights_produce_429_past_the_budget() -> None:
    async with stepped(weight_per_minute=100) as sim:
        statuses = [(await post(sim.url + "/info", {"type": "meta"}))[0] for _ in range(6)]
        assert statuses == [200] * 5 + [429]  # 5 x 20
        assert (await post(sim.url + "/info", {"type": "allMids"}))[0] == 429
        assert sim.snapshot()["rate_limited"] == 2
        assert sim.snapshot()["weight_charged"] == 100


async def test_per_item_weight_is_charged_after_the_answer() -> None:
    async with stepped(weight_per_minute=1200) as sim, aiohttp.ClientSession() as session:
        ex = fresh_client(sim, session)
        for _ in range(45):  # 45 taker orders: 45 fills, 45 records
            await ex.place([eth_spec(sim)])
        before = sim.snapshot()["weight_charged"]
        await post(sim.url + "/info", {"type": "userFills", "user": ex.actions.signer.address})
        assert sim.snapshot()["weight_charged"] - before == 20 + 3  # ceil(45 / 20)


async def test_websocket_connection_limits() -> None:
    async with stepped(ws_max_connections=3, ws_max_new_connections_per_min=5) as sim:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(connect(sim.ws_url))
            with pytest.raises(InvalidStatus) as info:
                await connect(sim.ws_url)
            assert info.value.response.status_code == 429
        await asyncio.sleep(0.1)  # the three closed; two new ones fit the per-minute cap
        async with connect(sim.ws_url), connect(sim.ws_url):
            pass
        with pytest.raises(InvalidStatus):  # the sixth new connection within a minute
            await connect(sim.ws_url)


async def _ws_request(ws: Any, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def _replies(ws: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(out) < n:
            raw = await ws.recv()
            if raw != "Websocket connection established.":
                out.append(orjson.loads(raw))
    return out


async def _drain_until_closed(ws: Any) -> None:
    async with asyncio.timeout(5):
        while True:
            await ws.recv()


async def test_websocket_subscription_user_and_message_limits() -> None:
    async with stepped(ws_max_subscriptions=3, ws_max_users=2, ws_max_messages_per_min=8) as sim:
        async with connect(sim.ws_url) as ws:
            users = [f"0x{i:040x}" for i in range(1, 4)]
            for u in users:
                await _ws_request(
                    ws, {"method": "subscribe", "subscription": {"type": "orderUpdates", "user": u}}
                )
            replies = await _replies(ws, 3)
            assert [r["channel"] for r in replies] == ["subscriptionResponse"] * 2 + ["error"]
            assert replies[2]["data"] == "Cannot track more than 2 total users."
            await _ws_request(
                ws, {"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}}
            )
            await _ws_request(
                ws, {"method": "subscribe", "subscription": {"type": "trades", "coin": "ETH"}}
            )
            replies = await _replies(ws, 2)
            assert replies[0]["channel"] == "subscriptionResponse"
            assert replies[1] == {
                "channel": "error",
                "data": "Cannot subscribe to more than 3 channels",
            }
            for _ in range(5):  # eight messages so far would be allowed; the ninth is not
                await _ws_request(ws, {"method": "ping"})
            with pytest.raises(ConnectionClosed):
                await _drain_until_closed(ws)
        assert sim.snapshot()["ws_limit_closes"] == 1


async def test_an_idle_connection_is_closed_by_the_server() -> None:
    async with stepped(ws_idle_s=0.4) as sim, connect(sim.ws_url) as ws:
        assert await ws.recv() == "Websocket connection established."
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await ws.recv()
        assert sim.snapshot()["ws_idle_closes"] == 1


async def test_malformed_requests_get_422() -> None:
    async with stepped() as sim:
        assert (await post(sim.url + "/info", {"type": "noSuchThing"}))[0] == 422
        assert (await post(sim.url + "/info", [1, 2]))[0] == 422
        assert (
            await post(
                sim.url + "/exchange",
                {"action": {"type": "order", "orders": "x"}, "nonce": 1, "signature": {}},
            )
        )[0] == 422
        status, text = await post(sim.url + "/exchange", {"nonce": "x"})
        assert (status, text) == (422, "Failed to deserialize the JSON body into the target type")


# --- faults ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pool_on(sim: Simulator, **kwargs: Any) -> AsyncIterator[StreamPool]:
    pool = StreamPool(sim.ws_url, backoff_base_s=0.02, backoff_cap_s=0.1, **kwargs)
    became_ready = asyncio.Event()
    ready = Ready(lambda is_ready, reason: became_ready.set() if is_ready else None)
    task = asyncio.create_task(pool.run(ready))
    await asyncio.wait_for(became_ready.wait(), 5)
    assert ready.is_set()
    try:
        yield pool
    finally:
        await pool.drain()
        await asyncio.wait_for(task, 5)


async def until(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_fault_drop_all_and_one_websocket() -> None:
    async with stepped() as sim, pool_on(sim) as a, pool_on(sim) as b:
        await until(lambda: len(sim._clients) == 2)
        one = min(sim._clients)
        status, faults = await post(sim.url + "/_sim/faults", {"drop_ws": one})
        assert (status, faults["drops"]) == (200, 1)
        await until(lambda: a.stats()["reconnects"] + b.stats()["reconnects"] == 1)
        # Both connected again (a reconnect is counted before it completes) before dropping all.
        await until(
            lambda: (
                len(sim._clients) == 2
                and a.stats()["connections_ready"] == b.stats()["connections_ready"] == 1
            )
        )
        await post(sim.url + "/_sim/faults", {"drop_ws": "all"})
        await until(lambda: a.stats()["reconnects"] + b.stats()["reconnects"] == 3)
        await until(lambda: a.stats()["connections_ready"] == b.stats()["connections_ready"] == 1)
        assert sim.snapshot()["ws_drops"] == 3


async def test_fault_silent_websocket_is_noticed_by_the_client() -> None:
    async with stepped() as sim, pool_on(sim, ping_interval_s=0.1, silence_timeout_s=0.5) as pool:
        await post(sim.url + "/_sim/faults", {"ws_silent": True})
        await until(lambda: pool.stats()["silences"] >= 1, timeout=5)
        await post(sim.url + "/_sim/faults", {"ws_silent": False})
        await until(lambda: pool.stats()["connections_ready"] == 1)


async def test_fault_delayed_action_lands_after_the_client_gave_up() -> None:
    async with (
        stepped() as sim,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session,
    ):
        ex = fresh_client(sim, session)
        await post(sim.url + "/_sim/faults", {"exchange_delay": {"seconds": 0.8, "count": 1}})
        cloid = "0x" + secrets.token_hex(16)
        with pytest.raises(AmbiguousOutcome):
            await ex.place([eth_spec(sim, cloid=cloid)])
        status, _ = await get(f"{sim.url}/_sim/orders?cloid={cloid}")
        assert status == 404  # not yet
        await asyncio.sleep(1.0)
        status, found = await get(f"{sim.url}/_sim/orders?cloid={cloid}")
        assert status == 200
        assert found[0]["record"]["status"] == "filled"  # it landed late


async def test_fault_lost_reply_after_the_action_was_applied() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        ex = fresh_client(sim, session)
        info = InfoClient(session, sim.url, WeightBudget())
        await post(sim.url + "/_sim/faults", {"exchange_lose_reply": 1})
        cloid = "0x" + secrets.token_hex(16)
        with pytest.raises(AmbiguousOutcome):
            await ex.place([eth_spec(sim, cloid=cloid)])
        record = await info.order_status(ex.actions.signer.address, cloid)  # settled by cloid
        assert record.status == "filled"
        (again,) = await ex.place([eth_spec(sim)])  # the next reply arrives normally
        assert again.outcome == "filled"
        assert sim.snapshot()["replies_lost"] == 1


@pytest.mark.parametrize(("status", "error"), [(502, Unavailable), (429, RateLimited)])
async def test_fault_http_errors_for_a_period(status: int, error: type[Exception]) -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        info = InfoClient(
            session,
            sim.url,
            WeightBudget(backoff_base_s=0.01, backoff_cap_s=0.01),
            retry_max_wait_s=0.01,
        )
        ex = fresh_client(sim, session)
        await post(sim.url + "/_sim/faults", {"http_error": {"status": status, "seconds": 0.5}})
        with pytest.raises(error):
            await info.meta()
        with pytest.raises(AmbiguousOutcome if status == 502 else RateLimited):
            await ex.noop()
        await asyncio.sleep(0.6)
        assert len((await info.meta()).universe) > 20
        with pytest.raises(ValueError, match="429 or 5xx"):
            sim.faults.update({"http_error": {"status": 404}})


async def test_fault_duplicate_and_reordered_stream_messages() -> None:
    async with stepped() as sim, pool_on(sim) as pool, aiohttp.ClientSession() as session:
        fills = inbox(UserFills)
        ex = fresh_client(sim, session)
        await pool.user_fills(ex.actions.signer.address, fills)
        (snapshot,) = await receive(fills, 1)
        assert snapshot.is_snapshot
        await post(sim.url + "/_sim/faults", {"ws_duplicate": True})
        await ex.place([eth_spec(sim)])
        once, twice = await receive(fills, 2)
        assert once.fills  # the new fill, not an empty message
        assert (once.user, once.is_snapshot, once.fills) == (
            twice.user,
            twice.is_snapshot,
            twice.fills,
        )
        await post(sim.url + "/_sim/faults", {"clear": True, "ws_reorder": True})
        first = (await ex.place([eth_spec(sim)]))[0]
        second = (await ex.place([eth_spec(sim)]))[0]
        oids = [m.fills[0].oid for m in await receive(fills, 2)]
        assert oids == [second.oid, first.oid]  # swapped in transit
        faults = (await get(sim.url + "/_sim/faults"))[1]
        assert (faults["ws_reorder"], faults["ws_duplicate"]) == (True, False)


# --- control API, leaderboard, reproducibility ---------------------------------------------------


async def test_control_endpoints() -> None:
    async with stepped(traders=40) as sim:
        _, kinds = await get(sim.url + "/_sim/archetypes")
        assert len(kinds) == 40
        assert set(kinds.values()) == {
            "skilled",
            "unskilled",
            "market_maker",
            "whale",
            "noise",
            "lucky",
            "vault",
        }
        who = "0x" + "c3" * 20
        assert (await get(f"{sim.url}/_sim/accounts/{who}"))[0] == 404
        assert (await get(f"{sim.url}/_sim/truth/{who}"))[0] == 404
        # Nobody can trade for an address nobody funded.
        unfunded = {"address": who, "coin": "SOL", "is_buy": False, "usd": 1000}
        assert (await post(sim.url + "/_sim/trade", unfunded))[0] == 400
        assert (await post(sim.url + "/_sim/fund", {"address": who, "usdc": "5000"}))[0] == 200
        _, price = await post(sim.url + "/_sim/price", {"coin": "SOL", "px": 150.123})
        assert price == {"coin": "SOL", "mid": "150.12"}
        _, traded = await post(
            sim.url + "/_sim/trade", {"address": who, "coin": "SOL", "is_buy": False, "usd": 1000}
        )
        assert "filled" in traded["statuses"][0]
        _, account = await get(f"{sim.url}/_sim/accounts/{who}")
        assert D(account["positions"]["SOL"]["szi"]) == D("-6.66")
        assert D(account["usdc"]) < 5000  # fees
        _, stepped_to = await post(sim.url + "/_sim/step", {"ticks": 50})
        assert stepped_to["ticks"] == 50
        _, stats = await get(sim.url + "/_sim/stats")
        assert stats["trades"] > 0
        assert stats["orders_accepted"] > 0
        assert (await post(sim.url + "/_sim/price", {"coin": "NOPE", "px": 1}))[0] == 404
        assert (await post(sim.url + "/_sim/faults", {"drop_ws": "x"}))[0] == 400
        _, truth = await get(f"{sim.url}/_sim/truth/{who}")
        assert (truth["deposits"], truth["depositCount"], truth["archetype"]) == ("5000.0", 1, None)
        _, roles = await get(sim.url + "/_sim/roles")
        vaults = [a for a, k in kinds.items() if k == "vault"]
        assert vaults
        assert all(roles[v] == {"role": "vault"} for v in vaults)


async def test_leaderboard_document() -> None:
    async with stepped(traders=40) as sim:
        sim.step(600)
        status, board = await get(sim.url + "/leaderboard")
        assert status == 200
        rows = board["leaderboardRows"]
        makers = set(sim.engine.market_makers)
        assert makers
        assert {r["ethAddress"] for r in rows} == set(sim.engine.accounts) - makers
        row = rows[0]
        assert set(row) == {
            "ethAddress",
            "accountValue",
            "displayName",
            "prize",
            "windowPerformances",
        }
        assert [w[0] for w in row["windowPerformances"]] == ["day", "week", "month", "allTime"]
        assert set(row["windowPerformances"][0][1]) == {"pnl", "roi", "vlm"}


async def test_a_seeded_simulator_is_reproducible_through_the_network() -> None:
    results = []
    for _ in range(2):
        async with stepped(seed=42, start_ms=1_790_000_000_000) as sim:
            await post(sim.url + "/_sim/step", {"ticks": 300})
            trades = [
                (await post(sim.url + "/info", {"type": "recentTrades", "coin": c}))[1]
                for c in ("BTC", "ETH", "SOL")
            ]
            results.append(trades)
    assert results[0] == results[1]
    assert sum(len(t) for t in results[0]) > 10
