"""The live feed on a real daemon and a real event bus: the connection message, filters, read
auth, and slow clients dropped without slowing anyone else."""

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
from hlcopy.api.scout import FeedSettings
from hlcopy.api.server import ApiServer
from hlcopy.credentials import Secret
from hlcopy.daemon import Daemon
from hlcopy.events import Event, EventBus
from hlcopy.notify import Notifier

from tests.conftest import make_config, running

TOKEN = "feed-token-0123456789abcdef"
X = "0x" + "aa" * 20
Y = "0x" + "bb" * 20


@dataclass
class Feed:
    base: str
    session: aiohttp.ClientSession
    bus: EventBus
    server: ApiServer
    daemon: Daemon

    def connect(self, query: str = "", token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.session.ws_connect(f"{self.base}/ws/v1/updates{query}", headers=headers)

    def stats(self) -> dict[str, Any]:
        feed: dict[str, Any] = self.server.stats()["feed"]
        return feed


@contextlib.asynccontextmanager
async def feed_daemon(
    tmp_path: Path, *, read_auth: bool = False, settings: FeedSettings | None = None
) -> AsyncIterator[Feed]:
    cfg = make_config(tmp_path, api={"port": 0, "read_auth": read_auth})
    daemon = Daemon(cfg, notifier=Notifier(""))
    bus = EventBus()
    server = ApiServer(daemon, cfg.api, Secret(TOKEN), bus=bus, feed_settings=settings)
    daemon.add(server)
    async with running(daemon), aiohttp.ClientSession() as session:
        yield Feed(f"ws://127.0.0.1:{server.port}", session, bus, server, daemon)


@pytest.fixture
async def feed(tmp_path: Path) -> AsyncIterator[Feed]:
    async with feed_daemon(tmp_path, settings=FeedSettings(buffer=8, send_timeout_s=0.5)) as f:
        yield f


def position(address: str, n: int) -> Event:
    data = {"address": address, "coin": "BTC", "kind": "open", "new_szi": Decimal("0.5"), "n": n}
    return Event("position", data, 1_760_000_000_000 + n, address)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    body: dict[str, Any] = orjson.loads(msg.data)
    return body


async def until(predicate: Any, what: str, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_connection_message_then_filtered_events(feed: Feed) -> None:
    async with (
        feed.connect(f"?address={X.upper().replace('0X', '0x')}") as by_address,
        feed.connect("?type=copy") as by_type,
        feed.connect() as everything,
    ):
        hellos = [await receive(ws) for ws in (by_address, by_type, everything)]
        assert [h["type"] for h in hellos] == ["connection"] * 3
        assert hellos[0]["data"]["filters"] == {"address": [X], "type": None}
        assert hellos[1]["data"]["filters"] == {"address": None, "type": ["copy"]}
        assert hellos[2]["data"]["buffer"] == 8
        assert all(isinstance(h["timestamp"], int) for h in hellos)
        await until(lambda: feed.bus.stats()["subscribers"] == 3, "subscribed")

        feed.bus.publish(position(X, 1))
        feed.bus.publish(Event("copy", {"follow": "f1", "leader": Y}, 1_760_000_000_002, Y))
        feed.bus.publish(position(Y, 3))

        first = await receive(by_address)
        assert first == {
            "type": "position",
            "data": {"address": X, "coin": "BTC", "kind": "open", "new_szi": "0.5", "n": 1},
            "timestamp": 1_760_000_000_001,
        }
        assert (await receive(by_type))["data"] == {"follow": "f1", "leader": Y}
        got = [await receive(everything) for _ in range(3)]
        assert [(m["type"], m["timestamp"]) for m in got] == [
            ("position", 1_760_000_000_001),
            ("copy", 1_760_000_000_002),
            ("position", 1_760_000_000_003),
        ]
        # Nothing else was queued for the filtered ones.
        feed.bus.publish(position(X, 4))
        assert (await receive(by_address))["data"]["n"] == 4
    await until(lambda: feed.bus.stats()["subscribers"] == 0, "unsubscribed")
    assert feed.stats()["clients"] == 0
    assert feed.stats()["connected"] == 3


@pytest.mark.parametrize(
    "query", ["?address=0x12", "?type=Position!", "?unknown=1", "?address=" + ",".join([X] * 1001)]
)
async def test_bad_filters_are_refused_before_the_upgrade(feed: Feed, query: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        async with feed.connect(query):
            pass
    assert err.value.status == 400


async def test_a_plain_get_is_a_400(feed: Feed) -> None:
    url = feed.base.replace("ws://", "http://") + "/ws/v1/updates"
    async with feed.session.get(url) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "not_websocket"


async def test_read_auth_guards_the_feed(tmp_path: Path) -> None:
    async with feed_daemon(tmp_path, read_auth=True) as feed:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with feed.connect():
                pass
        assert err.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with feed.connect(token="wrong-token-wrong-token"):
                pass
        assert err.value.status == 401
        async with feed.connect(token=TOKEN) as ws:
            assert (await receive(ws))["type"] == "connection"


async def test_only_the_daemons_own_pages_may_open_the_feed_from_a_browser(feed: Feed) -> None:
    """A browser sends Origin on every WebSocket upgrade and keeps no page from connecting to
    localhost: another site's page is refused; the dashboard's own, and clients that are not
    browsers (no Origin), are served."""
    url = f"{feed.base}/ws/v1/updates"
    own = feed.base.replace("ws://", "http://")
    for origin in ("http://evil.example", own.replace("127.0.0.1", "localhost"), "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with feed.session.ws_connect(url, headers={"Origin": origin}):
                pass
        assert err.value.status == 403, origin
    async with feed.session.ws_connect(url, headers={"Origin": own}) as ws:
        assert (await receive(ws))["type"] == "connection"
    async with feed.connect() as ws:
        assert (await receive(ws))["type"] == "connection"


async def test_a_client_that_falls_behind_is_dropped_and_others_go_on(feed: Feed) -> None:
    async with feed.connect(f"?address={X}") as slow, feed.connect(f"?address={Y}") as other:
        await receive(slow)
        await receive(other)
        await until(lambda: feed.bus.stats()["subscribers"] == 2, "subscribed")
        for n in range(50):  # at once: more than its 8-event buffer before it can read any
            feed.bus.publish(position(X, n))
        assert feed.bus.stats()["cut_off"] == 1
        msg = await asyncio.wait_for(slow.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert slow.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
        feed.bus.publish(position(Y, 99))
        assert (await receive(other))["data"]["n"] == 99
    assert feed.stats()["dropped_slow"] == 1


async def test_a_client_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    settings = FeedSettings(buffer=10_000, send_timeout_s=0.3)
    async with feed_daemon(tmp_path, settings=settings) as feed, feed.connect() as stuck:
        await receive(stuck)
        await until(lambda: feed.bus.stats()["subscribers"] == 1, "subscribed")
        big = {"blob": "x" * 65_536}
        n = 0
        # It never reads again: once the socket buffers are full, a send waits, and times out.
        while feed.stats()["dropped_slow"] == 0:
            assert n < 100_000, "never dropped"
            for _ in range(4):
                feed.bus.publish(Event("position", big, n, X))
                n += 1
            await asyncio.sleep(0.005)
        await until(lambda: feed.bus.stats()["subscribers"] == 0, "unsubscribed")
        await until(lambda: feed.stats()["clients"] == 0, "closed")
        assert feed.daemon.health()[0]


async def test_shutdown_tells_clients_the_server_is_going_away(tmp_path: Path) -> None:
    async with feed_daemon(tmp_path) as feed:
        ws = await feed.connect()
        await receive(ws)
        feed.daemon.request_stop()
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
        await ws.close()
