"""The API as a supervised component: an aiohttp AppRunner/TCPSite in the daemon's loop."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from hlcopy.api.app import build_app, error_response
from hlcopy.api.backtest import BacktestJobs
from hlcopy.api.close import CloseAll
from hlcopy.api.feed import FEEDS
from hlcopy.api.performance import PerformanceReport
from hlcopy.api.ports import RegistryView, TrackRequests
from hlcopy.api.positions import PositionsView
from hlcopy.api.scout import SCOUT, FeedSettings
from hlcopy.clock import SYSTEM, Clock
from hlcopy.component import Component, Ready, Supervisor
from hlcopy.config import ApiConfig
from hlcopy.credentials import Secret
from hlcopy.errors import ComponentFailed
from hlcopy.events import EventBus
from hlcopy.follow.follows import FollowRegistry
from hlcopy.follow.riskkeeper import RiskKeeper
from hlcopy.scout.leaderboard import Leaderboard
from hlcopy.store import Store

log = structlog.get_logger()


class _LogBudget:
    """At most ``max_lines`` warnings per window; the rest are counted and reported later."""

    def __init__(self, max_lines: int = 5, window_s: float = 60.0) -> None:
        self.max_lines, self.window_s = max_lines, window_s
        self._window_start = float("-inf")
        self._lines = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= self.window_s:
            self._window_start, self._lines = now, 0
        if self._lines >= self.max_lines:
            self.suppressed += 1
            return False
        self._lines += 1
        return True


class _ProtocolErrors(RequestHandler):
    """Answers requests aiohttp cannot even parse (a bad request line, oversized headers) with
    the API's JSON error shape, logging one warning line at most a few times a minute instead of
    aiohttp's traceback per request: a local client must not be able to flood the journal."""

    log_budget: _LogBudget

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        budget = self.log_budget
        if budget.allow(asyncio.get_running_loop().time()):
            suppressed, budget.suppressed = budget.suppressed, 0
            log.warning(
                "api request rejected before routing",
                status=status,
                error=(str(exc) or type(exc).__name__)[:200] if exc is not None else None,
                remote=request.remote,
                suppressed_since_last=suppressed,
            )
        if request.writer.output_size > 0:  # part of a response went out: nothing to add
            raise ConnectionError("the response was already started")
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "error"
        response = error_response(status, "malformed HTTP request" if status == 400 else reason)
        response.force_close()
        return response


class _Server(web.Server):
    log_budget: _LogBudget

    def __call__(self) -> RequestHandler:
        handler = _ProtocolErrors(self, loop=self._loop, **self._kwargs)
        handler.log_budget = self.log_budget
        return handler


class _Runner(web.AppRunner):
    """An AppRunner whose connections use ``_ProtocolErrors``.

    aiohttp offers no public hook for this; the server it builds is re-classed to ours (a
    subclass that only changes which protocol class it creates). A test sends malformed HTTP and
    checks the JSON reply, so an aiohttp upgrade that breaks this is noticed.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.log_budget = _LogBudget()
        return server


class ApiServer(Component):
    """Serves the JSON API; draining stops accepting connections and finishes open requests."""

    name = "api"
    core = False  # trading goes on without the API; systemd should not restart us for it

    def __init__(
        self,
        supervisor: Supervisor,
        cfg: ApiConfig,
        token: Secret,
        shutdown_timeout_s: float = 5.0,
        *,
        leaderboard: Leaderboard | None = None,
        registry: RegistryView | None = None,
        tracker: TrackRequests | None = None,
        bus: EventBus | None = None,
        store: Store | None = None,
        risk: RiskKeeper | None = None,
        clock: Clock = SYSTEM,
        feed_settings: FeedSettings | None = None,
        follows: FollowRegistry | None = None,
        positions: PositionsView | None = None,
        performance_report: PerformanceReport | None = None,
        closer: CloseAll | None = None,
        backtests: BacktestJobs | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._cfg = cfg
        self._token = token
        self._shutdown_timeout_s = shutdown_timeout_s
        self._parts: dict[str, Any] = {
            "leaderboard": leaderboard,
            "registry": registry,
            "tracker": tracker,
            "bus": bus,
            "store": store,
            "risk": risk,
            "clock": clock,
            "feed_settings": feed_settings,
            "follows": follows,
            "positions": positions,
            "performance_report": performance_report,
            "closer": closer,
            "backtests": backtests,
        }
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self.port: int | None = None

    async def run(self, ready: Ready) -> None:
        app = build_app(self._supervisor, self._cfg, self._token, **self._parts)
        self._app = app
        runner = _Runner(app, access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._cfg.host, self._cfg.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise ComponentFailed(
                    f"cannot listen on {self._cfg.host}:{self._cfg.port}: {exc.strerror}"
                ) from exc
            self.port = int(runner.addresses[0][1])
            log.info(
                "api listening",
                host=self._cfg.host,
                port=self.port,
                url=f"http://{self._cfg.host}:{self.port}",
            )
            ready.set()
            await self._stopped.wait()
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def drain(self) -> None:
        await self._cleanup()
        self._stopped.set()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"port": self.port or 0, "host": self._cfg.host}
        if self._app is not None:
            scout = self._app[SCOUT]
            out["pages"] = scout.pages.stats()
            out["track_requests"] = scout.track_requests
            out["feed"] = self._app[FEEDS].stats()
        return out
