"""What the chaos scenarios share: the seed, the oracles of RELIABILITY.md §8 read from the
simulator's own order records and the daemon's tables, and a TCP proxy that can cut the
daemon off PostgreSQL.

- **I1 exactly once**: no cloid reaches the exchange twice, and the exchange accepted at most
  one follower order per source leader fill (per leg: a flip is a close and an open).
- **I2 no miss**: every fill the simulator made for a leader is a row of ``leader_fills``.
- **I3 convergence**: the follower's position on the exchange is the follows' target, within
  what the copier leaves on purpose (an order under the $10 minimum is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import asyncpg
from hlcopy.follow.protect import STOP_TAG
from hlcopy.sim import Simulator
from hlcopy.sim.engine import REC_CLOID, Record

from tests.live_env import LOT, szi

REC_IS_BUY: Final = 1
REC_REDUCE_ONLY: Final = 6
REC_TIME: Final = 9
REC_STATUS: Final = 11
FILL_TID: Final = 12
MIN_NOTIONAL = Decimal(10)


# -- the seed -------------------------------------------------------------------------------------


def chaos_seed() -> int:
    """``CHAOS_SEED`` from the environment (to replay a failure), else a fresh one."""
    value = os.environ.get("CHAOS_SEED")
    return int(value) if value else secrets.randbelow(2**31)


@contextlib.contextmanager
def seed_on_failure(seed: int) -> Iterator[random.Random]:
    """A random source seeded with ``seed``; any failure inside names the seed to replay it."""
    try:
        yield random.Random(seed)
    except Exception as exc:
        raise AssertionError(f"{_explain(exc)}\n[replay with CHAOS_SEED={seed}]") from exc


def _explain(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_explain(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# -- what the exchange took -----------------------------------------------------------------------


def accepted(record: Record) -> bool:
    """Whether the exchange took the order (filled, partly filled, resting or triggered)."""
    status = record[REC_STATUS]
    return status != "rejected" and not status.endswith("Rejected")


def cloid_of(record: Record) -> str:
    """The cloid of a copy order's record (``copy_records`` keeps only those with one)."""
    cloid = record[REC_CLOID]
    assert cloid is not None
    return cloid


def copy_records(sim: Simulator, account: str, since_ms: int = 0) -> list[Record]:
    """Every order record of the account's copy orders (hand trades carry no cloid; protective
    stops carry the stop tag), accepted or not, at or after ``since_ms`` (exchange time)."""
    acct = sim.engine.accounts.get(account)
    if acct is None:
        return []
    return [
        r
        for r in acct.records.values()
        if r[REC_CLOID] and not r[REC_CLOID].startswith("0x" + STOP_TAG) and r[REC_TIME] >= since_ms
    ]


def accepted_cloids(sim: Simulator, account: str, since_ms: int = 0) -> list[str]:
    return [cloid_of(r) for r in copy_records(sim, account, since_ms) if accepted(r)]


async def copy_rows(dsn: str) -> dict[str, asyncpg.Record]:
    """The daemon's copy log (write-ahead intents and their outcomes), by cloid."""
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(
            "SELECT cloid, status, leader, leader_tid, coin, is_buy, sz, reduce_only, attempt,"
            " error, decided_ms, sent_ms, settled_ms FROM copies WHERE cloid IS NOT NULL"
        )
    finally:
        await con.close()
    return {r["cloid"]: r for r in rows}


async def assert_exactly_once(sim: Simulator, account: str, dsn: str) -> dict[str, Any]:
    """I1, from the exchange's records and the copy log; returns figures for the report."""
    records = copy_records(sim, account)
    sent = Counter(cloid_of(r) for r in records)
    twice = {c: n for c, n in sent.items() if n > 1}
    assert not twice, f"cloids the exchange received more than once: {twice}"
    rows = await copy_rows(dsn)
    taken = [cloid_of(r) for r in records if accepted(r)]
    unknown = [c for c in taken if c not in rows]
    assert not unknown, f"orders on the exchange without a copy row: {unknown}"
    per_fill = Counter(
        (rows[c]["leader"], rows[c]["leader_tid"], rows[c]["reduce_only"])
        for c in taken
        if rows[c]["leader_tid"] is not None
    )
    doubled = {k: n for k, n in per_fill.items() if n > 1}
    assert not doubled, f"leader fills copied by more than one accepted order: {doubled}"
    return {"orders": len(records), "accepted": len(taken), "rows": len(rows)}


# -- leader fills ---------------------------------------------------------------------------------


def sim_fill_tids(sim: Simulator, address: str) -> set[int]:
    """The tids of every fill the simulator made for ``address`` (kept: the last 10,000)."""
    acct = sim.engine.accounts.get(address)
    return set() if acct is None else {f[FILL_TID] for f in acct.fills}


async def recorded_tids(dsn: str, leader: str) -> set[int]:
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch("SELECT tid FROM leader_fills WHERE leader = $1", leader)
    finally:
        await con.close()
    return {int(r["tid"]) for r in rows}


async def all_recorded(sim: Simulator, dsn: str, leader: str, timeout: float) -> float:
    """I2: wait until every fill of ``leader`` is in ``leader_fills``; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    want = sim_fill_tids(sim, leader)
    missing: set[int] = want
    try:
        async with asyncio.timeout(timeout):
            while missing:
                missing = want - await recorded_tids(dsn, leader)
                if missing:
                    await asyncio.sleep(0.25)
    except TimeoutError:
        raise AssertionError(
            f"{len(missing)} of {len(want)} leader fills not recorded within {timeout} s: "
            f"{sorted(missing)[:10]}"
        ) from None
    return loop.time() - started


# -- convergence ----------------------------------------------------------------------------------


def tolerance(sim: Simulator, coin: str = "ETH") -> Decimal:
    """What the copier may leave between a position and its target: an order under the
    exchange's $10 minimum is skipped, and sizes are rounded to the lot."""
    mid = Decimal(str(sim.engine.by_name[coin].path.mid))
    return MIN_NOTIONAL / mid + 2 * LOT


async def converged(
    sim: Simulator, account: str, target: Any, timeout: float, coin: str = "ETH"
) -> float:
    """I3: wait until the account's position is within ``tolerance`` of ``target()`` (called
    each time: the target moves with the leader); the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout):
            while abs(szi(sim, account, coin) - target()) > tolerance(sim, coin):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"not converged within {timeout} s: the exchange holds {szi(sim, account, coin)}"
            f" {coin}, the target is {target()} (tolerance {tolerance(sim, coin)})"
        ) from None
    return loop.time() - started


# -- PostgreSQL behind a proxy that can be cut ----------------------------------------------------


class PgProxy:
    """A TCP proxy in front of PostgreSQL's unix socket (Toxiproxy's ``reset_peer``, in
    asyncio): while cut, every open connection is reset and new ones are closed at once, as
    if the server had stopped; restored, connections go through again.

    Only this test's daemon goes through it; the session's server and every other test's
    connections are untouched.
    """

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        host = parse_qs(parts.query)["host"][0]
        self._socket = str(Path(host) / f".s.PGSQL.{parts.port or 5432}")
        self._database = parts.path.lstrip("/")
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.WriteTransport] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.is_cut = False
        self.port = 0
        self.resets = 0

    @property
    def dsn(self) -> str:
        """The DSN the daemon uses: the proxy's TCP port, the test's database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self._database}"

    async def __aenter__(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._reset_all()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        self.is_cut = True
        self._reset_all()

    def restore(self) -> None:
        self.is_cut = False

    def _reset_all(self) -> None:
        for transport in list(self._links):
            transport.abort()
            self.resets += 1
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.transport
        if self.is_cut:
            client.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self._socket)
        except OSError:
            client.abort()
            return
        self._links |= {client, up_writer.transport}
        for src, dst, name in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(self._pump(src, dst), name=f"test:pg-proxy:{name}")
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(dst.transport)
            dst.transport.abort()


@contextlib.asynccontextmanager
async def pg_proxy(dsn: str) -> AsyncIterator[PgProxy]:
    async with PgProxy(dsn) as proxy:
        yield proxy
