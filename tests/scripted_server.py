"""A local HTTP server on port 0 answering /info from the recorded fixtures and /exchange from a
script, so the clients meet every response and error shape without the real exchange."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

# Real mainnet responses recorded by the official SDK's tests (see fixtures/hyperliquid/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hyperliquid"


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())["response"]


FIXTURE_BY_TYPE = {
    "meta": "info_meta.json",
    "allMids": "info_all_mids.json",
    "l2Book": "info_l2_book.json",
    "clearinghouseState": "info_clearinghouse_state.json",
    "openOrders": "info_open_orders.json",
    "frontendOpenOrders": "info_frontend_open_orders.json",
    "historicalOrders": "info_historical_orders.json",
    "userFills": "info_user_fills.json",
    "userFunding": "info_user_funding.json",
    "portfolio": "info_portfolio.json",
    "userRateLimit": "info_user_rate_limit.json",
    "userRole": "info_user_role.json",
    "extraAgents": "info_extra_agents.json",
    "candleSnapshot": "info_candle_snapshot.json",
}

# A scripted answer: (status, body) where body is JSON-able or raw bytes, or an action:
# "timeout" (never answer), "disconnect" (close the connection without answering).
Reply = tuple[int, Any] | str


@dataclass
class ScriptedServer:
    url: str = ""
    requests: list[tuple[str, Any]] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    info_handlers: dict[str, Callable[[dict[str, Any]], Any]] = field(default_factory=dict)

    def then(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body in self.requests if p == path]

    async def _answer(
        self, request: web.Request, default: Callable[[dict[str, Any]], Any]
    ) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body))
        reply: Reply = self.script.popleft() if self.script else (200, default(body))
        if reply == "timeout":
            await asyncio.sleep(3600)
        if reply == "disconnect":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        assert isinstance(reply, tuple)
        status, payload = reply
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=status, body=raw, content_type="application/json")

    def _info(self, body: dict[str, Any]) -> Any:
        kind = body.get("type")
        if kind in self.info_handlers:
            return self.info_handlers[kind](body)
        return fixture(FIXTURE_BY_TYPE[str(kind)])

    async def info(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._info)

    async def exchange(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(
            request, lambda b: {"status": "ok", "response": {"type": "default"}}
        )


@asynccontextmanager
async def scripted_server() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    app = web.Application()
    app.router.add_post("/info", server.info)
    app.router.add_post("/exchange", server.exchange)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()
