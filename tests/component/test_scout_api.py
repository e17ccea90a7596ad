"""The scout's API on a real daemon: the leaderboard reloaded from PostgreSQL after a restart,
its sorting, filters and paging over HTTP, the losers, traders, trader pages, track requests,
the 400s, 404s and 503s, and the OpenAPI document kept true to the router."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hlcopy.api.app import build_app
from hlcopy.config import DatabaseConfig
from hlcopy.credentials import Secret
from hlcopy.daemon import Daemon
from hlcopy.notify import Notifier
from hlcopy.scout.analytics import WINDOWS, RiskLevel, Style
from hlcopy.scout.leaderboard import ROW_FIELDS, SORT_KEYS, Filters, Leaderboard, LeaderboardService
from hlcopy.store import Store
from hlcopy.store.monitor import StoreMonitor

from tests.component.scout_env import TOKEN, ScoutApi, scout_api, store_traders
from tests.conftest import make_config, running
from tests.scout_data import population
from tests.unit.test_leaderboard import board_of, expected_losers, expected_order


@pytest.fixture
async def api(dsn: str, tmp_path: Path) -> AsyncIterator[ScoutApi]:
    async with scout_api(dsn, tmp_path) as a:
        yield a


# --- the restart ---------------------------------------------------------------------------------


async def test_leaderboard_after_a_restart_is_the_stored_state(api: ScoutApi) -> None:
    """Nothing was polled: every row comes from what the previous run stored, and equals what
    the tracker's own puts would have shown."""
    fresh = board_of(api.traders)
    assert len(api.board) == len(api.traders)
    for window in WINDOWS:
        for key in ("score", "pnl", "account_value", "risk_level", "updated_at"):
            for desc in (True, False):
                want = fresh.ranking(window, key, descending=desc, limit=1000).rows
                got = api.board.ranking(window, key, descending=desc, limit=1000).rows
                assert got == want, (window, key, desc)
        assert api.board.losers(window, limit=1000).rows == fresh.losers(window, limit=1000).rows
    stats = (await api.get("/api/v1/stats"))["components"]["leaderboard"]
    assert stats["loaded_traders"] == len(api.traders)
    assert stats["load_careful_batches"] == 0
    assert stats["traders"] == len(api.traders)
    assert stats["ranked"] == fresh.stats()["ranked"]
    assert stats["load_s"] is not None
    assert stats["refresh_ms"] >= 0
    assert stats["age_s"] is not None


async def test_stored_junk_reads_as_missing_and_never_stops_the_start(
    dsn: str, tmp_path: Path
) -> None:
    sane = population(6)
    async with Store(DatabaseConfig(dsn=dsn), tmp_path, exclusive=False) as store:
        await store.migrate()
        await store_traders(store, sane)
        # As JSON text: numbers beyond a float's range cannot come from Python.
        junk = {
            "0x" + "01" * 20: '{"month": {"score": "abc", "pnl": {"x": 1}, "return": 1e400}}',
            "0x" + "02" * 20: '{"month": {"score": 1e-999, "pnl": "1e99999", "trade_count": 2.5}}',
            "0x" + "03" * 20: '{"month": [1, 2], "week": "nope", "day": null}',
            "0x" + "04" * 20: (
                '{"month": {"score": 2.5, "pnl": "-12.5", "risk_level": "WILD", "style": 7}}'
            ),
        }
        for address, stats in junk.items():
            await store.pool.execute(
                "INSERT INTO traders (address, first_seen_ms, last_seen_ms, stats, stats_at_ms,"
                " account_value) VALUES ($1, 0, 0, $2::text::jsonb, 5, 'NaN')",
                address,
                stats,
            )
        await store.pool.execute(
            "INSERT INTO traders (address, first_seen_ms, last_seen_ms, stats) "
            "VALUES ($1, 0, 0, '[1, 2, 3]'::jsonb)",
            "0x" + "05" * 20,
        )
    cfg = make_config(tmp_path, dsn, api={"port": 0})
    daemon = Daemon(cfg, notifier=Notifier(""))
    store = Store(cfg.database, cfg.state.dir)
    board = Leaderboard()
    service = LeaderboardService(board, store, cfg.leaderboard)
    daemon.add(StoreMonitor(store))
    daemon.add(service)
    try:
        async with running(daemon):
            assert service.stats()["load_careful_batches"] == 1  # the one batch, read again
            assert len(board) == len(sane) + 3  # 0x03 has no readable window; 0x05 no object
            rows = {r["address"]: r for r in board.ranking("month", "pnl", limit=100).rows}
            assert rows["0x" + "01" * 20]["score"] is None
            assert rows["0x" + "01" * 20]["pnl"] is None
            assert rows["0x" + "01" * 20]["return"] is None
            assert rows["0x" + "01" * 20]["account_value"] is None
            assert rows["0x" + "02" * 20]["score"] is None  # out of float range
            assert rows["0x" + "02" * 20]["pnl"] is None
            assert rows["0x" + "02" * 20]["trade_count"] is None  # not an integer
            good = rows["0x" + "04" * 20]
            assert (good["score"], good["pnl"], good["risk_level"], good["style"]) == (
                2.5,
                "-12.5",
                None,
                None,
            )
            assert board.rank("0x" + "04" * 20, "month") is not None
            # The sound traders of that batch read the same the careful way.
            fresh = board_of(sane)
            ours = {t.address for t in sane}
            for window in WINDOWS:
                got = board.ranking(window, "pnl", limit=100).rows
                assert [r for r in got if r["address"] in ours] == fresh.ranking(
                    window, "pnl", limit=100
                ).rows
    finally:
        await store.close()


# --- the leaderboard over HTTP -------------------------------------------------------------------


async def test_default_page_is_score_descending_fifty_rows(api: ScoutApi) -> None:
    body = await api.get("/api/v1/leaderboard")
    want = expected_order(api.traders, "month", "score", True)
    assert body["window"] == "month"
    assert body["sort_by"] == "score"
    assert body["order"] == "desc"
    assert body["total"] == len(want)
    assert body["limit"] == 50
    assert body["offset"] == 0
    assert body["rows"] == want[:50]
    assert all(tuple(r) == ROW_FIELDS for r in body["rows"])


@pytest.mark.parametrize(
    ("query", "window", "key", "desc", "filters"),
    [
        ("window=week&sort_by=return&order=asc", "week", "return", False, Filters()),
        ("window=allTime&sort_by=max_drawdown", "allTime", "max_drawdown", True, Filters()),
        ("sort_by=trade_count&min_trades=20", "month", "trade_count", True, Filters(min_trades=20)),
        (
            "sort_by=total_volume_usd&min_volume_usd=250000.5",
            "month",
            "total_volume_usd",
            True,
            Filters(min_volume_usd=Decimal("250000.5")),
        ),
        (
            "window=day&sort_by=sharpe&risk_level=LOW,MEDIUM&style=swing,day,position",
            "day",
            "sharpe",
            True,
            Filters(
                risk_levels=frozenset({"LOW", "MEDIUM"}),  # type: ignore[arg-type]
                styles=frozenset({"swing", "day", "position"}),  # type: ignore[arg-type]
            ),
        ),
    ],
)
async def test_sorting_and_filters_over_http(
    api: ScoutApi, query: str, window: str, key: str, desc: bool, filters: Filters
) -> None:
    f = Filters(
        min_trades=filters.min_trades,
        min_volume_usd=filters.min_volume_usd,
        risk_levels=None
        if filters.risk_levels is None
        else frozenset(RiskLevel(r) for r in filters.risk_levels),
        styles=None if filters.styles is None else frozenset(Style(s) for s in filters.styles),
    )
    want = expected_order(api.traders, window, key, desc, f)
    body = await api.get(f"/api/v1/leaderboard?{query}&limit=1000")
    assert body["total"] == len(want)
    assert body["rows"] == want
    # And paged: 7 rows at a time, the same order.
    got: list[Any] = []
    for offset in range(0, len(want) + 7, 7):
        page = await api.get(f"/api/v1/leaderboard?{query}&limit=7&offset={offset}")
        got += page["rows"]
    assert got == want


async def test_every_sort_key_is_accepted_and_an_unknown_one_lists_them(api: ScoutApi) -> None:
    for key in SORT_KEYS:
        body = await api.get(f"/api/v1/leaderboard?sort_by={key}&limit=3")
        assert body["sort_by"] == key
    status, body = await api.call("GET", "/api/v1/leaderboard?sort_by=luck")
    assert status == 400
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["parameter"] == "sort_by"
    assert body["error"]["allowed"] == list(SORT_KEYS)
    assert "score" in body["error"]["message"]


INVALID = [
    ("/api/v1/leaderboard?window=year", "window"),
    ("/api/v1/leaderboard?order=up", "order"),
    ("/api/v1/leaderboard?limit=0", "limit"),
    ("/api/v1/leaderboard?limit=1001", "limit"),
    ("/api/v1/leaderboard?limit=ten", "limit"),
    ("/api/v1/leaderboard?offset=-1", "offset"),
    ("/api/v1/leaderboard?min_trades=1.5", "min_trades"),
    ("/api/v1/leaderboard?min_volume_usd=1e9", "min_volume_usd"),
    ("/api/v1/leaderboard?min_volume_usd=-5", "min_volume_usd"),
    ("/api/v1/leaderboard?risk_level=LOW,insane", "risk_level"),
    ("/api/v1/leaderboard?style=", "style"),
    ("/api/v1/leaderboard?sortby=score", "sortby"),
    ("/api/v1/leaderboard?limit=5&limit=6", "limit"),
    ("/api/v1/losers?window=decade", "window"),
    ("/api/v1/traders?q=abc", "q"),
    ("/api/v1/traders?q=0x12z", "q"),
    ("/api/v1/traders/0x1234", "address"),
    ("/api/v1/traders/" + "0x" + "g" * 40, "address"),
    ("/api/v1/traders/" + "0x" + "ab" * 20 + "/events?limit=501", "limit"),
    ("/api/v1/traders/" + "0x" + "ab" * 20 + "/fills?offset=100001", "offset"),
]


async def test_invalid_parameters_are_400s_naming_the_parameter(api: ScoutApi) -> None:
    for path, parameter in INVALID:
        status, body = await api.call("GET", path)
        assert status == 400, (path, body)
        assert body["error"]["code"] == "invalid_parameter", path
        assert body["error"]["parameter"] == parameter, path
        assert body["error"]["message"]


async def test_losers_default_to_the_configured_window(api: ScoutApi) -> None:
    body = await api.get("/api/v1/losers?limit=500")
    want = expected_losers(api.traders, "month")
    assert want
    assert body["window"] == "month"
    assert [r["address"] for r in body["rows"]] == want
    assert all(r["badness"] > 0 for r in body["rows"])
    week = await api.get("/api/v1/losers?window=week&limit=2&offset=1")
    assert [r["address"] for r in week["rows"]] == expected_losers(api.traders, "week")[1:3]


async def test_pages_are_cached_until_the_board_changes(api: ScoutApi) -> None:
    first = await api.get("/api/v1/leaderboard?window=week")
    again = await api.get("/api/v1/leaderboard?window=week")
    assert again == first
    hits = (await api.get("/api/v1/stats"))["components"]["api"]["pages"]["hits"]
    assert hits >= 1
    # A re-scored trader shows on the next refresh, not before.
    t = api.traders[1]
    top = first["rows"][0]
    better = dict(t.metrics)

    better["week"] = replace(better["week"], score=top["score"] + 1.0)
    api.board.put(t.address, better, account_value=None, updated_ms=t.updated_ms + 10)
    assert (await api.get("/api/v1/leaderboard?window=week"))["rows"][0] == top
    api.board.refresh()
    body = await api.get("/api/v1/leaderboard?window=week")
    assert body["rows"][0]["address"] == t.address
    assert body["version"] == first["version"] + 1


async def test_loading_and_missing_parts_are_503s(api: ScoutApi, tmp_path: Path) -> None:
    api.board.loading = True
    status, body = await api.call("GET", "/api/v1/leaderboard")
    assert (status, body["error"]["code"]) == (503, "loading")
    api.board.loading = False

    cfg = make_config(tmp_path, api={"port": 0})
    bare = build_app(api.daemon, cfg.api, Secret(TOKEN))
    async with TestClient(TestServer(bare)) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        address = "0x" + "ab" * 20
        for method, path in [
            ("GET", "/api/v1/leaderboard"),
            ("GET", "/api/v1/losers"),
            ("GET", "/api/v1/traders"),
            ("GET", f"/api/v1/traders/{address}"),
            ("GET", f"/api/v1/traders/{address}/events"),
            ("GET", f"/api/v1/traders/{address}/fills"),
            ("POST", f"/api/v1/traders/{address}/track"),
            ("GET", "/ws/v1/updates"),
        ]:
            r = await client.request(method, path, headers=auth)
            assert r.status == 503, path
            assert (await r.json())["error"]["code"] == "unavailable"
        r = await client.get("/health")
        assert r.status in (200, 503)  # the daemon's own routes do not need the scout

    # A database that is away is a 503 too (the store monitor brings it back), not a 500.
    closed = Store(DatabaseConfig(dsn="postgresql://127.0.0.1:1/x"), tmp_path, exclusive=False)
    away = build_app(api.daemon, cfg.api, Secret(TOKEN), store=closed)
    async with TestClient(TestServer(away)) as client:
        r = await client.get(f"/api/v1/traders/{'0x' + 'ab' * 20}/events")
        assert r.status == 503
        assert (await r.json())["error"]["message"] == "the database is unavailable"


# --- traders -------------------------------------------------------------------------------------


async def test_traders_are_the_registry_by_address_prefix(api: ScoutApi) -> None:
    everyone = sorted(a.address for a in api.registry)
    body = await api.get("/api/v1/traders?limit=1000")
    assert body["total"] == len(everyone)
    assert [t["address"] for t in body["traders"]] == everyone
    first = body["traders"][0]
    activity = api.registry.get(first["address"])
    assert activity is not None
    assert first == {
        "address": activity.address,
        "first_seen_ms": activity.first_seen_ms,
        "last_seen_ms": activity.last_seen_ms,
        "trades": activity.trades,
        "volume_usd": str(activity.volume_usd),
        "taker": activity.taker,
        "maker": activity.maker,
        "coins": list(activity.coins),
    }
    prefix = everyone[3][:4]
    want = [a for a in everyone if a.startswith(prefix)]
    body = await api.get(f"/api/v1/traders?q={prefix.upper().replace('0X', '0x')}&limit=2&offset=1")
    assert body["total"] == len(want)
    assert [t["address"] for t in body["traders"]] == want[1:3]


async def test_trader_page_has_metrics_positions_events_index_and_ranks(api: ScoutApi) -> None:
    t = next(x for x in api.traders if x.kind == "skilled")
    body = await api.get(f"/api/v1/traders/{t.address.upper().replace('0X', '0x')}")
    assert body["address"] == t.address
    assert body["metrics"] == {w: m.as_dict() for w, m in t.metrics.items()}
    assert body["metrics_at_ms"] == t.updated_ms
    assert body["tracked"] is True
    assert body["role"] == "user"
    assert body["positions"][0]["coin"] == "BTC"
    assert body["positions_at_ms"] is not None
    assert set(body["index_points"]) == set(t.metrics)
    assert [e["kind"] for e in body["events"]] == ["close", "increase", "open"]  # newest first
    assert body["events"][0]["new_szi"] == "0"
    for window in WINDOWS:
        assert body["ranks"][window] == api.board.rank(t.address, window)
    assert body["ranks"]["month"] is not None
    assert body["activity"] == (await api.get(f"/api/v1/traders?q={t.address}"))["traders"][0]


async def test_trader_known_only_to_discovery_or_to_nobody(api: ScoutApi) -> None:
    unscored = next(a for a in api.registry if a.address not in api.board)
    body = await api.get(f"/api/v1/traders/{unscored.address}")
    assert body["metrics"] == {}
    assert body["ranks"] == dict.fromkeys(WINDOWS)
    assert body["activity"]["address"] == unscored.address
    assert body["tracked"] is False
    status, body = await api.call("GET", "/api/v1/traders/0x" + "77" * 20)
    assert status == 404
    assert body["error"]["code"] == "unknown_trader"


async def test_events_and_fills_are_paged_newest_first(api: ScoutApi) -> None:
    t = api.traders[2]
    page = await api.get(f"/api/v1/traders/{t.address}/events?limit=2")
    assert [e["kind"] for e in page["events"]] == ["close", "increase"]
    assert page["more"] is True
    page = await api.get(f"/api/v1/traders/{t.address}/events?limit=2&offset=2")
    assert [e["kind"] for e in page["events"]] == ["open"]
    assert page["more"] is False
    fills = await api.get(f"/api/v1/traders/{t.address}/fills?limit=5")
    assert [f["tid"] for f in fills["fills"]] == [2002, 2001, 2000]
    assert fills["fills"][0]["px"] == "60000.5"
    assert fills["fills"][0]["crossed"] is True
    empty = await api.get("/api/v1/traders/0x" + "77" * 20 + "/fills")
    assert (empty["fills"], empty["more"]) == ([], False)


async def test_track_needs_the_token_and_only_hands_the_address_on(api: ScoutApi) -> None:
    address = "0x" + "5A" * 20
    status, body = await api.call("POST", f"/api/v1/traders/{address}/track", token=None)
    assert status == 401
    assert api.tracker.requested == []
    status, body = await api.call("POST", f"/api/v1/traders/{address}/track")
    assert status == 202
    assert body == {"address": address.lower(), "track_requested": True}
    assert api.tracker.requested == [address.lower()]
    status, body = await api.call("POST", "/api/v1/traders/0x12/track")
    assert status == 400
    assert api.tracker.requested == [address.lower()]
    assert (await api.get("/api/v1/stats"))["components"]["api"]["track_requests"] == 1


async def test_reads_need_the_token_with_read_auth(dsn: str, tmp_path: Path) -> None:
    async with scout_api(dsn, tmp_path, traders=10, read_auth=True) as a:
        for path in ("/api/v1/leaderboard", "/api/v1/openapi.json", "/api/v1/traders"):
            status, body = await a.call("GET", path, token=None)
            assert status == 401, path
            assert body["error"]["code"] == "unauthorized"
            await a.get(path)


# --- the OpenAPI document ------------------------------------------------------------------------


def _resolve(doc: dict[str, Any], node: Any) -> None:
    """Every $ref in ``node`` points into the document."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            name = ref.removeprefix("#/components/schemas/")
            assert name in doc["components"]["schemas"], ref
        for value in node.values():
            _resolve(doc, value)
    elif isinstance(node, list):
        for value in node:
            _resolve(doc, value)


async def test_openapi_lists_exactly_the_routes_of_the_router(api: ScoutApi) -> None:
    doc = await api.get("/api/v1/openapi.json")
    assert doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app = api.server._app
    assert app is not None
    routed = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None  # aiohttp adds HEAD to every GET
    }
    assert documented == routed
    _resolve(doc, doc)
    for path, ops in doc["paths"].items():
        placeholders = set(re.findall(r"{(\w+)}", path))
        for method, op in ops.items():
            in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert in_path == placeholders, (method, path)
            assert op["responses"], (method, path)
            assert all(p["in"] in ("path", "query") for p in op["parameters"])


async def test_openapi_query_parameters_are_the_accepted_ones(api: ScoutApi) -> None:
    """Each documented query parameter is accepted with its default (or a sample of its
    schema), and an undocumented one is refused naming the documented ones."""
    doc = await api.get("/api/v1/openapi.json")
    address = api.traders[0].address
    for path, ops in doc["paths"].items():
        if "get" not in ops or path in ("/ws/v1/updates", "/health"):
            continue
        # Other path parameters (a follow's or a backtest's id) with a well-formed unknown id.
        concrete = re.sub(r"{\w+}", "x", path.replace("{address}", address))
        params = [p for p in ops["get"]["parameters"] if p["in"] == "query"]
        for p in params:
            schema = p["schema"]
            if "default" in schema:
                value = str(schema["default"])
            elif "examples" in schema:
                value = str(schema["examples"][0])
            elif schema.get("type") == "array":
                value = schema["items"]["enum"][0] if "enum" in schema["items"] else address
            else:
                value = schema["enum"][0]
            status, body = await api.call("GET", f"{concrete}?{p['name']}={value}")
            if status == 404 and body["error"]["code"] == "unknown_follow":
                continue  # accepted, and answered for a follow this daemon does not have
            assert status == 200, (path, p["name"], body)
        status, body = await api.call("GET", f"{concrete}?undocumented=1")
        assert status == 400, path
        assert body["error"]["allowed"] == [p["name"] for p in params]
