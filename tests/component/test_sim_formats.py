"""The exchange's formats, over the network: every numeric string carries a decimal point as in
the recorded fixtures, answers have the fixtures' shapes, and the WebSocket feeds (userEvents on
channel ``user``, ledger updates, clearinghouseState, bbo, candle, orderUpdates, userFills with
``isSnapshot: false`` and ``aggregateByTime``, l2Book with ``nSigFigs``) their documented ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.hl import ExchangeClient, Signer, wire
from hlcopy.model import Asset, OrderSpec, Tif
from hlcopy.sim import SimConfig, Simulator
from hlcopy.sim.candles import INTERVAL_MINUTES
from websockets.asyncio.client import ClientConnection, connect

D = Decimal
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hyperliquid"
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def numeric_strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, string) in ``value`` whose string is a number."""
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += numeric_strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            out += numeric_strings(v, f"{path}[]")
    elif isinstance(value, str) and NUMBER.fullmatch(value):
        out.append((path, value))
    return out


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())["response"]


def test_the_fixtures_have_no_number_without_a_decimal_point() -> None:
    """The rule the simulator follows, read off the recordings themselves."""
    total = 0
    for path in FIXTURES.glob("*.json"):
        found = numeric_strings(json.loads(path.read_text())["response"])
        total += len(found)
        assert all("." in s for _, s in found), path.name
    assert total > 1000


@contextlib.asynccontextmanager
async def market() -> AsyncIterator[tuple[Simulator, ExchangeClient, aiohttp.ClientSession]]:
    """A stepped market with one funded trader who has a cross position, an isolated one and a
    resting order."""
    async with (
        Simulator(SimConfig(port=0, realtime=False, traders=40)) as sim,
        aiohttp.ClientSession() as session,
    ):
        signer = Signer.from_key("0x" + secrets.token_hex(32))
        sim.fund(signer.address, 100_000)
        ex = ExchangeClient(session, sim.url, signer, WeightBudget(), is_mainnet=False)
        yield sim, ex, session


def asset_of(sim: Simulator, coin: str) -> Asset:
    """``coin`` as a client's universe describes it."""
    a = sim.engine.by_name[coin]
    return Asset(a.name, a.asset_id, a.sz_decimals, a.max_leverage)


def order(
    sim: Simulator, coin: str, is_buy: bool, sz: str, factor: str, tif: Tif = "Ioc"
) -> OrderSpec:
    """An order ``factor`` times the mid away (its price on the grid, so the client's rounding
    leaves it as it is)."""
    asset = sim.engine.by_name[coin]
    price = wire.round_price(
        asset.path.mid * D(factor), asset.sz_decimals, False, wire.Rounding.NEAREST
    )
    return OrderSpec(asset_of(sim, coin), is_buy, price, D(sz), tif=tif)


async def info(session: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]) -> Any:
    async with session.post(sim.url + "/info", data=orjson.dumps(body)) as r:
        assert r.status == 200, (body, r.status, await r.text())
        return await r.json()


@pytest.mark.slow(7)
async def test_every_rest_answer_writes_numbers_as_the_exchange_does() -> None:
    async with market() as (sim, ex, session):
        me = ex.actions.signer.address
        await ex.update_leverage(asset_of(sim, "ETH"), 10, is_cross=False)  # ETH isolated
        await ex.place(
            [order(sim, "BTC", True, "0.01", "1.01"), order(sim, "ETH", False, "1", "0.99")]
        )
        await ex.place([order(sim, "SOL", True, "1", "0.97", "Gtc")])
        sim.engine.deposit(sim.engine.accounts[me], D(1000))
        sim.engine.withdraw(sim.engine.accounts[me], D(500))
        sim.step(40_000)  # over an hour: funding, samples, candles
        a_trader = next(iter(sim.population.archetypes()))
        opens = sim.engine.start_ms
        bodies: list[dict[str, Any]] = [
            {"type": "meta"},
            {"type": "spotMeta"},
            {"type": "metaAndAssetCtxs"},
            {"type": "spotMetaAndAssetCtxs"},
            {"type": "allMids"},
            {"type": "l2Book", "coin": "ETH"},
            {"type": "l2Book", "coin": "BTC", "nSigFigs": 5, "mantissa": 2},
            {"type": "recentTrades", "coin": "BTC"},
            {
                "type": "candleSnapshot",
                "req": {"coin": "ETH", "interval": "1h", "startTime": opens - 86_400_000},
            },
            {"type": "fundingHistory", "coin": "ETH", "startTime": opens - 7_200_000},
            {"type": "batchClearinghouseStates", "users": [me, a_trader]},
        ]
        for user in (me, a_trader):
            bodies += [
                {"type": t, "user": user}
                for t in (
                    "clearinghouseState",
                    "spotClearinghouseState",
                    "openOrders",
                    "frontendOpenOrders",
                    "userFills",
                    "historicalOrders",
                    "portfolio",
                    "userRole",
                    "userRateLimit",
                    "extraAgents",
                    "userNonFundingLedgerUpdates",
                )
            ]
            bodies += [
                {"type": "userFillsByTime", "user": user, "startTime": 0, "aggregateByTime": True},
                {"type": "userFunding", "user": user, "startTime": 0},
            ]
        seen = 0
        for body in bodies:
            answer = await info(session, sim, body)
            found = numeric_strings(answer)
            seen += len(found)
            assert all("." in s for _, s in found), (
                body,
                [f for f in found if "." not in f[1]][:5],
            )
        assert seen > 10_000

        # The shapes of the recorded answers.
        state = await info(session, sim, {"type": "clearinghouseState", "user": me})
        recorded = fixture("info_clearinghouse_state")
        # The recording predates two fields the docs now show (HYPERLIQUID.md §4.7).
        assert set(state) == set(recorded) | {"crossMaintenanceMarginUsed", "time"}
        assert set(state["marginSummary"]) == set(recorded["marginSummary"])
        ours = {p["position"]["coin"]: p["position"] for p in state["assetPositions"]}
        theirs = recorded["assetPositions"][0]["position"]
        # Likewise for positions: maxTradeSzs is gone, maxLeverage and cumFunding are new.
        assert set(ours["BTC"]) == set(theirs) - {"maxTradeSzs"} | {"cumFunding", "maxLeverage"}
        assert set(ours["ETH"]["leverage"]) == {"type", "value", "rawUsd"}
        (fill, *_) = await info(session, sim, {"type": "userFills", "user": me})
        assert set(fixture("info_user_fills")[0]) <= set(fill)
        funding = await info(session, sim, {"type": "userFunding", "user": me, "startTime": 0})
        assert funding
        assert set(funding[0]["delta"]) == set(fixture("info_user_funding")[0]["delta"])
        (open_order,) = await info(session, sim, {"type": "frontendOpenOrders", "user": me})
        assert set(fixture("info_frontend_open_orders")[0]) <= set(open_order)
        history = await info(session, sim, {"type": "historicalOrders", "user": me})
        assert set(history[0]["order"]) == set(fixture("info_historical_orders")[0]["order"])
        candle = (
            await info(
                session,
                sim,
                {
                    "type": "candleSnapshot",
                    "req": {"coin": "ETH", "interval": "1h", "startTime": 0},
                },
            )
        )[0]
        assert set(candle) == set(fixture("info_candle_snapshot")[0])
        book = await info(session, sim, {"type": "l2Book", "coin": "ETH"})
        assert set(book) == set(fixture("info_l2_book"))
        portfolio = dict(await info(session, sim, {"type": "portfolio", "user": a_trader}))
        assert set(portfolio) == {name for name, _ in fixture("info_portfolio")}
        limits = await info(session, sim, {"type": "userRateLimit", "user": me})
        assert set(fixture("info_user_rate_limit")) <= set(limits)


class Feed:
    """One raw WebSocket connection collecting every message by channel."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.by_channel: dict[str, list[Any]] = {}
        self.reader = asyncio.create_task(self._read(), name="test:feed")

    async def _read(self) -> None:
        async for raw in self.ws:
            if raw == "Websocket connection established.":
                continue
            msg = orjson.loads(raw)
            self.by_channel.setdefault(msg["channel"], []).append(msg["data"])

    async def subscribe(self, subscription: dict[str, Any]) -> None:
        await self.ws.send(
            orjson.dumps({"method": "subscribe", "subscription": subscription}).decode()
        )

    async def wait(self, channel: str, n: int = 1, timeout: float = 5.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.by_channel.get(channel, ())) < n:
                await asyncio.sleep(0.01)
        return self.by_channel[channel]


@pytest.mark.slow(7)
async def test_websocket_feeds_have_their_documented_shapes() -> None:
    async with market() as (sim, ex, _), connect(sim.ws_url) as ws:
        me = ex.actions.signer.address
        feed = Feed(ws)
        for sub in (
            {"type": "userFills", "user": me},
            {"type": "userFills", "user": me, "aggregateByTime": True},
            {"type": "userEvents", "user": me},
            {"type": "orderUpdates", "user": me},
            {"type": "userFundings", "user": me},
            {"type": "userNonFundingLedgerUpdates", "user": me},
            {"type": "clearinghouseState", "user": me},
            {"type": "bbo", "coin": "BTC"},
            {"type": "candle", "coin": "BTC", "interval": "1m"},
            {"type": "l2Book", "coin": "BTC", "nSigFigs": 3},
        ):
            await feed.subscribe(sub)
        await feed.wait("subscriptionResponse", 10)
        snapshots = await feed.wait("userFills", 2)
        assert all(s["isSnapshot"] is True for s in snapshots)
        ledger = await feed.wait("userNonFundingLedgerUpdates")
        assert ledger[0]["isSnapshot"] is True
        assert ledger[0]["nonFundingLedgerUpdates"][0]["delta"] == {
            "type": "deposit",
            "usdc": "100000.0",
        }
        # A taker order that sweeps two levels: two fills, one when aggregated by time.
        btc = sim.engine.by_name["BTC"]
        level = sum(sz for _, sz in sim.engine.depth_levels(btc, is_ask=True)[:1])
        (status,) = await ex.place([order(sim, "BTC", True, str(level + D("0.01")), "1.01")])
        assert status.outcome == "filled"
        fills = await feed.wait("userFills", 4)
        streamed = [m for m in fills if not m["isSnapshot"]]
        assert all(m["isSnapshot"] is False and m["user"] == me for m in streamed)
        plain = next(m for m in streamed if len(m["fills"]) == 2)
        merged = next(m for m in streamed if len(m["fills"]) == 1)
        assert D(merged["fills"][0]["sz"]) == sum(D(f["sz"]) for f in plain["fills"])
        (user_fills,) = await feed.wait("user")
        assert user_fills == {"fills": plain["fills"]}
        (updates,) = await feed.wait("orderUpdates")
        assert updates[0]["status"] == "filled"
        assert set(updates[0]["order"]) >= {
            "coin",
            "side",
            "limitPx",
            "sz",
            "oid",
            "timestamp",
            "origSz",
        }
        sim.engine.deposit(sim.engine.accounts[me], D(250))
        sim.publish()
        ledger = await feed.wait("userNonFundingLedgerUpdates", 2)
        assert ledger[1] == {
            "user": me,
            "nonFundingLedgerUpdates": [ledger[1]["nonFundingLedgerUpdates"][0]],
        }
        assert ledger[1]["nonFundingLedgerUpdates"][0]["delta"] == {
            "type": "deposit",
            "usdc": "250.0",
        }
        for _ in range(361):  # past the hour (funding), letting the feed drain as it goes
            sim.step(100)
            await asyncio.sleep(0)
        fundings = await feed.wait("userFundings", 2)  # the (empty) snapshot, then the hour
        assert fundings[0] == {"isSnapshot": True, "user": me, "fundings": []}
        assert "isSnapshot" not in fundings[-1]
        assert set(fundings[-1]["fundings"][0]) == {
            "time",
            "coin",
            "usdc",
            "szi",
            "fundingRate",
            "nSamples",
        }
        events = await feed.wait("user", 2)
        assert "funding" in events[-1]
        assert set(events[-1]["funding"]) == {"coin", "usdc", "szi", "fundingRate", "nSamples"}
        # Liquidation: the user's BTC long at 40x isolated, and the price under it.
        btc_pos = sim.engine.accounts[me].positions["BTC"]
        await ex.place([order(sim, "BTC", False, str(btc_pos.szi), "0.99")])
        await ex.update_leverage(asset_of(sim, "BTC"), 40, is_cross=False)
        await ex.place([order(sim, "BTC", True, "0.5", "1.01")])
        liq_px = sim.engine.liquidation_px(sim.engine.accounts[me], "BTC")
        assert liq_px is not None
        sim.engine.set_price(btc, float(liq_px) * 0.99)
        sim.step()
        events = await feed.wait("user", 4)
        (liquidation,) = [e["liquidation"] for e in events if "liquidation" in e]
        assert set(liquidation) == {
            "lid",
            "liquidator",
            "liquidated_user",
            "liquidated_ntl_pos",
            "liquidated_account_value",
        }
        assert liquidation["liquidated_user"] == me
        liq_fills = [f for e in events if "fills" in e for f in e["fills"] if "liquidation" in f]
        assert liq_fills
        assert liq_fills[0]["liquidation"]["method"] in ("market", "backstop")
        states = await feed.wait("clearinghouseState", 2)
        assert set(states[-1]) == {"dex", "user", "clearinghouseState"}
        assert states[-1]["clearinghouseState"]["assetPositions"] == []
        bbo = (await feed.wait("bbo"))[-1]
        assert set(bbo) == {"coin", "time", "bbo"}
        assert D(bbo["bbo"][0]["px"]) < D(bbo["bbo"][1]["px"])
        candle = (await feed.wait("candle"))[-1]
        assert set(candle) == {"t", "T", "s", "i", "o", "c", "h", "l", "v", "n"}
        assert (candle["s"], candle["i"]) == ("BTC", "1m")
        book = (await feed.wait("l2Book"))[-1]
        assert all(D(level["px"]) % 100 == 0 for side in book["levels"] for level in side)
        for channel, messages in feed.by_channel.items():
            for m in messages:
                found = numeric_strings(m)
                assert all("." in s for _, s in found), (channel, found[:3])
        feed.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed.reader


@pytest.mark.parametrize("interval", ["1m", "15m", "1h", "4h", "1d", "1w", "1M"])
async def test_candle_snapshots_of_every_interval(interval: str) -> None:
    async with market() as (sim, _, session):
        body = {
            "type": "candleSnapshot",
            "req": {"coin": "ETH", "interval": interval, "startTime": 0},
        }
        candles = await info(session, sim, body)
        assert candles
        assert len(candles) <= 5000
        assert [c["t"] for c in candles] == sorted({c["t"] for c in candles})
        assert all(c["i"] == interval and c["s"] == "ETH" for c in candles)
        size = INTERVAL_MINUTES[interval] * 60_000 or 30 * 86_400_000
        if 5000 * size > 90 * 86_400_000:  # the whole past fits: it is there
            assert candles[0]["t"] <= sim.engine.start_ms - 89 * 86_400_000
        else:  # the newest 5000
            assert len(candles) == 5000
