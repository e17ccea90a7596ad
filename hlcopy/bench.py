"""``hlcopy bench``: the performance suite. Figures go in closing notes, never in test asserts."""

from __future__ import annotations

import asyncio
import os
import platform
import random
import re
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson

from hlcopy.hl import wire
from hlcopy.hl.signing import NonceSource, Signer, l1_digest

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


def bench_sign(
    orders_per_run: int = MIN_ORDERS_PER_RUN, runs: int = 7, seed: int = 7
) -> dict[str, Any]:
    """Microseconds to build and sign one order, from Decimal inputs to the request bytes.

    Each order: round price (toward the cap) and size to the asset's grid, build the order wire
    with a cloid, wrap it in an order action, hash, sign (EIP-712, libsecp256k1), and serialise
    the request body. One order per action, one thread: the latency of a single copy order.
    """
    if orders_per_run < MIN_ORDERS_PER_RUN:
        raise ValueError(f"a run needs at least {MIN_ORDERS_PER_RUN} orders")
    rng = random.Random(seed)
    signer = Signer.from_key("0x" + secrets.token_hex(32))  # throwaway: nothing is sent
    nonces = NonceSource()
    # Realistic inputs: a mix of coins (szDecimals 0-5), prices off the grid, sizes off the lot.
    assets = [(i, rng.choice([0, 1, 2, 3, 4, 5])) for i in range(32)]
    inputs = []
    for i in range(orders_per_run):
        asset, szd = assets[i % len(assets)]
        px = Decimal(rng.randint(10_000, 99_999_999)).scaleb(-rng.randint(0, 6))
        sz = Decimal(rng.randint(1, 10**9)).scaleb(-9 + rng.randint(0, 3))
        inputs.append((asset, szd, px, sz, rng.random() < 0.5, f"0x{rng.getrandbits(128):032x}"))

    def run_once() -> float:
        t0 = time.perf_counter_ns()
        for asset, szd, raw_px, raw_sz, is_buy, cloid in inputs:
            px = wire.round_price(
                raw_px, szd, False, wire.Rounding.DOWN if is_buy else wire.Rounding.UP
            )
            sz = wire.round_size(raw_sz, szd)
            action = wire.order_action(
                [wire.order_wire(asset, is_buy, px, sz, False, "Ioc", cloid)]
            )
            nonce = nonces.next()
            signature = signer.sign_l1_action(action, None, nonce, nonce + 10_000, True)
            orjson.dumps(
                {
                    "action": action,
                    "nonce": nonce,
                    "signature": signature,
                    "vaultAddress": None,
                    "expiresAfter": nonce + 10_000,
                }
            )
        return (time.perf_counter_ns() - t0) / orders_per_run / 1000

    def ecdsa_once() -> float:
        digest = l1_digest(bytes(32), True)
        n = orders_per_run // 4
        t0 = time.perf_counter_ns()
        for _ in range(n):
            signer.sign_digest(digest)
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


async def _sim_process(rate: float, traders: int) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``hlcopy sim`` on a free port in its own process; return it and its base URL."""
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
    from hlcopy.hl.info import InfoClient, new_session
    from hlcopy.hl.stream import StreamMessage, StreamPool

    proc, url = await _sim_process(rate, traders)
    counts = {"trades": 0, "messages": 0}
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def on_trades(msg: StreamMessage) -> None:
        counts["messages"] += 1
        counts["trades"] += len(msg.data)

    pool = StreamPool(url.replace("http", "ws", 1) + "/ws")
    ready = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(pool.run(ready), name="bench:stream")
            await ready.wait()
            async with new_session(10) as session:
                info = InfoClient(session, url, WeightBudget(1200, 10))
                for meta in (await info.meta()).universe:
                    if not meta.delisted:
                        await pool.subscribe({"type": "trades", "coin": meta.name}, on_trades)
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


BENCHMARKS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "sign": (bench_sign, format_sign),
    "sim": (bench_sim, format_sim),
}
