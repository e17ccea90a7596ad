"""``hlcopy bench``: the performance suite. Figures go in closing notes, never in test asserts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import platform
import random
import re
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hlcopy.clock import thread_cpu_ns
from hlcopy.hl import ActionSigner, NonceSource, Signer
from hlcopy.hl.signing import l1_digest
from hlcopy.model import Asset, LeaderFill, OrderIntent, OrderSpec, UserFills

if TYPE_CHECKING:
    from hlcopy.config import HlcopyConfig
    from hlcopy.follow.copier import Decision
    from hlcopy.store import Store
    from hlcopy.store.registry import ActivityRow

MIN_ORDERS_PER_RUN = 10_000


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def host_steal_s() -> float | None:
    """CPU time the hypervisor gave other guests while this one's vCPUs wanted it, summed over
    the vCPUs since boot (Linux ``/proc/stat``; None elsewhere): a window's difference tells a
    tail the host made from one the code made."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def _steal_between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 2)


def bench_sign(
    orders_per_run: int = MIN_ORDERS_PER_RUN, runs: int = 7, seed: int = 7
) -> dict[str, Any]:
    """Microseconds to build and sign one order, from Decimal inputs to the request bytes.

    Each order goes the executor's way: an ``OrderSpec`` (Decimal price and size, a cloid) to
    ``ActionSigner.orders``, which rounds price (toward the cap) and size to the asset's grid,
    builds the order wire and action, hashes, signs (EIP-712, libsecp256k1) and serialises the
    request body. One order per action, one thread: the latency of a single copy order.
    """
    if orders_per_run < MIN_ORDERS_PER_RUN:
        raise ValueError(f"a run needs at least {MIN_ORDERS_PER_RUN} orders")
    rng = random.Random(seed)
    signer = Signer.from_key("0x" + secrets.token_hex(32))  # throwaway: nothing is sent
    actions = ActionSigner(signer, is_mainnet=True, nonces=NonceSource())
    # Realistic inputs: a mix of coins (szDecimals 0-5), prices off the grid, sizes off the lot.
    assets = [Asset(f"C{i}", i, rng.choice([0, 1, 2, 3, 4, 5]), 20) for i in range(32)]
    inputs = []
    for i in range(orders_per_run):
        asset = assets[i % len(assets)]
        px = Decimal(rng.randint(10_000, 99_999_999)).scaleb(-rng.randint(0, 6))
        sz = Decimal(rng.randint(10**9, 10**12)).scaleb(-9)  # 1 to 1000, off the lot grid
        cloid = f"0x{rng.getrandbits(128):032x}"
        inputs.append(OrderSpec(asset, rng.random() < 0.5, px, sz, cloid=cloid))

    def run_once() -> float:
        t0 = time.perf_counter_ns()
        for spec in inputs:
            nonce = actions.nonces.next()
            actions.orders((spec,), nonce=nonce, expires_after=nonce + 10_000)
        return (time.perf_counter_ns() - t0) / orders_per_run / 1000

    def ecdsa_once() -> float:
        digest = l1_digest(bytes(32), True)
        n = orders_per_run // 4
        t0 = time.perf_counter_ns()
        for _ in range(n):
            signer._sign_digest(digest)
        return (time.perf_counter_ns() - t0) / n / 1000

    run_once()  # warm up caches and the allocator
    per_run = []
    ecdsa = []
    for _ in range(runs):
        per_run.append(run_once())
        ecdsa.append(ecdsa_once())
    return {
        "benchmark": "sign",
        "us_per_order": round(statistics.median(per_run), 2),
        "min_us": round(min(per_run), 2),
        "max_us": round(max(per_run), 2),
        "runs_us": [round(x, 2) for x in per_run],
        "ecdsa_us": round(statistics.median(ecdsa), 2),
        "orders_per_run": orders_per_run,
        "runs": runs,
        "target_us": 50,
        "machine": machine(),
    }


def format_sign(result: dict[str, Any]) -> str:
    m = result["machine"]
    return "\n".join(
        [
            "hlcopy bench sign: build + sign one order (IOC limit with cloid and expiresAfter),",
            "from Decimal inputs to request bytes, one order per action, one thread",
            f"  runs              {result['runs']} x {result['orders_per_run']:,} orders",
            f"  median            {result['us_per_order']:8.2f} us/order   (target <= "
            f"{result['target_us']} us)",
            f"  min / max         {result['min_us']:8.2f} / {result['max_us']:.2f} us/order",
            f"  ECDSA step alone  {result['ecdsa_us']:8.2f} us   (libsecp256k1 via coincurve)",
            f"  machine           {m['cpu']}, {m['cores']} cores, load {m['load_1m']}, "
            f"Python {m['python']}",
        ]
    )


async def _sim_process(
    rate: float, traders: int, cpus: set[int] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``hlcopy sim`` on a free port in its own process (on ``cpus`` when given); return
    it and its base URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hlcopy",
        "sim",
        "--port",
        "0",
        "--rate",
        str(rate),
        "--traders",
        str(traders),
        "--warmup-s",
        "0",
        "--lazy-pasts",  # the traders' pasts are not what this measures (built when asked for)
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise RuntimeError("hlcopy sim exited before listening")
            m = re.search(r"REST (http://\S+)", line)
            if m:
                return proc, m[1]


async def _bench_sim(
    seconds: float, rate: float, traders: int, rest_per_s: float
) -> dict[str, Any]:
    from hlcopy.budget import Lane, WeightBudget
    from hlcopy.component import Ready
    from hlcopy.hl import InfoClient, StreamPool, new_session
    from hlcopy.model import Trades
    from hlcopy.queues import BoundedQueue

    proc, url = await _sim_process(rate, traders)
    counts = {"trades": 0, "messages": 0}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    frames = BoundedQueue[Trades]("bench:trades", 100_000, "drop_oldest")

    async def count() -> None:
        async for frame in frames:
            counts["messages"] += 1
            counts["trades"] += len(frame.trades)

    pool = StreamPool(url.replace("http", "ws", 1) + "/ws")
    ready_event = asyncio.Event()
    ready = Ready(lambda is_ready, _: ready_event.set() if is_ready else None)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(pool.run(ready), name="bench:stream")
            counter = tg.create_task(count(), name="bench:count")
            await ready_event.wait()
            async with new_session(10) as session:
                info = InfoClient(session, url, WeightBudget(1200, 10))
                for meta in (await info.meta()).universe:
                    if not meta.delisted:
                        await pool.trades(meta.name, frames)
                await asyncio.sleep(2)  # let the first ticks flow
                counts["trades"] = counts["messages"] = 0
                t0 = time.perf_counter()
                calls: list[Callable[[], Awaitable[Any]]] = [
                    lambda: info.all_mids(lane=Lane.LEADER),
                    lambda: info.l2_book("BTC", lane=Lane.LEADER),
                    lambda: info.clearinghouse_state("0x" + "11" * 20, lane=Lane.LEADER),
                ]
                i = 0
                while (elapsed := time.perf_counter() - t0) < seconds:
                    start = time.perf_counter()
                    try:
                        await calls[i % len(calls)]()
                        latencies.append((time.perf_counter() - start) * 1000)
                    except Exception as exc:  # counted and reported, the bench goes on
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    i += 1
                    await asyncio.sleep(max(0.0, (i / rest_per_s) - (time.perf_counter() - t0)))
                trades, messages = counts["trades"], counts["messages"]
            await pool.drain()
            frames.close()
            await counter
    finally:
        proc.terminate()
        await proc.wait()
    latencies.sort()
    return {
        "benchmark": "sim",
        "trades_per_s": round(trades / elapsed, 1),
        "messages_per_s": round(messages / elapsed, 1),
        "rest_requests": len(latencies),
        "rest_p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "rest_p99_ms": round(latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "rest_errors": errors,
        "seconds": round(elapsed, 1),
        "rate": rate,
        "traders": traders,
        "target_trades_per_s": 5000,
        "machine": machine(),
    }


def bench_sim(
    seconds: float = 20.0, rate: float = 6000.0, traders: int = 500, rest_per_s: float = 8.0
) -> dict[str, Any]:
    """Trades per second the simulator delivers on the trades stream (every perp subscribed,
    received by hlcopy's stream pool in another process) while answering REST reads."""
    return asyncio.run(_bench_sim(seconds, rate, traders, rest_per_s))


def format_sim(result: dict[str, Any]) -> str:
    m = result["machine"]
    return "\n".join(
        [
            "hlcopy bench sim: trades delivered on the trades stream (every perp) while answering",
            "REST reads, the simulator in its own process",
            f"  trades/s          {result['trades_per_s']:10,.1f}   (target >= "
            f"{result['target_trades_per_s']:,})",
            f"  messages/s        {result['messages_per_s']:10,.1f}",
            f"  REST p50 / p99    {result['rest_p50_ms']} / {result['rest_p99_ms']} ms over "
            f"{result['rest_requests']} requests, errors {result['rest_errors'] or 'none'}",
            f"  load              rate {result['rate']:,.0f} actions/s, "
            f"{result['traders']} traders, {result['seconds']} s",
            f"  machine           {m['cpu']}, {m['cores']} cores, load {m['load_1m']}",
        ]
    )


# --- the API --------------------------------------------------------------------------------


def synthetic_traders(n: int, seed: int = 11) -> Iterator[tuple[str, dict[str, Any], Decimal]]:
    """``n`` traders with plausible figures in every window: (address, metrics, value).

    Drawn, not computed (analytics on 100,000 generated histories would take minutes): about a
    third unscored (too little data, market makers, vaults), money with cents, returns and
    drawdowns of the size the exchange shows, leverage skewed low, ties where they occur for
    real (trade counts, the capped profit factor, risk level and style).
    """
    from hlcopy.scout.analytics import WINDOWS, RiskLevel, Style, TraderMetrics

    rng = random.Random(seed)
    risks, styles = list(RiskLevel), list(Style)
    scale = {"day": 0.05, "week": 0.2, "month": 0.5, "allTime": 1.0}
    for _ in range(n):
        address = f"0x{rng.getrandbits(160):040x}"
        value = Decimal(f"{rng.lognormvariate(9.5, 1.5):.2f}")
        skill = rng.gauss(0, 1)
        metrics: dict[str, Any] = {}
        for w in WINDOWS:
            k = scale[w]
            trades = int(rng.expovariate(1 / (60 * k))) if rng.random() < 0.9 else None
            scored = trades is not None and trades >= 5 and rng.random() < 0.7
            ret = rng.gauss(0.05 * skill * k, 0.3 * k**0.5)
            wins = None if not trades else rng.betavariate(max(0.5, 2 + skill), 2)
            metrics[w] = TraderMetrics(
                window=w,
                pnl=Decimal(f"{float(value) * ret:.2f}"),
                return_=ret,
                max_drawdown=min(0.99, abs(rng.gauss(0.1, 0.15)) * k**0.5),
                sharpe=rng.gauss(skill, 1.0) if k >= 0.2 else None,
                volume=Decimal(f"{float(value) * rng.expovariate(0.2) * k:.2f}"),
                account_age_days=rng.uniform(1, 900),
                trade_count=trades,
                win_rate=wins,
                win_rate_lower=None if wins is None else max(0.0, wins - 0.2),
                profit_factor=None if not trades else min(100.0, rng.expovariate(0.8)),
                max_profit_usd=None if not trades else Decimal(f"{rng.expovariate(0.001):.2f}"),
                max_loss_usd=None if not trades else -Decimal(f"{rng.expovariate(0.001):.2f}"),
                avg_risk_ratio=rng.random() * 0.5,
                avg_leverage=rng.expovariate(0.3),
                risk_level=rng.choice(risks),
                style=None if not trades else rng.choice(styles),
                copyable_share=rng.random() if trades else None,
                score=rng.gauss(skill, 1.0) if scored else None,
                badness=rng.gauss(-skill / 3, 0.3) if scored else None,
            )
        yield address, metrics, value


def _api_paths(n: int, seed: int) -> list[str]:
    """The request mix of a busy dashboard: mostly the first pages of the default ranking,
    then other sort keys, deeper pages, filters and the losers."""
    from hlcopy.scout.leaderboard import SORT_KEYS

    rng = random.Random(seed)
    windows = ("month", "week")
    paths = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.35:
            path = "/api/v1/leaderboard" + rng.choice(["", "?window=week", "?window=month"])
        elif roll < 0.55:
            w, off = rng.choice(windows), 50 * rng.randint(1, 20)
            path = f"/api/v1/leaderboard?window={w}&offset={off}"
        elif roll < 0.80:
            key, w = rng.choice(SORT_KEYS), rng.choice(windows)
            order, off = rng.choice(["asc", "desc"]), rng.choice([0, 0, 50, 100])
            path = f"/api/v1/leaderboard?window={w}&sort_by={key}&order={order}&offset={off}"
        elif roll < 0.92:
            f = rng.choice(
                [
                    "min_trades=10",
                    "min_trades=50",
                    "risk_level=LOW,MEDIUM",
                    "style=swing,position",
                    "min_volume_usd=100000",
                    "min_trades=20&risk_level=LOW",
                ]
            )
            path = f"/api/v1/leaderboard?window={rng.choice(windows)}&{f}&limit=100"
        else:
            path = f"/api/v1/losers?window={rng.choice(windows)}&limit=100"
        paths.append(path)
    return paths


async def _api_load(
    port: int,
    paths: list[str],
    clients: int,
    warmup_s: float,
    seconds: float,
    think_s: float = 0.0,
) -> dict[str, Any]:
    """``clients`` keep-alive connections, each sending its next request as soon as the
    previous answer is read in full (a closed loop), or ``think_s`` after it (a dashboard
    refreshing); latency per request, after the warm-up."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    measuring = False
    stop = False

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        requests = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for p in paths]
        k = i * 7919 % len(requests)
        try:
            while not stop:
                start = time.perf_counter()
                writer.write(requests[k % len(requests)])
                k += 1
                head = await reader.readuntil(b"\r\n\r\n")
                at = head.lower().index(b"content-length:") + 15
                await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
                if measuring:
                    latencies.append(time.perf_counter() - start)
                    status = head[9:12].decode()
                    statuses[status] = statuses.get(status, 0) + 1
                if think_s:
                    await asyncio.sleep(think_s)
        finally:
            writer.close()

    tasks = [asyncio.create_task(client(i), name=f"bench:client:{i}") for i in range(clients)]
    await asyncio.sleep(warmup_s)
    measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return round(latencies[min(n - 1, int(n * q))] * 1000, 2) if n else 0.0

    return {
        "requests": n,
        "requests_per_s": round(n / elapsed, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": round(latencies[-1] * 1000, 2) if n else 0.0,
        "statuses": statuses,
        "load_cpu_s": round(time.process_time(), 2),
    }


async def _api_load_process(
    port: int,
    paths: list[str],
    clients: int,
    warmup_s: float,
    seconds: float,
    cpus: set[int] | None = None,
    think_s: float = 0.0,
) -> dict[str, Any]:
    """``_api_load`` in a process of its own (on ``cpus`` if given): the server's event loop
    is measured, not the load's."""
    job = {
        "port": port,
        "paths": paths,
        "clients": clients,
        "warmup_s": warmup_s,
        "seconds": seconds,
        "think_s": think_s,
    }
    return await _job_process("_api_load_main", job, cpus, "the load generator")


async def _job_process(
    main: str, job: dict[str, Any], cpus: set[int] | None, what: str
) -> dict[str, Any]:
    """Run ``hlcopy.bench.<main>`` in a process of its own (on ``cpus`` if given): ``job`` as
    JSON on its stdin, its JSON answer from its stdout."""
    import orjson

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"from hlcopy.bench import {main}; {main}()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    out, _ = await proc.communicate(orjson.dumps(job))
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {proc.returncode}")
    result: dict[str, Any] = orjson.loads(out)
    return result


def _api_load_main() -> None:
    """The load generator's process: its orders on stdin, its figures on stdout."""
    import orjson

    job = orjson.loads(sys.stdin.buffer.read())
    result = asyncio.run(
        _api_load(
            job["port"],
            job["paths"],
            job["clients"],
            job["warmup_s"],
            job["seconds"],
            job.get("think_s", 0.0),
        )
    )
    sys.stdout.buffer.write(orjson.dumps(result))


async def _store_scored(store: Any, traders: int, seed: int) -> list[str]:
    """``traders`` scored traders stored as the tracker stores them (stats per window, account
    value, an equity index per window for the charts), but as before migration 0003: without
    the packed figures, so the first start reads the JSON. Returns their addresses."""
    from hlcopy.scout.analytics import WINDOWS

    rng = random.Random(seed)
    index = {  # the charts' points (as many as the exchange's portfolio windows give)
        w: [[1_760_000_000_000.0 - i * 3_600_000, round(rng.uniform(0.5, 2), 6)] for i in range(k)]
        for w, k in zip(WINDOWS, (13, 57, 46, 76), strict=True)
    }
    addresses: list[str] = []
    batch: list[tuple[str, dict[str, Any], Decimal]] = []

    async def write() -> None:
        await store.pool.execute(
            """INSERT INTO traders (address, first_seen_ms, last_seen_ms, stats, index_points,
                                    account_value, stats_at_ms)
               SELECT a, 1, 1, s, $2, v, 1 FROM unnest($1::text[], $3::jsonb[], $4::numeric[])
                   AS t(a, s, v)""",
            [a for a, _, _ in batch],
            index,
            [{w: m.as_dict() for w, m in metrics.items()} for _, metrics, _ in batch],
            [v for _, _, v in batch],
        )
        batch.clear()

    for trader in synthetic_traders(traders, seed):
        batch.append(trader)
        addresses.append(trader[0])
        if len(batch) == 5000:
            await write()
    if batch:
        await write()
    await store.pool.execute("VACUUM ANALYZE traders")
    return addresses


async def _restart(store: Any) -> tuple[Any, float, dict[str, Any]]:
    """The leaderboard as a (re)starting daemon gets it: a board, seconds from starting the
    service to it being served (ready), and the service's figures."""
    from hlcopy.component import Ready
    from hlcopy.config import LeaderboardConfig
    from hlcopy.scout.leaderboard import Leaderboard, LeaderboardService

    board = Leaderboard()
    service = LeaderboardService(board, store, LeaderboardConfig())
    served = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(
        service.run(Ready(lambda ok, _: served.set() if ok else None)), name="bench:leaderboard"
    )
    waiting = asyncio.create_task(served.wait(), name="bench:served")
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    load_s = time.perf_counter() - t0
    if task.done():  # it failed before the board was served
        waiting.cancel()
        task.result()
        raise RuntimeError("the leaderboard stopped before it was served")
    await service.drain()
    await task
    return board, load_s, service.stats()


class _Figures:
    """The supervisor the API needs, reduced to what the benchmark touches."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok"}

    def stats(self) -> dict[str, Any]:
        return {}

    def metrics(self) -> list[Any]:
        return []

    async def reload(self) -> Any:
        raise NotImplementedError


async def _bench_api(
    seconds: float,
    traders: int,
    clients: int,
    refresh_s: float,
    updates_per_s: float,
    warmup_s: float,
    seed: int,
) -> dict[str, Any]:
    import gc
    import shutil
    import tempfile
    from pathlib import Path

    import psutil
    from aiohttp import web

    from hlcopy.api.app import build_app
    from hlcopy.config import ApiConfig, DatabaseConfig
    from hlcopy.credentials import Secret
    from hlcopy.store import Store

    proc = psutil.Process()
    spare = list(synthetic_traders(max(1000, int(updates_per_s * (seconds + warmup_s))), seed + 1))
    # The board comes from PostgreSQL, as after a restart: the traders are stored as a previous
    # run stored them, and loaded by the leaderboard service twice: the first start after
    # migration 0003 (from the JSON, writing the packed figures back), then any later start.
    root = Path(tempfile.mkdtemp(prefix="hlapi-"))  # short: PostgreSQL's socket path is limited
    store = Store(DatabaseConfig(), root, exclusive=False)
    try:
        await store.open()
        await store.migrate()
        t0 = time.perf_counter()
        addresses = await _store_scored(store, traders, seed)
        store_s = time.perf_counter() - t0
        first, upgrade_s, _ = await _restart(store)
        del first
        gc.collect()
        rss0 = proc.memory_info().rss
        board, restart_s, loaded = await _restart(store)
        rss_board = proc.memory_info().rss - rss0
    finally:
        await store.close()
        shutil.rmtree(root, ignore_errors=True)

    cfg = ApiConfig(port=0)
    app = build_app(_Figures(), cfg, Secret("bench-token"), leaderboard=board)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    refreshes: list[float] = []

    async def tracker() -> None:
        """Fresh metrics for random traders at ``updates_per_s``, as the tracker would."""
        rng = random.Random(seed)
        i = 0
        while True:
            await asyncio.sleep(1 / updates_per_s)
            _, metrics, value = spare[i % len(spare)]
            i += 1
            board.put(rng.choice(addresses), metrics, account_value=value, updated_ms=1 + i)

    async def refresher() -> None:
        while True:
            await asyncio.sleep(refresh_s)
            started = time.perf_counter()
            board.refresh()
            refreshes.append((time.perf_counter() - started) * 1000)

    paths = _api_paths(4096, seed)
    cpu0 = time.process_time()
    try:
        async with asyncio.TaskGroup() as tg:
            feeders = [
                tg.create_task(tracker(), name="bench:tracker"),
                tg.create_task(refresher(), name="bench:refresher"),
            ]
            result = await _api_load_process(port, paths, clients, warmup_s, seconds)
            for task in feeders:
                task.cancel()
    finally:
        await runner.cleanup()
    stats = board.stats()
    return {
        "benchmark": "api",
        **result,
        "server_cpu_s": round(time.process_time() - cpu0, 2),
        "traders": traders,
        "clients": clients,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "distinct_paths": len(set(paths)),
        "refresh_s": refresh_s,
        "updates_per_s": updates_per_s,
        "refresh_ms": [round(x, 1) for x in refreshes],
        "views": stats["views"],
        "view_entries": stats["view_entries"],
        "view_builds": stats["view_builds"],
        "store_s": round(store_s, 2),
        "restart_load_s": round(restart_s, 2),
        "restart_from_json": loaded["load_from_json"],
        "upgrade_load_s": round(upgrade_s, 2),
        "target_restart_s": 5,
        "board_rss_mb": round(rss_board / 1e6, 1),
        "target_p99_ms": 25,
        "machine": machine(),
    }


def bench_api(
    seconds: float = 20.0,
    traders: int = 100_000,
    clients: int = 64,
    refresh_s: float = 10.0,
    updates_per_s: float = 2.0,
    warmup_s: float = 5.0,
    seed: int = 11,
) -> dict[str, Any]:
    """Leaderboard latency over real HTTP: ``traders`` on the board (loaded from an embedded
    PostgreSQL as at a restart, which is timed too), ``clients`` concurrent
    keep-alive clients in another process (the other core) sending a dashboard's mix of
    requests in a closed loop, while a feeder puts fresh metrics and the board refreshes as
    the daemon does. The feeder's 2 traders/s is twice what the REST budget allows the
    tracker to score (a ``portfolio`` costs 20 of 1200 weight a minute)."""
    return asyncio.run(
        _bench_api(seconds, traders, clients, refresh_s, updates_per_s, warmup_s, seed)
    )


def format_api(result: dict[str, Any]) -> str:
    m = result["machine"]
    refresh = result["refresh_ms"]
    return "\n".join(
        [
            "hlcopy bench api: GET /api/v1/leaderboard and /losers over real HTTP, "
            f"{result['traders']:,} traders,",
            f"{result['clients']} keep-alive clients in another process (closed loop), a feeder "
            f"putting {result['updates_per_s']:g} traders/s, refresh every "
            f"{result['refresh_s']:g} s",
            f"  p50 / p90         {result['p50_ms']} / {result['p90_ms']} ms",
            f"  p99               {result['p99_ms']} ms   (target <= {result['target_p99_ms']} ms)",
            f"  p99.9 / max       {result['p999_ms']} / {result['max_ms']} ms",
            f"  requests/s        {result['requests_per_s']:,.1f} over {result['seconds']:g} s "
            f"({result['requests']:,} requests, statuses {result['statuses']})",
            f"  refreshes         {len(refresh)}, {max(refresh, default=0):.1f} ms at most",
            f"  views             {result['views']} ({result['view_entries']:,} entries, "
            f"{result['view_builds']} builds), {result['distinct_paths']} distinct requests",
            f"  restart           served {result['restart_load_s']} s after the leaderboard "
            f"began loading from PostgreSQL (target <= {result['target_restart_s']} s)",
            f"  first after 0003  {result['upgrade_load_s']} s (from the JSON, packing back); "
            f"the traders stored in {result['store_s']} s",
            f"  board             +{result['board_rss_mb']} MB resident",
            f"  cpu               server {result['server_cpu_s']} s, load generator "
            f"{result['load_cpu_s']} s",
            f"  machine           {m['cpu']}, {m['cores']} cores, load {m['load_1m']}, "
            f"Python {m['python']}",
        ]
    )


# -- firehose ------------------------------------------------------------------------------


def firehose_frames(
    n_frames: int, population: int, seed: int = 11, market_makers: int = 30
) -> tuple[list[bytes], list[str]]:
    """Raw ``trades`` messages as the exchange sends them, and the addresses they name.

    Modelled on mainnet: ~200 perps with BTC, ETH, SOL and HYPE taking most trades; a message is
    one coin's trades of one block, 1 to 40 of them (a taker sweeping several makers: one hash,
    one taker, one side); a few dozen market makers are the maker in ~60% of trades; takers
    come from a heavy-tailed population (a few very active, most seen once in a while);
    prices with 5 significant figures, sizes on the coin's lot, ``users`` as [buyer, seller].
    """
    import orjson

    from hlcopy.sim.market import PERPS

    rng = random.Random(seed)
    addresses = [f"0x{rng.getrandbits(160):040x}" for _ in range(population)]
    makers = addresses[:market_makers]
    coins = [(p.name, float(p.price), p.sz_decimals) for p in PERPS if not p.delisted]
    coins += [
        (f"K{i}", 10 ** rng.uniform(-4, 3), rng.choice((0, 0, 1, 1, 2, 3))) for i in range(175)
    ]
    weights = [1.0 / (i + 1) ** 1.2 for i in range(len(coins))]
    tid = rng.getrandbits(49)
    time_ms = 1_760_000_000_000
    frames = []
    for _ in range(n_frames):
        name, mid, szd = rng.choices(coins, weights)[0]
        n = min(40, 1 + int(rng.expovariate(0.45)))
        taker = addresses[min(population - 1, int(rng.paretovariate(0.7)) - 1)]
        if rng.random() < 0.5:  # half the takers are anyone at all
            taker = addresses[rng.randrange(population)]
        side = "B" if rng.random() < 0.5 else "A"
        tx = f"0x{rng.getrandbits(256):064x}"
        time_ms += rng.randrange(0, 80)
        trades = []
        px = mid * (1 + rng.uniform(-0.002, 0.002))
        for _ in range(n):
            maker = (
                makers[rng.randrange(market_makers)]
                if rng.random() < 0.6
                else addresses[rng.randrange(population)]
            )
            tid = (tid + rng.randrange(1, 1 << 20)) % (1 << 50)
            px *= 1.0001 if side == "B" else 0.9999
            lot = 10.0**-szd
            sz = max(lot, round(rng.expovariate(mid / 2000.0), szd))
            wire_px = f"{float(f'{px:.5g}'):.{max(0, 4 - math.floor(math.log10(px)))}f}"
            trades.append(
                {
                    "coin": name,
                    "side": side,
                    "px": wire_px if "." in wire_px else wire_px + ".0",
                    "sz": f"{sz:.{max(1, szd)}f}",
                    "time": time_ms,
                    "hash": tx,
                    "tid": tid,
                    "users": [taker, maker] if side == "B" else [maker, taker],
                }
            )
        frames.append(orjson.dumps({"channel": "trades", "data": trades}))
    return frames, addresses


async def _bench_firehose(
    seconds: float, runs: int, n_frames: int, population: int, leaders: int, core: int | None
) -> dict[str, Any]:
    import gc
    import shutil
    import tempfile

    import orjson
    import psutil

    from hlcopy.budget import WeightBudget
    from hlcopy.clock import SYSTEM
    from hlcopy.component import Ready
    from hlcopy.config import DatabaseConfig, DiscoveryConfig
    from hlcopy.hl import InfoClient, StreamPool, UniverseService, new_session
    from hlcopy.hl.stream import _decode_trades
    from hlcopy.model import LeaderFill
    from hlcopy.queues import BoundedQueue
    from hlcopy.scout.discovery import KV_USERS_ORDER, Discovery, Registry
    from hlcopy.store import Store
    from hlcopy.store.registry import RegistryStore

    frames, addresses = firehose_frames(n_frames, population)
    root = Path(tempfile.mkdtemp(prefix="hlfh-"))  # short: PostgreSQL's socket path is limited
    store = Store(DatabaseConfig(), root, exclusive=False)
    me = psutil.Process()
    cfg = DiscoveryConfig(enabled=False, calibrate=False)  # the frames come from the bench
    try:
        await store.open()
        await store.migrate()
        await store.kv_set(KV_USERS_ORDER, "buyer_seller")
        # The population is known from earlier days: Discovery loads it at start, as after a
        # restart of a daemon that has been running a while.
        writer = RegistryStore(store)
        seen = 1_759_000_000_000
        known = [(a, seen, seen, 10, "1234.5", 4, 6, "BTC\x1fETH") for a in addresses]
        for i in range(0, len(known), 10_000):
            await writer.upsert(known[i : i + 10_000])
        postgres = psutil.Process(store.embedded_pid or 0)
        pg_procs = [postgres, *postgres.children(recursive=True)]
        pinned_pg = None
        if core is not None:
            os.sched_setaffinity(0, {core})
            others = os.sched_getaffinity(postgres.pid) - {core}
            if others:  # PostgreSQL elsewhere; new backends fork from the postmaster
                for p in pg_procs:
                    with contextlib.suppress(psutil.Error, OSError):
                        os.sched_setaffinity(p.pid, others)
                pinned_pg = sorted(others)

        def pg_cpu_s() -> float:
            total = 0.0
            for p in [postgres, *postgres.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            return total

        rng = random.Random(5)
        watched = rng.sample(addresses[: population // 10], leaders)
        async with new_session(10) as session:
            # The collaborators Discovery is built with; idle here (nothing listens on port 9).
            info = InfoClient(session, "http://127.0.0.1:9", WeightBudget())
            stream = StreamPool("ws://127.0.0.1:9/ws", eager=False)
            universe = UniverseService(info)
            leader_fills = BoundedQueue[LeaderFill]("bench:leader_fills", 100_000)
            gc.collect()
            rss0 = me.memory_info().rss
            disc = Discovery(stream, universe, info, store, cfg, leader_fills, SYSTEM)
            disc.watch(watched)
            emitted = 0

            async def copy_engine() -> None:
                nonlocal emitted
                async for _ in leader_fills:
                    emitted += 1

            loads = orjson.loads
            decode = _decode_trades
            offer = disc.frames.offer
            perf_ns = time.perf_counter_ns
            ready_event = asyncio.Event()
            ready = Ready(lambda ok, _: ready_event.set() if ok else None)
            windows: list[dict[str, float]] = []
            async with asyncio.TaskGroup() as tg:
                t_load = time.perf_counter()
                runner = tg.create_task(disc.run(ready), name="bench:discovery")
                engine = tg.create_task(copy_engine(), name="bench:copy-engine")
                await ready_event.wait()
                load_s = time.perf_counter() - t_load
                gc.collect()
                registry_mb = (me.memory_info().rss - rss0) / 2**20
                at = 0
                for _ in range(runs):
                    trades0 = disc.registry.trades
                    rows0 = disc.stats()["persisted"]
                    cpu0, pg0 = me.cpu_times(), pg_cpu_s()
                    t0 = time.perf_counter()
                    deadline = t0 + seconds / runs
                    parse_ns = 0
                    while time.perf_counter() < deadline:
                        # What the stream pool's reader does with each message it receives.
                        p0 = perf_ns()
                        for raw in frames[at : at + 64]:
                            msg = loads(raw)
                            if msg["channel"] == "trades":
                                offer(decode(msg.get("data"), perf_ns(), 0))
                        parse_ns += perf_ns() - p0
                        at = at + 64 if at + 64 < len(frames) else 0
                        await asyncio.sleep(0)  # the reader awaits its socket between messages
                    # Every frame registered (by Discovery's own consumer task, which only
                    # needs turns): the ingest figure, with writes still in flight.
                    while disc.frames.qsize():  # noqa: ASYNC110
                        await asyncio.sleep(0)
                    ingest_s = time.perf_counter() - t0
                    backlog = disc.registry.pending
                    # The window ends when every change is written.
                    await disc.flush()
                    elapsed = time.perf_counter() - t0
                    cpu1, pg1 = me.cpu_times(), pg_cpu_s()
                    trades = disc.registry.trades - trades0
                    windows.append(
                        {
                            "trades_per_s": trades / elapsed,
                            "ingest_per_s": trades / ingest_s,
                            "backlog": backlog,
                            "trades": trades,
                            "seconds": elapsed,
                            "rows": disc.stats()["persisted"] - rows0,
                            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
                            "pg_cpu_s": pg1 - pg0,
                            "parse_share": parse_ns / 1e9 / elapsed,
                        }
                    )
                await disc.drain()
                await runner
                leader_fills.close()
                await engine
            stats = disc.stats()

        # Each leg alone, on the same frames, for where the time goes (streamed, as in the run).
        sample = frames[: min(len(frames), 10_000)]
        sample_trades = sum(raw.count(b'"tid"') for raw in sample)
        t = time.perf_counter()
        for raw in sample:
            decode(loads(raw)["data"], 0, 0)
        decode_us = (time.perf_counter() - t) / sample_trades * 1e6
        decoded = [decode(loads(raw)["data"], 0, 0) for raw in sample]
        reg = Registry(10**7)
        for frame in decoded:  # every address known: what is measured is the update
            reg.record(frame.trades)
        t = time.perf_counter()
        for frame in decoded:
            reg.record(frame.trades)
        record_us = (time.perf_counter() - t) / sample_trades * 1e6
        _, rows = reg.take(len(reg))
        t = time.perf_counter()
        for i in range(0, len(rows), cfg.persist_batch_size):
            await writer.upsert(rows[i : i + cfg.persist_batch_size])
        write_s = time.perf_counter() - t
        table_rows = await store.pool.fetchval("SELECT count(*) FROM traders")
    finally:
        await store.close()
        shutil.rmtree(root, ignore_errors=True)
    rates = sorted(w["trades_per_s"] for w in windows)
    total_s = sum(w["seconds"] for w in windows)
    total_trades = sum(w["trades"] for w in windows)
    return {
        "benchmark": "firehose",
        "trades_per_s": round(statistics.median(rates)),
        "min_trades_per_s": round(rates[0]),
        "max_trades_per_s": round(rates[-1]),
        "runs_trades_per_s": [round(w["trades_per_s"]) for w in windows],
        "ingest_trades_per_s": round(statistics.median(w["ingest_per_s"] for w in windows)),
        "backlog_rows": round(statistics.median(w["backlog"] for w in windows)),
        "us_per_trade": round(total_s / total_trades * 1e6, 3),
        # Robust to a shared host (the wall clock counts others' turns on the core too), but
        # blind to waiting for PostgreSQL: a second view, not the figure.
        "trades_per_cpu_s": round(total_trades / sum(w["cpu_s"] for w in windows)),
        "trades": total_trades,
        "seconds": round(total_s, 2),
        "cpu_s": round(sum(w["cpu_s"] for w in windows), 2),
        "postgres_cpu_s": round(sum(w["pg_cpu_s"] for w in windows), 2),
        "parse_share": round(statistics.median(w["parse_share"] for w in windows), 3),
        "persisted_rows": sum(int(w["rows"]) for w in windows),
        "pinned_core": core,
        "postgres_cores": pinned_pg,
        "known_traders": stats["addresses"],
        "traders_rows": table_rows,
        "load_s": round(load_s, 2),
        "registry_mb": round(registry_mb, 1),
        "flushes": stats["flushes"],
        "dropped": stats["dropped"],
        "frames_dropped": stats["frames_dropped"],
        "leaders_watched": leaders,
        "leader_fills": emitted,
        "legs_us_per_trade": {"decode": round(decode_us, 3), "record": round(record_us, 3)},
        "writer_rows_per_s": round(len(rows) / write_s),
        "frame_trades_avg": round(sum(raw.count(b'"tid"') for raw in frames) / len(frames), 2),
        "target_trades_per_s": 150_000,
        "machine": machine(),
    }


def bench_firehose(
    seconds: float = 30.0,
    runs: int = 3,
    frames: int = 30_000,
    population: int = 100_000,
    leaders: int = 100,
    core: int | None = 0,
) -> dict[str, Any]:
    """Trades per second through the firehose path on one core: each raw ``trades`` message
    parsed by the stream pool's own decoder and handed to Discovery's frame queue; Discovery
    matches it against ``leaders`` followed addresses (LeaderFills to a consumer), registers
    both parties of every trade among ``population`` known traders (loaded from PostgreSQL at
    start), and writes every change to PostgreSQL (embedded, in a temp dir) in its batches.
    ``runs`` windows; each one's clock stops when its last change is written. hlcopy is pinned
    to ``core``; PostgreSQL, its own processes, to the others when there are others."""
    allowed = os.sched_getaffinity(0)
    if core is not None and core not in allowed:
        core = None
    try:
        return asyncio.run(
            _bench_firehose(seconds, max(1, runs), frames, population, leaders, core)
        )
    finally:
        os.sched_setaffinity(0, allowed)  # the caller (a test run, say) gets its cores back


def format_firehose(result: dict[str, Any]) -> str:
    m = result["machine"]
    legs = result["legs_us_per_trade"]
    core = result["pinned_core"]
    where = "unpinned" if core is None else f"on core {core}"
    pg_where = result["postgres_cores"]
    pg = "shares the cores" if not pg_where else f"on core(s) {pg_where}"
    return "\n".join(
        [
            "hlcopy bench firehose: raw trades messages -> the stream's decoder -> Discovery",
            "(leader match, registry, batched upserts into PostgreSQL); one process, one thread",
            f"  trades/s          {result['trades_per_s']:10,}   median of "
            f"{len(result['runs_trades_per_s'])} runs (target >= "
            f"{result['target_trades_per_s']:,}); min {result['min_trades_per_s']:,}, "
            f"max {result['max_trades_per_s']:,}",
            f"  runs              {', '.join(f'{r:,}' for r in result['runs_trades_per_s'])}",
            f"  ingest alone      {result['ingest_trades_per_s']:10,}   trades/s until the last "
            f"message is registered, {result['backlog_rows']:,} changes then still to write",
            f"  work              {result['trades']:,} trades in {result['seconds']} s "
            f"({result['us_per_trade']} us/trade, {result['frame_trades_avg']} trades/message)",
            f"  cpu               hlcopy {where}: {result['cpu_s']} s "
            f"({result['trades_per_cpu_s']:,} trades per CPU second); PostgreSQL {pg}: "
            f"{result['postgres_cpu_s']} s",
            f"  persisted         {result['persisted_rows']:,} row writes, "
            f"{result['flushes']:,} batches in all; {result['traders_rows']:,} traders rows; "
            f"dropped {result['dropped']}, frames dropped {result['frames_dropped']}",
            f"  registry          {result['known_traders']:,} addresses, loaded in "
            f"{result['load_s']} s, ~{result['registry_mb']} MB RSS",
            f"  leaders           {result['leaders_watched']} watched, "
            f"{result['leader_fills']:,} LeaderFills handed over",
            f"  legs alone        decode {legs['decode']} us/trade, registry {legs['record']} "
            f"us/trade, writer {result['writer_rows_per_s']:,} rows/s; parsing is "
            f"{result['parse_share']:.0%} of a run",
            f"  machine           {m['cpu']}, {m['cores']} cores, load {m['load_1m']}, "
            f"Python {m['python']}",
        ]
    )


# -- memory ----------------------------------------------------------------------------------


def known_traders(n: int, now_ms: int, seed: int = 13) -> Iterator[ActivityRow]:
    """``n`` addresses as discovery writes them: what a daemon that has watched the trade
    stream for a while knows.

    Last seen a week ago on average (a tail to three months), first seen weeks before that;
    most traded once or a few times, a few thousands of times (Pareto); a taker share anywhere
    from 0 to 1; about $1,000 a trade (lognormal), the volume an exact decimal with cents; one
    to a handful of coins, the big ones most often.
    """
    from hlcopy.sim.market import PERPS
    from hlcopy.store.registry import COIN_SEPARATOR

    rng = random.Random(seed)
    names = [p.name for p in PERPS if not p.delisted]
    weights = [1.0 / (i + 1) ** 1.2 for i in range(len(names))]
    day = 86_400_000
    for _ in range(n):
        last = max(now_ms - 90 * day, now_ms - int(rng.expovariate(1 / (7 * day))))
        first = max(now_ms - 120 * day, last - int(rng.expovariate(1 / (20 * day))))
        trades = min(1_000_000, int(rng.paretovariate(1.1)))
        taker = round(trades * rng.random())
        volume = trades * rng.lognormvariate(7.0, 1.5)
        k = min(len(names), 1 + int(rng.expovariate(0.7)))
        coins = list(dict.fromkeys(rng.choices(names, weights, k=2 * k)))[:k]
        yield (
            f"0x{rng.getrandbits(160):040x}",
            first,
            last,
            trades,
            f"{volume:.2f}",
            taker,
            trades - taker,
            COIN_SEPARATOR.join(coins),
        )


def _index_points(rng: random.Random, now_ms: int) -> dict[str, list[list[float]]]:
    """Equity index points per window, shaped as the tracker stores them: the exchange's
    portfolio sampling (day ~13 points two hours apart, week ~57, month ~46, all time ~76)."""
    hour = 3_600_000
    out: dict[str, list[list[float]]] = {}
    for window, n, step_ms in (
        ("day", 13, 2 * hour),
        ("week", 57, 3 * hour),
        ("month", 46, 16 * hour),
        ("allTime", 76, 28 * hour),
    ):
        value, points = 1.0, []
        for i in range(n):
            value *= 1 + rng.gauss(0, 0.01)
            points.append([float(now_ms - (n - 1 - i) * step_ms), round(value, 6)])
        out[window] = points
    return out


async def _seed_memory(
    store: Store, traders: int, scored: int, now_ms: int, seed: int
) -> list[str]:
    """The state a daemon that has run for a while leaves in PostgreSQL, written the way the
    daemon writes it: discovery's batched upserts for the ``traders`` known addresses, the
    tracker's ``save_positions`` and ``save_stats`` for the first ``scored`` of them (metrics in
    every window from ``synthetic_traders``, equity index points, a few open positions).
    Returns the scored addresses."""
    from hlcopy.config import DiscoveryConfig
    from hlcopy.scout.discovery import KV_USERS_ORDER
    from hlcopy.scout.leaderboard import pack_metrics
    from hlcopy.sim.market import PERPS
    from hlcopy.store.registry import RegistryStore
    from hlcopy.store.tracking import TrackingStore, position_json

    registry, tracking = RegistryStore(store), TrackingStore(store)
    batch = DiscoveryConfig().persist_batch_size
    rows: list[ActivityRow] = []
    addresses: list[str] = []
    for row in known_traders(traders, now_ms, seed):
        rows.append(row)
        if len(addresses) < scored:
            addresses.append(row[0])
        if len(rows) == batch:
            await registry.upsert(rows)
            rows = []
    await registry.upsert(rows)
    # A later start reads the calibration back instead of calibrating again.
    await registry.kv_set(KV_USERS_ORDER, "buyer_seller")

    rng = random.Random(seed + 1)
    perps = [p for p in PERPS if not p.delisted]
    figures = synthetic_traders(scored, seed + 2)

    async def save(address: str, metrics: dict[str, Any], value: Decimal) -> None:
        at_ms = now_ms - rng.randrange(3_600_000)
        positions = []
        for perp in rng.sample(perps, rng.choice((0, 0, 1, 1, 2, 3))):
            px = Decimal(perp.price)
            lot = Decimal(1).scaleb(-perp.sz_decimals)
            notional = value * Decimal(f"{rng.uniform(0.1, 3):.3f}")
            size = max(lot, (notional / px).quantize(lot))
            szi = size if rng.random() < 0.5 else -size
            entry = Decimal(f"{float(px) * rng.uniform(0.95, 1.05):.5g}")
            leverage = rng.randint(1, min(10, perp.max_leverage))
            positions.append(
                position_json(
                    perp.name,
                    szi,
                    entry,
                    size * px,
                    (px - entry) * szi,
                    leverage,
                    None,
                    size * px / leverage,
                )
            )
        await tracking.save_positions(address, value, positions, at_ms)
        stats = {w: m.as_dict() for w, m in metrics.items()}
        await tracking.save_stats(
            address,
            stats,
            _index_points(rng, now_ms),
            value,
            at_ms,
            board_figures=pack_metrics(metrics, updated_ms=at_ms),
        )

    for i in range(0, scored, 64):
        # As the tracker's workers write: a few statements in flight at once.
        chunk = [
            (address, metrics, value)
            for address, (_, metrics, value) in zip(
                addresses[i : i + 64], itertools.islice(figures, 64), strict=True
            )
        ]
        async with asyncio.TaskGroup() as tg:
            for address, metrics, value in chunk:
                tg.create_task(save(address, metrics, value), name="bench:seed")
    return addresses


def _rss_parts_mib(pid: int) -> dict[str, float] | None:
    """What the resident set is made of (Linux): anonymous memory (the heap: Python objects,
    malloc arenas), mapped files (the interpreter and shared libraries, shareable) and shared
    memory; and the kernel's high-water mark of the RSS (VmHWM), a peak no sampling misses."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    parts = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
            parts[key] = round(int(value.split()[0]) / 1024, 1)  # the file says kB
    return parts or None


def _daemon_log(path: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """The daemon's JSON log: the first line of each event, and the last lines as text."""
    import orjson

    first: dict[str, dict[str, Any]] = {}
    lines = path.read_bytes().splitlines()
    for raw in lines:
        with contextlib.suppress(orjson.JSONDecodeError):
            line = orjson.loads(raw)
            if isinstance(line, dict):
                first.setdefault(str(line.get("event")), line)
    return first, b"\n".join(lines[-30:]).decode(errors="replace")


def _daemon_config(root: Path, dsn: str, rest_url: str, api_port: int) -> Path:
    """The daemon's TOML: the simulator as the exchange, the seeded database, paper mode,
    discovery on; everything else at its defaults."""
    import orjson

    def q(text: str) -> str:
        return orjson.dumps(text).decode()  # a JSON string is a valid TOML basic string

    path = root / "hlcopy.toml"
    path.write_text(
        "[network]\n"
        'name = "custom"\n'
        f"rest_url = {q(rest_url)}\n"
        f"ws_url = {q(rest_url.replace('http', 'ws', 1) + '/ws')}\n"
        'chain = "testnet"\n'
        f"[database]\ndsn = {q(dsn)}\n"
        f"[state]\ndir = {q(str(root / 'state'))}\n"
        f"[api]\nport = {api_port}\n"
        '[account]\nmode = "paper"\n'
        "[discovery]\nenabled = true\n"
        '[logging]\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


def _mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


async def _bench_memory(
    root: Path,
    log_file: IO[bytes],
    seconds: float,
    traders: int,
    scored: int,
    rate: float,
    sim_traders: int,
    seed: int,
    requests_per_s: float,
    ready_timeout_s: float,
) -> dict[str, Any]:
    import signal
    import socket

    import aiohttp
    import psutil

    from hlcopy.clock import SYSTEM
    from hlcopy.config import DatabaseConfig
    from hlcopy.store import Store
    from hlcopy.store.embedded import EmbeddedPostgres

    load_start = os.getloadavg()
    server = EmbeddedPostgres(root / "pg")
    sim: asyncio.subprocess.Process | None = None
    daemon: asyncio.subprocess.Process | None = None
    try:
        dsn = await server.start()
        t = time.perf_counter()
        store = Store(DatabaseConfig(dsn=dsn), root, exclusive=False)
        try:
            await store.open()
            await store.migrate()
            scored_addresses = await _seed_memory(store, traders, scored, SYSTEM.time_ms(), seed)
            rows = await store.pool.fetchval("SELECT count(*) FROM traders")
            scored_rows = await store.pool.fetchval("SELECT count(stats) FROM traders")
        finally:
            await store.close()
        seed_s = time.perf_counter() - t

        sim, rest_url = await _sim_process(rate, sim_traders)
        with socket.socket() as probe:  # a free port now, so the bench knows where to ask
            probe.bind(("127.0.0.1", 0))
            api_port = int(probe.getsockname()[1])
        config = _daemon_config(root, dsn, rest_url, api_port)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY")
        }
        t_spawn = time.perf_counter()
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hlcopy",
            "run",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
            env=env,
        )
        proc = psutil.Process(daemon.pid)
        samples: list[tuple[float, int]] = []
        ready_s: float | None = None

        async def sample() -> None:
            """The daemon's RSS from its first instant: every 50 ms while it starts (loading
            is where a peak would hide), every second once it serves."""
            while True:
                with contextlib.suppress(psutil.Error):
                    samples.append((time.perf_counter() - t_spawn, proc.memory_info().rss))
                await asyncio.sleep(0.05 if ready_s is None else 1.0)

        base = f"http://127.0.0.1:{api_port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def stats() -> dict[str, Any]:
                async with http.get(base + "/api/v1/stats") as r:
                    r.raise_for_status()
                    figures: dict[str, Any] = await r.json()
                    return figures

            statuses: dict[str, int] = {}

            async def browse() -> None:
                """Someone looking at the dashboard: a few requests a second of the api
                bench's mix (the leaderboard's views are built on first use and cached), the
                registry's address search and trader pages."""
                rng = random.Random(seed)
                paths = _api_paths(512, seed)
                paths += [f"/api/v1/traders?q=0x{rng.getrandbits(8):02x}" for _ in range(32)]
                paths += [f"/api/v1/traders/{a}" for a in scored_addresses[:64]]
                rng.shuffle(paths)
                for path in itertools.cycle(paths):
                    try:
                        async with http.get(base + path) as r:
                            await r.read()
                            key = str(r.status)
                    except aiohttp.ClientError as exc:
                        key = type(exc).__name__
                    statuses[key] = statuses.get(key, 0) + 1
                    await asyncio.sleep(1 / requests_per_s)

            sampler = asyncio.create_task(sample(), name="bench:rss")
            try:
                try:
                    async with asyncio.timeout(ready_timeout_s):
                        while True:
                            if daemon.returncode is not None:
                                raise RuntimeError(f"exited {daemon.returncode} before ready")
                            with contextlib.suppress(aiohttp.ClientError):
                                async with http.get(base + "/health") as r:
                                    if r.status == 200:
                                        break
                            await asyncio.sleep(0.1)
                except (RuntimeError, TimeoutError) as exc:
                    what = str(exc) or f"not ready within {ready_timeout_s:g} s"
                    raise RuntimeError(
                        f"the daemon {what}; its log ends:\n{_daemon_log(_log_path(root))[1]}"
                    ) from exc
                rss_ready = proc.memory_info().rss
                parts_ready = _rss_parts_mib(daemon.pid)
                ready_s = time.perf_counter() - t_spawn
                at_ready = await stats()
                browser = asyncio.create_task(browse(), name="bench:browse")
                await asyncio.sleep(seconds)
                browser.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await browser
                at_end = await stats()
                rss_final = proc.memory_info().rss
                parts_final = _rss_parts_mib(daemon.pid)
                measured_s = time.perf_counter() - t_spawn - ready_s
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        t_stop = time.perf_counter()
        daemon.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(daemon.wait(), 60)
        stop_s = time.perf_counter() - t_stop
    finally:
        if daemon is not None and daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
        if sim is not None:
            sim.terminate()
            await sim.wait()
        await server.stop()
    logged, _ = _daemon_log(_log_path(root))
    disc0, disc = at_ready["components"]["discovery"], at_end["components"]["discovery"]
    board = at_end["components"]["leaderboard"]
    tracker = at_end["components"]["tracker"]
    after_ready = [rss for at, rss in samples if at >= ready_s]
    before_ready = [rss for at, rss in samples if at < ready_s]
    hwm = (parts_final or {}).pop("VmHWM", None)
    (parts_ready or {}).pop("VmHWM", None)
    peak = max([rss_ready, rss_final, *(rss for _, rss in samples)])
    return {
        "benchmark": "memory",
        # The kernel's high-water mark when there is one (it sees every page); else sampled.
        "rss_peak_mib": max(_mib(peak), hwm or 0.0),
        "rss_sampled_peak_mib": _mib(peak),
        "rss_hwm_mib": hwm,
        "rss_ready_mib": _mib(rss_ready),
        "rss_final_mib": _mib(rss_final),
        "rss_startup_peak_mib": _mib(max(before_ready, default=rss_ready)),
        "rss_running_peak_mib": _mib(max([rss_final, *after_ready])),
        "rss_ready_parts_mib": parts_ready,
        "rss_final_parts_mib": parts_final,
        "rss_mib_timeline": [[round(at, 1), _mib(rss)] for at, rss in samples],
        "samples": len(samples),
        "traders": traders,
        "scored": scored,
        "traders_rows": rows,
        "scored_rows": scored_rows,
        "seed_s": round(seed_s, 1),
        "registry_loaded": logged.get("discovery: registry loaded", {}).get("addresses"),
        "registry_addresses_ready": disc0["addresses"],
        "registry_addresses": disc["addresses"],
        "board_loaded": board["loaded_traders"],
        "board_load_s": board["load_s"],
        "board_traders": board["traders"],
        "board_views": board["views"],
        "api_requests": sum(statuses.values()),
        "api_statuses": statuses,
        # Every trader the tracker ever touched (each scored one), before it keeps its chosen.
        "tracker_loaded": logged.get("tracker state loaded", {}).get("traders"),
        "tracked": tracker["tracked"],
        "scored_live": tracker["scored"],
        "trades_ingested": disc["trades"] - disc0["trades"],
        "trades_per_s": round((disc["trades"] - disc0["trades"]) / measured_s, 1),
        "subscriptions": disc["subscriptions"],
        "ready_s": round(ready_s, 2),
        "seconds": round(measured_s, 1),
        "stop_s": round(stop_s, 2),
        "exit_code": exit_code,
        "sim_rate": rate,
        "sim_traders": sim_traders,
        "target_mib": 200,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }


def _log_path(root: Path) -> Path:
    """Where the daemon's log goes (kept only while the bench runs; a failure quotes it)."""
    return root / "daemon.log"


def bench_memory(
    seconds: float = 60.0,
    traders: int = 100_000,
    scored: int | None = None,
    rate: float = 200.0,
    sim_traders: int = 200,
    seed: int = 13,
    requests_per_s: float = 4.0,
    ready_timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Resident memory of the real daemon (``hlcopy run`` in its own process) that knows
    ``traders`` addresses and has ``scored`` of them on the leaderboard (default: the tracker's
    ``max_tracked_traders``), as after a restart of a daemon that has run for a while: an
    embedded PostgreSQL in a temp dir seeded through the daemon's own write paths, the
    simulator (its own process) as the exchange, paper mode, discovery on, and someone browsing
    the API (``requests_per_s``). RSS is sampled from the first instant to SIGTERM; the run
    ends with the daemon's exit code."""
    import shutil
    import tempfile

    from hlcopy.config import TrackingConfig

    if scored is None:
        scored = TrackingConfig().max_tracked_traders
    scored = max(0, min(scored, traders))
    root = Path(tempfile.mkdtemp(prefix="hlmem-"))  # short: PostgreSQL's socket path is limited
    try:
        with open(_log_path(root), "wb") as log_file:
            return asyncio.run(
                _bench_memory(
                    root,
                    log_file,
                    seconds,
                    traders,
                    scored,
                    rate,
                    sim_traders,
                    seed,
                    requests_per_s,
                    ready_timeout_s,
                )
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def format_memory(result: dict[str, Any]) -> str:
    m = result["machine"]
    parts = result["rss_final_parts_mib"] or {}
    made_of = ", ".join(f"{k[3:].lower()} {v} MiB" for k, v in parts.items()) or "n/a"
    return "\n".join(
        [
            "hlcopy bench memory: resident memory of the real daemon (hlcopy run, its own "
            "process),",
            f"{result['traders']:,} known traders and {result['scored']:,} scored ones in "
            "PostgreSQL, the simulator as the exchange, paper mode",
            f"  peak RSS          {result['rss_peak_mib']:8.1f} MiB   (target <= "
            f"{result['target_mib']} MiB), from start to SIGTERM: the kernel's high-water",
            f"                    mark ({result['rss_hwm_mib']} MiB), sampled "
            f"{result['rss_sampled_peak_mib']} MiB",
            f"  at ready          {result['rss_ready_mib']:8.1f} MiB   after {result['ready_s']} s "
            f"(start-up peak {result['rss_startup_peak_mib']} MiB)",
            f"  {'after ' + format(result['seconds'], 'g') + ' s':<18}"
            f"{result['rss_final_mib']:8.1f} MiB   "
            f"(running peak {result['rss_running_peak_mib']} MiB; {made_of})",
            f"  registry          {result['registry_loaded']:,} addresses loaded, "
            f"{result['registry_addresses']:,} known at the end "
            f"({result['traders_rows']:,} rows seeded)",
            f"  leaderboard       {result['board_loaded']:,} traders loaded in "
            f"{result['board_load_s']} s, {result['board_traders']:,} at the end "
            f"({result['scored_rows']:,} scored rows seeded)",
            f"  running           {result['trades_per_s']:,.1f} trades/s ingested on "
            f"{result['subscriptions']} subscriptions",
            f"  tracker           {result['tracker_loaded']:,} traders loaded, "
            f"{result['tracked']:,} kept, {result['scored_live']} scored live",
            f"  api               {result['api_requests']:,} requests while measuring "
            f"({result['api_statuses']}), {result['board_views']} leaderboard views cached",
            f"  stop              SIGTERM -> exit {result['exit_code']} in {result['stop_s']} s",
            f"  machine           {m['cpu']}, {m['cores']} cores, load "
            f"{' '.join(str(x) for x in result['loadavg_end'])} at the end "
            f"({' '.join(str(x) for x in result['loadavg_start'])} before), Python "
            f"{m['python']}",
        ]
    )


# -- decide ----------------------------------------------------------------------------------

DECIDE_LEADER = "0x" + "d1" * 20  # the followed leader on the simulator (funded by the bench)
# The coins the leader trades in turn: each one opens and closes, so its book never grows.
DECIDE_COINS = ("BTC", "ETH", "SOL", "AVAX", "BNB", "LTC", "LINK", "AAVE")
# A sample whose thread was off the CPU longer than this (wall time less CPU time) is counted.
OFF_CPU_NS = 50_000


class _Wire:
    """Stands in front of the stream pool's socket send and ``post_action``, live: when an
    order action's bytes (signed) were written to the WebSocket, and when the exchange's
    reply came back, per cloid."""

    def __init__(self, stream: Any, copies: Any) -> None:
        self._send = stream._send
        self._post_action = stream.post_action
        self._write_intent = copies.write_intent
        self.written: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        # Where the time goes before the socket: the executor takes the intent, its write-ahead
        # row (live: committed as sending) is in PostgreSQL.
        self.picked: dict[str, int] = {}
        self.committed: dict[str, int] = {}

    async def write_intent(self, row: Any) -> Any:
        self.picked.setdefault(row.cloid, time.perf_counter_ns())
        stored = await self._write_intent(row)
        self.committed.setdefault(row.cloid, time.perf_counter_ns())
        return stored

    async def send(self, conn: Any, message: dict[str, Any] | str, *, urgent: bool = False) -> None:
        await self._send(conn, message, urgent=urgent)
        at_ns = time.perf_counter_ns()  # first thing: the bytes are on the socket
        import orjson

        request = (orjson.loads(message) if isinstance(message, str) else message).get("request")
        if isinstance(request, dict) and request.get("type") == "action":
            for cloid in _cloids(request["payload"]):
                self.written.setdefault(cloid, at_ns)

    async def post_action(self, body: bytes) -> object:
        reply = await self._post_action(body)
        at_ns = time.perf_counter_ns()
        import orjson

        for cloid in _cloids(orjson.loads(body)):
            self.acked.setdefault(cloid, at_ns)
        return reply


def _cloids(payload: Mapping[str, Any]) -> list[str]:
    action = payload.get("action") or {}
    return [o["c"] for o in action.get("orders", ()) if isinstance(o, dict) and "c" in o]


class _Stopwatch:
    """Stands in front of ``PaperExecutor.submit`` (on the one executor instance the daemon
    built, so the copy engine calls it as it calls the executor): the moment an ``OrderIntent``
    is handed over, against the perf-counter reading the stream reader took when the frame of
    the leader fill that triggered it arrived (``LeaderFill.recv_ns``). Then it submits.

    ``decide`` stands in front of the copier's pure core as the engine calls it, for where the
    time goes: before the core (queues, other tasks' turns, gathering its inputs), in it, and
    after it."""

    def __init__(
        self,
        submit: Callable[[OrderIntent, LeaderFill | None], None],
        core: Callable[..., Decision],
        leader: str,
    ) -> None:
        self._submit = submit
        self._core = core
        self._leader = leader
        self.measuring = False
        # (leader fill tid, source, frame received, intent handed over), in order; times in ns.
        self.samples: list[tuple[int, str, int, int]] = []
        # cloid -> (leader fill tid, frame received) of each sampled intent.
        self.cloids: dict[str, tuple[int, int]] = {}
        # Each core call while measuring: (trigger, called, returned, decision), read after the
        # run (``cores``, ``skips``) so the call itself adds no more than its two clock reads.
        self.calls: list[tuple[LeaderFill | None, int, int, Decision]] = []
        # frame received -> (the userFills handler began, this thread's CPU time then) in ns;
        # (leader fill tid, frame received) -> this thread's CPU time at the first hand-over.
        self.handled: dict[int, tuple[int, int]] = {}
        self.cpu_at: dict[tuple[int, int], int] = {}
        self.untriggered = 0  # intents of reconcile passes and snapshots (no leader fill)
        self.other = 0  # intents triggered by another leader's fill, or without a frame time

    def submit(self, intent: OrderIntent, trigger: LeaderFill | None = None) -> None:
        at_ns = time.perf_counter_ns()  # first thing: the intent is ready now
        if self.measuring:
            if trigger is None:
                self.untriggered += 1
            elif trigger.leader != self._leader or trigger.recv_ns <= 0:
                self.other += 1
            else:
                self.samples.append((trigger.tid, trigger.source, trigger.recv_ns, at_ns))
                self.cloids[intent.cloid] = (trigger.tid, trigger.recv_ns)
                self.cpu_at.setdefault((trigger.tid, trigger.recv_ns), thread_cpu_ns())
        self._submit(intent, trigger)

    def handler(self, handle: Callable[[UserFills], None]) -> Callable[[UserFills], None]:
        """Stands in front of the leader books' userFills handler: when it began, on the wall
        and in this thread's CPU time, so the bench can tell the time the handler spent working
        from the time its thread was off the CPU (other processes, the host)."""

        def timed(msg: UserFills) -> None:
            if self.measuring and msg.user == self._leader and not msg.is_snapshot:
                began = (time.perf_counter_ns(), thread_cpu_ns())
                self.handled.setdefault(msg.recv_ns, began)
            handle(msg)

        return timed

    def decide(self, **inputs: Any) -> Decision:
        t0 = time.perf_counter_ns()
        decision = self._core(**inputs)
        t1 = time.perf_counter_ns()
        if self.measuring:
            self.calls.append((inputs.get("trigger"), t0, t1, decision))
        return decision

    @property
    def cores(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(leader fill tid, frame received) -> (core called, core returned) in ns, for the
        followed leader's fills: the first call each."""
        out: dict[tuple[int, int], tuple[int, int]] = {}
        for trigger, t0, t1, _ in self.calls:
            if trigger is not None and trigger.leader == self._leader:
                out.setdefault((trigger.tid, trigger.recv_ns), (t0, t1))
        return out

    @property
    def skips(self) -> dict[str, int]:
        """The core's skips by reason, whatever triggered them."""
        return dict(Counter(s.reason.value for *_, d in self.calls for s in d.skips))


async def _decide_drive(
    url: str, leader: str, coins: list[str], fills: int, per_s: float, sizes: dict[str, str]
) -> dict[str, Any]:
    """Make ``leader`` trade ``fills`` times at ``per_s``: the coins in turn, each bought then
    sold by the same size, so every trade moves the leader's position."""
    import aiohttp

    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        t0 = time.perf_counter()
        for i in range(fills):
            coin = coins[i % len(coins)]
            body = {
                "address": leader,
                "coin": coin,
                "is_buy": (i // len(coins)) % 2 == 0,
                "sz": sizes[coin],
            }
            async with session.post(url + "/_sim/trade", json=body) as r:
                reply = await r.json() if r.status == 200 else None
                key = str(r.status)
            if reply is not None:  # the order's own status: filled, or why not
                status = reply["statuses"][0]
                if isinstance(status, dict) and "filled" in status:
                    key = "filled"
                else:
                    key = str(status.get("error", status) if isinstance(status, dict) else status)
            statuses[key] = statuses.get(key, 0) + 1
            await asyncio.sleep(max(0.0, (i + 1) / per_s - (time.perf_counter() - t0)))
        seconds = time.perf_counter() - t0
    return {"statuses": statuses, "seconds": seconds}


def _decide_driver_main() -> None:
    """The leader's process: its orders on stdin, what it did on stdout. Its own process, so
    the daemon's event loop sees the leader's fills only as the exchange would show them."""
    import orjson

    job = orjson.loads(sys.stdin.buffer.read())
    result = asyncio.run(
        _decide_drive(
            job["url"], job["leader"], job["coins"], job["fills"], job["per_s"], job["sizes"]
        )
    )
    sys.stdout.buffer.write(orjson.dumps(result))


async def _drive_leader(
    url: str,
    leader: str,
    coins: Sequence[str],
    fills: int,
    per_s: float,
    sizes: dict[str, str],
    cpus: set[int] | None,
) -> dict[str, Any]:
    job = {
        "url": url,
        "leader": leader,
        "coins": list(coins),
        "fills": fills,
        "per_s": per_s,
        "sizes": sizes,
    }
    return await _job_process("_decide_driver_main", job, cpus, "the leader's driver")


def _decide_config(
    root: Path,
    dsn: str | None,
    url: str,
    leader: str,
    live: tuple[str, Path] | None = None,
    api_port: int | None = None,
) -> HlcopyConfig:
    """The daemon's config: the simulator as the exchange, paper mode (or ``live``: the
    account's address and the agent key's file), discovery on, one ratio follow of ``leader``;
    limits and equity far above what the run trades, so every leader fill makes an order (what
    is measured is the decision, not a limit being hit). The API on ``api_port`` if given."""
    from hlcopy.config import parse_config

    data: dict[str, Any] = {
        "network": {
            "name": "custom",
            "rest_url": url,
            "ws_url": url.replace("http", "ws", 1) + "/ws",
            "chain": "testnet",
        },
        "state": {"dir": str(root / "state")},
        "api": {"enabled": False} if api_port is None else {"port": api_port},
        "logging": {"format": "json"},
        "account": {"mode": "paper", "paper_equity_usd": "1000000"}
        if live is None
        else {"mode": "live", "address": live[0], "agent_key_file": str(live[1])},
        "discovery": {"enabled": True},
        "risk": {
            "max_total_notional_usd": "10000000",
            "max_position_notional_usd": "1000000",
            "max_order_notional_usd": "1000000",
            "max_leverage": "50",
            "max_daily_loss_usd": "1000000",
            "max_drawdown_pct": "90",
        },
        # Ratio 1: a leader fill is on the coin's lot, so the copy is too (never below_lot);
        # round_up: the sliver a sweep of the book leaves on a maker is copied, not skipped.
        "follow": [
            {"name": "bench", "leader": leader, "ratio": "1", "min_notional_policy": "round_up"}
        ],
    }
    if dsn is not None:
        data["database"] = {"dsn": dsn}
    return parse_config(data)


async def _live_account(url: str, root: Path) -> tuple[str, Path]:
    """A throwaway follower account on the simulator: funded, with an approved agent whose
    fresh key is in a 0600 file under ``root``. Returns (account address, key file)."""
    import secrets

    import aiohttp

    from hlcopy.budget import WeightBudget
    from hlcopy.hl import ExchangeClient, Signer

    master = Signer.from_key("0x" + secrets.token_hex(32))
    agent_key = "0x" + secrets.token_hex(32)
    async with aiohttp.ClientSession() as http:
        body = {"address": master.address, "usdc": "100000000"}
        async with http.post(url + "/_sim/fund", json=body) as r:
            r.raise_for_status()
        by_master = ExchangeClient(http, url, master, WeightBudget(), is_mainnet=False)
        await by_master.approve_agent(master, Signer.from_key(agent_key).address, "bench")
    key_file = root / "agent.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(agent_key)
    return master.address, key_file


def _postgres_cpus(store: Any) -> list[int] | None:
    """Where the embedded PostgreSQL's postmaster may run (None: not embedded, or gone)."""
    import psutil

    pid = store.embedded_pid
    if pid is None:
        return None
    try:
        return sorted(psutil.Process(pid).cpu_affinity())
    except psutil.Error:
        return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _percentiles_ms(ns: Sequence[int]) -> dict[str, Any]:
    values = sorted(ns)
    n = len(values)

    def pct(q: float) -> float | None:
        return round(values[min(n - 1, int(n * q))] / 1e6, 4) if n else None

    return {
        "n": n,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(values[-1] / 1e6, 4) if n else None,
    }


async def _bench_decide(
    root: Path,
    dsn: str | None,
    fills: int,
    fills_per_s: float,
    rate: float,
    sim_traders: int,
    warmup_fills: int,
    usd: Decimal,
    ready_timeout_s: float,
    isolate: bool,
    live: bool = False,
    api_clients: int = 0,
    api_think_s: float = 0.1,
) -> dict[str, Any]:
    import aiohttp

    import hlcopy.follow.engine as engine_module
    from hlcopy.app import App
    from hlcopy.credentials import load_secrets

    leader, coins = DECIDE_LEADER, DECIDE_COINS
    core_name = "decide"  # how the copy engine's module names the copier's core
    core = getattr(engine_module, core_name)
    load_start = os.getloadavg()
    # The load (the simulator and the leader's driver) on a core of its own, the daemon on the
    # others: on a VPS the exchange is not on the daemon's machine. The embedded PostgreSQL is
    # on the daemon's machine: started by the daemon's run, after the daemon's cores are set,
    # it inherits them (the result says where it ran; left anywhere, it waited behind the
    # simulator's busy core: write-ahead commits of 66-145 ms at p99).
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    load_cpus = {mine[-1]} if isolate and len(mine) >= 2 else None
    daemon_cpus = set(mine[:-1]) if load_cpus else None
    sim, url = await _sim_process(rate, sim_traders, load_cpus)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/_sim/fund", json={"address": leader, "usdc": "100000000"}) as r,
        ):
            r.raise_for_status()
        account = await _live_account(url, root) if live else None
        api_port = _free_port() if api_clients else None
        cfg = _decide_config(root, dsn, url, leader, account, api_port)
        async with App(cfg, load_secrets(cfg)) as app:
            assert app.discovery is not None  # configured on
            discovery = app.discovery
            if daemon_cpus:
                os.sched_setaffinity(0, daemon_cpus)
            timer = _Stopwatch(app.executor.submit, core, leader)
            # The bench's hooks: the executor the daemon built, seen by its copy engine, times
            # each hand-over before submitting; the engine's name for the copier's core times
            # the core. Nothing else of the daemon changes.
            app.executor.submit = timer.submit  # type: ignore[method-assign]
            setattr(engine_module, core_name, timer.decide)
            user_fills = app.books.user_fills
            user_fills._handle = timer.handler(user_fills._handle)
            # Live: the stream pool's socket send and action post, timed the same way.
            wire = _Wire(app.stream, app.executor._copies) if live else None
            if wire is not None:
                app.stream._send = wire.send  # type: ignore[method-assign]
                app.stream.post_action = wire.post_action  # type: ignore[method-assign]
                app.executor._copies.write_intent = wire.write_intent  # type: ignore[method-assign]
            task = asyncio.create_task(app.run(), name="bench:daemon")
            try:
                t_start = time.perf_counter()
                try:
                    async with asyncio.timeout(ready_timeout_s):
                        while not (
                            app.daemon.health()[0]
                            and leader in app.books.subscribed()
                            and discovery.users_order is not None
                            and set(coins) <= set(app.executor.mids())
                            and (not live or app.stream.post_ready)
                        ):
                            if task.done():
                                raise RuntimeError(f"the daemon exited with {task.result()}")
                            await asyncio.sleep(0.1)
                except TimeoutError as exc:
                    raise RuntimeError(
                        f"not ready within {ready_timeout_s:g} s: health "
                        f"{app.daemon.health()[0]}, leader subscribed "
                        f"{leader in app.books.subscribed()}, discovery "
                        f"{discovery.stats()['calibration']}, mids "
                        f"{sorted(app.executor.mids())}"
                    ) from exc
                ready_s = time.perf_counter() - t_start
                # About ``usd`` a trade, on each coin's lot, from what the daemon knows (the
                # REST budget is the daemon's: the bench reads nothing of its own).
                mids = app.executor.mids()
                lots = {c: app.universe.universe.by_name(c).sz_decimals for c in coins}
                sizes = {
                    c: str((usd / mids[c]).quantize(Decimal(1).scaleb(-lots[c]))) for c in coins
                }
                # Warm-up (not measured): every coin's book subscribed by the executor, the
                # first decisions made, whole open-close rounds so the leader ends flat.
                if warmup_fills:
                    await _drive_leader(
                        url, leader, coins, warmup_fills, fills_per_s, sizes, load_cpus
                    )
                    await asyncio.sleep(1.0)
                me_cpu0 = time.process_time()
                trades0, messages0 = discovery.registry.trades, app.stream.counters["messages"]
                dropped0 = discovery.frames.dropped
                copier0 = dict(app.copier.counters)
                exact0 = app.books.counters["fills_user_fills"]
                paper0 = dict(app.executor.counters)
                per_second: list[float] = []

                async def sample() -> None:
                    """Trades delivered to discovery each second of the window."""
                    last = discovery.registry.trades
                    while True:
                        await asyncio.sleep(1.0)
                        now = discovery.registry.trades
                        per_second.append(now - last)
                        last = now

                sampler = asyncio.create_task(sample(), name="bench:trades-rate")
                timer.measuring = True
                steal0 = host_steal_s()
                t0 = time.perf_counter()
                api_load = None
                if api_port is not None:
                    api_load = asyncio.create_task(
                        _api_load_process(
                            api_port,
                            _api_paths(500, 7),
                            api_clients,
                            0.5,
                            fills / fills_per_s,
                            load_cpus,
                            api_think_s,
                        ),
                        name="bench:api-load",
                    )
                driven = await _drive_leader(
                    url, leader, coins, fills, fills_per_s, sizes, load_cpus
                )
                elapsed = time.perf_counter() - t0
                steal_s = _steal_between(steal0, host_steal_s())
                api_result = None if api_load is None else await api_load
                trades, messages = discovery.registry.trades, app.stream.counters["messages"]
                await asyncio.sleep(1.0)  # the last fills' decisions (far less than a second)
                timer.measuring = False
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                cpu_s = time.process_time() - me_cpu0
                copier = {k: v - copier0.get(k, 0) for k, v in app.copier.counters.items()}
                books, disc = app.books.stats(), discovery.stats()
                exact = books["fills_user_fills"] - exact0
                paper = {
                    k: app.executor.counters[k] - paper0.get(k, 0)
                    for k in ("filled", "partial", "rejected")
                }
                frames_dropped = discovery.frames.dropped - dropped0
                rejections = dict(app.executor.rejections)
                risk_state = str(app.risk.trading_state())
                pg_cpus = _postgres_cpus(app.store)
            finally:
                app.daemon.request_stop()
                exit_code = await asyncio.wait_for(task, 60)
    finally:
        setattr(engine_module, core_name, core)
        if daemon_cpus:
            os.sched_setaffinity(0, mine)
        sim.terminate()
        await sim.wait()
    # One sample per decision that made an intent: the first intent it handed over (a flip
    # makes two of one decision). A leader trade that sweeps several makers arrives as one
    # frame of several fills, all applied to the book before the engine decides: the first
    # fill's decision orders the whole trade and the others find nothing left to do.
    first: dict[tuple[int, int], tuple[str, int]] = {}
    for tid, source, recv_ns, at_ns in timer.samples:
        first.setdefault((tid, recv_ns), (source, at_ns))
    by_source: dict[str, list[int]] = {}
    for (_, recv_ns), (source, at_ns) in first.items():
        by_source.setdefault(source, []).append(at_ns - recv_ns)
    overall = _percentiles_ms([at_ns - recv_ns for (_, recv_ns), (_, at_ns) in first.items()])
    # Where the time goes: before the core (the queues, other tasks' turns, the engine
    # gathering the core's inputs), in the core, and after it until the hand-over.
    legs: dict[str, list[int]] = {"to_core": [], "core": [], "after_core": []}
    cores = timer.cores
    for (tid, recv_ns), (_, at_ns) in first.items():
        core = cores.get((tid, recv_ns))
        if core is not None:
            legs["to_core"].append(core[0] - recv_ns)
            legs["core"].append(core[1] - core[0])
            legs["after_core"].append(at_ns - core[1])
    # From the userFills handler's start to the hand-over: the wall time, and this thread's
    # CPU time (the difference: the thread was off the CPU, another task on its core or the
    # host holding the core; a few such samples make the p99).
    off_cpu = 0
    for (tid, recv_ns), (_, at_ns) in first.items():
        began = timer.handled.get(recv_ns)
        cpu_at = timer.cpu_at.get((tid, recv_ns))
        if began is not None and cpu_at is not None:
            wall_ns, cpu_ns = at_ns - began[0], cpu_at - began[1]
            legs.setdefault("handler_wall", []).append(wall_ns)
            legs.setdefault("handler_cpu", []).append(cpu_ns)
            off_cpu += wall_ns - cpu_ns > OFF_CPU_NS
    sent = sum(driven["statuses"].values())
    wire_figures: dict[str, Any] = {}
    if wire is not None:
        for name, times in (
            ("picked", wire.picked),
            ("committed", wire.committed),
            ("written", wire.written),
            ("acked", wire.acked),
        ):
            ns = [
                times[cloid] - recv_ns
                for cloid, (tid, recv_ns) in timer.cloids.items()
                if cloid in times and first.get((tid, recv_ns)) is not None
            ]
            wire_figures[name] = _percentiles_ms(ns)
        # Each order's own steps: the durable write-ahead commit (one INSERT, fsynced), and
        # from the commit to the signed bytes on the socket.
        for name, (begin, end) in (
            ("commit", (wire.picked, wire.committed)),
            ("commit_to_written", (wire.committed, wire.written)),
        ):
            ns = [end[c] - begin[c] for c in timer.cloids if c in begin and c in end]
            wire_figures[name] = _percentiles_ms(ns)
    return {
        "benchmark": "latency" if live else "decide",
        **(wire_figures["written"] if live else overall),
        "decide": overall,
        "wire": wire_figures,
        "api": api_result,
        "intents": len(first),
        "by_source": {s: _percentiles_ms(v) for s, v in sorted(by_source.items())},
        "legs": {leg: _percentiles_ms(v) for leg, v in legs.items()},
        "handler_off_cpu": {"over_us": OFF_CPU_NS // 1000, "n": off_cpu},
        "leader_trades_sent": sent,
        "leader_trade_statuses": driven["statuses"],
        # A trade of the leader sweeps one or more makers: a fill each, each through userFills.
        "leader_fills": exact,
        # A copy the paper book did not fill (IOC, no match) leaves the follower behind: the
        # leader's next trade in that coin then has nothing to order (a reconcile catches up).
        "trades_without_intent": driven["statuses"].get("filled", 0) - len(first),
        "paper": paper,
        "rejections": rejections,
        "risk_state": risk_state,
        "extra_intents": len(timer.samples) - len(first),
        "intents_untriggered": timer.untriggered,
        "intents_other": timer.other,
        "skips": timer.skips,
        "copier": copier,
        "leader_books": {k: books[k] for k in ("fills_user_fills", "fills_firehose", "duplicates")},
        "trades_per_s_leader": round(sent / driven["seconds"], 2),
        "trades_per_s": round((trades - trades0) / elapsed, 1),
        "trades_per_s_1s_min": min(per_second, default=None),
        "trades_per_s_1s_median": statistics.median(per_second) if per_second else None,
        "messages_per_s": round((messages - messages0) / elapsed, 1),
        "frames_dropped": frames_dropped,
        "users_order": disc["users_order"],
        "seconds": round(elapsed, 1),
        "ready_s": round(ready_s, 2),
        "cpu_s": round(cpu_s, 2),
        "cpu_share": round(cpu_s / elapsed, 3),
        "host_steal_s": steal_s,
        "exit_code": exit_code,
        "sim_rate": rate,
        "sim_traders": sim_traders,
        "api_clients": api_clients,
        "api_think_s": api_think_s,
        "cpus": {
            "daemon": sorted(daemon_cpus) if daemon_cpus else mine,
            "simulator_and_driver": sorted(load_cpus) if load_cpus else mine,
            "postgres": pg_cpus,
        },
        "coins": list(coins),
        "target_p99_ms": 1.0 if live else 0.5,
        "target_p50_ms": 0.3 if live else None,
        "target_trades_per_s": 5000,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }


def bench_decide(
    fills: int = 600,
    fills_per_s: float = 10.0,
    rate: float = 6000.0,
    sim_traders: int = 500,
    warmup_rounds: int = 2,
    usd: Decimal = Decimal(1000),
    dsn: str | None = None,
    ready_timeout_s: float = 120.0,
    isolate: bool = True,
    live: bool = False,
    api_clients: int = 0,
) -> dict[str, Any]:
    """Leader fill frame received -> ``OrderIntent`` handed to the executor, in the real daemon
    (``App``, the composition root ``hlcopy run`` uses, in this process: stream pool,
    discovery on every perp's trades, leader books, tracker, risk, copy engine, paper
    executor; PostgreSQL embedded in a temp dir unless ``dsn``), against the simulator in its
    own process trading at ``rate`` actions/s (the background firehose, measured as
    delivered). A ratio follow of one leader whom another process makes trade ``fills``
    times at ``fills_per_s``: the coins in turn, each opened then closed, so every trade moves
    the leader and makes one order (a trade that sweeps several makers is several fills in
    one frame). The start is the stream reader's perf-counter reading of the frame that
    brought the fill that triggered the decision (userFills or the trades firehose, whichever
    came first); the end is the call of the executor's ``submit``. With ``isolate`` (and two
    cores or more) the simulator and the leader's driver run on one core and the daemon on the
    others, as on a VPS where the exchange is elsewhere; the daemon still does all of its own
    work (the firehose included) on its core."""
    import shutil
    import tempfile

    warmup = max(0, warmup_rounds) * 2 * len(DECIDE_COINS)  # whole rounds: the leader ends flat
    root = Path(tempfile.mkdtemp(prefix="hldec-"))  # short: PostgreSQL's socket path is limited
    try:
        return asyncio.run(
            _bench_decide(
                root,
                dsn,
                fills,
                fills_per_s,
                rate,
                sim_traders,
                warmup,
                usd,
                ready_timeout_s,
                isolate,
                live,
                api_clients,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_latency(
    fills: int = 600,
    fills_per_s: float = 10.0,
    rate: float = 6000.0,
    api_clients: int = 64,
    isolate: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Leader fill frame received -> the signed order's bytes written to the exchange's
    WebSocket, live: ``bench_decide``'s daemon and load, in live mode (a throwaway follower
    account with an approved agent on the simulator; every copy is written ahead to
    PostgreSQL, signed and posted over the socket, as ``hlcopy run`` does) with ``api_clients``
    keep-alive clients reading the leaderboard API of the same event loop all the while (in
    their own process, on the simulator's core). Also the full loop to the exchange's reply."""
    return bench_decide(
        fills, fills_per_s, rate, isolate=isolate, live=True, api_clients=api_clients, **options
    )


def _steal_line(result: Mapping[str, Any]) -> str:
    steal = result["host_steal_s"]
    if steal is None:
        return "  host steal        not measured (no /proc/stat)"
    return (
        f"  host steal        {steal} CPU s of the measured {result['seconds']} s went to other "
        "guests of the host (summed over the vCPUs)"
    )


def _handler_line(result: Mapping[str, Any]) -> list[str]:
    """The userFills handler's wall time to the intent's hand-over beside its CPU time."""
    legs = result["legs"]
    if "handler_wall" not in legs:
        return []
    wall, cpu, off = legs["handler_wall"], legs["handler_cpu"], result["handler_off_cpu"]
    return [
        f"  handler on CPU    userFills handler -> intent handed over: wall {wall['p50_ms']} / "
        f"{wall['p99_ms']}, the thread's CPU time {cpu['p50_ms']} / {cpu['p99_ms']} ms "
        f"(p50 / p99; the rest, off the CPU: over {off['over_us']} us in {off['n']} of "
        f"{wall['n']})"
    ]


def format_latency(result: dict[str, Any]) -> str:
    m, wire, decide, api = result["machine"], result["wire"], result["decide"], result["api"]
    lines = [
        "hlcopy bench latency: leader fill frame received -> signed order bytes written to the",
        "exchange's WebSocket, the real daemon in this process (live mode), the simulator in its",
        "own process, API clients reading the leaderboard all the while",
        f"  p50 / p90         {result['p50_ms']} / {result['p90_ms']} ms   "
        f"(target p50 <= {result['target_p50_ms']} ms)",
        f"  p99               {result['p99_ms']} ms   (target <= {result['target_p99_ms']} ms)",
        f"  max               {result['max_ms']} ms over {result['n']} orders written",
        f"  to the reply      p50 {wire['acked']['p50_ms']}, p99 {wire['acked']['p99_ms']}, "
        f"max {wire['acked']['max_ms']} ms (the simulator's acknowledgement)",
        f"  to the intent     p50 {decide['p50_ms']}, p99 {decide['p99_ms']}, "
        f"max {decide['max_ms']} ms (bench decide's figure, same run)",
        "  legs from the frame, p50 / p99: "
        + "; ".join(
            f"{name} {wire[key]['p50_ms']} / {wire[key]['p99_ms']}"
            for key, name in (
                ("picked", "executor takes it"),
                ("committed", "row committed"),
            )
        )
        + " ms",
        f"  steps, p50 / p99  write-ahead commit (durable) {wire['commit']['p50_ms']} / "
        f"{wire['commit']['p99_ms']}; commit to bytes written "
        f"{wire['commit_to_written']['p50_ms']} / {wire['commit_to_written']['p99_ms']} ms",
        *_handler_line(result),
    ]
    if api is not None:
        lines.append(
            f"  API load          {result['api_clients']} clients, each "
            f"{result['api_think_s']:g} s after its last answer: {api['requests_per_s']:,.0f} "
            f"requests/s, p50 {api['p50_ms']}, p99 {api['p99_ms']} ms, {api['statuses']}"
        )
    lines += [
        f"  copies            {result['paper']}; rejected {result['rejections'] or 'none'}; "
        f"risk {result['risk_state']}",
        f"  leader            {result['leader_trades_sent']} trades at "
        f"{result['trades_per_s_leader']}/s, {result['leader_trade_statuses']}",
        f"  background        {result['trades_per_s']:,.1f} trades/s delivered (target >= "
        f"{result['target_trades_per_s']:,}), {result['frames_dropped']} frames dropped",
        f"  daemon            {result['cpu_s']} CPU s over {result['seconds']} s "
        f"({result['cpu_share']:.0%} of a core); exit {result['exit_code']}",
        f"  cpus              daemon {result['cpus']['daemon']}, simulator, leader's driver "
        f"and API clients {result['cpus']['simulator_and_driver']}, "
        f"PostgreSQL {result['cpus']['postgres'] or 'not embedded'}",
        f"  machine           {m['cpu']}, {m['cores']} cores, load "
        f"{' '.join(str(x) for x in result['loadavg_end'])} at the end "
        f"({' '.join(str(x) for x in result['loadavg_start'])} before), Python {m['python']}",
        _steal_line(result),
    ]
    return "\n".join(lines)


def format_decide(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "hlcopy bench decide: leader fill frame received -> OrderIntent handed to the executor,",
        "the real daemon in this process (paper mode), the simulator in its own process",
        f"  p50 / p90         {result['p50_ms']} / {result['p90_ms']} ms",
        f"  p99               {result['p99_ms']} ms   (target <= {result['target_p99_ms']} ms)",
        f"  max               {result['max_ms']} ms over {result['intents']} intents: "
        f"{result['leader_trades_sent']} leader trades at {result['trades_per_s_leader']}/s "
        f"({result['leader_fills']} fills), {result['trades_without_intent']} filled ones "
        "without an intent",
        f"  leader's orders   {result['leader_trade_statuses']}",
        f"  core's skips      {result['skips'] or 'none'}; paper copies {result['paper']}",
    ]
    for source, figures in result["by_source"].items():
        lines.append(
            f"  via {source:<13} {figures['n']:5} intents: p50 {figures['p50_ms']}, p99 "
            f"{figures['p99_ms']}, max {figures['max_ms']} ms"
        )
    legs = result["legs"]
    lines.append(
        "  legs p50 / p99    "
        + "; ".join(
            f"{name} {legs[leg]['p50_ms']} / {legs[leg]['p99_ms']}"
            for leg, name in (
                ("to_core", "frame -> core"),
                ("core", "core"),
                ("after_core", "core -> hand-over"),
            )
        )
        + " ms"
    )
    lines += _handler_line(result)
    lines += [
        f"  background        {result['trades_per_s']:,.1f} trades/s delivered (target >= "
        f"{result['target_trades_per_s']:,}; slowest second {result['trades_per_s_1s_min']}), "
        f"{result['messages_per_s']:,.1f} messages/s, {result['frames_dropped']} frames dropped",
        f"  daemon            {result['cpu_s']} CPU s over {result['seconds']} s "
        f"({result['cpu_share']:.0%} of a core); ready in {result['ready_s']} s; "
        f"exit {result['exit_code']}",
        f"  simulator         rate {result['sim_rate']:,.0f} actions/s, "
        f"{result['sim_traders']} traders",
        f"  cpus              daemon {result['cpus']['daemon']}, simulator and leader's driver "
        f"{result['cpus']['simulator_and_driver']}, "
        f"PostgreSQL {result['cpus']['postgres'] or 'not embedded'}",
        f"  machine           {m['cpu']}, {m['cores']} cores, load "
        f"{' '.join(str(x) for x in result['loadavg_end'])} at the end "
        f"({' '.join(str(x) for x in result['loadavg_start'])} before), Python {m['python']}",
        _steal_line(result),
    ]
    return "\n".join(lines)


# -- backtest -------------------------------------------------------------------------------------

#: The synthetic leader's coins: (name, szDecimals, starting price).
_BT_COINS = (("BTC", 5, 60_000.0), ("ETH", 4, 3_000.0), ("SOL", 2, 150.0), ("ARB", 1, 1.2))


def synthetic_leader(n_fills: int, seed: int = 5, start_ms: int = 1_700_000_000_000) -> Any:
    """A trader's ``n_fills`` fills as ``userFillsByTime`` would return them: orders about a
    minute apart in four coins that open, add, reduce, close and flip positions of $500 to
    $5,000, one to three fills each (a sweep in one millisecond), prices on random walks,
    ``startPosition`` chaining every fill."""
    from hlcopy.backtest import LeaderHistory
    from hlcopy.model import Fill

    rng = random.Random(seed)
    address = "0x" + f"{rng.getrandbits(160):040x}"
    px = {name: price for name, _, price in _BT_COINS}
    pos = {name: Decimal(0) for name, _, _ in _BT_COINS}
    fills: list[Fill] = []
    t = start_ms
    tid = 10**14
    oid = 10**9
    while len(fills) < n_fills:
        t += rng.randint(5_000, 110_000)
        name, szd, _ = _BT_COINS[rng.randrange(len(_BT_COINS))]
        for coin, _, _ in _BT_COINS:  # every price walks, about 0.1% a minute
            px[coin] *= math.exp(rng.gauss(0.0, 0.0013))
        lot = Decimal(1).scaleb(-szd)
        held = pos[name]
        usd = rng.uniform(500.0, 5_000.0)
        size = max(lot, (Decimal(repr(usd / px[name]))).quantize(lot))
        r = rng.random()
        if held == 0 or r < 0.35:
            delta = size if (held > 0 or (held == 0 and rng.random() < 0.5)) else -size
        elif r < 0.75:
            delta = -min(size, abs(held)) if held > 0 else min(size, abs(held))
        elif r < 0.9:
            delta = -held
        else:
            delta = -held - (size if held > 0 else -size)  # a flip
        if delta == 0:
            continue
        oid += 1
        parts = rng.randint(1, 3)
        units = int(abs(delta) / lot)
        cuts = sorted(rng.sample(range(1, units), min(parts - 1, units - 1))) if units > 1 else []
        edges = [0, *cuts, units]
        start = held
        sign = 1 if delta > 0 else -1
        for k in range(len(edges) - 1):
            sz = (edges[k + 1] - edges[k]) * lot
            step = 1 + sign * 0.0001 * k  # a sweep walks the book
            price = Decimal(f"{px[name] * step:.6g}")
            tid += 1
            fills.append(
                Fill(
                    coin=name,
                    px=price,
                    sz=sz,
                    side="B" if sign > 0 else "A",
                    time_ms=t,
                    start_position=start,
                    dir=None,
                    closed_pnl=None,
                    hash=f"0x{tid:064x}",
                    oid=oid,
                    tid=tid,
                    crossed=True,
                    fee=None,
                )
            )
            start += sign * sz
        pos[name] = start
    return LeaderHistory(address, tuple(fills[:n_fills]))


def bench_backtest(fills: int = 10_000, runs: int = 5, seed: int = 5) -> dict[str, Any]:
    """Seconds of compute for a backtest of one leader's ``fills`` fills with the default fill
    model (200 ms latency, 2 bps slippage, 4.5 bps fees, the $10 minimum, the default risk
    limits and breakers but the daily loss and drawdown stops), prices from the fills
    (offline): grouping and chaining the fills, every decision, order, fill and risk
    evaluation on the virtual clock, and the performance attribution at the end. The median
    of ``runs``; the data are built before the clock starts."""
    from dataclasses import replace

    from hlcopy.backtest import build_options, offline_market, prepare, run_backtest
    from hlcopy.config import RiskConfig

    leader = synthetic_leader(fills, seed)
    market = offline_market([leader])
    since = leader.fills[0].time_ms
    until = leader.fills[-1].time_ms + 60_000
    # The default fill model and risk section, but no daily-loss or drawdown stop: a halted
    # account decides nothing for the rest of the run, which would flatter the figure.
    options = replace(
        build_options([leader.address], {}),
        risk=RiskConfig(max_daily_loss_usd=Decimal(10**9), max_drawdown_pct=Decimal(100)),
    )
    times = []
    cpu = []
    result = None
    for _ in range(runs + 1):  # the first run warms caches up and is not counted
        t0, c0 = time.perf_counter(), time.process_time()
        prepared = prepare([leader], since, until)
        result = run_backtest([leader], market, options, since, until, prepared=prepared)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert result is not None
    measured = times[1:]
    return {
        "benchmark": "backtest",
        "fills": fills,
        "seconds": round(statistics.median(measured), 3),
        "min_s": round(min(measured), 3),
        "max_s": round(max(measured), 3),
        "runs_s": [round(x, 3) for x in measured],
        "cpu_s": round(statistics.median(cpu[1:]), 3),
        "fills_per_s": round(fills / statistics.median(measured)),
        "decisions_orders_fills": [
            result.events,
            result.orders,
            result.filled,
        ],
        "skips": dict(sorted(result.skips.items())),
        "days": round((until - since) / 86_400_000, 1),
        "target_s": 1.0,
        "machine": machine(),
    }


def format_backtest(result: dict[str, Any]) -> str:
    m = result["machine"]
    events, orders, filled = result["decisions_orders_fills"]
    return "\n".join(
        [
            "hlcopy bench backtest: one leader's fills replayed through the copier, risk, the",
            "paper fill model and the performance attribution on the virtual clock (compute only)",
            f"  fills             {result['fills']:,} over {result['days']} days "
            f"({events:,} clock events, {orders:,} orders, {filled:,} filled)",
            f"  median            {result['seconds']:.3f} s   (target <= {result['target_s']} s); "
            f"{result['fills_per_s']:,} fills/s; {result['cpu_s']:.3f} s of CPU",
            f"  min / max         {result['min_s']:.3f} / {result['max_s']:.3f} s over "
            f"{len(result['runs_s'])} runs",
            f"  skips             {result['skips'] or 'none'}",
            f"  machine           {m['cpu']}, {m['cores']} cores, load {m['load_1m']}, "
            f"Python {m['python']}",
        ]
    )


BENCHMARKS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "sign": (bench_sign, format_sign),
    "sim": (bench_sim, format_sim),
    "api": (bench_api, format_api),
    "firehose": (bench_firehose, format_firehose),
    "memory": (bench_memory, format_memory),
    "decide": (bench_decide, format_decide),
    "latency": (bench_latency, format_latency),
    "backtest": (bench_backtest, format_backtest),
}
