"""The /info client against a local server: every fixture, weights, retries, paging."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hlcopy.budget import Lane, WeightBudget
from hlcopy.errors import BadRequest, RateLimited, Timeout, Unavailable, WireError
from hlcopy.hl import InfoClient, Universe, load_universe
from hlcopy.hl.parse import parse_spot_meta
from structlog.testing import capture_logs

from tests.scripted_server import ScriptedServer, fixture, scripted_server

USER = "0x" + "ab" * 20


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with scripted_server() as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
        yield s


def client(
    server: ScriptedServer, session: aiohttp.ClientSession, **kwargs: Any
) -> tuple[InfoClient, WeightBudget]:
    budget = WeightBudget(1200, 10, backoff_base_s=0.01, backoff_cap_s=0.02)
    return InfoClient(session, server.url, budget, retry_max_wait_s=0.01, **kwargs), budget


async def test_every_fixture_parses_through_the_client(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    info, budget = client(server, session)
    meta = await info.meta()
    assert meta.universe[0].name == "BTC"
    assert meta.universe[0].sz_decimals == 5
    mids = await info.all_mids()
    assert mids["BTC"] == Decimal("30135.0")
    book = await info.l2_book("DYDX")
    assert (len(book.bids), len(book.asks)) == (20, 20)
    assert book.bids[0].px > book.bids[-1].px
    state = await info.clearinghouse_state(USER)
    assert state.position("BTC") == Decimal("-0.00785")
    assert state.position("NOPE") == Decimal(0)
    assert state.margin_summary.account_value > 0
    assert len(await info.open_orders(USER)) == 196
    frontend = await info.frontend_open_orders(USER)
    assert frontend[0].is_trigger
    assert frontend[0].trigger_px == Decimal("10.004")
    history = await info.historical_orders(USER)
    assert history[0].status == "iocCancelRejected"
    assert history[0].order is not None
    fills = await info.user_fills(USER)
    assert len(fills) == 500
    assert {f.dir for f in fills} >= {"Open Long", "Close Long"}
    assert len(await info.user_funding(USER, 0)) == 13
    portfolio = await info.portfolio(USER)
    assert set(portfolio.periods) >= {"day", "week", "month", "allTime"}
    assert (await info.user_role(USER)).role == "vault"
    limits = await info.user_rate_limit(USER)
    assert limits.n_requests_cap == 170043731737
    assert len(await info.extra_agents(USER)) == 2
    assert len(await info.candle_snapshot("kPEPE", "1h", 0, 1)) == 24
    lanes = budget.stats()["lanes"]
    # Base weights plus per-item extras: historicalOrders 5 items (+1), userFills 500 (+25),
    # userFunding 13 (+1), candles 24 (+1 per 60).
    expected_total = (
        20 + 2 + 2 + 2 + 20 + 20 + (20 + 1) + (20 + 25) + (20 + 1) + 20 + 60 + 20 + 20 + (20 + 1)
    )
    assert sum(lane["weight_total"] for lane in lanes.values()) == expected_total
    assert lanes["leader"]["requests"] == 4  # allMids, l2Book, clearinghouseState, userFills


async def test_requests_carry_the_documented_bodies(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    info, _ = client(server, session)
    await info.clearinghouse_state(USER, dex="xyz")
    await info.l2_book("BTC", n_sig_figs=5, mantissa=2)
    await info.user_fills(USER, aggregate_by_time=True)
    assert server.bodies("/info") == [
        {"type": "clearinghouseState", "user": USER, "dex": "xyz"},
        {"type": "l2Book", "coin": "BTC", "nSigFigs": 5, "mantissa": 2},
        {"type": "userFills", "user": USER, "aggregateByTime": True},
    ]


async def test_order_status_found_and_unknown(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    record = fixture("info_historical_orders.json")[0]
    server.then((200, {"status": "order", "order": record}), (200, {"status": "unknownOid"}))
    info, budget = client(server, session)
    found = await info.order_status(USER, 141682155424)
    assert found.status == "iocCancelRejected"
    assert found.order is not None
    assert found.order.oid == 141682155424
    missing = await info.order_status(USER, "0x" + "00" * 16)
    assert (missing.order, missing.status) == (None, None)
    assert budget.stats()["lanes"]["order"]["weight_total"] == 4


async def test_429_backs_off_and_retries(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    info, budget = client(server, session)
    server.then((429, b"null"))
    with capture_logs() as logs:
        assert (await info.user_role(USER)).role == "vault"
    assert budget.stats()["rate_limited"] == 1
    # Never expected within the budget: said, with what was asked and the window then.
    warned = [e for e in logs if e["event"] == "exchange answered 429"]
    assert [(e["request"], e["our_window"], e["timeouts"]) for e in warned] == [("userRole", 60, 0)]
    assert len(server.requests) == 2

    server.then((429, b""), (429, b""), (429, b""))
    with pytest.raises(RateLimited):
        await info.user_role(USER)
    assert budget.stats()["rate_limited"] == 4


async def test_server_errors_retry_a_bounded_number_of_times(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    info, _ = client(server, session)
    server.then((502, b"bad gateway"), (500, b"{}"))
    assert len((await info.meta()).universe) == 28
    server.then((500, b""), (503, b""), (500, b""))
    with pytest.raises(Unavailable, match="HTTP 500"):
        await info.meta()
    assert len(server.requests) == 6


async def test_timeouts_and_garbage(server: ScriptedServer, session: aiohttp.ClientSession) -> None:
    info, _ = client(server, session, attempts=1)
    server.then("timeout")
    with pytest.raises(Timeout):
        await info.all_mids()
    assert info.stats()["timeouts"] == 1
    server.then((200, b"<html>not json"))
    with pytest.raises(Unavailable, match="not JSON"):
        await info.all_mids()
    server.then((200, {"levels": [[], []]}))  # no coin: a required field is missing
    with pytest.raises(WireError, match="l2Book: missing field 'coin'"):
        await info.l2_book("BTC")
    server.then("disconnect")
    with pytest.raises(Unavailable):
        await info.all_mids()


async def test_a_read_whose_answer_may_have_come_keeps_its_whole_reservation(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A fills read reserves 20 + 100 (2,000 fills at 1 per 20). Refused (429, 4xx), nothing
    was charged for an answer's size: only the 20 stays. Timed out or cut off, the exchange may
    still have answered and charged for it: all 120 stay in the window."""
    outcomes: list[tuple[Any, type[Exception], int]] = [
        ((429, b"null"), RateLimited, 20),
        ((422, b"bad"), BadRequest, 20),
        ("timeout", Timeout, 120),
        ("disconnect", Unavailable, 120),
    ]
    for reply, error, kept in outcomes:
        info, budget = client(server, session, attempts=1)
        server.then(reply)
        with pytest.raises(error):
            await info.user_fills_by_time(USER, 0, lane=Lane.SCORING)
        assert budget.stats()["lanes"]["scoring"]["used_last_window"] == kept, reply


async def test_4xx_is_not_retried(server: ScriptedServer, session: aiohttp.ClientSession) -> None:
    info, _ = client(server, session)
    server.then((422, b"Failed to deserialize the JSON body into the target type"))
    with pytest.raises(BadRequest, match="HTTP 422"):
        await info.meta()
    assert len(server.requests) == 1


def _fills(n: int, per_ms: int = 3) -> list[dict[str, Any]]:
    """n fills, ``per_ms`` sharing each millisecond, oldest first."""
    return [
        {
            "coin": "BTC",
            "px": "100",
            "sz": "1",
            "side": "B",
            "time": 1_000 + i // per_ms,
            "tid": i + 1,
            "oid": i,
            "hash": "0x" + "00" * 32,
        }
        for i in range(n)
    ]


async def test_user_fills_by_time_pages_forward_without_duplicates(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    history = _fills(4500)

    def by_time(body: dict[str, Any]) -> Any:
        start, end = body["startTime"], body.get("endTime", 10**15)
        return [f for f in history if start <= f["time"] <= end][:2000]

    server.info_handlers["userFillsByTime"] = by_time
    info, budget = client(server, session)
    fills = await info.user_fills_by_time(USER, 0)
    assert [f.tid for f in fills] == list(range(1, 4501))
    starts = [b["startTime"] for b in server.bodies("/info")]
    assert starts[0] == 0
    assert starts == sorted(starts)
    assert len(starts) == 3
    assert budget.stats()["lanes"]["gapfill"]["weight_total"] == 3 * 20 + 100 + 100 + 26

    capped = await info.user_fills_by_time(USER, 0, max_pages=1)
    assert len(capped) == 2000
    windowed = await info.user_fills_by_time(USER, 1100, end_ms=1199)
    assert {f.time_ms for f in windowed} == set(range(1100, 1200))


async def test_a_full_page_within_one_millisecond_still_terminates(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    history = _fills(2500, per_ms=2500)  # all in one millisecond
    server.info_handlers["userFillsByTime"] = lambda b: [
        f for f in history if f["time"] >= b["startTime"]
    ][:2000]
    info, _ = client(server, session)
    fills = await info.user_fills_by_time(USER, 0)
    assert len(fills) == 2000  # the rest is unreachable by time paging: returned once, no loop
    assert len(server.requests) <= 3


async def test_batch_clearinghouse_states_is_behind_a_flag(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    off, _ = client(server, session)
    with pytest.raises(BadRequest, match="batch_clearinghouse_states"):
        await off.batch_clearinghouse_states([USER])
    state = fixture("info_clearinghouse_state.json")
    server.info_handlers["batchClearinghouseStates"] = lambda b: [state, None]
    on, budget = client(server, session, batch_clearinghouse_states=True)
    got = await on.batch_clearinghouse_states([USER, "0x" + "cd" * 20])
    assert got[0] is not None
    assert got[1] is None
    assert budget.stats()["lanes"]["leader"]["weight_total"] == 4


async def test_universe_from_meta_spot_and_builder_dexes(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    spot = {
        "tokens": [
            {"name": "USDC", "szDecimals": 8, "weiDecimals": 8, "index": 0},
            {"name": "PURR", "szDecimals": 0, "weiDecimals": 5, "index": 1},
            {"name": "HYPE", "szDecimals": 2, "weiDecimals": 8, "index": 150},
        ],
        "universe": [
            {"name": "PURR/USDC", "tokens": [1, 0], "index": 0, "isCanonical": True},
            {"name": "@107", "tokens": [150, 0], "index": 107, "isCanonical": False},
        ],
    }
    dex_meta = {
        "universe": [
            {"name": "xyz:TSLA", "szDecimals": 3, "maxLeverage": 10},
            {"name": "xyz:OLD", "szDecimals": 1, "maxLeverage": 3, "isDelisted": True},
        ]
    }
    server.info_handlers.update(
        {
            "spotMeta": lambda b: spot,
            "perpDexs": lambda b: [None, {"name": "abc", "fullName": "a"}, {"name": "xyz"}],
            "meta": lambda b: (
                dex_meta
                if b.get("dex") == "xyz"
                else ({"universe": []} if b.get("dex") == "abc" else fixture("info_meta.json"))
            ),
        }
    )
    info, _ = client(server, session)
    uni = await load_universe(info, spot=True, builder_dexes=True)
    assert uni.by_name("BTC").asset_id == 0
    assert uni.by_name("ETH").sz_decimals == 4
    purr = uni.by_name("PURR/USDC")
    assert (purr.asset_id, purr.sz_decimals, purr.is_spot) == (10000, 0, True)
    assert uni.by_name("@107").asset_id == 10107
    assert uni.by_name("@107").sz_decimals == 2  # the base token's
    tsla = uni.by_name("xyz:TSLA")
    assert (tsla.asset_id, tsla.dex) == (120000, "xyz")  # 100000 + 2 * 10000 + 0
    assert uni.by_name("xyz:OLD").asset_id == 120001
    with pytest.raises(WireError, match="delisted"):
        uni.tradable("xyz:OLD")
    with pytest.raises(WireError, match="unknown coin"):
        uni.by_name("NOPE")
    assert uni.by_id(1).name == "ETH"
    assert [a.name for a in uni.perps()][:3] == ["BTC", "ETH", "ATOM"]


def test_universe_refresh_keeps_ids_and_delists_what_vanished() -> None:
    from hlcopy.hl.parse import parse_meta

    old = Universe.build(
        parse_meta({"universe": [{"name": "A", "szDecimals": 1}, {"name": "B", "szDecimals": 2}]})
    )
    new = Universe.build(
        parse_meta(
            {
                "universe": [
                    {"name": "A", "szDecimals": 1},
                    {"name": "B", "szDecimals": 2},
                    {"name": "C", "szDecimals": 0},
                ]
            }
        ),
        parse_spot_meta({"tokens": [], "universe": []}),
    )
    merged = old.merge(new)
    assert [merged.by_name(n).asset_id for n in "ABC"] == [0, 1, 2]
    shrunk = merged.merge(
        Universe.build(parse_meta({"universe": [{"name": "A", "szDecimals": 1}]}))
    )
    assert shrunk.by_name("B").delisted
    assert shrunk.by_name("B").asset_id == 1
    moved = Universe.build(parse_meta({"universe": [{"name": "B", "szDecimals": 2}]}))
    with pytest.raises(WireError, match="moved"):
        merged.merge(moved)


async def test_lanes_are_charged_as_asked(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    info, budget = client(server, session)
    await info.clearinghouse_state(USER, lane=Lane.FOLLOWER)
    await info.clearinghouse_state(USER, lane=Lane.LEADER)
    lanes = budget.stats()["lanes"]
    assert (lanes["follower"]["weight_total"], lanes["leader"]["weight_total"]) == (2, 2)


async def test_asset_contexts_spot_balances_and_recent_trades(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    ctx = {
        "dayNtlVlm": "1169046.29406",
        "funding": "0.0000125",
        "impactPxs": ["14.3047", "14.3444"],
        "markPx": "14.3161",
        "midPx": "14.314",
        "openInterest": "688.11",
        "oraclePx": "14.32",
        "premium": "0.00031774",
        "prevDayPx": "15.322",
        "dayBaseVlm": "81234.5",
    }
    server.info_handlers.update(
        {
            "metaAndAssetCtxs": lambda b: [
                {"universe": [{"name": "X", "szDecimals": 2}]},
                [{**ctx, "midPx": None, "premium": None}],
            ],
            "spotClearinghouseState": lambda b: {
                "balances": [
                    {
                        "coin": "USDC",
                        "token": 0,
                        "hold": "0.0",
                        "total": "14.625485",
                        "entryNtl": "0.0",
                    }
                ]
            },
            "recentTrades": lambda b: (
                [
                    {
                        "coin": b["coin"],
                        "side": "A",
                        "px": "30135.0",
                        "sz": "0.01",
                        "time": 1700000000000,
                        "hash": "0xab",
                        "tid": 7,
                        "users": ["0x" + "AA" * 20, "0x" + "bb" * 20],
                    }
                ]
                * 25
            ),
        }
    )
    info, budget = client(server, session)
    meta, ctxs = await info.meta_and_asset_ctxs()
    assert meta.universe[0].name == "X"
    assert ctxs[0].mark_px == Decimal("14.3161")
    assert ctxs[0].mid_px is None
    (usdc,) = await info.spot_clearinghouse_state(USER)
    assert (usdc.coin, usdc.total) == ("USDC", Decimal("14.625485"))
    trades = await info.recent_trades("BTC")
    assert len(trades) == 25
    assert trades[0].users == ("0x" + "aa" * 20, "0x" + "bb" * 20)  # lowercased
    assert trades[0].side == "A"
    assert budget.stats()["lanes"]["enrichment"]["weight_total"] == 20 + 20 + 2  # +2 for 25 items
