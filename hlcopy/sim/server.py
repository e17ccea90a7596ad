"""The simulated exchange's network face: aiohttp on loopback, one process, one event loop.

Routes: ``POST /info``, ``POST /exchange``, ``GET /ws``, ``GET /leaderboard`` and the control API
under ``/_sim/``. REST weight is charged per client address (HTTP 429 past the limit); the
WebSocket endpoint enforces the per-IP limits. Accounts are funded explicitly (``POST
/_sim/fund``, ``SimConfig.funds``, ``Simulator.fund``): an address nobody funded is empty, as on
the exchange, and its orders are refused as an unknown user's.

Time comes from one clock. In real-time mode the market runs ``speed`` times faster than the
clock: a tick every ``tick_ms`` of clock time advances the market by ``tick_ms * speed``, so
holding times, funding hours and history stay consistent in exchange milliseconds while the
demo compresses them. Client-side times (nonces, ``expiresAfter``) are checked against the
clock, not against the faster market. In stepped mode the market moves only through ``step``.

Nothing a client sends can stop the simulator: requests are validated before any arithmetic,
an unexpected error is logged and answered, and every background task is supervised (logged
and restarted when it fails).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from hlcopy.clock import SYSTEM, Clock
from hlcopy.hl.wire import round_size
from hlcopy.sim import views
from hlcopy.sim.actions import BadAction, ExchangeCore
from hlcopy.sim.candles import INTERVAL_MINUTES, bucket_bounds, candle_wire, merge
from hlcopy.sim.engine import Engine, Events, record_wire
from hlcopy.sim.faults import Faults
from hlcopy.sim.fmt import bounded_usd, num, usd
from hlcopy.sim.history import CoinSpec, Pasts
from hlcopy.sim.population import Population

log = structlog.get_logger()

D = Decimal
GREETING = "Websocket connection established."
DESERIALIZE = "Failed to deserialize the JSON body into the target type"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
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
COIN_SUBS = frozenset({"trades", "l2Book", "bbo", "candle"})
SUPPORTED_SUBS = USER_SUBS | COIN_SUBS | {"allMids"}
STAT_KEYS = (
    "info_requests",
    "exchange_requests",
    "ws_actions",
    "weight_charged",
    "rate_limited",
    "replies_lost",
    "ws_connections_total",
    "ws_refused",
    "ws_limit_closes",
    "ws_idle_closes",
    "ws_drops",
    "ws_messages_sent",
    "ws_errors",
    "internal_errors",
    "task_restarts",
)
MAX_STEP_TICKS = 36_000  # per request: an hour of 100 ms ticks
WARM_PAUSE_S = 0.02


@dataclass
class SimConfig:
    """How the simulated exchange behaves."""

    host: str = "127.0.0.1"
    port: int = 8787
    seed: int = 1
    traders: int = 200
    speed: float = 1.0  # market time per unit of clock time (real-time mode)
    rate: float = 5.0  # background flow: noise-trader actions per second of market time
    tick_ms: int = 100  # clock time between ticks (real-time), market time per step (stepped)
    realtime: bool = True  # False: time moves only through step()
    warmup_s: float = 60.0  # market time traded before serving (the past is synthesized)
    start_ms: int | None = None  # when the live market opens (default: the clock's now)
    funds: dict[str, Decimal] = field(default_factory=dict)  # address -> USD, at start
    is_mainnet: bool = False  # which signatures are valid (the SDK signs testnet off mainnet)
    weight_per_minute: int = 1200
    ws_idle_s: float = 60.0
    ws_max_connections: int = 10
    ws_max_new_connections_per_min: int = 30
    ws_max_subscriptions: int = 1000
    ws_max_users: int = 10
    ws_max_messages_per_min: int = 2000
    book_every_ticks: int = 5  # l2Book, allMids, candle and state pushes, every few ticks
    # Build every trader's past in the background after start (default: in real-time mode;
    # stepped tests build the pasts they ask about, when they ask).
    warm_pasts: bool | None = None


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
    last_sent: float
    queue: asyncio.Queue[tuple[str, bool]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=20_000)
    )
    subs: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    held: str | None = None  # a message held back to reorder with the next
    silent: bool = False  # half-open on purpose: this connection never sends again

    def send(self, text: str, faults: Faults, data: bool = False) -> None:
        """Queue a message; ``data`` marks feed messages (the ones faults may mangle)."""
        if faults.ws_silent or self.silent:
            return
        try:
            self.queue.put_nowait((text, data))
        except asyncio.QueueFull:  # the client cannot keep up: the exchange would drop it too
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _coin_args(engine: Engine) -> dict[str, tuple[int, bool, float, float]]:
    return {
        a.name: (a.sz_decimals, a.is_spot, a.path.daily_vol, a.open_price)
        for a in engine.assets.values()
    }


class Simulator:
    """A simulated Hyperliquid: ``async with Simulator(cfg) as sim: ... sim.url ...``."""

    def __init__(self, config: SimConfig | None = None, clock: Clock | None = None) -> None:
        self.config = cfg = config or SimConfig()
        self.clock = clock or SYSTEM
        opens = cfg.start_ms if cfg.start_ms is not None else self.clock.time_ms()
        if cfg.realtime:
            opens -= int(cfg.warmup_s * 1000)
        self.engine = Engine(seed=cfg.seed, start_ms=opens, tick_ms=cfg.tick_ms)
        self.population = Population(self.engine, cfg.traders, seed=cfg.seed, rate=cfg.rate)
        self.pasts = Pasts(
            cfg.seed,
            self.engine.start_ms,
            _coin_args(self.engine),
            {
                a.name: CoinSpec(a.name, a.sz_decimals, a.max_leverage, a.strict_isolated)
                for a in self.engine.assets.values()
                if not a.is_spot
            },
            {
                t.address: (t.profile, self.engine.accounts[t.address].opening)
                for t in self.population.traders
            },
        )
        self.core = ExchangeCore(
            self.engine, is_mainnet=cfg.is_mainnet, client_now=self._client_now
        )
        self.faults = Faults(now=self.clock.monotonic)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._weights = _Window()
        self._ws_messages = _Window()
        self._ws_connects = _Window()
        self._clients: dict[int, WsClient] = {}
        self._subs: dict[tuple[str, str, str], set[WsClient]] = defaultdict(set)
        self._last_pushed: dict[tuple[str, str, str], str] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = cfg.port
        for address, amount in cfg.funds.items():
            self.fund(address, amount)
        if cfg.realtime and cfg.warmup_s > 0:
            self.step(int(cfg.warmup_s * 1000 / cfg.tick_ms), publish=False)

    def _client_now(self) -> int:
        """The time clients' nonces and expiries are judged by: the clock's (real time), or
        the market's when the market is stepped."""
        return self.clock.time_ms() if self.config.realtime else self.engine.now_ms

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/ws"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self._guard])
        app.router.add_post("/info", self._info)
        app.router.add_post("/exchange", self._exchange)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/leaderboard", self._leaderboard)
        app.router.add_get("/_sim/archetypes", self._archetypes)
        app.router.add_get("/_sim/roles", self._roles)
        app.router.add_get("/_sim/truth/{address}", self._truth)
        app.router.add_get("/_sim/accounts/{address}", self._account)
        app.router.add_get("/_sim/positions/{address}", self._positions_at)
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
        self._spawn("sim:idle", self._sweep_idle)
        if self.config.realtime:
            self._spawn("sim:ticker", self._ticker)
        if self.config.realtime if self.config.warm_pasts is None else self.config.warm_pasts:
            self._spawn("sim:pasts", self._warm_pasts)
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

    def _spawn(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` as an owned, named task; if it fails it is logged and restarted."""

        async def supervised() -> None:
            delay = 0.1
            while True:
                try:
                    await body()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.stats["task_restarts"] += 1
                    log.exception("simulator task failed, restarting", task=name)
                    await self.clock.sleep(delay)
                    delay = min(5.0, delay * 2)

        self._tasks.append(asyncio.create_task(supervised(), name=name))

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The last line: an error nobody anticipated is logged and answered, never a crash."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("simulator request failed", path=request.path)
            return web.Response(status=500, text="internal error")

    # -- time -------------------------------------------------------------------------------

    def step(self, ticks: int = 1, publish: bool = True) -> None:
        """Advance the market ``ticks`` ticks of ``tick_ms`` (stepped mode, tests, warm-up)."""
        dt = self.config.tick_ms / 1000
        for _ in range(ticks):
            self.engine.step()
            self.population.step(dt)
            if publish:
                self.publish()
            else:
                self.engine.drain_events()

    async def _ticker(self) -> None:
        clock, cfg, engine = self.clock, self.config, self.engine
        interval = cfg.tick_ms / 1000
        start = clock.monotonic()
        opened = engine.now_ms
        due = start
        while True:
            due += interval
            delay = due - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            elif delay < -1.0:  # far behind (a stalled host): skip ahead, do not spiral
                due = clock.monotonic()
            else:
                await asyncio.sleep(0)  # let requests in between ticks even when behind
            market = opened + int((clock.monotonic() - start) * 1000 * cfg.speed)
            if market <= engine.now_ms:
                continue
            dt = (market - engine.now_ms) / 1000
            engine.step(market)
            # A busy tick is cut into chunks so that requests are answered in between.
            todo = self.population.plan(dt)
            while todo > 0:
                for _ in range(min(todo, 32)):
                    self.population.flow()
                todo -= 32
                if todo > 0:
                    self.publish()
                    await asyncio.sleep(0)
            while self.population.run_due(limit=32):
                self.publish()
                await asyncio.sleep(0)
            self.publish()

    async def _warm_pasts(self) -> None:
        """Build every trader's past, one at a time, leaving the event loop room to breathe
        between them (a coin or a trader takes tens of milliseconds)."""
        for coin in list(self.engine.by_name):
            self.pasts.coin(coin)
            await self.clock.sleep(WARM_PAUSE_S)
        for address in self.pasts.pending():
            self.pasts.account(address)
            await self.clock.sleep(WARM_PAUSE_S)
        log.info("simulator pasts built", traders=len(self.population.traders))

    # -- accounts ---------------------------------------------------------------------------

    def fund(self, address: str, usdc: Decimal | int | str, spot_usdc: Decimal | int = 0) -> None:
        """Deposit ``usdc`` to ``address`` (opening its account if needed)."""
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"not an address: {address!r}")
        self.engine.open_account(address.lower(), D(usdc), D(spot_usdc))
        self.publish()

    # -- REST -------------------------------------------------------------------------------

    def _ip(self, request: web.Request) -> str:
        return request.remote or "?"

    def _charge(self, ip: str, weight: int) -> bool:
        now = self.clock.monotonic()
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
        return views.answer(self.engine, body, self.pasts)

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
        if not self._charge(
            self._ip(request), views.base_weight(str(kind), body if isinstance(body, dict) else {})
        ):
            return web.Response(status=429, text="null")
        try:
            data = self._answer_info(body)
        except views.BadInfo:
            return web.Response(status=422, text=DESERIALIZE)
        extra = views.item_weight(str(kind), len(data) if isinstance(data, list) else 0)
        if extra:  # known only now; charged even past the limit, as the exchange does
            self._weights.add(self._ip(request), extra, self.clock.monotonic())
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
            items = action.get("orders") or action.get("cancels") or action.get("modifies")
            n = len(items) if isinstance(items, list) else 1
        if not self._charge(self._ip(request), 1 + n // 40):
            return web.Response(status=429, text="null")
        delay = self.faults.take_delay()
        if delay:
            await self.clock.sleep(delay)  # lands late, after the client may have given up
        try:
            reply = self._act(body)
        except BadAction:
            return web.Response(status=422, text=DESERIALIZE)
        if self.faults.take_lose():  # applied, and the reply never arrives
            self.stats["replies_lost"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        failed = self.faults.take_fail()
        if failed is not None:  # applied, and a gateway error comes back instead of the reply
            self.stats["replies_lost"] += 1
            return web.Response(status=failed, text="error")
        return self._json(reply)

    def _act(self, body: Any) -> dict[str, Any]:
        reply = self.core.handle(body)
        self.publish()
        return reply

    async def _leaderboard(self, request: web.Request) -> web.Response:
        return self._json(views.leaderboard(self.engine, self.pasts))

    # -- WebSocket --------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        faulty = self._fault("/ws")  # an http_error naming "/ws" refuses the upgrade
        if faulty is not None:
            return faulty
        ip = self._ip(request)
        now = self.clock.monotonic()
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
        client = WsClient(next(self._ids), ip, ws, request.transport, self.clock.monotonic())
        self._clients[client.id] = client
        self.stats["ws_connections_total"] += 1
        writer = asyncio.create_task(self._writer(client), name=f"sim:ws{client.id}:writer")
        client.send(GREETING, self.faults)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if (
                    self._ws_messages.used(ip, self.clock.monotonic())
                    >= cfg.ws_max_messages_per_min
                ):
                    client.send(
                        orjson.dumps(
                            {"channel": "error", "data": "Too many messages sent"}
                        ).decode(),
                        self.faults,
                    )
                    self.stats["ws_limit_closes"] += 1
                    break
                self._ws_messages.add(ip, 1, self.clock.monotonic())
                try:
                    await self._on_ws_message(client, msg.data)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bad message is answered, the connection stays
                    self.stats["internal_errors"] += 1
                    log.exception("simulator websocket message failed")
                    self._ws_error(client, "Internal error handling the request")
        finally:
            self._clients.pop(client.id, None)
            for key in client.subs:
                self._subs[key].discard(client)
            self._rewatch()
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this handler is being cancelled, not only its writer
        return ws

    async def _writer(self, client: WsClient) -> None:
        while True:
            text, is_data = await client.queue.get()
            if self.faults.ws_silent or client.silent:
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
                client.last_sent = self.clock.monotonic()
                self.stats["ws_messages_sent"] += 1

    def _ws_error(self, client: WsClient, message: str) -> None:
        self.stats["ws_errors"] += 1
        client.send(orjson.dumps({"channel": "error", "data": message}).decode(), self.faults)

    @staticmethod
    def _show(value: Any) -> str:
        """Part of a client's message, quoted back in an error (bounded)."""
        try:
            return orjson.dumps(value).decode()[:200]
        except TypeError:
            return repr(value)[:200]

    async def _on_ws_message(self, client: WsClient, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
            method = msg["method"]
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            self._ws_error(client, f"Error parsing JSON into valid websocket request: {raw[:100]}")
            return
        if method == "ping":
            client.send('{"channel":"pong"}', self.faults)
        elif method in ("subscribe", "unsubscribe"):
            sub = msg.get("subscription")
            key = self._sub_key(sub)
            if key is None:
                self._ws_error(client, f"Invalid subscription {self._show(sub)}")
                return
            assert isinstance(sub, dict)
            if method == "subscribe":
                self._subscribe(client, key, sub)
            else:
                self._unsubscribe(client, key, sub)
        elif method == "post":
            await self._post(client, msg)
        else:
            self._ws_error(client, f"Unknown method {self._show(method)}")

    def _sub_key(self, sub: Any) -> tuple[str, str, str] | None:
        """(type, user or coin, variant) of a valid subscription, None for anything else."""
        if not isinstance(sub, dict):
            return None
        kind = sub.get("type")
        if not isinstance(kind, str) or kind not in SUPPORTED_SUBS:
            return None
        if kind in USER_SUBS:
            user = sub.get("user")
            if not isinstance(user, str) or not _ADDRESS.fullmatch(user):
                return None
            variant = ""
            if kind == "userFills":
                agg = sub.get("aggregateByTime")
                if agg is not None and not isinstance(agg, bool):
                    return None
                variant = "agg" if agg else ""
            elif kind in ("clearinghouseState", "openOrders"):
                dex = sub.get("dex") or ""
                if not isinstance(dex, str) or len(dex) > 20:
                    return None
                variant = dex
            return kind, user.lower(), variant
        if kind == "allMids":
            dex = sub.get("dex") or ""
            return (kind, dex, "") if isinstance(dex, str) and len(dex) <= 20 else None
        coin = sub.get("coin")
        if not isinstance(coin, str) or coin not in self.engine.by_name:
            return None
        if kind == "candle":
            interval = sub.get("interval")
            if not isinstance(interval, str) or interval not in INTERVAL_MINUTES:
                return None
            return kind, coin, interval
        if kind == "l2Book":
            sig, mantissa = sub.get("nSigFigs"), sub.get("mantissa")
            if sig is not None and (isinstance(sig, bool) or sig not in (2, 3, 4, 5)):
                return None
            if mantissa is not None and (
                isinstance(mantissa, bool) or mantissa not in (1, 2, 5) or sig != 5
            ):
                return None
            return kind, coin, f"{sig}:{mantissa}"
        return kind, coin, ""

    def _subscribe(self, client: WsClient, key: tuple[str, str, str], sub: dict[str, Any]) -> None:
        if key in client.subs:
            self._ws_error(client, f"Already subscribed: {self._show(sub)}")
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

    def _unsubscribe(
        self, client: WsClient, key: tuple[str, str, str], sub: dict[str, Any]
    ) -> None:
        if client.subs.pop(key, None) is None:
            self._ws_error(client, f"Already unsubscribed: {self._show(sub)}")
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
        """Tell the engine whose fills, order updates and events anyone is streaming."""
        self.engine.watched = {
            user for (kind, user, _), clients in self._subs.items() if clients and kind in USER_SUBS
        }

    def _channel_data(self, key: tuple[str, str, str], snapshot: bool) -> Any:
        """The current data of a state-like feed (None when there is nothing to send)."""
        kind, arg, variant = key
        engine = self.engine
        acct = engine.accounts.get(arg)
        if kind == "l2Book":
            sig, mantissa = variant.split(":")
            return views.l2_book(
                engine,
                arg,
                None if sig == "None" else int(sig),
                None if mantissa == "None" else int(mantissa),
            )
        if kind == "allMids":
            return {"mids": views.all_mids(engine, arg)}
        if kind == "bbo":
            return views.bbo(engine, arg)
        if kind == "candle":
            return self._candle(arg, variant)
        if kind == "clearinghouseState":
            return {
                "dex": variant,
                "user": arg,
                "clearinghouseState": views.clearinghouse_state(engine, acct, variant),
            }
        if kind == "openOrders":
            return {"dex": variant, "user": arg, "orders": views.open_orders(engine, acct, variant)}
        if not snapshot:
            return None
        if kind == "userFills":
            fills = views.user_fills(engine, self.pasts, arg, acct, variant == "agg")[::-1]
            return {"isSnapshot": True, "user": arg, "fills": fills}
        if kind == "userFundings":
            rows = views.user_funding(
                engine, self.pasts, arg, acct, engine.now_ms - 86_400_000, None
            )
            return {
                "isSnapshot": True,
                "user": arg,
                "fundings": [{"time": r["time"], **_funding_item(r["delta"])} for r in rows],
            }
        if kind == "userNonFundingLedgerUpdates":
            return {
                "isSnapshot": True,
                "user": arg,
                "nonFundingLedgerUpdates": views.ledger_updates(
                    engine, self.pasts, arg, acct, 0, None
                ),
            }
        return None

    def _candle(self, coin: str, interval: str) -> dict[str, Any] | None:
        asset = self.engine.by_name[coin]
        start, end = bucket_bounds(interval, self.engine.now_ms)
        if INTERVAL_MINUTES[interval] and INTERVAL_MINUTES[interval] < 60:
            parts = [
                views.minute_bar(self.engine, self.pasts, asset, m)
                for m in range(start // 60_000, end // 60_000)
            ]
        else:
            parts = [
                views.hour_bar(self.engine, self.pasts, asset, h)
                for h in range(
                    start // 3_600_000, min(end, self.engine.now_ms + 1) // 3_600_000 + 1
                )
            ]
        bar = merge(p for p in parts if p is not None)
        return None if bar is None else candle_wire(coin, interval, start, end, bar)

    def _snapshot(self, client: WsClient, key: tuple[str, str, str]) -> None:
        data = self._channel_data(key, snapshot=True)
        if data is not None:
            channel = "user" if key[0] == "userEvents" else key[0]
            text = orjson.dumps({"channel": channel, "data": data}).decode()
            self._last_pushed[key] = text
            client.send(text, self.faults, data=True)

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
                await self.clock.sleep(delay)
            self.stats["ws_actions"] += 1
            try:
                response = {"type": "action", "payload": self._act(payload)}
            except BadAction:
                response = {"type": "error", "payload": f"422 {DESERIALIZE}"}
            if self.faults.take_lose():
                self.stats["replies_lost"] += 1
                return
        else:
            response = {"type": "error", "payload": "400 request type must be info or action"}
        try:
            text = orjson.dumps({"channel": "post", "data": {"id": post_id, "response": response}})
        except TypeError:  # an id orjson cannot write back
            text = orjson.dumps({"channel": "post", "data": {"id": None, "response": response}})
        client.send(text.decode(), self.faults)

    def publish(self) -> None:
        """Send what the engine produced since the last call to the subscribed clients."""
        events = self.engine.drain_events()
        subs = self._subs
        if subs:
            self._publish_events(events)
            if self.engine.ticks % self.config.book_every_ticks == 0:
                self._publish_states(events)

    def _send(self, key: tuple[str, str, str], channel: str, data: Any) -> None:
        clients = self._subs.get(key)
        if clients:
            text = orjson.dumps({"channel": channel, "data": data}).decode()
            for c in clients:
                c.send(text, self.faults, data=True)

    def _publish_events(self, events: Events) -> None:
        subs = self._subs
        for coin, batch in events.trades.items():
            if subs.get(("trades", coin, "")):
                self._send(("trades", coin, ""), "trades", batch)
        for user, fills in events.fills.items():
            if subs.get(("userFills", user, "")):
                self._send(
                    ("userFills", user, ""),
                    "userFills",
                    {"isSnapshot": False, "user": user, "fills": fills},
                )
            if subs.get(("userFills", user, "agg")):
                self._send(
                    ("userFills", user, "agg"),
                    "userFills",
                    {"isSnapshot": False, "user": user, "fills": views._aggregate(fills)},
                )
            if subs.get(("userEvents", user, "")):
                self._send(("userEvents", user, ""), "user", {"fills": fills})
        for user, batch in events.updates.items():
            if subs.get(("orderUpdates", user, "")):
                self._send(("orderUpdates", user, ""), "orderUpdates", batch)
        for user, items in events.user.items():
            if subs.get(("userEvents", user, "")):
                for item in items:
                    self._send(("userEvents", user, ""), "user", item)
        for user, rows in events.fundings.items():
            if subs.get(("userFundings", user, "")):
                self._send(
                    ("userFundings", user, ""), "userFundings", {"user": user, "fundings": rows}
                )
        for user, rows in events.ledger.items():
            key = ("userNonFundingLedgerUpdates", user, "")
            if subs.get(key):
                self._send(key, key[0], {"user": user, "nonFundingLedgerUpdates": rows})
        for user in events.changed:
            for kind in ("clearinghouseState", "openOrders"):
                for key in [k for k in subs if k[0] == kind and k[1] == user and subs[k]]:
                    self._push_state(key)

    def _publish_states(self, events: Events) -> None:
        for key, clients in list(self._subs.items()):
            if clients and key[0] in ("l2Book", "allMids", "bbo", "candle", "clearinghouseState"):
                self._push_state(key)

    def _push_state(self, key: tuple[str, str, str]) -> None:
        """Send a state-like feed when it changed (bbo is sent only on change, as the
        exchange does; so are the others here, which saves the clients work)."""
        data = self._channel_data(key, snapshot=False)
        if data is None:
            return
        text = orjson.dumps({"channel": key[0], "data": data}).decode()
        if key[0] in ("bbo", "candle", "clearinghouseState", "openOrders"):
            comparable = text if key[0] == "candle" else _without_time(data)
            if self._last_pushed.get(key) == comparable:
                return
            self._last_pushed[key] = comparable
        for c in self._subs.get(key, ()):
            c.send(text, self.faults, data=True)

    async def _sweep_idle(self) -> None:
        """The exchange closes a connection it has sent nothing on for 60 seconds."""
        while True:
            await self.clock.sleep(min(1.0, self.config.ws_idle_s / 4))
            horizon = self.clock.monotonic() - self.config.ws_idle_s
            for client in list(self._clients.values()):
                if client.last_sent < horizon:
                    self.stats["ws_idle_closes"] += 1
                    await client.ws.close(code=1000, message=b"idle")

    # -- faults (Python API) ----------------------------------------------------------------

    def drop_ws(self, which: str | int = "all") -> int:
        """Drop every WebSocket connection, or one by id; returns how many were dropped."""
        targets = self._ws_targets(which)
        for client in targets:
            client.abort()
        self.faults.drops += len(targets)
        self.stats["ws_drops"] += len(targets)
        return len(targets)

    def half_open(self, which: str | int = "all") -> int:
        """Make every WebSocket connection (or one, by id) half-open: it stays up and reads,
        but never sends again, so only the client's own stall detection can notice. New
        connections are not affected. Returns how many were silenced."""
        targets = self._ws_targets(which)
        for client in targets:
            client.silent = True
        self.faults.half_opened += len(targets)
        return len(targets)

    def _ws_targets(self, which: str | int) -> list[WsClient]:
        if which == "all":
            return list(self._clients.values())
        if isinstance(which, bool) or not isinstance(which, int | str):
            raise ValueError("a WebSocket fault takes 'all' or a connection id")
        wanted = int(which)  # ValueError for anything but "all" or a connection id
        return [c for c in self._clients.values() if c.id == wanted]

    # -- control API ------------------------------------------------------------------------

    @staticmethod
    def _path_address(request: web.Request) -> str:
        address = request.match_info["address"]
        if not _ADDRESS.fullmatch(address):
            raise web.HTTPBadRequest(text="not an address")
        return address.lower()

    async def _archetypes(self, request: web.Request) -> web.Response:
        return self._json(self.population.archetypes())

    async def _roles(self, request: web.Request) -> web.Response:
        out: dict[str, dict[str, Any]] = {}
        for address, (kind, master) in self.engine.roles.items():
            out[address] = {"role": kind} if master is None else {"role": kind, "master": master}
        for agent, master in self.engine.agents.items():
            out[agent] = {"role": "agent", "master": master}
        return self._json(out)

    async def _truth(self, request: web.Request) -> web.Response:
        address = self._path_address(request)
        acct = self.engine.accounts.get(address)
        if acct is None:
            return self._json({"error": f"no account {address}"}, 404)
        at = request.query.get("at")
        served = None
        if at is not None:
            # A portfolio answered at ``at`` ms (or the last one: ``served``), among the last few.
            served = next(
                (p for p in reversed(acct.served) if at == "served" or str(p[0]) == at), None
            )
            if served is None:
                return self._json({"error": f"no portfolio of {address} served at {at}"}, 404)
        truth = views.account_truth(self.engine, self.pasts, acct, served=served)
        truth["archetype"] = self.population.archetypes().get(address)
        truth["role"] = views.user_role(self.engine, address)["role"]
        return self._json(truth)

    async def _positions_at(self, request: web.Request) -> web.Response:
        address = self._path_address(request)
        acct = self.engine.accounts.get(address)
        if acct is None:
            return self._json({"error": f"no account {address}"}, 404)
        try:
            at_ms = int(request.query.get("at", self.engine.now_ms))
        except ValueError:
            return self._json({"error": "at must be a time in milliseconds"}, 400)
        return self._json(
            {
                "address": address,
                "at": at_ms,
                "positions": views.positions_at(self.engine, acct, at_ms),
            }
        )

    async def _account(self, request: web.Request) -> web.Response:
        address = self._path_address(request)
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
                "leverage": {c: {"value": v, "cross": x} for c, (v, x) in acct.leverage.items()},
                "spot": {str(t): str(v) for t, v in acct.spot.items()},
                "open_orders": [
                    {
                        "oid": r.oid,
                        "coin": r.coin,
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
        """``{"address", "usdc", "spot_usdc"?}``: a deposit (amounts finite, 0 to 1e12)."""
        body = await self._control_body(request)
        address = body.get("address")
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise web.HTTPBadRequest(text="address must be 0x and 40 hex digits")
        usdc = bounded_usd(body.get("usdc", 0))
        spot = bounded_usd(body.get("spot_usdc", 0))
        if usdc is None or spot is None:
            raise web.HTTPBadRequest(text="amounts must be finite numbers from 0 to 1e12")
        if not usdc and not spot:
            raise web.HTTPBadRequest(text="fund with a positive amount")
        self.fund(address, usdc, spot)
        acct = self.engine.accounts[address.lower()]
        return self._json({"address": acct.address, "usdc": usd(acct.usdc)})

    async def _price(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        coin = body.get("coin")
        asset = self.engine.by_name.get(coin) if isinstance(coin, str) else None
        if asset is None:
            raise web.HTTPNotFound(text=f"unknown coin {self._show(body.get('coin'))}")
        px = bounded_usd(body.get("px"))
        if px is None or not px > 0 or px > 10**9:
            raise web.HTTPBadRequest(text="px must be a finite price above 0 and at most 1e9")
        self.engine.set_price(asset, float(px))
        return self._json({"coin": asset.name, "mid": num(asset.path.mid)})

    async def _trade(self, request: web.Request) -> web.Response:
        """Make a funded address trade now: ``{"address", "coin", "is_buy", "usd" | "sz"}``."""
        body = await self._control_body(request)
        address = body.get("address")
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise web.HTTPBadRequest(text="address must be 0x and 40 hex digits")
        address = address.lower()
        coin = body.get("coin")
        asset = self.engine.by_name.get(coin) if isinstance(coin, str) else None
        if asset is None:
            raise web.HTTPBadRequest(text="a known coin is required")
        if address not in self.engine.accounts:
            raise web.HTTPBadRequest(text=f"{address} is not funded")
        if "sz" in body:
            sz = bounded_usd(body["sz"])
        else:
            amount = bounded_usd(body.get("usd", 1000))
            sz = None if amount is None else round_size(amount / asset.path.mid, asset.sz_decimals)
        if sz is None or not sz > 0:
            raise web.HTTPBadRequest(text="sz (or usd) must be a positive finite number")
        statuses = [
            self.engine.market_order(
                address,
                asset.name,
                bool(body.get("is_buy", True)),
                sz,
                D("0.05"),
                bool(body.get("reduce_only")),
            )
        ]
        self.publish()
        return self._json({"statuses": statuses})

    async def _step(self, request: web.Request) -> web.Response:
        """``{"ticks": n}``: a stepped simulator moves n ticks (a real-time one runs by itself:
        stepping it would stop its clock until real time caught up)."""
        if self.config.realtime:
            raise web.HTTPBadRequest(text="this simulator runs in real time; it cannot be stepped")
        body = await self._control_body(request)
        ticks = body.get("ticks", 1)
        if isinstance(ticks, bool) or not isinstance(ticks, int) or not 0 < ticks <= MAX_STEP_TICKS:
            raise web.HTTPBadRequest(text=f"ticks must be an integer from 1 to {MAX_STEP_TICKS}")
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
            "opened": e.start_ms,
            "accounts": len(e.accounts),
            "ws_connections": len(self._clients),
            "refused": dict(self.core.refused),
            "population_actions": self.population.actions,
            "pasts_pending": len(self.pasts.pending()),
        }

    async def _faults_get(self, request: web.Request) -> web.Response:
        return self._json(self.faults.snapshot())

    async def _faults_post(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        try:
            if "drop_ws" in body:
                self.drop_ws(body["drop_ws"])
            if "ws_half_open" in body:
                self.half_open(body["ws_half_open"])
            self.faults.update(body)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise web.HTTPBadRequest(text=f"bad fault spec: {exc}") from exc
        return self._json(self.faults.snapshot())


def _funding_item(delta: dict[str, Any]) -> dict[str, Any]:
    return {k: delta[k] for k in ("coin", "usdc", "szi", "fundingRate", "nSamples")}


def _without_time(data: Any) -> str:
    """A state message without its timestamp, to tell whether anything changed."""
    if isinstance(data, dict):
        inner = data.get("clearinghouseState")
        if isinstance(inner, dict):
            data = {**data, "clearinghouseState": {k: v for k, v in inner.items() if k != "time"}}
        else:
            data = {k: v for k, v in data.items() if k != "time"}
    return orjson.dumps(data).decode()
