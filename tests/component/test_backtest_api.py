"""``POST /api/v1/backtest``, ``GET`` / ``DELETE /api/v1/backtest/{id}`` on a real aiohttp app
against the simulator: authenticated, checked before anything is read, one at a time (409),
progress while it runs, the result with its chart when done, cancellable, every request of it
in the budget's gap-fill lane."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hlcopy.api.app import build_app
from hlcopy.api.backtest import BacktestJobs
from hlcopy.budget import WeightBudget
from hlcopy.component import MetricFamily, ReloadResult
from hlcopy.config import ApiConfig, HlcopyConfig, parse_config
from hlcopy.credentials import Secret
from hlcopy.hl import InfoClient, new_session
from hlcopy.sim import SimConfig, Simulator

TOKEN = "backtest-api-test-token-" + "x" * 16
DAY_MS = 86_400_000
WEIGHT = 1_000_000


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
    sim: Simulator
    budget: WeightBudget
    jobs: BacktestJobs

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as r:
            return r.status, orjson.loads(await r.read())

    async def until_finished(self, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                status, job = await self.call("GET", f"/api/v1/backtest/{job_id}")
                assert status == 200, job
                if job["state"] != "running":
                    return dict(job)
                await asyncio.sleep(0.05)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with (
        Simulator(SimConfig(port=0, realtime=False, traders=20, weight_per_minute=WEIGHT)) as sim,
        new_session() as rest,
    ):
        budget = WeightBudget(WEIGHT)
        jobs = BacktestJobs(InfoClient(rest, sim.url, budget), HlcopyConfig())
        app = build_app(_Daemon(), ApiConfig(port=0), Secret(TOKEN), backtests=jobs)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                yield Api(f"http://127.0.0.1:{port}", session, sim, budget, jobs)
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()


def busiest(sim: Simulator, days: int) -> str:
    now = sim.engine.now_ms
    return max(
        (t.address for t in sim.population.traders),
        key=lambda a: len(sim.pasts.fills_between(a, now - days * DAY_MS, None)),
    )


async def test_a_backtest_runs_to_its_result_and_chart(api: Api) -> None:
    leader = busiest(api.sim, 3)
    body = {"addresses": [leader], "days": 3, "latency_ms": 0, "ratio": "0.1", "risk": False}
    status, job = await api.call("POST", "/api/v1/backtest", body)
    assert status == 202, job
    assert (job["state"], job["addresses"], job["result"]) == ("running", [leader], None)
    assert job["until_ms"] - job["since_ms"] == 3 * DAY_MS
    done = await api.until_finished(job["id"])
    assert done["state"] == "done", done["error"]
    assert done["progress"]["share"] == 1.0
    (result,) = done["result"]["results"]
    assert result["source"] == "candles"
    assert result["orders"] > 0
    assert result["leaders"][0]["address"] == leader
    parts = sum(float(v) for v in result["parts"].values())
    assert abs(parts - float(result["gap"])) < 1e-9
    assert done["svg"].startswith("<svg")
    assert done["svg"].count("<polyline") == 2
    # Every request it made went through the budget's gap-fill lane, none through the others.
    lanes = api.budget.stats()["lanes"]
    assert lanes["gapfill"]["requests"] == api.sim.stats["info_requests"] > 0
    assert sum(v["requests"] for k, v in lanes.items() if k != "gapfill") == 0
    # A sweep runs its variants side by side.
    sweep = {**body, "sweep": {"key": "ratio", "values": ["0.05", "0.1"]}}
    status, job = await api.call("POST", "/api/v1/backtest", sweep)
    assert status == 202, job
    done = await api.until_finished(job["id"])
    labels = [r["label"] for r in done["result"]["results"]]
    assert labels == ["ratio=0.05", "ratio=0.1"]
    assert done["svg"].count("<polyline") == 3


@pytest.mark.slow(7)
async def test_one_at_a_time_progress_and_cancel(api: Api) -> None:
    leader = busiest(api.sim, 60)
    # Sixty days with a latency to price: minute candles around every fill, a long fetch.
    body = {"addresses": [leader], "days": 60, "latency_ms": 500}
    status, first = await api.call("POST", "/api/v1/backtest", body)
    assert status == 202, first
    status, refused = await api.call("POST", "/api/v1/backtest", body)
    assert status == 409
    assert refused["error"]["running"] == first["id"]
    await asyncio.sleep(0.3)
    status, job = await api.call("GET", f"/api/v1/backtest/{first['id']}")
    assert (status, job["state"]) == (200, "running")
    assert job["progress"]["phase"] != "starting"
    status, job = await api.call("DELETE", f"/api/v1/backtest/{first['id']}")
    assert (status, job["state"]) == (200, "cancelled")
    assert job["result"] is None
    assert api.jobs.running is None
    # The next may start now.
    status, second = await api.call("POST", "/api/v1/backtest", {**body, "days": 1})
    assert status == 202, second
    assert (await api.until_finished(second["id"]))["state"] in ("done", "failed")
    status, job = await api.call("GET", f"/api/v1/backtest/{first['id']}")
    assert (status, job["state"]) == (200, "cancelled")


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ([], "body"),
        ({}, "addresses"),
        ({"addresses": ["0x12"]}, "body"),
        ({"addresses": ["0x" + "ab" * 20], "ratio": "-1"}, "ratio"),
        ({"addresses": ["0x" + "ab" * 20], "colour": "red"}, "colour"),
        ({"addresses": ["0x" + "ab" * 20], "from_ms": 10, "to_ms": 5}, "body"),
        ({"addresses": ["0x" + "ab" * 20], "sweep": {"key": "x", "values": [1]}}, "sweep.key"),
        ({"addresses": ["0x" + "ab" * 20], "latency_ms": "fast"}, "latency_ms"),
    ],
)
async def test_bad_bodies_are_400s_naming_the_key_and_start_nothing(
    api: Api, body: Any, parameter: str
) -> None:
    status, answer = await api.call("POST", "/api/v1/backtest", body)
    assert status == 400, answer
    assert answer["error"]["parameter"] == parameter
    assert api.jobs.running is None
    assert api.sim.stats["info_requests"] == 0


async def test_a_token_is_needed_and_unknown_ids_are_404(api: Api) -> None:
    body = {"addresses": ["0x" + "ab" * 20]}
    status, answer = await api.call("POST", "/api/v1/backtest", body, token=None)
    assert status == 401
    assert api.jobs.running is None
    for method in ("GET", "DELETE"):
        status, answer = await api.call(method, "/api/v1/backtest/bt-99")
        assert status == 404
        assert answer["error"]["code"] == "not_found"


async def test_a_backtest_takes_the_config_as_it_is_now_not_as_it_was_at_start() -> None:
    """A follow's rules edited in the TOML and reloaded apply to the next backtest of its
    leader: the jobs read the daemon's config at each start."""
    async with (
        Simulator(SimConfig(port=0, realtime=False, traders=20, weight_per_minute=WEIGHT)) as sim,
        new_session() as rest,
    ):
        leader = busiest(sim, 3)

        def config(ratio: str) -> HlcopyConfig:
            return parse_config({"follow": [{"name": "a", "leader": leader, "ratio": ratio}]})

        current = config("0.1")
        jobs = BacktestJobs(InfoClient(rest, sim.url, WeightBudget(WEIGHT)), lambda: current)
        described = []
        for ratio in ("0.1", "0.3"):
            current = config(ratio)  # as a reload swaps the daemon's config
            job = jobs.start({"addresses": [leader], "days": 3, "latency_ms": 0, "risk": False})
            assert job.task is not None
            await asyncio.wait_for(job.task, 30)
            assert job.state == "done", job.error
            assert job.result is not None
            described.append(job.result["results"][0]["options"])
        assert "ratio 0.1" in described[0]
        assert "ratio 0.3" in described[1]


async def test_a_follows_rules_as_the_api_shows_them_make_a_backtest_body() -> None:
    """``follow_body``: a follow's spec (GET /api/v1/follows) is a valid backtest body, by the
    follow's own rules (the demo backtests the leader it copies this way: without them, the
    address's defaults copied it at its own size)."""
    from hlcopy.api.backtest import follow_body

    async with (
        Simulator(SimConfig(port=0, realtime=False, traders=20, weight_per_minute=WEIGHT)) as sim,
        new_session() as rest,
    ):
        leader = busiest(sim, 3)
        spec = parse_config(
            {
                "follow": [
                    {
                        "name": "x",
                        "leader": leader,
                        "sizing": "equity",
                        "ratio": "0.5",
                        "slippage_bps": 40,
                        "priority": 3,
                        "protective_stop_pct": 20,
                        "entry": "adopt",
                    }
                ]
            }
        ).follow[0]
        body = follow_body(spec.model_dump(mode="json"))  # as follow_json shows its spec
        assert body["sizing"] == "equity"
        assert body["ioc_slippage_bps"] == 40
        assert not {"priority", "protective_stop_pct", "entry", "leader", "name"} & set(body)
        # No [[follow]] of this address in the daemon's config: the body alone says how.
        jobs = BacktestJobs(InfoClient(rest, sim.url, WeightBudget(WEIGHT)), HlcopyConfig())
        job = jobs.start({"addresses": [leader], "days": 3, "risk": False, **body})
        assert job.task is not None
        await asyncio.wait_for(job.task, 30)
        assert job.state == "done", job.error
        assert job.result is not None
        options = job.result["results"][0]["options"]
        assert "equity x 0.5" in options
        assert "IOC cap 40 bps" in options
