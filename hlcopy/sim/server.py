"""The simulated exchange's network face: aiohttp on loopback, one process, one event loop.

Routes: ``POST /info``, ``POST /exchange``, ``GET /ws``, ``GET /leaderboard`` and the control API
under ``/_sim/``. REST weight is charged per client address (HTTP 429 past the limit); the
WebSocket endpoint enforces the per-IP limits. An account is opened (and funded) the first time
any client looks at an address — an info request or subscription naming it, or ``/_sim/fund`` —
so a client can trade without setup, while a tampered signature, which recovers to an address
nobody has looked at, is refused as the exchange refuses an unknown user.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from hlcopy.hl.wire import round_size
from hlcopy.sim import views
from hlcopy.sim.actions import BadAction, ExchangeCore
from hlcopy.sim.engine import Engine, fill_wire, record_wire
from hlcopy.sim.faults import Faults
from hlcopy.sim.population import Population

log = structlog.get_logger()

D = Decimal
AUTO_FUND_USD = D(100_000)
GREETING = "Websocket connection established."
DESERIALIZE = "Failed to deserialize the JSON body into the target type"
USER_SUBS = frozenset(
    {
        "userFills",
        "orderUpdates",
        "userEvents",
        "clearinghouseState",
        "openOrders",
        "userFundings",
        "userNonFundingLedgerUpdates",
    }
)
STAT_KEYS = (
    "info_requests",
    "exchange_requests",
    "weight_charged",
    "rate_limited",
    "replies_lost",
    "ws_connections_total",
    "ws_refused",
    "ws_limit_closes",
    "ws_idle_closes",
    "ws_drops",
    "ws_messages_sent",
)
SUPPORTED_SUBS = frozenset({"trades", "l2Book", "allMids", "userFills", "orderUpdates"})


@dataclass
class SimConfig:
    """How the simulated exchange behaves."""

    host: str = "127.0.0.1"
    port: int = 8787
    seed: int = 1
    traders: int = 200
    speed: float = 1.0  # market ticks per wall second, relative to real time
    rate: float = 20.0  # trader actions per second at speed 1
    tick_ms: int = 100
    realtime: bool = True  # False: time moves only through step()
    warmup_s: float = 600.0  # simulated history created before serving
    start_ms: int | None = None  # first timestamp in stepped mode (default: now)
    auto_fund_usd: Decimal = AUTO_FUND_USD
    is_mainnet: bool = False  # which signatures are valid (the SDK signs testnet off mainnet)
    weight_per_minute: int = 1200
    ws_idle_s: float = 60.0
    ws_max_connections: int = 10
    ws_max_new_connections_per_min: int = 30
    ws_max_subscriptions: int = 1000
    ws_max_users: int = 10
    ws_max_messages_per_min: int = 2000
    book_every_ticks: int = 5  # l2Book and allMids pushes, at most every 0.5 s of market time


class _Window:
    """Sliding 60-second sums per key."""

    def __init__(self, span_s: float = 60.0) -> None:
        self.span_s = span_s
        self._events: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._sums: dict[str, int] = defaultdict(int)

    def used(self, key: str, now: float) -> int:
        events = self._events[key]
        while events and events[0][0] <= now - self.span_s:
            self._sums[key] -= events.popleft()[1]
        return self._sums[key]

    def add(self, key: str, amount: int, now: float) -> None:
        self._events[key].append((now, amount))
        self._sums[key] += amount


@dataclass(eq=False)
class WsClient:
    id: int
    ip: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    queue: asyncio.Queue[tuple[str, bool]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=20_000)
    )
    subs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    last_sent: float = field(default_factory=time.monotonic)
    held: str | None = None  # a message held back to reorder with the next

    def send(self, text: str, faults: Faults, data: bool = False) -> None:
        """Queue a message; ``data`` marks feed messages (the ones faults may mangle)."""
        if faults.ws_silent:
            return
        try:
            self.queue.put_nowait((text, data))
        except asyncio.QueueFull:  # the client cannot keep up: the exchange would drop it too
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Simulator:
    """A simulated Hyperliquid: ``async with Simulator(cfg) as sim: ... sim.url ...``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = cfg = config or SimConfig()
        start = cfg.start_ms if cfg.start_ms is not None else time.time_ns() // 1_000_000
        if cfg.realtime:
            start -= int(cfg.warmup_s * 1000)
        self.engine = Engine(seed=cfg.seed, start_ms=start, tick_ms=cfg.tick_ms)
        self.population = Population(self.engine, cfg.traders, seed=cfg.seed)
        self.core = ExchangeCore(self.engine, is_mainnet=cfg.is_mainnet)
        self.faults = Faults()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._weights = _Window()
        self._ws_messages = _Window()
        self._ws_connects = _Window()
        self._clients: dict[int, WsClient] = {}
        self._subs: dict[tuple[str, str], set[WsClient]] = defaultdict(set)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = cfg.port
        self.actions_per_tick = cfg.rate * cfg.tick_ms / 1000
        if cfg.realtime and cfg.warmup_s > 0:
            self.step(int(cfg.warmup_s * 1000 / cfg.tick_ms), publish=False)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/ws"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/info", self._info)
        app.router.add_post("/exchange", self._exchange)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/leaderboard", self._leaderboard)
        app.router.add_get("/_sim/archetypes", self._archetypes)
        app.router.add_get("/_sim/accounts/{address}", self._account)
        app.router.add_get("/_sim/orders", self._orders)
        app.router.add_post("/_sim/fund", self._fund)
        app.router.add_post("/_sim/price", self._price)
        app.router.add_post("/_sim/trade", self._trade)
        app.router.add_post("/_sim/step", self._step)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_get("/_sim/faults", self._faults_get)
        app.router.add_post("/_sim/faults", self._faults_post)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._tasks.append(asyncio.create_task(self._sweep_idle(), name="sim:idle"))
        if self.config.realtime:
            self._tasks.append(asyncio.create_task(self._ticker(), name="sim:ticker"))
        log.info(
            "simulator listening",
            url=self.url,
            ws=self.ws_url,
            seed=self.config.seed,
            traders=self.config.traders,
            speed=self.config.speed,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for client in list(self._clients.values()):
            client.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- time -------------------------------------------------------------------------------

    def step(self, ticks: int = 1, publish: bool = True) -> None:
        """Advance the market ``ticks`` ticks (stepped mode, tests, warm-up)."""
        for _ in range(ticks):
            self.engine.step()
            self.population.step(self.actions_per_tick)
            if publish:
                self.publish()
            else:
                self.engine.drain_events()

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_ms / 1000 / self.config.speed
        due = loop.time()
        while True:
            due += interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # far behind (a stalled host): skip ahead, do not spiral
                due = loop.time()
            else:
                await asyncio.sleep(0)  # let requests in between ticks even when behind
            self.engine.step(max(self.engine.now_ms, time.time_ns() // 1_000_000))
            # A busy tick is cut into chunks so that requests are answered in between.
            todo = self.population.plan(self.actions_per_tick)
            while todo > 0:
                for _ in range(min(todo, 32)):
                    self.population.act_random()
                todo -= 32
                if todo > 0:
                    self.publish()
                    await asyncio.sleep(0)
            while self.population.close_due(limit=32):
                self.publish()
                await asyncio.sleep(0)
            self.publish()

    # -- accounts ---------------------------------------------------------------------------

    def contact(self, address: Any) -> None:
        """Someone looked at ``address``: open and fund its account if it has none."""
        if not isinstance(address, str) or len(address) != 42 or not address.startswith("0x"):
            return
        address = address.lower()
        if address not in self.engine.accounts and address not in self.engine.agents:
            self.engine.open_account(address, self.config.auto_fund_usd)

    # -- REST -------------------------------------------------------------------------------

    def _ip(self, request: web.Request) -> str:
        return request.remote or "?"

    def _charge(self, ip: str, weight: int) -> bool:
        now = time.monotonic()
        if self._weights.used(ip, now) + weight > self.config.weight_per_minute:
            self.stats["rate_limited"] += 1
            return False
        self._weights.add(ip, weight, now)
        self.stats["weight_charged"] += weight
        return True

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")

    async def _body(self, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None

    def _answer_info(self, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise views.BadInfo("no type")
        self.contact(body.get("user"))
        for user in body.get("users") or ():
            self.contact(user)
        return views.answer(self.engine, body)

    def _fault(self, path: str) -> web.Response | None:
        """The answer a REST fault switch gives ``path`` right now, if one is on."""
        status = self.faults.http_error(path)
        if status is None:
            return None
        return web.Response(status=status, text="null" if status == 429 else "error")

    async def _info(self, request: web.Request) -> web.Response:
        self.stats["info_requests"] += 1
        faulty = self._fault("/info")
        if faulty is not None:
            return faulty
        body = await self._body(request)
        kind = body.get("type") if isinstance(body, dict) else None
        if not self._charge(self._ip(request), views.base_weight(str(kind), body or {})):
            return web.Response(status=429, text="null")
        try:
            data = self._answer_info(body)
        except views.BadInfo:
            return web.Response(status=422, text=DESERIALIZE)
        extra = views.item_weight(str(kind), len(data) if isinstance(data, list) else 0)
        if extra:  # known only now; charged even past the limit, as the exchange does
            self._weights.add(self._ip(request), extra, time.monotonic())
            self.stats["weight_charged"] += extra
        return self._json(data)

    async def _exchange(self, request: web.Request) -> web.Response:
        self.stats["exchange_requests"] += 1
        faulty = self._fault("/exchange")
        if faulty is not None:
            return faulty
        body = await self._body(request)
        action = body.get("action") if isinstance(body, dict) else None
        n = 1
        if isinstance(action, dict):
            n = len(action.get("orders") or action.get("cancels") or action.get("modifies") or [1])
        if not self._charge(self._ip(request), 1 + n // 40):
            return web.Response(status=429, text="null")
        delay = self.faults.take_delay()
        if delay:
            await asyncio.sleep(delay)  # lands late, after the client may have given up
        try:
            reply = self._act(body)
        except BadAction:
            return web.Response(status=422, text=DESERIALIZE)
        if self.faults.take_lose():  # applied, and the reply never arrives
            self.stats["replies_lost"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        return self._json(reply)

    def _act(self, body: Any) -> dict[str, Any]:
        reply = self.core.handle(body)
        self.publish()
        return reply

    async def _leaderboard(self, request: web.Request) -> web.Response:
        return self._json(views.leaderboard(self.engine))

    # -- WebSocket --------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ip = self._ip(request)
        now = time.monotonic()
        cfg = self.config
        open_here = sum(1 for c in self._clients.values() if c.ip == ip)
        if (
            open_here >= cfg.ws_max_connections
            or self._ws_connects.used(ip, now) >= cfg.ws_max_new_connections_per_min
        ):
            self.stats["ws_refused"] += 1
            return web.Response(status=429, text="Too many connections")
        self._ws_connects.add(ip, 1, now)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1024 * 1024)
        await ws.prepare(request)
        client = WsClient(next(self._ids), ip, ws, request.transport)
        self._clients[client.id] = client
        self.stats["ws_connections_total"] += 1
        writer = asyncio.create_task(self._writer(client), name=f"sim:ws{client.id}:writer")
        client.send(GREETING, self.faults)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if self._ws_messages.used(ip, time.monotonic()) >= cfg.ws_max_messages_per_min:
                    client.send(
                        orjson.dumps(
                            {"channel": "error", "data": "Too many messages sent"}
                        ).decode(),
                        self.faults,
                    )
                    self.stats["ws_limit_closes"] += 1
                    break
                self._ws_messages.add(ip, 1, time.monotonic())
                await self._on_ws_message(client, msg.data)
        finally:
            self._clients.pop(client.id, None)
            for key in client.subs:
                self._subs[key].discard(client)
            self._rewatch()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _writer(self, client: WsClient) -> None:
        while True:
            text, is_data = await client.queue.get()
            if self.faults.ws_silent:
                continue
            out = [text]
            if is_data and self.faults.ws_reorder:
                if client.held is None:
                    client.held = text
                    continue
                out, client.held = [text, client.held], None
            if is_data and self.faults.ws_duplicate:
                out = [t for t in out for _ in (0, 1)]
            for t in out:
                try:
                    await client.ws.send_str(t)
                except (ConnectionError, RuntimeError):
                    return
                client.last_sent = time.monotonic()
                self.stats["ws_messages_sent"] += 1

    def _ws_error(self, client: WsClient, message: str) -> None:
        client.send(orjson.dumps({"channel": "error", "data": message}).decode(), self.faults)

    async def _on_ws_message(self, client: WsClient, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
            method = msg["method"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._ws_error(client, f"Error parsing JSON into valid websocket request: {raw[:100]}")
            return
        if method == "ping":
            client.send('{"channel":"pong"}', self.faults)
        elif method in ("subscribe", "unsubscribe"):
            sub = msg.get("subscription")
            if not isinstance(sub, dict) or sub.get("type") not in SUPPORTED_SUBS:
                self._ws_error(client, f"Invalid subscription {orjson.dumps(sub).decode()}")
                return
            if method == "subscribe":
                self._subscribe(client, sub)
            else:
                self._unsubscribe(client, sub)
        elif method == "post":
            await self._post(client, msg)
        else:
            self._ws_error(client, f"Unknown method {method!r}")

    @staticmethod
    def _sub_key(sub: dict[str, Any]) -> tuple[str, str]:
        kind = sub["type"]
        if kind in USER_SUBS:
            return kind, str(sub.get("user", "")).lower()
        if kind == "allMids":
            return kind, str(sub.get("dex") or "")
        return kind, str(sub.get("coin", ""))

    def _subscribe(self, client: WsClient, sub: dict[str, Any]) -> None:
        key = self._sub_key(sub)
        if key in client.subs:
            self._ws_error(client, f"Already subscribed: {orjson.dumps(sub).decode()}")
            return
        mine = [c for c in self._clients.values() if c.ip == client.ip]
        if sum(len(c.subs) for c in mine) >= self.config.ws_max_subscriptions:
            self._ws_error(
                client, f"Cannot subscribe to more than {self.config.ws_max_subscriptions} channels"
            )
            return
        if key[0] in USER_SUBS:
            users = {k[1] for c in mine for k in c.subs if k[0] in USER_SUBS}
            if key[1] not in users and len(users) >= self.config.ws_max_users:
                self._ws_error(
                    client, f"Cannot track more than {self.config.ws_max_users} total users."
                )
                return
            self.contact(key[1])
        client.subs[key] = sub
        self._subs[key].add(client)
        self._rewatch()
        client.send(
            orjson.dumps(
                {
                    "channel": "subscriptionResponse",
                    "data": {"method": "subscribe", "subscription": sub},
                }
            ).decode(),
            self.faults,
        )
        self._snapshot(client, key)

    def _unsubscribe(self, client: WsClient, sub: dict[str, Any]) -> None:
        key = self._sub_key(sub)
        if client.subs.pop(key, None) is None:
            self._ws_error(client, f"Already unsubscribed: {orjson.dumps(sub).decode()}")
            return
        self._subs[key].discard(client)
        self._rewatch()
        client.send(
            orjson.dumps(
                {
                    "channel": "subscriptionResponse",
                    "data": {"method": "unsubscribe", "subscription": sub},
                }
            ).decode(),
            self.faults,
        )

    def _rewatch(self) -> None:
        """Tell the engine whose fills and order updates anyone is streaming."""
        self.engine.watched = {
            user
            for (kind, user), clients in self._subs.items()
            if clients and kind in ("userFills", "orderUpdates")
        }

    def _snapshot(self, client: WsClient, key: tuple[str, str]) -> None:
        kind, arg = key
        data: Any = None
        if kind == "userFills":
            acct = self.engine.accounts.get(arg)
            data = {
                "isSnapshot": True,
                "user": arg,
                "fills": [fill_wire(f) for f in list(acct.fills)[-2000:]] if acct else [],
            }
        elif kind == "l2Book":
            data = views.l2_book(self.engine, arg)
        elif kind == "allMids":
            data = {"mids": views.all_mids(self.engine, arg)}
        if data is not None:
            client.send(
                orjson.dumps({"channel": kind, "data": data}).decode(), self.faults, data=True
            )

    async def _post(self, client: WsClient, msg: dict[str, Any]) -> None:
        post_id = msg.get("id")
        request = msg.get("request")
        if not isinstance(request, dict):
            request = {}
        kind, payload = request.get("type"), request.get("payload")
        response: dict[str, Any]
        if kind == "info":
            try:
                data = self._answer_info(payload)
                assert isinstance(payload, dict)  # _answer_info refused anything else
                response = {"type": "info", "payload": {"type": payload["type"], "data": data}}
            except views.BadInfo:
                response = {"type": "error", "payload": f"422 {DESERIALIZE}"}
        elif kind == "action":
            delay = self.faults.take_delay()
            if delay:
                await asyncio.sleep(delay)
            try:
                response = {"type": "action", "payload": self._act(payload)}
            except BadAction:
                response = {"type": "error", "payload": f"422 {DESERIALIZE}"}
            if self.faults.take_lose():
                self.stats["replies_lost"] += 1
                return
        else:
            response = {"type": "error", "payload": "400 request type must be info or action"}
        client.send(
            orjson.dumps(
                {"channel": "post", "data": {"id": post_id, "response": response}}
            ).decode(),
            self.faults,
        )

    def publish(self) -> None:
        """Send what the engine produced since the last call to the subscribed clients."""
        trades, fills, updates = self.engine.drain_events()
        faults = self.faults
        subs = self._subs
        for coin, batch in trades.items():
            clients = subs.get(("trades", coin))
            if clients:
                text = orjson.dumps({"channel": "trades", "data": batch}).decode()
                for c in clients:
                    c.send(text, faults, data=True)
        for user, batch in fills.items():
            clients = subs.get(("userFills", user))
            if clients:
                text = orjson.dumps(
                    {"channel": "userFills", "data": {"user": user, "fills": batch}}
                ).decode()
                for c in clients:
                    c.send(text, faults, data=True)
        for user, batch in updates.items():
            clients = subs.get(("orderUpdates", user))
            if clients:
                text = orjson.dumps({"channel": "orderUpdates", "data": batch}).decode()
                for c in clients:
                    c.send(text, faults, data=True)
        if self.engine.ticks % self.config.book_every_ticks == 0:
            for (kind, arg), clients in subs.items():
                if not clients or kind not in ("l2Book", "allMids"):
                    continue
                data = (
                    views.l2_book(self.engine, arg)
                    if kind == "l2Book"
                    else {"mids": views.all_mids(self.engine, arg)}
                )
                text = orjson.dumps({"channel": kind, "data": data}).decode()
                for c in clients:
                    c.send(text, faults, data=True)

    async def _sweep_idle(self) -> None:
        """The exchange closes a connection it has sent nothing on for 60 seconds."""
        while True:
            await asyncio.sleep(min(1.0, self.config.ws_idle_s / 4))
            horizon = time.monotonic() - self.config.ws_idle_s
            for client in list(self._clients.values()):
                if client.last_sent < horizon:
                    self.stats["ws_idle_closes"] += 1
                    await client.ws.close(code=1000, message=b"idle")

    # -- faults (Python API) ----------------------------------------------------------------

    def drop_ws(self, which: str | int = "all") -> int:
        """Drop every WebSocket connection, or one by id; returns how many were dropped."""
        if which == "all":
            targets = list(self._clients.values())
        else:
            wanted = int(which)  # ValueError for anything but "all" or a connection id
            targets = [c for c in self._clients.values() if c.id == wanted]
        for client in targets:
            client.abort()
        self.faults.drops += len(targets)
        self.stats["ws_drops"] += len(targets)
        return len(targets)

    # -- control API ------------------------------------------------------------------------

    async def _archetypes(self, request: web.Request) -> web.Response:
        return self._json(self.population.archetypes())

    async def _account(self, request: web.Request) -> web.Response:
        address = request.match_info["address"].lower()
        acct = self.engine.accounts.get(address)
        if acct is None:
            return self._json({"error": f"no account {address}"}, 404)
        return self._json(
            {
                "address": address,
                "usdc": str(acct.usdc),
                "account_value": str(self.engine.account_value(acct)),
                "positions": {
                    c: {"szi": str(p.szi), "entry_px": str(p.entry_px)}
                    for c, p in acct.positions.items()
                    if p.szi
                },
                "spot": {str(t): str(v) for t, v in acct.spot.items()},
                "open_orders": [
                    {
                        "oid": r.oid,
                        "coin": r.asset.name,
                        "is_buy": r.is_buy,
                        "px": str(r.px),
                        "sz": str(r.sz),
                        "cloid": r.cloid,
                    }
                    for r in acct.orders.values()
                ],
                "volume": str(acct.volume),
                "requests": acct.requests,
            }
        )

    async def _orders(self, request: web.Request) -> web.Response:
        cloid = request.query.get("cloid", "").lower()
        found = [
            {"user": a.address, "record": record_wire(a.records[a.cloids[cloid]])}
            for a in self.engine.accounts.values()
            if cloid in a.cloids and a.cloids[cloid] in a.records
        ]
        if not found:
            return self._json({"error": f"no order with cloid {cloid}"}, 404)
        return self._json(found)

    async def _control_body(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="a JSON object is required")
        return body

    async def _fund(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        try:
            address = str(body["address"]).lower()
            usdc = D(str(body.get("usdc", self.config.auto_fund_usd)))
            spot = D(str(body.get("spot_usdc", 0)))
        except (KeyError, InvalidOperation) as exc:
            raise web.HTTPBadRequest(text=f"bad fund request: {exc}") from exc
        acct = self.engine.open_account(address, usdc, spot)
        return self._json({"address": address, "usdc": str(acct.usdc)})

    async def _price(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        asset = self.engine.by_name.get(str(body.get("coin")))
        if asset is None:
            raise web.HTTPNotFound(text=f"unknown coin {body.get('coin')!r}")
        try:
            asset.path.set_mid(float(body["px"]))
        except (KeyError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad price: {exc}") from exc
        asset.depth = None
        return self._json({"coin": asset.name, "mid": str(asset.path.mid)})

    async def _trade(self, request: web.Request) -> web.Response:
        """Make an address trade now: ``{"address", "coin", "is_buy", "usd" | "sz"}``."""
        body = await self._control_body(request)
        address = str(body.get("address", "")).lower()
        asset = self.engine.by_name.get(str(body.get("coin")))
        if asset is None or len(address) != 42:
            raise web.HTTPBadRequest(text="address and a known coin are required")
        self.contact(address)
        is_buy = bool(body.get("is_buy", True))
        try:
            sz = (
                D(str(body["sz"]))
                if "sz" in body
                else round_size(D(str(body.get("usd", 1000))) / asset.path.mid, asset.sz_decimals)
            )
        except InvalidOperation as exc:
            raise web.HTTPBadRequest(text=f"bad size: {exc}") from exc
        statuses = [
            self.engine.market_order(
                address, asset.name, is_buy, sz, D("0.05"), bool(body.get("reduce_only"))
            )
        ]
        self.publish()
        return self._json({"statuses": statuses})

    async def _step(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        ticks = int(body.get("ticks", 1))
        self.step(ticks)
        return self._json({"ticks": self.engine.ticks, "time": self.engine.now_ms})

    async def _stats(self, request: web.Request) -> web.Response:
        return self._json(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        e = self.engine
        return {
            **dict(self.stats),
            **e.counters,
            "ticks": e.ticks,
            "time": e.now_ms,
            "accounts": len(e.accounts),
            "ws_connections": len(self._clients),
            "refused": dict(self.core.refused),
            "population_actions": self.population.actions,
        }

    async def _faults_get(self, request: web.Request) -> web.Response:
        return self._json(self.faults.snapshot())

    async def _faults_post(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        try:
            if "drop_ws" in body:
                self.drop_ws(body["drop_ws"])
            self.faults.update(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad fault spec: {exc}") from exc
        return self._json(self.faults.snapshot())
