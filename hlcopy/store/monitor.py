"""The store as a supervised component: open, migrate, then keep checking the database answers."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.store.db import Store

log = structlog.get_logger()


class StoreMonitor(Component):
    """Opens the store and migrates it before anything else starts; a failed ping restarts it.

    Restarting re-runs ``open``, which also brings a dead embedded PostgreSQL back.
    """

    name = "store"

    def __init__(self, store: Store, ping_interval_s: float = 5.0, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._clock = clock
        self._interval = ping_interval_s
        self._draining = asyncio.Event()
        self._schema_version = 0
        self._pings = 0

    async def run(self, ready: Ready) -> None:
        await self._store.open()
        applied = await self._store.migrate()
        self._schema_version = await self._store.schema_version()
        log.info(
            "store ready",
            embedded=self._store.embedded,
            schema_version=self._schema_version,
            migrations_applied=applied,
        )
        ready.set()
        while not await sleep_unless(self._clock, self._draining, self._interval):
            await self._store.ping()
            self._pings += 1

    async def drain(self) -> None:
        self._draining.set()

    def stats(self) -> dict[str, Any]:
        return {"schema_version": self._schema_version, "pings": self._pings, **self._store.stats()}
