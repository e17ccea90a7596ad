"""The simulator's fault switches the chaos suite added, over the network: a half-open
WebSocket that only the client's stall detection notices, WebSocket upgrades refused by an
``http_error`` on ``/ws``, and an action applied then answered with a 502."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.errors import AmbiguousOutcome
from hlcopy.hl import InfoClient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.component.test_sim_server import (
    eth_spec,
    fresh_client,
    get,
    pool_on,
    post,
    stepped,
    until,
)


async def test_a_half_open_websocket_is_noticed_only_by_its_client() -> None:
    async with (
        stepped() as sim,
        pool_on(sim, ping_interval_s=0.1, silence_timeout_s=0.5) as quiet,
        pool_on(sim, ping_interval_s=0.1, silence_timeout_s=0.5) as other,
    ):
        await until(lambda: len(sim._clients) == 2)
        first = min(sim._clients)
        status, faults = await post(sim.url + "/_sim/faults", {"ws_half_open": first})
        assert (status, faults["half_opened"]) == (200, 1)
        assert sim._clients[first].silent  # still open: the server did not drop it
        await until(lambda: quiet.stats()["silences"] + other.stats()["silences"] == 1)
        await until(lambda: first not in sim._clients and len(sim._clients) == 2)
        # The new connection is not silent: pings are answered, nothing else goes quiet.
        assert not any(c.silent for c in sim._clients.values())
        await until(lambda: quiet.stats()["connections_ready"] == 1, timeout=5)
        await until(lambda: other.stats()["connections_ready"] == 1, timeout=5)
        await asyncio.sleep(1.5)  # three silence timeouts: the new connections answer pings
        assert quiet.stats()["silences"] + other.stats()["silences"] == 1
        assert (await post(sim.url + "/_sim/faults", {"ws_half_open": "x"}))[0] == 400


async def test_websocket_upgrades_refused_while_an_http_error_names_ws() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        spec = {"http_error": {"status": 503, "seconds": 30, "paths": ["/ws"]}}
        assert (await post(sim.url + "/_sim/faults", spec))[0] == 200
        with pytest.raises(InvalidStatus) as refused:
            async with connect(sim.ws_url):
                pass
        assert refused.value.response.status_code == 503
        info = InfoClient(session, sim.url, WeightBudget())
        assert len((await info.meta()).universe) > 20  # REST is untouched
        await post(sim.url + "/_sim/faults", {"clear": True})
        async with connect(sim.ws_url) as ws:
            assert await ws.recv() == "Websocket connection established."


async def test_an_action_applied_then_answered_with_a_502() -> None:
    async with stepped() as sim, aiohttp.ClientSession() as session:
        ex = fresh_client(sim, session)
        info = InfoClient(session, sim.url, WeightBudget())
        spec = {"exchange_fail_after_apply": {"status": 502, "count": 1}}
        assert (await post(sim.url + "/_sim/faults", spec))[0] == 200
        cloid = "0x" + secrets.token_hex(16)
        with pytest.raises(AmbiguousOutcome, match="502"):
            await ex.place([eth_spec(sim, cloid=cloid)])
        record = await info.order_status(ex.actions.signer.address, cloid)
        assert record.status == "filled"  # it was applied
        status, found = await get(f"{sim.url}/_sim/orders?cloid={cloid}")
        assert (status, len(found)) == (200, 1)
        (again,) = await ex.place([eth_spec(sim)])  # the next one is answered normally
        assert again.outcome == "filled"
        assert sim.snapshot()["replies_lost"] == 1
