"""The WebSocket pool against a local server that drops, goes silent, sends garbage and replays."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hlcopy.errors import AmbiguousOutcome, StreamError, SubscriptionLimit, Timeout
from hlcopy.hl.stream import StreamMessage, StreamPool

from tests.ws_server import WsServer, ws_server

USERS = [f"0x{i:040x}" for i in range(1, 13)]


@pytest.fixture
async def server() -> AsyncIterator[WsServer]:
    async with ws_server() as s:
        yield s


class Inbox:
    """A consumer that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[StreamMessage] = []
        self.arrived = asyncio.Event()

    async def __call__(self, message: StreamMessage) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def wait(self, n: int, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def running_pool(url: str, **kwargs: Any) -> AsyncIterator[StreamPool]:
    kwargs.setdefault("backoff_base_s", 0.02)
    kwargs.setdefault("backoff_cap_s", 0.1)
    pool = StreamPool(url, **kwargs)
    ready = asyncio.Event()
    task = asyncio.create_task(pool.run(ready), name="test:pool")
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        yield pool
    finally:
        await pool.drain()
        await asyncio.wait_for(task, 5)


async def until(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def trade(coin: str, tid: int) -> dict[str, Any]:
    return {
        "coin": coin,
        "side": "B",
        "px": "1",
        "sz": "1",
        "time": 1,
        "hash": "0x",
        "tid": tid,
        "users": [USERS[0], USERS[1]],
    }


async def test_greeting_acks_and_routing(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        btc, eth, fills_a, fills_b, book = Inbox(), Inbox(), Inbox(), Inbox(), Inbox()
        await pool.subscribe({"type": "trades", "coin": "BTC"}, btc)
        await pool.subscribe({"type": "trades", "coin": "ETH"}, eth)
        await pool.subscribe(
            {"type": "userFills", "user": USERS[0].upper().replace("0X", "0x")}, fills_a
        )
        await pool.subscribe({"type": "userFills", "user": USERS[1]}, fills_b)
        await pool.subscribe({"type": "l2Book", "coin": "BTC"}, book)
        before = time.perf_counter_ns()
        await server.publish("trades", [trade("ETH", 1), trade("ETH", 2)])
        await server.publish("trades", [trade("BTC", 3)])
        await server.publish("userFills", {"user": USERS[1], "fills": []})
        await server.publish("userFills", {"user": USERS[0], "fills": [], "isSnapshot": True})
        await server.publish("l2Book", {"coin": "BTC", "time": 1, "levels": [[], []]})
        await server.publish("trades", [])  # an empty batch names no coin: dropped quietly
        for inbox in (btc, eth, fills_a, fills_b, book):
            await inbox.wait(1)
        assert [t["tid"] for m in eth.messages for t in m.data] == [1, 2]
        assert [t["tid"] for m in btc.messages for t in m.data] == [3]
        assert fills_a.messages[0].is_snapshot
        assert not fills_b.messages[0].is_snapshot
        assert fills_a.messages[0].subscription.subscription["user"] == USERS[0]  # lowercased
        assert book.messages[0].channel == "l2Book"
        msg = btc.messages[0]
        assert before <= msg.recv_ns <= time.perf_counter_ns()
        assert abs(msg.recv_ms - time.time() * 1000) < 5000
        stats = pool.stats()
        assert stats["subscriptions"] == 5
        assert stats["users"] == 2
        assert stats["malformed"] == 0  # the greeting is not garbage


async def test_reconnects_and_resubscribes_after_a_drop(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        inbox = Inbox()
        await pool.subscribe({"type": "trades", "coin": "BTC"}, inbox)
        await pool.subscribe({"type": "userFills", "user": USERS[0]}, Inbox())
        assert len(server.sent("subscribe")) == 2
        t0 = time.monotonic()
        await server.drop_all()
        await until(lambda: len(server.sent("subscribe")) == 4)
        took = time.monotonic() - t0
        assert took < 1.0  # backoff capped at 0.1 s here, plus pacing and the handshake
        await until(lambda: pool.stats()["connections_ready"] == 1)
        await server.publish("trades", [trade("BTC", 9)])
        await inbox.wait(1)
        assert pool.stats()["reconnects"] >= 1
        resent = [m["subscription"] for m in server.sent("subscribe")[2:]]
        assert {"type": "trades", "coin": "BTC"} in resent


async def test_a_silent_server_is_detected_and_left(server: WsServer) -> None:
    async with running_pool(server.url, ping_interval_s=0.1, silence_timeout_s=0.4) as pool:
        await pool.subscribe({"type": "trades", "coin": "BTC"}, Inbox())
        await until(lambda: len(server.sent("ping")) >= 2)  # pings while healthy
        server.silent = True  # the socket stays open; nothing comes back
        await until(lambda: pool.stats()["silences"] >= 1, timeout=3)
        server.silent = False
        await until(lambda: len(server.connects) >= 2 and pool.stats()["connections_ready"] == 1)
        assert pool.stats()["reconnects"] >= 1


async def test_garbage_is_counted_never_fatal(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        inbox = Inbox()
        await pool.subscribe({"type": "trades", "coin": "BTC"}, inbox)
        for junk in (
            "not json",
            '{"no": "channel"}',
            '{"channel": "nope", "data": {}}',
            b"\x00\xff binary",
            '{"channel": "trades", "data": [{"coin": "DOGE"}]}',
            '{"channel": "post", "data": {"no id": 1}}',
        ):
            await server.send_raw(junk)
        await server.publish("trades", [trade("BTC", 1)])
        await inbox.wait(1)
        stats = pool.stats()
        assert stats["malformed"] == 6
        assert stats["reconnects"] == 0


async def test_snapshots_are_replayed_on_resubscription_and_flagged(server: WsServer) -> None:
    history = [{"tid": 1}, {"tid": 2}]
    server.snapshot = lambda sub: (
        {
            "channel": "userFills",
            "data": {"isSnapshot": True, "user": sub["user"], "fills": history},
        }
        if sub["type"] == "userFills"
        else None
    )
    async with running_pool(server.url) as pool:
        inbox = Inbox()
        await pool.subscribe({"type": "userFills", "user": USERS[3]}, inbox)
        await inbox.wait(1)
        await server.drop_all()
        await inbox.wait(2)
        await server.publish("userFills", {"user": USERS[3], "fills": [{"tid": 3}]})
        await inbox.wait(3)
        assert [m.is_snapshot for m in inbox.messages] == [True, True, False]
        assert inbox.messages[1].data["fills"] == history  # the consumer dedupes by tid


async def test_user_and_subscription_limits(server: WsServer) -> None:
    async with running_pool(server.url, max_subscriptions=14) as pool:
        for user in USERS[:10]:
            await pool.subscribe({"type": "userFills", "user": user}, Inbox(), wait=False)
        # Another subscription type for a user already counted is fine.
        await pool.subscribe({"type": "orderUpdates", "user": USERS[0]}, Inbox(), wait=False)
        with pytest.raises(SubscriptionLimit, match="10 distinct users"):
            await pool.subscribe({"type": "userFills", "user": USERS[10]}, Inbox())
        with pytest.raises(StreamError, match="already subscribed"):
            await pool.subscribe({"type": "userFills", "user": USERS[0]}, Inbox())
        for coin in ("A", "B", "C"):
            await pool.subscribe({"type": "trades", "coin": coin}, Inbox(), wait=False)
        with pytest.raises(SubscriptionLimit, match="at most 14 subscriptions"):
            await pool.subscribe({"type": "trades", "coin": "D"}, Inbox())
        assert pool.stats()["users"] == 10


async def test_connections_stay_within_the_cap(server: WsServer) -> None:
    async with running_pool(server.url, max_connections=2, max_subscriptions=12) as pool:
        for i in range(10):
            await pool.subscribe({"type": "trades", "coin": f"C{i}"}, Inbox())
        await until(lambda: len(server.sent("subscribe")) == 10)
        assert server.max_concurrent == 2
        assert pool.stats()["connections"] == 2
        # Messages without a user go one per connection: two users need two connections.
        await pool.subscribe({"type": "orderUpdates", "user": USERS[0]}, Inbox(), wait=False)
        await pool.subscribe({"type": "orderUpdates", "user": USERS[1]}, Inbox(), wait=False)
        await until(lambda: len(server.sent("subscribe")) == 12)
        homes = {
            ws
            for ws, subs in server.subscriptions.items()
            for s in subs
            if s["type"] == "orderUpdates"
        }
        assert len(homes) == 2


async def test_outbound_messages_are_paced_not_failed(server: WsServer) -> None:
    async with running_pool(server.url, max_messages_per_minute=5, pace_window_s=0.5) as pool:
        t0 = time.monotonic()
        for i in range(12):
            await pool.subscribe({"type": "trades", "coin": f"C{i}"}, Inbox(), wait=False)
        await until(lambda: len(server.sent("subscribe")) == 12)
        assert time.monotonic() - t0 >= 0.9  # 12 messages at 5 per half second: 3 windows
        times = sorted(t for t, m in server.received)
        for i, start in enumerate(times):
            # The server may see a burst a little tighter than we sent it; allow 10 ms.
            assert sum(1 for t in times[i:] if t < start + 0.49) <= 5


async def test_new_connections_are_paced(server: WsServer) -> None:
    async with running_pool(
        server.url,
        max_connects_per_minute=2,
        pace_window_s=0.5,
        backoff_base_s=0.001,
        backoff_cap_s=0.002,
    ) as pool:
        await pool.subscribe({"type": "trades", "coin": "BTC"}, Inbox())
        for _ in range(3):
            await server.drop_all()
            await asyncio.sleep(0.05)
        await until(lambda: pool.stats()["connections_ready"] == 1, timeout=5)
        connects = sorted(server.connects)
        for i, start in enumerate(connects):
            assert sum(1 for t in connects[i:] if t < start + 0.49) <= 2


async def test_post_requests_are_correlated_by_id(server: WsServer) -> None:
    server.reverse_posts = True  # answer the second before the first
    async with running_pool(server.url) as pool:
        info, action = await asyncio.gather(
            pool.post("info", {"type": "l2Book", "coin": "BTC"}),
            pool.post("action", {"action": {"type": "noop"}, "nonce": 1, "signature": {}}),
        )
        assert info == {"echo": {"type": "l2Book", "coin": "BTC"}}
        assert action == {"status": "ok", "response": {"type": "default"}}
        ids = [m["id"] for m in server.sent("post")]
        assert len(set(ids)) == 2


async def test_post_timeouts_and_drops(server: WsServer) -> None:
    server.answer_posts = False
    async with running_pool(server.url, post_timeout_s=0.2, max_posts_in_flight=2) as pool:
        with pytest.raises(Timeout):
            await pool.post("info", {"type": "allMids"})
        with pytest.raises(AmbiguousOutcome, match="no reply"):
            await pool.post("action", {"action": {"type": "noop"}})
        # In flight when the socket drops: an action is ambiguous, never "failed".
        pending = asyncio.create_task(pool.post("action", {"action": {"type": "noop"}}))
        await until(lambda: len(server.sent("post")) == 3)
        await server.drop_all()
        with pytest.raises(AmbiguousOutcome):
            await pending


async def test_posts_in_flight_are_capped(server: WsServer) -> None:
    server.answer_posts = False
    async with running_pool(server.url, post_timeout_s=0.5, max_posts_in_flight=2) as pool:
        tasks = [asyncio.create_task(pool.post("info", {"type": "allMids"})) for _ in range(3)]
        await until(lambda: len(server.sent("post")) == 2)
        await asyncio.sleep(0.1)
        assert len(server.sent("post")) == 2  # the third waits for a slot
        assert pool.stats()["posts_in_flight"] == 2
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, Timeout) for r in results)
        assert len(server.sent("post")) == 3


async def test_unacknowledged_subscription_is_rolled_back(server: WsServer) -> None:
    server.ack = False
    async with running_pool(server.url, ack_timeout_s=0.1) as pool:
        with pytest.raises(Timeout, match="not acknowledged"):
            await pool.subscribe({"type": "trades", "coin": "BTC"}, Inbox())
        assert pool.stats()["subscriptions"] == 0


async def test_unsubscribe_stops_delivery(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        inbox = Inbox()
        sub = await pool.subscribe({"type": "trades", "coin": "BTC"}, inbox)
        await pool.unsubscribe(sub)
        await until(lambda: len(server.sent("unsubscribe")) == 1)
        assert server.sent("unsubscribe")[0]["subscription"] == {"type": "trades", "coin": "BTC"}
        assert pool.stats()["subscriptions"] == 0


async def test_a_failing_consumer_does_not_break_the_stream(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        good = Inbox()

        async def broken(message: StreamMessage) -> None:
            raise RuntimeError("consumer bug")

        await pool.subscribe({"type": "trades", "coin": "BAD"}, broken)
        await pool.subscribe({"type": "trades", "coin": "OK"}, good)
        await server.publish("trades", [trade("BAD", 1)])
        await server.publish("trades", [trade("OK", 2)])
        await good.wait(1)
        assert pool.stats()["consumer_errors"] == 1
        assert pool.stats()["reconnects"] == 0
