"""The WebSocket pool against a local server that drops, goes silent, sends garbage and replays."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from hlcopy.component import Ready
from hlcopy.errors import AmbiguousOutcome, StreamError, SubscriptionLimit, Timeout
from hlcopy.hl import StreamPool
from hlcopy.model import L2Book, Trades, UserFills
from hlcopy.queues import BoundedQueue

from tests.ws_server import WsServer, ws_server

T = TypeVar("T")
USERS = [f"0x{i:040x}" for i in range(1, 13)]


@pytest.fixture
async def server() -> AsyncIterator[WsServer]:
    async with ws_server() as s:
        yield s


def inbox(kind: type[T], maxsize: int = 1000) -> BoundedQueue[T]:
    """A sink for one feed's records."""
    return BoundedQueue(f"test:{kind.__name__}", maxsize)


async def receive(queue: BoundedQueue[T], n: int, timeout: float = 5) -> list[T]:
    """The next ``n`` records of a feed."""
    async with asyncio.timeout(timeout):
        return [await queue.get() for _ in range(n)]


@contextlib.asynccontextmanager
async def running_pool(url: str, **kwargs: Any) -> AsyncIterator[StreamPool]:
    kwargs.setdefault("backoff_base_s", 0.02)
    kwargs.setdefault("backoff_cap_s", 0.1)
    pool = StreamPool(url, **kwargs)
    became_ready = asyncio.Event()
    ready = Ready(lambda is_ready, reason: became_ready.set() if is_ready else None)
    task = asyncio.create_task(pool.run(ready), name="test:pool")
    try:
        async with asyncio.timeout(5):
            await became_ready.wait()
        assert ready.is_set()
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


def fill(tid: int, coin: str = "BTC") -> dict[str, Any]:
    """A whole fill as the userFills stream sends it."""
    return {
        "coin": coin,
        "px": "30135.0",
        "sz": "0.01",
        "side": "B",
        "time": 1_700_000_000_000 + tid,
        "startPosition": "0.0",
        "dir": "Open Long",
        "closedPnl": "0.0",
        "hash": "0x" + "ab" * 32,
        "oid": 1_000 + tid,
        "crossed": True,
        "fee": "0.01",
        "tid": tid,
        "feeToken": "USDC",
    }


async def test_greeting_acks_and_routing(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        btc, eth = inbox(Trades), inbox(Trades)
        fills_a, fills_b = inbox(UserFills), inbox(UserFills)
        book = inbox(L2Book)
        await pool.trades("BTC", btc)
        await pool.trades("ETH", eth)
        sub_a = await pool.user_fills(USERS[0].upper().replace("0X", "0x"), fills_a)
        await pool.user_fills(USERS[1], fills_b)
        await pool.l2_book("BTC", book)
        before = time.perf_counter_ns()
        await server.publish("trades", [trade("ETH", 1), trade("ETH", 2)])
        await server.publish("trades", [trade("BTC", 3)])
        await server.publish("userFills", {"user": USERS[1], "fills": []})
        await server.publish("userFills", {"user": USERS[0], "fills": [], "isSnapshot": True})
        await server.publish("l2Book", {"coin": "BTC", "time": 1, "levels": [[], []]})
        await server.publish("trades", [])  # an empty batch names no coin: dropped quietly
        (eth_msg,) = await receive(eth, 1)
        (btc_msg,) = await receive(btc, 1)
        (a_msg,) = await receive(fills_a, 1)
        (b_msg,) = await receive(fills_b, 1)
        (book_msg,) = await receive(book, 1)
        assert [t.tid for t in eth_msg.trades] == [1, 2]
        assert [t.tid for t in btc_msg.trades] == [3]
        assert (eth_msg.coin, btc_msg.coin) == ("ETH", "BTC")
        assert btc_msg.trades[0].px == Decimal(1)  # parsed at the edge
        assert btc_msg.trades[0].users == (USERS[0], USERS[1])
        assert a_msg.is_snapshot
        assert not b_msg.is_snapshot
        assert (a_msg.user, b_msg.user) == (USERS[0], USERS[1])
        assert sub_a.user == USERS[0]  # lowercased
        assert (book_msg.coin, book_msg.time_ms, book_msg.bids, book_msg.asks) == ("BTC", 1, (), ())
        assert before <= btc_msg.recv_ns <= time.perf_counter_ns()
        assert abs(btc_msg.recv_ms - time.time() * 1000) < 5000
        stats = pool.stats()
        assert stats["subscriptions"] == 5
        assert stats["users"] == 2
        assert stats["malformed"] == 0  # the greeting is not garbage


async def test_reconnects_and_resubscribes_after_a_drop(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        trades = inbox(Trades)
        await pool.trades("BTC", trades)
        await pool.user_fills(USERS[0], inbox(UserFills))
        assert len(server.sent("subscribe")) == 2
        t0 = time.monotonic()
        await server.drop_all()
        await until(lambda: len(server.sent("subscribe")) == 4)
        took = time.monotonic() - t0
        assert took < 1.0  # backoff capped at 0.1 s here, plus pacing and the handshake
        await until(lambda: pool.stats()["connections_ready"] == 1)
        await server.publish("trades", [trade("BTC", 9)])
        (msg,) = await receive(trades, 1)
        assert [t.tid for t in msg.trades] == [9]
        assert pool.stats()["reconnects"] >= 1
        resent = [m["subscription"] for m in server.sent("subscribe")[2:]]
        assert {"type": "trades", "coin": "BTC"} in resent


async def test_a_silent_server_is_detected_and_left(server: WsServer) -> None:
    async with running_pool(server.url, ping_interval_s=0.1, silence_timeout_s=0.4) as pool:
        await pool.trades("BTC", inbox(Trades))
        await until(lambda: len(server.sent("ping")) >= 2)  # pings while healthy
        server.silent = True  # the socket stays open; nothing comes back
        await until(lambda: pool.stats()["silences"] >= 1, timeout=3)
        server.silent = False
        await until(lambda: len(server.connects) >= 2 and pool.stats()["connections_ready"] == 1)
        assert pool.stats()["reconnects"] >= 1


async def test_garbage_is_counted_never_fatal(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        trades = inbox(Trades)
        await pool.trades("BTC", trades)
        for junk in (
            "not json",
            '{"no": "channel"}',
            '{"channel": "nope", "data": {}}',
            b"\x00\xff binary",
            '{"channel": "trades", "data": [{"coin": "DOGE"}]}',
            '{"channel": "post", "data": {"no id": 1}}',
            # Routed to a subscription, but not a trade: the parser at the edge refuses it.
            '{"channel": "trades", "data": [{"coin": "BTC", "tid": 1}]}',
        ):
            await server.send_raw(junk)
        await server.publish("trades", [trade("BTC", 1)])
        (msg,) = await receive(trades, 1)
        assert [t.tid for t in msg.trades] == [1]
        assert trades.empty()  # the unparseable BTC message never reached the consumer
        stats = pool.stats()
        assert stats["malformed"] == 7
        assert stats["reconnects"] == 0


async def test_what_was_on_its_way_after_an_unsubscribe_is_not_garbage(server: WsServer) -> None:
    """The server keeps sending until it reads our unsubscribe: a daemon stopping its tracker
    logged the last mids as malformed. Late messages are counted apart; a coin never
    subscribed on the connection is still garbage."""
    async with running_pool(server.url) as pool:
        btc, eth = inbox(Trades), inbox(Trades)
        sub = await pool.trades("BTC", btc)
        await pool.trades("ETH", eth)
        await pool.unsubscribe(sub)
        await server.publish("trades", [trade("BTC", 1)])  # already on its way
        await server.send_raw('{"channel": "trades", "data": [{"coin": "DOGE"}]}')
        await server.publish("trades", [trade("ETH", 2)])
        (msg,) = await receive(eth, 1)
        assert [t.tid for t in msg.trades] == [2]
        assert btc.empty()
        stats = pool.stats()
        assert stats["after_unsubscribe"] == 1
        assert stats["malformed"] == 1  # DOGE


async def test_snapshots_are_replayed_on_resubscription_and_flagged(server: WsServer) -> None:
    history = [fill(1), fill(2)]
    server.snapshot = lambda sub: (
        {
            "channel": "userFills",
            "data": {"isSnapshot": True, "user": sub["user"], "fills": history},
        }
        if sub["type"] == "userFills"
        else None
    )
    async with running_pool(server.url) as pool:
        fills = inbox(UserFills)
        await pool.user_fills(USERS[3], fills)
        messages = await receive(fills, 1)
        await server.drop_all()
        messages += await receive(fills, 1)
        await server.publish("userFills", {"user": USERS[3], "fills": [fill(3)]})
        messages += await receive(fills, 1)
        assert [m.is_snapshot for m in messages] == [True, True, False]
        # The replay repeats the history; the consumer dedupes by tid.
        assert [f.tid for f in messages[1].fills] == [1, 2]
        assert messages[1].fills == messages[0].fills
        assert [f.tid for f in messages[2].fills] == [3]
        assert pool.stats()["malformed"] == 0


async def test_user_and_subscription_limits(server: WsServer) -> None:
    async with running_pool(server.url, max_subscriptions=14) as pool:
        for user in USERS[:10]:
            await pool.user_fills(user, inbox(UserFills), wait=False)
        # Another subscription type for a user already counted is fine.
        await pool.order_updates(USERS[0], BoundedQueue("updates", 10), wait=False)
        with pytest.raises(SubscriptionLimit, match="10 distinct users"):
            await pool.user_fills(USERS[10], inbox(UserFills))
        with pytest.raises(StreamError, match="already subscribed"):
            await pool.user_fills(USERS[0], inbox(UserFills))
        for coin in ("A", "B", "C"):
            await pool.trades(coin, inbox(Trades), wait=False)
        with pytest.raises(SubscriptionLimit, match="at most 14 subscriptions"):
            await pool.trades("D", inbox(Trades))
        assert pool.stats()["users"] == 10


async def test_connections_stay_within_the_cap(server: WsServer) -> None:
    async with running_pool(server.url, max_connections=2, max_subscriptions=12) as pool:
        for i in range(10):
            await pool.trades(f"C{i}", inbox(Trades))
        await until(lambda: len(server.sent("subscribe")) == 10)
        assert server.max_concurrent == 2
        assert pool.stats()["connections"] == 2
        # Messages without a user go one per connection: two users need two connections.
        await pool.order_updates(USERS[0], BoundedQueue("updates0", 10), wait=False)
        await pool.order_updates(USERS[1], BoundedQueue("updates1", 10), wait=False)
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
            await pool.trades(f"C{i}", inbox(Trades), wait=False)
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
        await pool.trades("BTC", inbox(Trades))
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
            pool._post("info", {"type": "l2Book", "coin": "BTC"}),
            pool._post("action", {"action": {"type": "noop"}, "nonce": 1, "signature": {}}),
        )
        assert info == {"echo": {"type": "l2Book", "coin": "BTC"}}
        assert action == {"status": "ok", "response": {"type": "default"}}
        ids = [m["id"] for m in server.sent("post")]
        assert len(set(ids)) == 2


async def test_post_timeouts_and_drops(server: WsServer) -> None:
    server.answer_posts = False
    async with running_pool(server.url, post_timeout_s=0.2, max_posts_in_flight=2) as pool:
        with pytest.raises(Timeout):
            await pool._post("info", {"type": "allMids"})
        with pytest.raises(AmbiguousOutcome, match="no reply"):
            await pool._post("action", {"action": {"type": "noop"}})
        # In flight when the socket drops: an action is ambiguous, never "failed".
        pending = asyncio.create_task(pool._post("action", {"action": {"type": "noop"}}))
        await until(lambda: len(server.sent("post")) == 3)
        await server.drop_all()
        with pytest.raises(AmbiguousOutcome):
            await pending


async def test_posts_in_flight_are_capped(server: WsServer) -> None:
    server.answer_posts = False
    async with running_pool(server.url, post_timeout_s=0.5, max_posts_in_flight=2) as pool:
        tasks = [asyncio.create_task(pool._post("info", {"type": "allMids"})) for _ in range(3)]
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
            await pool.trades("BTC", inbox(Trades))
        assert pool.stats()["subscriptions"] == 0


async def test_unsubscribe_stops_delivery(server: WsServer) -> None:
    async with running_pool(server.url) as pool:
        sub = await pool.trades("BTC", inbox(Trades))
        await pool.unsubscribe(sub)
        await until(lambda: len(server.sent("unsubscribe")) == 1)
        assert server.sent("unsubscribe")[0]["subscription"] == {"type": "trades", "coin": "BTC"}
        assert pool.stats()["subscriptions"] == 0


async def test_a_closed_sink_drops_its_messages_and_other_feeds_keep_flowing(
    server: WsServer,
) -> None:
    async with running_pool(server.url) as pool:
        closed, good = inbox(Trades), inbox(Trades)
        bad_sub = await pool.trades("BAD", closed)
        await pool.trades("OK", good)
        closed.close()  # its consumer is gone
        await server.publish("trades", [trade("BAD", 1)])
        await server.publish("trades", [trade("OK", 2)])
        (msg,) = await receive(good, 1)
        assert [t.tid for t in msg.trades] == [2]
        assert bad_sub.dropped == 1
        assert pool.stats()["sink_dropped"] == 1
        assert pool.stats()["reconnects"] == 0


async def test_readiness_is_lost_without_a_connection_and_regained_with_one(
    server: WsServer,
) -> None:
    changes: list[tuple[bool, str | None]] = []
    pool = StreamPool(
        server.url, backoff_base_s=0.02, backoff_cap_s=0.05, ack_timeout_s=0.1, down_grace_s=0.3
    )
    ready = Ready(lambda is_ready, reason: changes.append((is_ready, reason)))
    task = asyncio.create_task(pool.run(ready))
    try:
        await until(ready.is_set)
        await pool.trades("BTC", inbox(Trades))
        server.ack = False  # connections come back but never become usable
        await server.drop_all()
        await asyncio.sleep(0.1)
        assert ready.is_set()  # a reconnect within the grace period is not a loss
        await until(lambda: not ready.is_set(), timeout=5)
        assert changes[-1] == (False, "no WebSocket connection for 0.3 s")
        server.ack = True
        await until(ready.is_set, timeout=5)
        regained, reason = changes[-1]
        assert regained
        assert reason is None
    finally:
        await pool.drain()
        await asyncio.wait_for(task, 5)
