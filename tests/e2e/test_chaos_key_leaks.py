"""Chaos (i): the agent key never appears in the logs, the database or the API's output (I5) —
nor does the API token, outside the header it is sent in.

The daemon runs live, with every log at debug level (hlcopy's own and the libraries': asyncpg,
aiohttp, websockets, which logs each frame, signed orders included) and no secret registered
for redaction, so a key that reaches any log line at all is caught, not masked. It is put
through its paces: copy orders, a lost reply settled by cloid, a REST outage, a halt and a
resume, close-all, refused requests. Then the captured logs (structlog and stdout/stderr),
every row of every table as text, and the answer of every GET route of the API (and the live
feed) are searched for the key, in every spelling, and for its first 16 hex digits.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from hlcopy.api.app import ROUTES
from hlcopy.sim import Simulator

from tests.e2e.chaos_env import chaos_seed, seed_on_failure
from tests.live_env import LEADER, live_app, sim_post, szi

PARAMS = {"{address}": LEADER, "{id}": "copy"}


def _forms(secret: str) -> dict[str, str]:
    """The spellings of a secret to look for, by a name that does not reveal it."""
    bare = secret.removeprefix("0x")
    return {
        "as is": secret,
        "lower case": secret.lower(),
        "upper case": secret.upper(),
        "without 0x": bare.lower(),
        "without 0x, upper case": bare.upper(),
        "its first 16 digits": bare[:16].lower(),
    }


def _leaks(text: str, secrets_: dict[str, str]) -> list[str]:
    return [
        f"{name}, {how}"
        for name, secret in secrets_.items()
        for how, form in _forms(secret).items()
        if form in text
    ]


async def _dump_database(dsn: str) -> str:
    """Every row of every table of the daemon's database, as text."""
    con = await asyncpg.connect(dsn)
    try:
        tables = await con.fetch(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS t"
            " FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND table_type = 'BASE TABLE'"
        )
        out = []
        for row in tables:
            rows = await con.fetch(f"SELECT r::text AS line FROM {row['t']} r")  # noqa: S608
            out.append(f"-- {row['t']}: {len(rows)} rows")
            out.extend(r["line"] for r in rows)
        return "\n".join(out)
    finally:
        await con.close()


async def _every_get(port: int, token: str, backtest: str) -> tuple[str, dict[str, int]]:
    """The answer of every GET route (path parameters filled in; ``backtest`` a backtest's id),
    and their statuses."""
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    out: list[str] = []
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for route in ROUTES:
            if route.method != "GET" or route.path == "/ws/v1/updates":
                continue
            path = route.path.replace("/backtest/{id}", f"/backtest/{backtest}")
            for name, value in PARAMS.items():
                path = path.replace(name, value)
            assert "{" not in path, f"no value for a parameter of {route.path}"
            async with session.get(base + path) as r:
                statuses[route.path] = r.status
                out.append(f"-- GET {path} {r.status} {dict(r.headers)}\n{await r.text()}")
        # The live feed, while something happens.
        async with session.ws_connect(base + "/ws/v1/updates") as ws:
            try:
                async with asyncio.timeout(3):
                    async for msg in ws:
                        out.append(f"-- feed {msg.data}")
            except TimeoutError:
                pass
    return "\n".join(out), statuses


@pytest.mark.slow(21)
@pytest.mark.timeout(150)
async def test_the_key_never_reaches_logs_rows_or_api_answers(
    tmp_path: Path,
    sim: Simulator,
    dsn: str,
    log_stream: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    seed = chaos_seed()
    with seed_on_failure(seed) as rng:
        await sim_post(sim, "/_sim/fund", {"address": LEADER, "usdc": "1000000"})
        follows = [{"name": "copy", "leader": LEADER, "ratio": "0.5", "max_fill_age_ms": 60_000}]

        async def trade(is_buy: bool) -> None:
            usd = rng.randint(2_000, 5_000)
            await sim_post(
                sim, "/_sim/trade", {"address": LEADER, "coin": "ETH", "is_buy": is_buy, "usd": usd}
            )

        async with live_app(
            tmp_path, sim, dsn, follows=follows, account={"order_expires_after_s": 1.0}
        ) as (app, account):
            key = (tmp_path / "agent.key").read_text().strip()
            token = app.secrets.api_token.reveal()
            assert re.fullmatch(r"0x[0-9a-f]{64}", key)
            port = app.daemon.stats()["components"]["api"]["port"]
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {token}"}
            await asyncio.sleep(1)  # the leader's first snapshot (flat) and subscription

            await trade(True)  # copied
            await sim_post(sim, "/_sim/faults", {"exchange_lose_reply": 1})
            await trade(True)  # applied, the reply lost: settled by cloid
            async with asyncio.timeout(30):
                while app.executor.stats()["venue"]["settled_by_cloid"] < 1:
                    await asyncio.sleep(0.1)
            await sim_post(sim, "/_sim/faults", {"http_error": {"status": 502, "seconds": 2}})
            await trade(False)
            await asyncio.sleep(2.5)
            answers: list[str] = []
            async with aiohttp.ClientSession() as session:
                for method, path, headers, body in [
                    ("POST", "/api/v1/halt?reason=leak-check", auth, None),
                    ("POST", "/api/v1/resume?reason=leak-check", auth, None),
                    ("POST", "/api/v1/reload", auth, None),
                    ("POST", "/api/v1/halt?reason=x", {"Authorization": "Bearer wrong"}, None),
                    ("GET", "/api/v1/traders/not-an-address", auth, None),
                    ("POST", "/api/v1/close-all", auth, {"confirm": "close-all"}),
                ]:
                    async with session.request(
                        method, base + path, headers=headers, json=body
                    ) as r:
                        answers.append(f"-- {method} {path} {r.status}\n{await r.text()}")
                # A backtest of the leader over the API, read back with its result and chart.
                backtest = {"addresses": [LEADER], "days": 1}
                async with session.post(
                    base + "/api/v1/backtest", headers=auth, json=backtest
                ) as r:
                    assert r.status == 202, await r.text()
                    job = await r.json()
                    answers.append(f"-- POST /api/v1/backtest {r.status}\n{job}")
                async with asyncio.timeout(30):
                    while True:
                        async with session.get(
                            f"{base}/api/v1/backtest/{job['id']}", headers=auth
                        ) as r:
                            if (await r.json())["state"] not in ("queued", "running"):
                                break
                        await asyncio.sleep(0.2)
            api, statuses = await _every_get(port, token, job["id"])
            api += "\n" + "\n".join(answers)
            async with asyncio.timeout(10):  # close-all's order landed
                while szi(sim, account) != 0:
                    await asyncio.sleep(0.1)
        # The daemon has stopped: its last log lines are in too.
        captured = capfd.readouterr()
        logs = log_stream.getvalue() + captured.out + captured.err
        rows = await _dump_database(dsn)

        # What was searched is what it should be: the logs of the whole run, debug lines
        # included, every table, every GET route answering.
        assert len(logs) > 10_000
        assert "order outcome unknown" in logs, logs[-2000:]
        assert "-- public.copies:" in rows
        assert "-- public.leader_fills:" in rows
        assert len(statuses) >= 15
        assert all(s == 200 for s in statuses.values()), statuses
        secrets_ = {"agent key": key, "api token": token}
        assert _leaks(logs, secrets_) == []
        assert _leaks(rows, secrets_) == []
        assert _leaks(api, secrets_) == []
        print(
            f"chaos (i) seed={seed}: searched {len(logs)} chars of logs, {len(rows)} of rows,"
            f" {len(api)} of API answers ({len(statuses)} GET routes)"
        )
