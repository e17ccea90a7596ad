"""A scriptable local WebSocket server speaking Hyperliquid's stream protocol, for pool tests:
it greets, acknowledges subscriptions, answers pings and posts, and can drop connections, go
silent, send garbage and replay snapshots on resubscription."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed


@dataclass
class WsServer:
    url: str = ""
    connections: set[ServerConnection] = field(default_factory=set)
    subscriptions: dict[ServerConnection, list[dict[str, Any]]] = field(default_factory=dict)
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    max_concurrent: int = 0
    silent: bool = False
    ack: bool = True
    answer_posts: bool = True
    reverse_posts: bool = False
    snapshot: Callable[[dict[str, Any]], Any] | None = None
    _held_posts: list[tuple[ServerConnection, dict[str, Any]]] = field(default_factory=list)
    _server: Server | None = None

    def sent(self, method: str) -> list[dict[str, Any]]:
        return [m for _, m in self.received if m.get("method") == method]

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.add(ws)
        self.connects.append(time.monotonic())
        self.max_concurrent = max(self.max_concurrent, len(self.connections))
        self.subscriptions[ws] = []
        try:
            await ws.send("Websocket connection established.")
            async for raw in ws:
                msg = orjson.loads(raw)
                self.received.append((time.monotonic(), msg))
                if self.silent:
                    continue
                await self._on(ws, msg)
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(ws)
            self.subscriptions.pop(ws, None)

    async def _on(self, ws: ServerConnection, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method == "ping":
            await ws.send(orjson.dumps({"channel": "pong"}).decode())
        elif method == "subscribe":
            sub = msg["subscription"]
            self.subscriptions[ws].append(sub)
            if self.ack:
                await ws.send(
                    orjson.dumps(
                        {
                            "channel": "subscriptionResponse",
                            "data": {"method": "subscribe", "subscription": sub},
                        }
                    ).decode()
                )
            if self.snapshot is not None:
                snap = self.snapshot(sub)
                if snap is not None:
                    await ws.send(orjson.dumps(snap).decode())
        elif method == "unsubscribe":
            with contextlib.suppress(ValueError):
                self.subscriptions[ws].remove(msg["subscription"])
        elif method == "post":
            if not self.answer_posts:
                return
            self._held_posts.append((ws, msg))
            if not self.reverse_posts or len(self._held_posts) >= 2:
                held, self._held_posts = self._held_posts, []
                for conn, post in reversed(held) if self.reverse_posts else held:
                    await conn.send(orjson.dumps(self._post_reply(post)).decode())

    @staticmethod
    def _post_reply(msg: dict[str, Any]) -> dict[str, Any]:
        request = msg["request"]
        if request["type"] == "info":
            payload = {"type": request["payload"]["type"], "data": {"echo": request["payload"]}}
        else:
            payload = {"status": "ok", "response": {"type": "default"}}
        return {
            "channel": "post",
            "data": {"id": msg["id"], "response": {"type": request["type"], "payload": payload}},
        }

    async def publish(
        self, channel: str, data: Any, where: Callable[[dict[str, Any]], bool] = lambda s: True
    ) -> int:
        """Send a data message to every connection holding a matching subscription."""
        text = orjson.dumps({"channel": channel, "data": data}).decode()
        n = 0
        for ws, subs in list(self.subscriptions.items()):
            if any(where(s) for s in subs):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(text)
                    n += 1
        return n

    async def send_raw(self, text: str | bytes) -> None:
        for ws in list(self.connections):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(text)

    async def drop_all(self) -> None:
        for ws in list(self.connections):
            await ws.close(code=1012, reason="test drop")


@contextlib.asynccontextmanager
async def ws_server() -> AsyncIterator[WsServer]:
    state = WsServer()
    async with serve(state._handler, "127.0.0.1", 0, ping_interval=None) as server:
        state._server = server
        port = next(iter(server.sockets)).getsockname()[1]
        state.url = f"ws://127.0.0.1:{port}/ws"
        yield state
        server.close()
