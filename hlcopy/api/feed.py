"""The live feed: ``WS /ws/v1/updates``.

A client gets a ``connection`` message, then every event of the bus it asked for (by address and
type in the query string) as ``{"type", "data", "timestamp"}``. Each client has a bounded buffer
in the bus: publishing never waits. A client that falls behind by more than its buffer, or that
takes longer than ``send_timeout_s`` to accept one message, is dropped (close code 1013, "try
again later"); the daemon never slows down for it. Auth is the REST reads' (``api.read_auth``):
the upgrade request is a GET through the same middleware. A browser, which cannot set headers
on a WebSocket, offers the subprotocols ``hlcopy.v1`` and ``bearer.<token>`` instead; the feed
answers ``hlcopy.v1``.

A WebSocket is not bound by the browser's same-origin policy: any page the user opens could
connect to the daemon on localhost and read the feed. An upgrade whose ``Origin`` (sent by every
browser, by no other client) is not the daemon's own address is refused with 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from hlcopy import __version__
from hlcopy.api import schemas
from hlcopy.api.params import ApiError, Args, Route, addresses, words
from hlcopy.api.responses import dumps
from hlcopy.api.scout import SCOUT, Scout, unavailable
from hlcopy.clock import SYSTEM, Clock
from hlcopy.events import Overflowed, Subscriber

log = structlog.get_logger()

_CLOSE_TIMEOUT_S: Final = 2.0
FEED_PROTOCOL: Final = "hlcopy.v1"


class Feeds:
    """The open feed connections and their figures."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.open: set[web.WebSocketResponse] = set()
        self.connected = 0
        self.sent = 0
        self.dropped_slow = 0
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.open),
            "connected": self.connected,
            "sent": self.sent,
            "dropped_slow": self.dropped_slow,
        }

    async def close_all(self, _app: web.Application | None = None) -> None:
        """On shutdown: tell every client the server is going away."""
        for ws in list(self.open):
            with contextlib.suppress(TimeoutError, OSError, RuntimeError):
                async with self.clock.timeout(_CLOSE_TIMEOUT_S):
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


FEEDS: Final = web.AppKey("feeds", Feeds)


async def updates(request: web.Request, args: Args) -> web.StreamResponse:
    scout = request.app[SCOUT]
    feeds = request.app[FEEDS]
    bus = scout.bus
    if bus is None:
        raise unavailable("the event bus")
    # No per-message compression: it would cost the event loop CPU per client and message.
    # The protocol is for browsers, which offer it beside their token (see the auth middleware).
    ws = web.WebSocketResponse(
        heartbeat=30.0, max_msg_size=4096, compress=False, protocols=(FEED_PROTOCOL,)
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "this route speaks WebSocket: send an Upgrade request", "not_websocket")
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, request.host):
        raise ApiError(403, f"the feed is not open to pages of {origin}", "forbidden")
    if len(feeds.open) >= scout.feed.max_clients:
        raise ApiError(503, "too many live feed clients", "unavailable", {"Retry-After": "5"})
    await ws.prepare(request)
    types, addrs = args["type"], args["address"]
    sub = bus.subscribe(scout.feed.buffer, types=types, addresses=addrs)
    feeds.open.add(ws)
    feeds.connected += 1
    client = feeds.next_id()
    try:
        hello = {
            "type": "connection",
            "data": {
                "version": __version__,
                "filters": {
                    "address": None if addrs is None else sorted(addrs),
                    "type": None if types is None else sorted(types),
                },
                "buffer": scout.feed.buffer,
            },
            "timestamp": scout.clock.time_ms(),
        }
        await ws.send_frame(dumps(hello), WSMsgType.TEXT)
        sender = asyncio.create_task(
            _send(request, ws, sub, scout, feeds), name=f"api:feed:{client}"
        )
        try:
            # Reading keeps the connection's pings and close handshake going; clients have
            # nothing to say, so their messages are ignored.
            async for _ in ws:
                pass
        finally:
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled ourselves, not just the sender
    finally:
        bus.unsubscribe(sub)
        feeds.open.discard(ws)
    return ws


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the host (and port) the request was sent to: the
    daemon's own dashboard."""
    try:
        parts = urlsplit(origin)
        netloc = parts.netloc.lower()
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(netloc) and netloc == host.lower()


async def _send(
    request: web.Request, ws: web.WebSocketResponse, sub: Subscriber, scout: Scout, feeds: Feeds
) -> None:
    """Forward the subscriber's events until the client goes, or drop it when it is slow."""
    try:
        async for event in sub:
            body = dumps({"type": event.type, "data": event.data, "timestamp": event.timestamp_ms})
            async with scout.clock.timeout(scout.feed.send_timeout_s):
                await ws.send_frame(body, WSMsgType.TEXT)
            feeds.sent += 1
    except Overflowed as exc:
        feeds.dropped_slow += 1
        log.warning("live feed client dropped", reason=str(exc))
        await _close(request, ws, scout.clock)
    except TimeoutError:
        # It does not read: a close frame would wait behind everything already unread.
        feeds.dropped_slow += 1
        log.warning("live feed client dropped", reason="a send timed out")
        _abort(request)
    except (ConnectionError, RuntimeError):  # the client went while we were sending
        return
    except Exception as exc:
        log.error("live feed failed", exc_info=exc)
        _abort(request)


async def _close(request: web.Request, ws: web.WebSocketResponse, clock: Clock) -> None:
    """Close with 1013 ("try again later") if the client still listens; else cut it off."""
    try:
        async with clock.timeout(_CLOSE_TIMEOUT_S):
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")
    except (TimeoutError, ConnectionError, RuntimeError):
        _abort(request)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


ROUTES: Final = (
    Route(
        "GET",
        "/ws/v1/updates",
        updates,
        "The live feed (WebSocket)",
        "feed",
        params=(
            addresses("address", 1000, "Only events about these addresses (comma-separated)."),
            words("type", 16, 'Only these event types: "position", "copy", "risk", "opportunity".'),
        ),
        response=schemas.ref("FeedMessage"),
        status=101,
        errors=(400, 403, 503),
        description="Upgrade to a WebSocket. The server sends a message of type "
        '"connection" first, then one message per event: {"type", "data", "timestamp"} '
        "(FeedMessage). A client that falls more than a buffer behind, or does not accept a "
        "message within a few seconds, is closed with code 1013. With api.read_auth, a client "
        "that cannot send the Authorization header (a browser) offers the subprotocols "
        "hlcopy.v1 and bearer.<token>. A browser page of another origin than the daemon's "
        "own address is refused (403).",
    ),
)
