"""A pool of WebSocket connections to Hyperliquid, kept within the per-IP limits.

Limits (HYPERLIQUID.md §3): at most 10 connections, 1000 subscriptions, 10 distinct users across
user-specific subscriptions (refused with SubscriptionLimit), 2000 messages sent per minute and 30
new connections per minute (both paced, never failed), 100 post requests in flight.

Each connection skips the plain-text greeting, pings every 50 s, and is recycled when it has
received nothing for 60 s (a half-open socket looks exactly like a quiet one otherwise). After a
drop it reconnects with capped, jittered backoff and resubscribes everything, waiting for each
``subscriptionResponse``. Data messages are handed to the subscription's consumer, awaited in the
connection's reader: consumers must be quick (put the message on a queue); a slow one holds back
only its own connection. Snapshots that a resubscription replays (``isSnapshot``) are flagged,
not filtered: deduplication belongs to the consumer, which knows its keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from hlcopy.backoff import Backoff
from hlcopy.budget import Lane, WeightBudget
from hlcopy.component import Component
from hlcopy.errors import (
    AmbiguousOutcome,
    StreamError,
    SubscriptionLimit,
    Timeout,
    Unavailable,
)

log = structlog.get_logger()

GREETING = "Websocket connection established."
USER_TYPES = frozenset(
    {
        "userFills",
        "userEvents",
        "orderUpdates",
        "userFundings",
        "userNonFundingLedgerUpdates",
        "clearinghouseState",
        "openOrders",
        "allDexsClearinghouseState",
        "spotState",
        "activeAssetData",
        "webData2",
        "webData3",
        "notification",
        "twapStates",
        "userTwapSliceFills",
        "userTwapHistory",
    }
)
# These channels' messages do not name their user: at most one of each per connection.
_ANONYMOUS = frozenset({"orderUpdates", "userEvents", "notification"})
# The channel a subscription type's messages arrive on, where it differs from the type.
_CHANNEL = {"userEvents": "user"}
# Which subscription parameter identifies a message, per channel.
_ROUTE_PARAM = {
    "trades": "coin",
    "l2Book": "coin",
    "bbo": "coin",
    "candle": "coin",
    "activeAssetCtx": "coin",
    "activeSpotAssetCtx": "coin",
    "userFills": "user",
    "userFundings": "user",
    "userNonFundingLedgerUpdates": "user",
    "clearinghouseState": "user",
    "openOrders": "user",
    "allDexsClearinghouseState": "user",
    "spotState": "user",
    "activeAssetData": "user",
    "webData2": "user",
    "webData3": "user",
    "twapStates": "user",
    "userTwapSliceFills": "user",
    "userTwapHistory": "user",
    "allMids": "dex",
}


def _route_value(channel: str, data: Any) -> Any:
    """The value of the routing parameter carried by a data message (None if absent)."""
    param = _ROUTE_PARAM.get(channel)
    if param is None:
        return None
    item = data[0] if isinstance(data, list) and data else data
    if not isinstance(item, dict):
        return None
    if channel == "candle":
        return item.get("s")
    if channel == "allMids":
        return item.get("dex", "")
    value = item.get(param)
    return value.lower() if param == "user" and isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """A data message with the moment it was received."""

    channel: str
    data: Any
    recv_ns: int  # time.perf_counter_ns(): for latency measurements
    recv_ms: int  # wall clock, ms: comparable with exchange timestamps
    subscription: Subscription

    @property
    def is_snapshot(self) -> bool:
        return isinstance(self.data, dict) and bool(self.data.get("isSnapshot"))


Consumer = Callable[[StreamMessage], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscription and its consumer. ``subscription`` is exactly what is sent."""

    subscription: dict[str, Any]
    consumer: Consumer
    key: tuple[Any, ...]
    channel: str
    route: Any
    user: str | None
    conn: _Conn | None = None
    sent_epoch: int = -1
    acked_epoch: int = -1
    messages: int = 0


def _canonical(subscription: Mapping[str, Any]) -> dict[str, Any]:
    sub = dict(subscription)
    if "type" not in sub:
        raise StreamError(f"a subscription needs a type: {subscription!r}")
    if isinstance(sub.get("user"), str):
        sub["user"] = sub["user"].lower()
    return sub


def _key(sub: Mapping[str, Any]) -> tuple[Any, ...]:
    return (sub["type"], *sorted((k, str(v)) for k, v in sub.items() if k != "type"))


@dataclass(eq=False, slots=True)
class _Conn:
    id: int
    subs: dict[tuple[Any, ...], Subscription] = field(default_factory=dict)
    routes: dict[str, dict[Any, Subscription]] = field(default_factory=dict)
    ws: ClientConnection | None = None
    epoch: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    acks: dict[tuple[Any, ...], asyncio.Future[None]] = field(default_factory=dict)
    posts: dict[int, tuple[str, asyncio.Future[Any]]] = field(default_factory=dict)
    last_recv: float = 0.0
    task: asyncio.Task[None] | None = None

    def add(self, sub: Subscription) -> None:
        self.subs[sub.key] = sub
        self.routes.setdefault(sub.channel, {})[sub.route] = sub
        sub.conn = self

    def remove(self, sub: Subscription) -> None:
        self.subs.pop(sub.key, None)
        by_route = self.routes.get(sub.channel, {})
        if by_route.get(sub.route) is sub:
            del by_route[sub.route]
        sub.conn = None


class _RateMeter:
    """Messages per second over the last ``span_s`` seconds, in one-second buckets."""

    def __init__(self, span_s: int = 10) -> None:
        self._span = span_s
        self._buckets = [0] * span_s
        self._seconds = [0] * span_s

    def hit(self, now_s: int) -> None:
        i = now_s % self._span
        if self._seconds[i] != now_s:
            self._seconds[i] = now_s
            self._buckets[i] = 0
        self._buckets[i] += 1

    def rate(self, now_s: int) -> float:
        total = sum(
            b
            for b, s in zip(self._buckets, self._seconds, strict=True)
            if now_s - self._span < s < now_s
        )
        return total / (self._span - 1)


class StreamPool(Component):
    """The WebSocket pool as a supervised component. See the module docstring."""

    name = "stream"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 10,
        max_subscriptions: int = 1000,
        max_users: int = 10,
        max_messages_per_minute: int = 2000,
        max_connects_per_minute: int = 30,
        max_posts_in_flight: int = 100,
        ping_interval_s: float = 50.0,
        silence_timeout_s: float = 60.0,
        ack_timeout_s: float = 10.0,
        post_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        pace_window_s: float = 60.0,
        eager: bool = True,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.max_subscriptions = max_subscriptions
        self.max_users = max_users
        self._per_conn = -(-max_subscriptions // max_connections)
        # The same exact sliding window as the REST budget; action posts take the top lane.
        self._outbound = WeightBudget(max_messages_per_minute, 0.0, window_s=pace_window_s)
        self._connects = WeightBudget(max_connects_per_minute, 0.0, window_s=pace_window_s)
        self._post_slots = asyncio.Semaphore(max_posts_in_flight)
        self._ping_s = ping_interval_s
        self._silence_s = silence_timeout_s
        self._ack_s = ack_timeout_s
        self._post_s = post_timeout_s
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._eager = eager
        self._subs: dict[tuple[Any, ...], Subscription] = {}
        self._conns: list[_Conn] = []
        self._tg: asyncio.TaskGroup | None = None
        self._closing = asyncio.Event()
        self._post_ids = itertools.count(1)
        self._meter = _RateMeter()
        self.counters = {
            "reconnects": 0,
            "messages": 0,
            "malformed": 0,
            "consumer_errors": 0,
            "server_errors": 0,
            "ack_timeouts": 0,
            "silences": 0,
            "posts": 0,
        }

    # -- component ------------------------------------------------------------------------

    async def run(self, ready: asyncio.Event) -> None:
        self._closing.clear()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for conn in self._conns:  # subscriptions made before a (re)start
                    self._start(conn)
                if self._eager and not self._conns:
                    self._start(self._new_conn())
                if self._conns:
                    await self._conns[0].ready.wait()
                ready.set()
                await self._closing.wait()
                await self._close_all()
        finally:
            self._tg = None

    async def drain(self) -> None:
        self._closing.set()

    async def _close_all(self) -> None:
        for conn in self._conns:
            if conn.ws is not None:
                with contextlib.suppress(Exception):
                    await conn.ws.close()
            if conn.task is not None:
                conn.task.cancel()

    # -- subscriptions --------------------------------------------------------------------

    def users(self) -> set[str]:
        """Distinct users across user-specific subscriptions."""
        return {s.user for s in self._subs.values() if s.user is not None}

    async def subscribe(
        self, subscription: Mapping[str, Any], consumer: Consumer, *, wait: bool = True
    ) -> Subscription:
        """Subscribe and (by default) wait until the server acknowledged it."""
        sub_dict = _canonical(subscription)
        key = _key(sub_dict)
        if key in self._subs:
            raise StreamError(f"already subscribed: {sub_dict}")
        if len(self._subs) >= self.max_subscriptions:
            raise SubscriptionLimit(f"at most {self.max_subscriptions} subscriptions per IP")
        kind = sub_dict["type"]
        user = sub_dict.get("user") if kind in USER_TYPES else None
        if kind in USER_TYPES and not isinstance(user, str):
            raise StreamError(f"{kind} needs a user")
        if user is not None and user not in self.users() and len(self.users()) >= self.max_users:
            raise SubscriptionLimit(
                f"at most {self.max_users} distinct users across user subscriptions per IP; "
                f"already {sorted(self.users())}"
            )
        channel = _CHANNEL.get(kind, kind)
        # The value its messages are routed by (users are already lowercase, as messages say).
        route = None if channel in _ANONYMOUS else sub_dict.get(_ROUTE_PARAM.get(channel, ""), "")
        sub = Subscription(sub_dict, consumer, key, channel, route, user)
        conn = self._place(sub)
        self._subs[key] = sub
        conn.add(sub)
        if self._tg is not None and conn.task is None:
            self._start(conn)
        if wait:
            if self._tg is None:
                await self.unsubscribe(sub)
                raise StreamError("the stream pool is not running")
            try:
                await self._await_ack(conn, sub)
            except TimeoutError:
                await self.unsubscribe(sub)  # not confirmed means not subscribed
                raise Timeout(f"subscription not acknowledged: {sub_dict}") from None
        elif conn.ws is not None and sub.sent_epoch != conn.epoch:
            with contextlib.suppress(ConnectionClosed):  # resent when the connection returns
                await self._send_subscribe(conn, sub)
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """Stop a subscription (its consumer gets nothing more)."""
        if self._subs.pop(sub.key, None) is None:
            return
        conn = sub.conn
        if conn is None:
            return
        conn.remove(sub)
        if conn.ws is not None and sub.sent_epoch == conn.epoch:
            with contextlib.suppress(ConnectionClosed):
                await self._send(
                    conn,
                    {"method": "unsubscribe", "subscription": sub.subscription},
                    Lane.ENRICHMENT,
                )

    def _place(self, sub: Subscription) -> _Conn:
        candidates = [
            c
            for c in self._conns
            if not (sub.channel in _ANONYMOUS and sub.channel in c.routes and c.routes[sub.channel])
            and (sub.route is None or sub.route not in c.routes.get(sub.channel, {}))
        ]
        best = min(candidates, key=lambda c: len(c.subs), default=None)
        if best is not None and len(best.subs) < self._per_conn:
            return best
        if len(self._conns) < self.max_connections:
            return self._new_conn()
        if best is not None:
            return best
        raise SubscriptionLimit(
            f"no connection can take {sub.subscription} "
            f"(at most {self.max_connections} connections)"
        )

    def _new_conn(self) -> _Conn:
        conn = _Conn(len(self._conns))
        self._conns.append(conn)
        return conn

    def _start(self, conn: _Conn) -> None:
        assert self._tg is not None
        conn.task = self._tg.create_task(self._conn_loop(conn), name=f"stream:conn{conn.id}")

    async def _await_ack(self, conn: _Conn, sub: Subscription) -> None:
        """Until the server acknowledged ``sub`` on the connection's current epoch, which may
        take a reconnect: a connection resubscribes everything it holds when it comes back."""
        async with asyncio.timeout(self._ack_s * 3):
            while not (conn.ready.is_set() and sub.acked_epoch == conn.epoch):
                if conn.ws is not None and sub.sent_epoch != conn.epoch:
                    with contextlib.suppress(ConnectionClosed):
                        await self._send_subscribe(conn, sub)
                future = conn.acks.get(sub.key)
                if future is None:
                    await conn.ready.wait()
                    continue
                with contextlib.suppress(ConnectionClosed):  # lost: the loop waits for the next
                    await asyncio.shield(future)

    # -- connections ----------------------------------------------------------------------

    async def _conn_loop(self, conn: _Conn) -> None:
        backoff = Backoff(*self._backoff)
        while not self._closing.is_set():
            await self._connects.acquire(1, Lane.ORDER)
            cause: str
            try:
                ws = await connect(
                    self.url,
                    ping_interval=None,
                    close_timeout=1,
                    max_size=2**24,
                    open_timeout=10,
                    compression=None,
                )
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                cause = f"connect failed: {exc}"
            else:
                try:
                    cause = await self._serve(conn, ws, backoff)
                finally:
                    self._lost(conn)
                    with contextlib.suppress(Exception):
                        await ws.close()
            if self._closing.is_set():
                return
            self.counters["reconnects"] += 1
            delay = backoff.next_delay()
            log.warning(
                "stream connection lost; reconnecting",
                conn=conn.id,
                cause=cause,
                reconnect_in_s=round(delay, 3),
                subscriptions=len(conn.subs),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)

    async def _serve(self, conn: _Conn, ws: ClientConnection, backoff: Backoff) -> str:
        """Run one connection until it drops; return why it dropped."""
        conn.ws = ws
        conn.epoch += 1
        conn.last_recv = time.monotonic()
        heartbeat = asyncio.create_task(
            self._heartbeat(conn, ws), name=f"stream:conn{conn.id}:ping"
        )
        resubscribe = asyncio.create_task(
            self._resubscribe(conn, backoff), name=f"stream:conn{conn.id}:resubscribe"
        )
        try:
            await self._read(conn, ws)
            return f"closed by server ({ws.close_code})"
        except ConnectionClosed as exc:
            return f"closed: {exc}"
        finally:
            heartbeat.cancel()
            resubscribe.cancel()
            # Their own errors end with the connection; a cancel of this task still propagates.
            await asyncio.gather(heartbeat, resubscribe, return_exceptions=True)

    def _lost(self, conn: _Conn) -> None:
        conn.ws = None
        conn.ready.clear()
        for future in conn.acks.values():
            if not future.done():
                future.set_exception(ConnectionClosed(None, None))
        conn.acks.clear()
        for kind, future in conn.posts.values():
            if not future.done():
                exc_type = AmbiguousOutcome if kind == "action" else Unavailable
                future.set_exception(exc_type("the WebSocket dropped with the post in flight"))
        conn.posts.clear()

    async def _resubscribe(self, conn: _Conn, backoff: Backoff) -> None:
        try:
            for sub in list(conn.subs.values()):
                if sub.sent_epoch != conn.epoch and sub.key in self._subs:
                    await self._send_subscribe(conn, sub)
            pending = [f for f in conn.acks.values() if not f.done()]
            if pending:
                async with asyncio.timeout(self._ack_s):
                    await asyncio.gather(*pending)
        except TimeoutError:
            self.counters["ack_timeouts"] += 1
            log.warning("subscriptions not acknowledged; recycling the connection", conn=conn.id)
            if conn.ws is not None:
                await conn.ws.close(code=4000, reason="subscriptions not acknowledged")
            return
        except ConnectionClosed:
            return
        conn.ready.set()
        backoff.healthy()
        log.info("stream connected", conn=conn.id, subscriptions=len(conn.subs), epoch=conn.epoch)

    async def _send_subscribe(self, conn: _Conn, sub: Subscription) -> None:
        conn.acks[sub.key] = asyncio.get_running_loop().create_future()
        sub.sent_epoch = conn.epoch
        await self._send(
            conn, {"method": "subscribe", "subscription": sub.subscription}, Lane.ENRICHMENT
        )

    async def _send(self, conn: _Conn, message: dict[str, Any], lane: Lane) -> None:
        await self._outbound.acquire(1, lane)
        ws = conn.ws
        if ws is None:
            raise ConnectionClosed(None, None)
        await ws.send(orjson.dumps(message).decode())

    async def _heartbeat(self, conn: _Conn, ws: ClientConnection) -> None:
        tick = min(self._ping_s, self._silence_s) / 4
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - conn.last_recv > self._silence_s:
                self.counters["silences"] += 1
                log.warning(
                    "stream silent; reconnecting",
                    conn=conn.id,
                    silent_s=round(now - conn.last_recv, 1),
                )
                # A half-open socket would not answer a close handshake: drop it.
                ws.transport.abort()
                return
            if now - last_ping >= self._ping_s:
                last_ping = now
                with contextlib.suppress(ConnectionClosed):
                    await self._send(conn, {"method": "ping"}, Lane.FOLLOWER)

    async def _read(self, conn: _Conn, ws: ClientConnection) -> None:
        first = True
        async for raw in ws:
            recv_ns = time.perf_counter_ns()
            conn.last_recv = time.monotonic()
            if first and raw == GREETING:
                first = False
                continue
            first = False
            self.counters["messages"] += 1
            self._meter.hit(int(conn.last_recv))
            try:
                msg = orjson.loads(raw)
                channel = msg["channel"]
                data = msg.get("data")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self._malformed(conn, raw)
                continue
            if channel == "pong":
                continue
            if channel == "subscriptionResponse":
                self._on_ack(conn, data)
                continue
            if channel == "post":
                self._on_post(conn, data)
                continue
            if channel == "error":
                self.counters["server_errors"] += 1
                log.warning("stream server error", conn=conn.id, error=str(data)[:300])
                continue
            by_route = conn.routes.get(channel)
            if not by_route:
                self._malformed(conn, raw)
                continue
            if channel in _ROUTE_PARAM:
                sub = by_route.get(_route_value(channel, data))
            else:  # messages that do not say whose they are: one such subscription per connection
                sub = next(iter(by_route.values())) if len(by_route) == 1 else None
            if sub is None:
                if isinstance(data, list) and not data:
                    continue  # an empty trades batch names no coin
                self._malformed(conn, raw)
                continue
            sub.messages += 1
            message = StreamMessage(channel, data, recv_ns, time.time_ns() // 1_000_000, sub)
            try:
                await sub.consumer(message)
            except Exception as exc:
                self.counters["consumer_errors"] += 1
                log.error("stream consumer failed", channel=channel, exc_info=exc)

    def _malformed(self, conn: _Conn, raw: Any) -> None:
        self.counters["malformed"] += 1
        n = self.counters["malformed"]
        if n <= 10 or n % 1000 == 0:  # never let garbage flood the log
            log.warning("malformed stream message", conn=conn.id, count=n, sample=str(raw)[:200])

    def _on_ack(self, conn: _Conn, data: Any) -> None:
        try:
            sub_dict = _canonical(data["subscription"])
            key = _key(sub_dict)
        except (KeyError, TypeError, StreamError):
            self._malformed(conn, data)
            return
        if data.get("method") == "unsubscribe":
            return
        future = conn.acks.pop(key, None)
        sub = conn.subs.get(key)
        if sub is not None:
            sub.acked_epoch = conn.epoch
        if future is not None and not future.done():
            future.set_result(None)

    def _on_post(self, conn: _Conn, data: Any) -> None:
        try:
            entry = conn.posts.pop(int(data["id"]), None)
            response = data["response"]
        except (KeyError, TypeError, ValueError):
            self._malformed(conn, data)
            return
        if entry is not None and not entry[1].done():
            entry[1].set_result(response)

    # -- post requests --------------------------------------------------------------------

    async def post(self, kind: Literal["info", "action"], payload: Mapping[str, Any]) -> Any:
        """A request over the socket: ``info`` returns the data; ``action`` the exchange's reply.

        A lost or late reply to an action raises AmbiguousOutcome (it may have landed)."""
        if self._tg is None:
            raise StreamError("the stream pool is not running")
        async with self._post_slots:
            conn = await self._post_conn()
            post_id = next(self._post_ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            conn.posts[post_id] = (kind, future)
            self.counters["posts"] += 1
            message = {
                "method": "post",
                "id": post_id,
                "request": {"type": kind, "payload": dict(payload)},
            }
            try:
                try:
                    await self._send(conn, message, Lane.ORDER if kind == "action" else Lane.LEADER)
                except ConnectionClosed as exc:
                    if kind == "action":
                        raise AmbiguousOutcome("the WebSocket closed while sending") from exc
                    raise Unavailable("the WebSocket closed while sending") from exc
                try:
                    async with asyncio.timeout(self._post_s):
                        response = await future
                except TimeoutError as exc:
                    if kind == "action":
                        raise AmbiguousOutcome(
                            f"no reply to the action within {self._post_s} s"
                        ) from exc
                    raise Timeout(f"no reply to the info post within {self._post_s} s") from exc
            finally:
                conn.posts.pop(post_id, None)
        if not isinstance(response, dict) or response.get("type") == "error":
            if kind == "action":
                raise AmbiguousOutcome(f"post error: {response!r}")
            raise Unavailable(f"post error: {response!r}")
        body = response.get("payload")
        if kind == "info":
            return body.get("data") if isinstance(body, dict) else body
        return body

    async def _post_conn(self) -> _Conn:
        ready = [c for c in self._conns if c.ready.is_set()]
        if ready:
            return min(ready, key=lambda c: len(c.posts))
        if not self._conns:
            self._start(self._new_conn())
        async with asyncio.timeout(self._ack_s):
            waiters = [asyncio.ensure_future(c.ready.wait()) for c in self._conns]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        return next(c for c in self._conns if c.ready.is_set())

    # -- figures --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "connections": sum(1 for c in self._conns if c.ws is not None),
            "connections_ready": sum(1 for c in self._conns if c.ready.is_set()),
            "subscriptions": len(self._subs),
            "users": len(self.users()),
            "messages_per_s": round(self._meter.rate(int(time.monotonic())), 1),
            "outbound_last_minute": self._outbound.used(),
            "posts_in_flight": sum(len(c.posts) for c in self._conns),
            **self.counters,
        }
