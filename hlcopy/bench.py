"""``hlcopy bench``: the performance suite. Figures go in closing notes, never in test asserts."""

from __future__ import annotations

import os
import platform
import random
import secrets
import statistics
import time
from collections.abc import Callable
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


BENCHMARKS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "sign": (bench_sign, format_sign),
}
