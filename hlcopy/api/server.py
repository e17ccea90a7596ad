"""The API as a supervised component: an aiohttp AppRunner/TCPSite in the daemon's loop."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from hlcopy.api.app import build_app
from hlcopy.component import Component, Supervisor
from hlcopy.config import ApiConfig
from hlcopy.credentials import Secret
from hlcopy.errors import ComponentFailed

log = structlog.get_logger()


class ApiServer(Component):
    """Serves the JSON API; draining stops accepting connections and finishes open requests."""

    name = "api"
    core = False  # trading goes on without the API; systemd should not restart us for it

    def __init__(
        self, supervisor: Supervisor, cfg: ApiConfig, token: Secret, shutdown_timeout_s: float = 5.0
    ) -> None:
        self._supervisor = supervisor
        self._cfg = cfg
        self._token = token
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self.port: int | None = None

    async def run(self, ready: asyncio.Event) -> None:
        app = build_app(self._supervisor, self._cfg, self._token)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout_s)
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
        return {"port": self.port or 0, "host": self._cfg.host}
