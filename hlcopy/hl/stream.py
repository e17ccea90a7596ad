"""A pool of WebSocket connections to Hyperliquid, kept within the per-IP limits.

Limits (HYPERLIQUID.md §3): at most 10 connections, 1000 subscriptions, 10 distinct users across
user-specific subscriptions (refused with SubscriptionLimit), 2000 messages sent per minute and 30
new connections per minute (both paced by ``Pacer``, never failed), 100 post requests in flight.

Each connection skips the plain-text greeting, pings every 50 s, and is recycled when it has
received nothing for 60 s (a half-open socket looks exactly like a quiet one otherwise). After a
drop it reconnects with capped, jittered backoff and resubscribes everything, waiting for each
``subscriptionResponse``.

Feeds are typed: ``trades``, ``user_fills``, ``order_updates``, ``l2_book`` and ``all_mids``
parse each message at the edge (``parse.py``) into the records of ``model.py`` and hand them to a
``Sink`` — a ``BoundedQueue`` — with ``offer``. The reader never awaits downstream work; only a
full queue whose written policy is ``block`` (nothing may be dropped) makes it wait, which holds
back that one connection. Snapshots that a resubscription replays are flagged
(``UserFills.is_snapshot``), not filtered: deduplication belongs to the consumer, which knows
its keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from hlcopy.backoff import Backoff
from hlcopy.clock import SYSTEM, Clock, Timer, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.errors import (
    AmbiguousOutcome,
    StreamError,
    SubscriptionLimit,
    Timeout,
    Unavailable,
    WireError,
)
from hlcopy.hl import parse
from hlcopy.hl.pacer import Pacer
from hlcopy.model import AllMids, L2Book, OrderUpdates, Trades, UserFills
from hlcopy.queues import QueueClosed, Sink
from hlcopy.record import record

T = TypeVar("T")
# How a raw message's data becomes a record: (data, recv_ns, recv_ms) -> record.
Decoder = Callable[[Any, int, int], T]

log = structlog.get_logger()

GREETING = "Websocket connection established."
YIELD_AFTER_NS = 500_000  # a reader busy with buffered messages lets the loop turn this often
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


@record
class _Spec(Generic[T]):
    """What a subscription is on the wire, and where its messages go."""

    wire: dict[str, Any]  # exactly what is sent
    decode: Decoder[T]
    sink: Sink[T]
    key: tuple[Any, ...]
    channel: str
    route: Any
    user: str | None


class Subscription(Generic[T]):
    """A live subscription, as the feed methods return it: pass it to ``unsubscribe``."""

    __slots__ = ("_spec", "acked_epoch", "conn", "dropped", "messages", "sent_epoch")

    def __init__(self, spec: _Spec[T]) -> None:
        self._spec = spec
        self.conn: _Conn | None = None
        self.sent_epoch = -1
        self.acked_epoch = -1
        self.messages = 0
        self.dropped = 0

    @property
    def user(self) -> str | None:
        """The user of a user-specific feed (lowercase), else None."""
        return self._spec.user

    @property
    def description(self) -> str:
        """``trades BTC``, ``userFills 0xabc…``: for logs and figures."""
        wire = self._spec.wire
        return " ".join([str(wire["type"]), *(str(v) for k, v in wire.items() if k != "type")])

    def __repr__(self) -> str:
        return f"Subscription({self.description})"


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
    subs: dict[tuple[Any, ...], Subscription[Any]] = field(default_factory=dict)
    routes: dict[str, dict[Any, Subscription[Any]]] = field(default_factory=dict)
    # Every (channel, route) this connection has carried: a message for one no longer
    # subscribed was on its way when we unsubscribed, not garbage.
    routed: set[tuple[str, Any]] = field(default_factory=set)
    ws: ClientConnection | None = None
    epoch: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    acks: dict[tuple[Any, ...], asyncio.Future[None]] = field(default_factory=dict)
    posts: dict[int, tuple[str, asyncio.Future[Any]]] = field(default_factory=dict)
    last_recv: float = 0.0
    task: asyncio.Task[None] | None = None
    yielded_ns: int = 0  # when the reader last let the loop turn (perf_counter_ns)

    def add(self, sub: Subscription[Any]) -> None:
        self.subs[sub._spec.key] = sub
        self.routes.setdefault(sub._spec.channel, {})[sub._spec.route] = sub
        self.routed.add((sub._spec.channel, sub._spec.route))
        sub.conn = self

    def remove(self, sub: Subscription[Any]) -> None:
        self.subs.pop(sub._spec.key, None)
        by_route = self.routes.get(sub._spec.channel, {})
        if by_route.get(sub._spec.route) is sub:
            del by_route[sub._spec.route]
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
        down_grace_s: float = 10.0,
        eager: bool = True,
        clock: Clock = SYSTEM,
    ) -> None:
        self.url = url
        self._clock = clock
        self.max_connections = max_connections
        self.max_subscriptions = max_subscriptions
        self.max_users = max_users
        self._per_conn = -(-max_subscriptions // max_connections)
        self._outbound = Pacer(max_messages_per_minute, pace_window_s, clock)
        self._connects = Pacer(max_connects_per_minute, pace_window_s, clock)
        self._post_slots = asyncio.Semaphore(max_posts_in_flight)
        self._ping_s = ping_interval_s
        self._silence_s = silence_timeout_s
        self._ack_s = ack_timeout_s
        self._post_s = post_timeout_s
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._eager = eager
        self._down_grace_s = down_grace_s
        self._ready: Ready | None = None
        self._down_timer: Timer | None = None
        self._subs: dict[tuple[Any, ...], Subscription[Any]] = {}
        self._conns: list[_Conn] = []
        self._tg: asyncio.TaskGroup | None = None
        self._closing = asyncio.Event()
        self._post_ids = itertools.count(1)
        self._meter = _RateMeter()
        self.counters = {
            "reconnects": 0,
            "messages": 0,
            "malformed": 0,
            "after_unsubscribe": 0,
            "sink_dropped": 0,
            "server_errors": 0,
            "ack_timeouts": 0,
            "silences": 0,
            "posts": 0,
        }

    # -- component ------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
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
                self._ready = ready
                await self._closing.wait()
                await self._close_all()
        finally:
            self._ready = None
            if self._down_timer is not None:
                self._down_timer.cancel()
                self._down_timer = None
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

    # -- typed feeds ----------------------------------------------------------------------

    async def trades(
        self, coin: str, sink: Sink[Trades], *, wait: bool = True
    ) -> Subscription[Trades]:
        """Every public trade of ``coin``, one ``Trades`` per message."""
        return await self._subscribe({"type": "trades", "coin": coin}, _decode_trades, sink, wait)

    async def user_fills(
        self,
        user: str,
        sink: Sink[UserFills],
        *,
        aggregate_by_time: bool = False,
        wait: bool = True,
    ) -> Subscription[UserFills]:
        """``user``'s fills: first a snapshot of recent history, then each new fill."""
        sub: dict[str, Any] = {"type": "userFills", "user": user}
        if aggregate_by_time:
            sub["aggregateByTime"] = True
        return await self._subscribe(sub, _decode_user_fills, sink, wait)

    async def order_updates(
        self, user: str, sink: Sink[OrderUpdates], *, wait: bool = True
    ) -> Subscription[OrderUpdates]:
        """Status changes of ``user``'s orders (nothing is replayed on resubscription)."""
        owner = user.lower()  # these messages do not say whose orders they are

        def decode(data: Any, recv_ns: int, recv_ms: int) -> OrderUpdates:
            return OrderUpdates(owner, parse.parse_ws_order_updates(data), recv_ns, recv_ms)

        return await self._subscribe({"type": "orderUpdates", "user": user}, decode, sink, wait)

    async def l2_book(
        self,
        coin: str,
        sink: Sink[L2Book],
        *,
        n_sig_figs: int | None = None,
        mantissa: int | None = None,
        wait: bool = True,
    ) -> Subscription[L2Book]:
        """Order book snapshots of ``coin`` (20 levels a side)."""
        sub: dict[str, Any] = {"type": "l2Book", "coin": coin}
        if n_sig_figs is not None:
            sub["nSigFigs"] = n_sig_figs
        if mantissa is not None:
            sub["mantissa"] = mantissa
        return await self._subscribe(sub, _decode_l2_book, sink, wait)

    async def all_mids(
        self, sink: Sink[AllMids], *, dex: str = "", wait: bool = True
    ) -> Subscription[AllMids]:
        """Mid prices of every coin of ``dex``."""
        sub: dict[str, Any] = {"type": "allMids"}
        if dex:
            sub["dex"] = dex
        return await self._subscribe(sub, _decode_all_mids, sink, wait)

    async def _subscribe(
        self, subscription: Mapping[str, Any], decode: Decoder[T], sink: Sink[T], wait: bool
    ) -> Subscription[T]:
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
        sub = Subscription(_Spec(sub_dict, decode, sink, key, channel, route, user))
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

    async def unsubscribe(self, sub: Subscription[T]) -> None:
        """Stop a subscription (its consumer gets nothing more)."""
        if self._subs.pop(sub._spec.key, None) is None:
            return
        conn = sub.conn
        if conn is None:
            return
        conn.remove(sub)
        if conn.ws is not None and sub.sent_epoch == conn.epoch:
            with contextlib.suppress(ConnectionClosed):
                await self._send(conn, {"method": "unsubscribe", "subscription": sub._spec.wire})

    def _place(self, sub: Subscription[Any]) -> _Conn:
        candidates = [
            c
            for c in self._conns
            if not (
                sub._spec.channel in _ANONYMOUS
                and sub._spec.channel in c.routes
                and c.routes[sub._spec.channel]
            )
            and (
                sub._spec.route is None
                or sub._spec.route not in c.routes.get(sub._spec.channel, {})
            )
        ]
        best = min(candidates, key=lambda c: len(c.subs), default=None)
        if best is not None and len(best.subs) < self._per_conn:
            return best
        if len(self._conns) < self.max_connections:
            return self._new_conn()
        if best is not None:
            return best
        raise SubscriptionLimit(
            f"no connection can take {sub._spec.wire} (at most {self.max_connections} connections)"
        )

    def _new_conn(self) -> _Conn:
        conn = _Conn(len(self._conns))
        self._conns.append(conn)
        return conn

    def _start(self, conn: _Conn) -> None:
        assert self._tg is not None
        conn.task = self._tg.create_task(self._conn_loop(conn), name=f"stream:conn{conn.id}")

    async def _await_ack(self, conn: _Conn, sub: Subscription[Any]) -> None:
        """Until the server acknowledged ``sub`` on the connection's current epoch, which may
        take a reconnect: a connection resubscribes everything it holds when it comes back."""
        async with self._clock.timeout(self._ack_s * 3):
            while not (conn.ready.is_set() and sub.acked_epoch == conn.epoch):
                if conn.ws is not None and sub.sent_epoch != conn.epoch:
                    with contextlib.suppress(ConnectionClosed):
                        await self._send_subscribe(conn, sub)
                future = conn.acks.get(sub._spec.key)
                if future is None:
                    await conn.ready.wait()
                    continue
                with contextlib.suppress(ConnectionClosed):  # lost: the loop waits for the next
                    await asyncio.shield(future)

    # -- connections ----------------------------------------------------------------------

    async def _conn_loop(self, conn: _Conn) -> None:
        backoff = Backoff(*self._backoff, clock=self._clock)
        while not self._closing.is_set():
            await self._connects.acquire(urgent=True)
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
            await sleep_unless(self._clock, self._closing, delay)

    async def _serve(self, conn: _Conn, ws: ClientConnection, backoff: Backoff) -> str:
        """Run one connection until it drops; return why it dropped."""
        conn.ws = ws
        conn.epoch += 1
        conn.last_recv = self._clock.monotonic()
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

    def _connectivity_changed(self) -> None:
        """Ready while some connection is up; reported lost after ``down_grace_s`` without one
        (a routine reconnect takes well under a second and should not flap /health)."""
        ready = self._ready
        if ready is None:
            return
        if not self._conns or any(c.ready.is_set() for c in self._conns):
            if self._down_timer is not None:
                self._down_timer.cancel()
                self._down_timer = None
            ready.set()
        elif self._down_timer is None and ready.is_set():
            self._down_timer = self._clock.call_later(self._down_grace_s, self._report_down)

    def _report_down(self) -> None:
        self._down_timer = None
        if self._ready is not None and not any(c.ready.is_set() for c in self._conns):
            self._ready.lost(f"no WebSocket connection for {self._down_grace_s:g} s")

    def _lost(self, conn: _Conn) -> None:
        conn.ws = None
        conn.ready.clear()
        self._connectivity_changed()
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
                if sub.sent_epoch != conn.epoch and sub._spec.key in self._subs:
                    await self._send_subscribe(conn, sub)
            pending = [f for f in conn.acks.values() if not f.done()]
            if pending:
                async with self._clock.timeout(self._ack_s):
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
        self._connectivity_changed()
        backoff.healthy()
        log.info("stream connected", conn=conn.id, subscriptions=len(conn.subs), epoch=conn.epoch)

    async def _send_subscribe(self, conn: _Conn, sub: Subscription[Any]) -> None:
        conn.acks[sub._spec.key] = asyncio.get_running_loop().create_future()
        sub.sent_epoch = conn.epoch
        await self._send(conn, {"method": "subscribe", "subscription": sub._spec.wire})

    async def _send(
        self, conn: _Conn, message: dict[str, Any] | str, *, urgent: bool = False
    ) -> None:
        """Send one message (a mapping, or its JSON text) within the outbound pace;
        ``urgent`` ones (action posts, pings) go before routine ones."""
        await self._outbound.acquire(urgent)
        ws = conn.ws
        if ws is None:
            raise ConnectionClosed(None, None)
        await ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())

    async def _heartbeat(self, conn: _Conn, ws: ClientConnection) -> None:
        tick = min(self._ping_s, self._silence_s) / 4
        last_ping = self._clock.monotonic()
        while True:
            await self._clock.sleep(tick)
            now = self._clock.monotonic()
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
                    await self._send(conn, {"method": "ping"}, urgent=True)

    async def _read(self, conn: _Conn, ws: ClientConnection) -> None:
        first = True
        async for raw in ws:
            recv_ns = time.perf_counter_ns()  # for latency figures only, not a clock reading
            conn.last_recv = self._clock.monotonic()
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
            if by_route is None:
                self._malformed(conn, raw)
                continue
            if channel in _ROUTE_PARAM:
                route = _route_value(channel, data)
                sub = by_route.get(route)
            else:  # messages that do not say whose they are: one such subscription per connection
                route = None
                sub = next(iter(by_route.values())) if len(by_route) == 1 else None
            if sub is None:
                if isinstance(data, list) and not data:
                    continue  # an empty trades batch names no coin
                if route not in by_route and (channel, route) in conn.routed:
                    self.counters["after_unsubscribe"] += 1  # sent before it heard us
                    continue
                self._malformed(conn, raw)
                continue
            try:
                item = sub._spec.decode(data, recv_ns, self._clock.time_ms())
            except (WireError, KeyError, TypeError, ValueError, AttributeError):
                self._malformed(conn, raw)
                continue
            sub.messages += 1
            try:
                if not sub._spec.sink.offer(item):
                    await sub._spec.sink.put(item)  # a full queue that must not drop: wait for room
            except QueueClosed:
                sub.dropped += 1
                self.counters["sink_dropped"] += 1
            if recv_ns - conn.yielded_ns > YIELD_AFTER_NS:
                # Buffered messages are read without the loop turning: after a while, let the
                # other connections (a leader's userFills among them) and the consumers in.
                await asyncio.sleep(0)
                conn.yielded_ns = time.perf_counter_ns()

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

    @property
    def post_ready(self) -> bool:
        """Whether a connection is up to take a post now (an order never waits for one)."""
        return self._tg is not None and any(c.ready.is_set() for c in self._conns)

    async def post_action(self, body: bytes) -> object:
        """A signed exchange action (its REST body) over the socket: the exchange's reply
        (``status`` and ``response``), read by the exchange client. Raises AmbiguousOutcome
        when the socket closes after sending or the reply does not come in time, StreamError
        when the pool is not running."""
        reply: object = await self._post("action", body)
        return reply

    async def _post(
        self, kind: Literal["info", "action"], payload: Mapping[str, Any] | bytes
    ) -> Any:
        """A request over the socket: ``info`` returns the data; ``action`` the exchange's reply.
        ``payload`` as a mapping, or as the JSON bytes of one (a signed action's REST body goes
        into the message as it is: no parsing it back on an order's way out).

        A lost or late reply to an action raises AmbiguousOutcome (it may have landed)."""
        if self._tg is None:
            raise StreamError("the stream pool is not running")
        async with self._post_slots:
            conn = await self._post_conn()
            post_id = next(self._post_ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            conn.posts[post_id] = (kind, future)
            self.counters["posts"] += 1
            message: dict[str, Any] | str
            if isinstance(payload, bytes):
                message = _post_text(post_id, kind, payload)
            else:
                message = {
                    "method": "post",
                    "id": post_id,
                    "request": {"type": kind, "payload": dict(payload)},
                }
            try:
                try:
                    await self._send(conn, message, urgent=kind == "action")
                except ConnectionClosed as exc:
                    if kind == "action":
                        raise AmbiguousOutcome("the WebSocket closed while sending") from exc
                    raise Unavailable("the WebSocket closed while sending") from exc
                try:
                    async with self._clock.timeout(self._post_s):
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
        async with self._clock.timeout(self._ack_s):
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
            "messages_per_s": round(self._meter.rate(int(self._clock.monotonic())), 1),
            "outbound_last_minute": self._outbound.used(),
            "posts_in_flight": sum(len(c.posts) for c in self._conns),
            **self.counters,
        }


def _post_text(post_id: int, kind: str, payload: bytes) -> str:
    """The text of a ``post`` message around ``payload``, JSON bytes spliced in unparsed."""
    head = f'{{"method":"post","id":{post_id},"request":{{"type":"{kind}","payload":'
    return head + payload.decode() + "}}"


# -- decoders: wire data of one message to the feed's record ----------------------------------


def _decode_trades(data: Any, recv_ns: int, recv_ms: int) -> Trades:
    trades = parse.parse_trades(data)
    return Trades(trades[0].coin if trades else "", trades, recv_ns, recv_ms)


def _decode_user_fills(data: Any, recv_ns: int, recv_ms: int) -> UserFills:
    user, is_snapshot, fills = parse.parse_ws_user_fills(data)
    return UserFills(user, is_snapshot, fills, recv_ns, recv_ms)


def _decode_l2_book(data: Any, recv_ns: int, recv_ms: int) -> L2Book:
    return parse.parse_l2_book(data)


def _decode_all_mids(data: Any, recv_ns: int, recv_ms: int) -> AllMids:
    mids: dict[str, Decimal] = parse.parse_all_mids(parse.req(data, "mids"))
    return AllMids(mids, str(data.get("dex", "")), recv_ms)
