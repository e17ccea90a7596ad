"""Follows on real parts: the registry over PostgreSQL inside a real daemon, and its routes
over HTTP. A restart keeps API follows and the paused and winding-down flags; a reload
re-applies the TOML's follows and keeps the others."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hlcopy.api.server import ApiServer
from hlcopy.config import load_config
from hlcopy.credentials import Secret
from hlcopy.daemon import Daemon
from hlcopy.follow.follows import (
    FollowConflict,
    FollowInvalid,
    FollowNotFound,
    FollowRegistry,
    FollowsNotLoaded,
    auto_follow_id,
)
from hlcopy.notify import Notifier
from hlcopy.store import Store
from hlcopy.store.monitor import StoreMonitor

from tests.conftest import running

TOKEN = "follows-token-0123456789abcdef"
A = "0x" + "a1" * 20
B = "0x" + "b2" * 20
C = "0x" + "c3" * 20
ME = "0x" + "ee" * 20


def toml(tmp_path: Path, dsn: str, follows: str) -> Path:
    path = tmp_path / "hlcopy.toml"
    path.write_text(
        f'[state]\ndir = "{tmp_path}"\n[database]\ndsn = "{dsn}"\n[api]\nport = 0\n'
        f'[logging]\nformat = "json"\n[account]\naddress = "{ME}"\n' + follows
    )
    return path


TWO = f"""
[[follow]]
leader = "{A}"
name = "alpha"
ratio = 0.5
priority = 3
[[follow]]
leader = "{B}"
"""


@dataclass
class Env:
    url: str
    session: aiohttp.ClientSession
    daemon: Daemon
    registry: FollowRegistry

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None


@contextlib.asynccontextmanager
async def daemon_env(config_path: Path) -> AsyncIterator[Env]:
    cfg = load_config(config_path)
    daemon = Daemon(cfg, config_path=config_path, notifier=Notifier(""))
    store = Store(cfg.database, cfg.state.dir)
    registry = FollowRegistry(store, cfg)
    server = ApiServer(daemon, cfg.api, Secret(TOKEN), follows=registry)
    daemon.add(StoreMonitor(store))
    daemon.add(registry)
    daemon.add(server)
    try:
        async with running(daemon), aiohttp.ClientSession() as session:
            yield Env(f"http://127.0.0.1:{server.port}", session, daemon, registry)
    finally:
        await store.close()


def ids(registry: FollowRegistry) -> dict[str, str]:
    return {r.id: r.source for r in registry.follows()}


# -- the registry ---------------------------------------------------------------------------------


async def test_toml_follows_load_and_map_onto_the_core(dsn: str, tmp_path: Path) -> None:
    async with daemon_env(toml(tmp_path, dsn, TWO)) as env:
        reg = env.registry
        assert ids(reg) == {"alpha": "toml", B: "toml"}
        alpha = reg.get("alpha")
        assert alpha is not None
        assert alpha.core.ratio == Decimal("0.5")
        assert alpha.core.leader == A
        assert alpha.priority == 3
        assert alpha.active
        assert alpha.started_ms > 0
        assert reg.stats()["by_source"] == {"toml": 2, "api": 0, "auto": 0}


async def test_restart_keeps_api_and_auto_follows_and_the_flags(dsn: str, tmp_path: Path) -> None:
    path = toml(tmp_path, dsn, TWO)
    async with daemon_env(path) as env:
        reg = env.registry
        changes: list[int] = []
        reg.subscribe(lambda: changes.append(reg.version))
        api = await reg.add({"leader": C, "name": "gamma", "ratio": "0.2"})
        auto = await reg.add({"leader": B, "name": auto_follow_id("top", B)}, "auto")
        await reg.pause("alpha")
        await reg.set_winding_down(auto.id, True)
        edited = await reg.update("gamma", {"max_leverage": 3, "coins": ["BTC"]})
        assert edited.core.max_leverage == Decimal(3)
        assert edited.core.coins == frozenset({"BTC"})
        assert edited.started_ms == api.started_ms
        assert len(changes) == 5
        before = {r.id: r for r in reg.follows()}
    async with daemon_env(path) as env:
        reg = env.registry
        after = {r.id: r for r in reg.follows()}
        assert after == before
        assert after["alpha"].paused
        assert not after["alpha"].active
        assert after[auto.id].winding_down
        assert after[auto.id].core.winding_down
        assert after[auto.id].source == "auto"
        assert after["gamma"].spec.ratio == Decimal("0.2")
        assert after["gamma"].core.max_leverage == Decimal(3)


async def test_reload_reapplies_the_toml_and_keeps_the_others(dsn: str, tmp_path: Path) -> None:
    path = toml(tmp_path, dsn, TWO)
    async with daemon_env(path) as env:
        reg = env.registry
        await reg.add({"leader": C, "name": "gamma"})
        await reg.pause("alpha")
        started = reg.get("alpha")
        assert started is not None
        # alpha changes its ratio, B leaves the file, a new one comes.
        toml(
            tmp_path,
            dsn,
            f'[[follow]]\nleader = "{A}"\nname = "alpha"\nratio = 2\n'
            f'[[follow]]\nleader = "{C}"\nname = "delta"\n',
        )
        status, body = await env.call("POST", "/api/v1/reload")
        assert status == 200, body
        version = reg.version
        for _ in range(200):
            if "delta" in ids(reg):
                break
            await _tick()
        assert ids(reg) == {"alpha": "toml", "delta": "toml", "gamma": "api"}
        alpha = reg.get("alpha")
        assert alpha is not None
        assert alpha.core.ratio == Decimal(2)
        assert alpha.paused  # a pause over the API survives the reload
        assert alpha.started_ms == started.started_ms
    async with daemon_env(path) as env:
        assert ids(env.registry) == {"alpha": "toml", "delta": "toml", "gamma": "api"}
        # The same file again changes nothing.
        version = env.registry.version
        await env.registry.apply_toml(load_config(path).follow)
        assert env.registry.version == version


async def _tick() -> None:
    await asyncio.sleep(0.01)


async def test_refusals(dsn: str, tmp_path: Path) -> None:
    async with daemon_env(toml(tmp_path, dsn, TWO)) as env:
        reg = env.registry
        with pytest.raises(FollowConflict, match="declared in the TOML"):
            await reg.remove("alpha")
        with pytest.raises(FollowConflict, match="declared in the TOML: edit the file"):
            await reg.update("alpha", {"ratio": 3})
        with pytest.raises(FollowConflict, match="already exists"):
            await reg.add({"leader": A, "name": "alpha"})
        with pytest.raises(FollowNotFound):
            await reg.pause("nobody")
        with pytest.raises(FollowInvalid) as info:
            await reg.add({"leader": C, "ratio": -1, "sizing": "fixed_notional"})
        assert [k for k, _ in info.value.problems] == ["ratio"]
        with pytest.raises(FollowInvalid) as info:
            await reg.add({"leader": ME})
        assert info.value.problems == (("leader", "is the follower's own account"),)
        await reg.add({"leader": C})
        with pytest.raises(FollowInvalid) as info:
            await reg.update(C, {"leader": A})
        assert info.value.problems[0][0] == "leader"
        with pytest.raises(FollowInvalid) as info:
            await reg.update(C, {"sizing": "fixed_notional"})
        assert info.value.problems[0][0] == "fixed_notional_usd"
        # null resets to the default; a removed follow's id can be used again.
        await reg.update(C, {"ratio": 3})
        reset = await reg.update(C, {"ratio": None})
        assert reset.spec.ratio == Decimal(1)
        await reg.remove(C)
        assert reg.get(C) is None
        again = await reg.add({"leader": C, "ratio": 4})
        assert again.core.ratio == Decimal(4)
        assert not again.paused


async def test_nothing_before_load(dsn: str, tmp_path: Path) -> None:
    cfg = load_config(toml(tmp_path, dsn, TWO))
    async with Store(cfg.database, tmp_path, exclusive=False) as store:
        await store.migrate()
        reg = FollowRegistry(store, cfg)
        with pytest.raises(FollowsNotLoaded):
            await reg.add({"leader": C})
        await reg.load()
        await reg.load()  # idempotent
        assert ids(reg) == {"alpha": "toml", B: "toml"}
        # A damaged row never stops the start.
        await store.pool.execute(
            "INSERT INTO follows (id, source, leader, spec, started_ms, created_ms, updated_ms)"
            " VALUES ('bad', 'api', $1, $2, 1, 1, 1)",
            C,
            {"leader": 5},
        )
        await reg.load()
        assert "bad" not in ids(reg)
        assert reg.dropped_rows == 1


# -- the routes -----------------------------------------------------------------------------------


async def test_routes(dsn: str, tmp_path: Path) -> None:
    async with daemon_env(toml(tmp_path, dsn, TWO)) as env:
        status, body = await env.call("GET", "/api/v1/follows", token=None)
        assert status == 200
        assert [f["id"] for f in body["follows"]] == [B, "alpha"]
        alpha = body["follows"][1]
        assert alpha["source"] == "toml"
        assert alpha["spec"]["ratio"] == "0.5"
        assert alpha["spec"]["slippage_bps"] == 50  # defaults filled in

        new = {"leader": C.upper().replace("0X", "0x"), "name": "gamma", "ratio": 0.1}
        status, body = await env.call("POST", "/api/v1/follows", new, token=None)
        assert status == 401
        status, body = await env.call("POST", "/api/v1/follows", new)
        assert status == 201, body
        assert body["id"] == "gamma"
        assert body["source"] == "api"
        assert body["leader"] == C
        assert body["spec"]["ratio"] == "0.1"
        status, body = await env.call("POST", "/api/v1/follows", new)
        assert status == 409

        status, body = await env.call(
            "POST", "/api/v1/follows", {"leader": C, "name": "x", "max_leverage": 0, "oops": 1}
        )
        assert status == 400
        assert body["error"]["code"] == "invalid_field"
        assert body["error"]["field"] == "max_leverage"
        assert [p["field"] for p in body["error"]["problems"]] == ["max_leverage", "oops"]
        for junk in ([1, 2], "text", 5):
            status, body = await env.call("POST", "/api/v1/follows", junk)
            assert status == 400
            assert "JSON object" in body["error"]["message"]

        status, body = await env.call("PATCH", "/api/v1/follows/alpha", {"paused": True})
        assert status == 200, body
        assert body["paused"] is True
        assert body["active"] is False
        status, body = await env.call("PATCH", "/api/v1/follows/alpha", {"ratio": 1})
        assert status == 409
        assert "edit the file" in body["error"]["message"]
        status, body = await env.call("PATCH", "/api/v1/follows/alpha", {"paused": False})
        assert body["paused"] is False
        status, body = await env.call(
            "PATCH", "/api/v1/follows/gamma", {"max_notional_per_coin_usd": "250.5"}
        )
        assert status == 200
        assert body["spec"]["max_notional_per_coin_usd"] == "250.5"
        status, body = await env.call("PATCH", "/api/v1/follows/gamma", {"slippage_bps": -1})
        assert status == 400
        assert body["error"]["field"] == "slippage_bps"
        status, body = await env.call("PATCH", "/api/v1/follows/gamma", {"paused": "yes"})
        assert (status, body["error"]["field"]) == (400, "paused")
        status, body = await env.call("PATCH", "/api/v1/follows/nobody", {"paused": True})
        assert status == 404
        status, body = await env.call("PATCH", "/api/v1/follows/bad%20id", {"paused": True})
        assert (status, body["error"]["parameter"]) == (400, "id")

        status, body = await env.call("DELETE", "/api/v1/follows/alpha")
        assert status == 409
        assert body["error"]["message"] == "declared in the TOML: pause it or edit the file"
        status, body = await env.call("DELETE", "/api/v1/follows/gamma", token=None)
        assert status == 401
        status, body = await env.call("DELETE", "/api/v1/follows/gamma")
        assert (status, body) == (200, {"id": "gamma", "removed": True})
        status, body = await env.call("DELETE", "/api/v1/follows/gamma")
        assert status == 404
        assert "gamma" not in ids(env.registry)


async def test_routes_without_a_registry_are_503s(dsn: str, tmp_path: Path) -> None:
    cfg = load_config(toml(tmp_path, dsn, ""))
    daemon = Daemon(cfg, notifier=Notifier(""))
    server = ApiServer(daemon, cfg.api, Secret(TOKEN))
    daemon.add(server)
    async with running(daemon), aiohttp.ClientSession() as session:
        env = Env(f"http://127.0.0.1:{server.port}", session, daemon, None)  # type: ignore[arg-type]
        for method, body in (("GET", None), ("POST", {"leader": C})):
            status, answer = await env.call(method, "/api/v1/follows", body)
            assert (status, answer["error"]["code"]) == (503, "unavailable")
