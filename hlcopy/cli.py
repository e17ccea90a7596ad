"""The ``hlcopy`` command: run | check-config | migrate | demo | sim | bench | agent | backtest.

Exit codes: 0 success, 1 a runtime failure, 2 bad usage or an invalid configuration.

Only the standard library is imported up front: the long-running commands catch SIGTERM and
SIGHUP (``signals.capture``) before the slow imports, so an early signal is handled, not fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hlcopy import __version__, signals

if TYPE_CHECKING:
    from hlcopy.config import HlcopyConfig
    from hlcopy.credentials import Secrets
    from hlcopy.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEMO_ACCOUNT = "0x" + "de30" * 10  # the demo's paper account on the simulated exchange


def _report(exc: ConfigError) -> int:
    prefix = f"{exc.source}: " if exc.source else ""
    for problem in exc.problems:
        print(f"{prefix}{problem}", file=sys.stderr)
    return EXIT_USAGE


def _prepare(path: Path) -> tuple[HlcopyConfig, Secrets]:
    """Load the config and every secret; configure logging; register secrets for redaction."""
    from hlcopy.config import load_config
    from hlcopy.credentials import load_secrets
    from hlcopy.log import configure_logging, register_secret

    cfg = load_config(path)
    configure_logging(cfg.logging.level, cfg.logging.format)
    secrets = load_secrets(cfg)
    for secret in (secrets.agent_key, secrets.api_token, secrets.db_password):
        if secret is not None:
            register_secret(secret)
    return cfg, secrets


def cmd_run(args: argparse.Namespace) -> int:
    from hlcopy.app import serve
    from hlcopy.errors import ConfigError, InstanceLocked

    try:
        cfg, secrets = _prepare(args.config)
    except ConfigError as exc:
        return _report(exc)
    try:
        return asyncio.run(serve(cfg, secrets, args.config))
    except InstanceLocked as exc:
        print(f"hlcopy: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    from hlcopy.config import load_config
    from hlcopy.credentials import check_secrets
    from hlcopy.errors import ConfigError

    try:
        cfg = load_config(args.path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_USAGE
    problems = check_secrets(cfg)
    for problem in problems:
        print(problem)
    if problems:
        return EXIT_USAGE
    print(
        f"{args.path}: ok ({cfg.network.name}, {cfg.account.mode} mode, "
        f"{len(cfg.follow)} follow{'s' if len(cfg.follow) != 1 else ''})"
    )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    import contextlib

    from hlcopy.errors import ConfigError, HlcopyError
    from hlcopy.instance import StateLock
    from hlcopy.store import Store

    try:
        cfg, secrets = _prepare(args.config)
    except ConfigError as exc:
        return _report(exc)

    async def migrate() -> tuple[list[int], int]:
        async with Store(cfg.database, cfg.state.dir, secrets.db_password) as store:
            applied = await store.migrate()
            return applied, await store.schema_version()

    try:
        # The embedded server lives in the state directory: not while a daemon runs there.
        lock = StateLock(cfg.state.dir) if cfg.database.dsn is None else contextlib.nullcontext()
        with lock:
            applied, version = asyncio.run(migrate())
    except HlcopyError as exc:
        print(f"migrate failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    done = ", ".join(f"{v:04d}" for v in applied) if applied else "nothing to apply"
    print(f"schema at version {version} ({done})")
    return EXIT_OK


def _sim_config(args: argparse.Namespace, port: int, funds: dict[str, Decimal]) -> Any:
    from hlcopy.sim import SimConfig

    return SimConfig(
        host=args.host,
        port=port,
        seed=args.seed,
        traders=args.traders,
        speed=args.speed,
        rate=args.rate,
        warmup_s=args.warmup_s,
        funds=funds,
        warm_pasts=False if args.lazy_pasts else None,
    )


def _fund_arg(text: str) -> tuple[str, Decimal]:
    """``ADDRESS=USD`` for ``--fund``."""
    address, _, amount = text.partition("=")
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
        raise argparse.ArgumentTypeError(f"{address!r} is not an address (0x + 40 hex digits)")
    try:
        usd = Decimal(amount)
    except InvalidOperation:
        usd = Decimal("NaN")
    if not usd.is_finite() or not 0 < usd <= 10**12:
        raise argparse.ArgumentTypeError(f"{amount!r} is not an amount of USD (0 to 1e12)")
    return address.lower(), usd


def _funds(pairs: list[tuple[str, Decimal]] | None) -> dict[str, Decimal]:
    funds: dict[str, Decimal] = {}
    for address, usd in pairs or ():
        funds[address] = funds.get(address, Decimal(0)) + usd
    return funds


def cmd_sim(args: argparse.Namespace) -> int:
    import signal

    from hlcopy.log import configure_logging
    from hlcopy.sim import Simulator

    configure_logging(args.log_level, "auto")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Simulator(_sim_config(args, args.port, _funds(args.fund))) as sim:
            print(
                f"hlcopy sim: REST {sim.url}  WebSocket {sim.ws_url}  "
                f"control {sim.url}/_sim/stats  (Ctrl-C to stop)",
                flush=True,
            )
            await stop.wait()

    try:
        asyncio.run(main())
    except OSError as exc:
        print(
            f"hlcopy sim: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from hlcopy.app import serve
    from hlcopy.config import load_config
    from hlcopy.credentials import load_secrets
    from hlcopy.demo import narrate
    from hlcopy.errors import ConfigError, InstanceLocked
    from hlcopy.log import configure_logging, register_secret
    from hlcopy.sim import Simulator

    if not args.config.exists():
        print(
            f"hlcopy demo: {args.config} not found; run from the repository root or pass --config",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _report(exc)
    configure_logging(cfg.logging.level, cfg.logging.format)
    args.host = "127.0.0.1"
    if args.api_port == 0:  # choose now, so the port we print is the port we serve
        with socket.socket() as probe:
            probe.bind((cfg.api.host, 0))
            args.api_port = probe.getsockname()[1]

    # The demo trades (on paper) as one account of the simulated exchange, funded there with
    # the paper equity: a configured address, or the demo's own.
    account = cfg.account.address or DEMO_ACCOUNT
    funds = _funds(args.fund)
    funds[account] = funds.get(account, Decimal(0)) + cfg.account.paper_equity_usd

    async def main() -> int:
        async with Simulator(_sim_config(args, args.sim_port, funds)) as sim:
            demo = cfg.model_copy(
                update={
                    "network": cfg.network.model_copy(
                        update={
                            "name": "custom",
                            "rest_url": sim.url,
                            "ws_url": sim.ws_url,
                            "chain": "mainnet" if sim.config.is_mainnet else "testnet",
                        }
                    ),
                    "api": cfg.api.model_copy(update={"port": args.api_port}),
                    "account": cfg.account.model_copy(update={"mode": "paper", "address": account}),
                }
            )
            secrets = load_secrets(demo)
            register_secret(secrets.api_token)
            token_file = demo.api.token_file or demo.state.dir / "api-token"
            print(
                f"hlcopy demo: dashboard at http://{demo.api.host}:{args.api_port}/\n"
                f"hlcopy demo: simulated exchange at {sim.url} (WebSocket {sim.ws_url}, "
                f"control {sim.url}/_sim/stats)\n"
                f"hlcopy demo: trading as {account}, funded with "
                f"{cfg.account.paper_equity_usd} USD on the simulated exchange\n"
                f"hlcopy demo: daemon API at http://{demo.api.host}:{args.api_port} "
                f"(try /health, /metrics, /api/v1/stats; bearer token in {token_file})\n"
                f"hlcopy demo: paper mode, embedded PostgreSQL in {demo.state.dir / 'pg'}; "
                "Ctrl-C to stop",
                flush=True,
            )
            api_url = f"http://{demo.api.host}:{args.api_port}"
            narrator = asyncio.create_task(
                narrate(api_url, secrets.api_token.reveal(), every_s=args.narrate_every_s),
                name="demo:narrator",
            )
            try:
                return await serve(demo, secrets, args.config, stop_after_s=args.duration)
            finally:
                narrator.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await narrator

    try:
        return asyncio.run(main())
    except InstanceLocked as exc:
        print(f"hlcopy demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"hlcopy demo: cannot listen: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_bench(args: argparse.Namespace) -> int:
    import orjson

    from hlcopy.bench import BENCHMARKS, MIN_ORDERS_PER_RUN
    from hlcopy.log import configure_logging

    configure_logging("warning", "auto")  # logs to stderr: stdout carries only the result
    run, render = BENCHMARKS[args.name]
    if args.name == "sign":
        if args.orders < MIN_ORDERS_PER_RUN:
            print(f"--orders must be at least {MIN_ORDERS_PER_RUN}", file=sys.stderr)
            return EXIT_USAGE
        result = run(orders_per_run=args.orders, runs=7 if args.runs is None else args.runs)
    elif args.name in ("api", "firehose"):
        result = run(seconds=20.0 if args.seconds is None else args.seconds)
    elif args.name == "backtest":
        fills = 10_000 if args.fills is None else args.fills
        result = run(fills=fills, runs=5 if args.runs is None else args.runs)
    elif args.name in ("decide", "latency"):
        rate = {} if args.rate is None else {"rate": args.rate}
        fills = 600 if args.fills is None else args.fills
        result = run(fills=fills, isolate=not args.shared_cpus, **rate)
    elif args.name == "memory":
        rate = {} if args.rate is None else {"rate": args.rate}
        seconds = 60.0 if args.seconds is None else args.seconds
        result = run(seconds=seconds, traders=args.traders, scored=args.scored, **rate)
    else:
        result = run(
            seconds=20.0 if args.seconds is None else args.seconds,
            rate=6000.0 if args.rate is None else args.rate,
        )
    print(orjson.dumps(result).decode() if args.json else render(result))
    return EXIT_OK


def cmd_agent_new(args: argparse.Namespace) -> int:
    import shlex

    from hlcopy.agent import new_agent_key
    from hlcopy.errors import ConfigError

    try:
        address = new_agent_key(args.path)
    except ConfigError as exc:
        return _report(exc)
    path = shlex.quote(str(args.path))
    print(
        f"agent key written to {args.path} (mode 0600)\n"
        f"agent address: {address}\n"
        f"next: hlcopy agent approve --agent-key {path} --config hlcopy.toml\n"
        "  (signed once with your account's own key, which is never stored); then in the config, "
        f'[account] agent_key_file = "{args.path.absolute()}" and address = the account\'s address'
    )
    return EXIT_OK


def _describe_network(cfg: HlcopyConfig) -> str:
    net = cfg.network
    chain = "mainnet" if net.is_mainnet else "testnet"
    return f"{net.name} ({net.rest})" if net.name != "custom" else f"{net.rest} ({chain} chain)"


def cmd_agent_approve(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from hlcopy.agent import approve_agent, prepare_approval
    from hlcopy.config import load_config
    from hlcopy.errors import ConfigError, HlcopyError
    from hlcopy.log import configure_logging, register_secret

    configure_logging("warning", "auto")  # stdout carries the result
    if not 0 < args.wait_s <= 600:
        print("--wait-s: must be more than 0 and at most 600 seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load_config(args.config)
        request = prepare_approval(
            cfg,
            agent_key_file=args.agent_key,
            agent_address=args.agent_address,
            name=args.name,
            master_key_file=args.master_key_file,
        )
    except ConfigError as exc:
        return _report(exc)
    register_secret(request.master_key)
    agent, master, name = request.agent, request.master, request.name
    account = cfg.account.address
    if account is not None and account != master:
        print(
            f"note: account.address in {args.config} is {account}, not this master ({master}); "
            "an agent it approves trades only for it and its sub-accounts",
            file=sys.stderr,
        )
    label = f"named {name!r}" if name else "unnamed"
    print(
        f"approving agent {agent} ({label}) for account {master} on {_describe_network(cfg)}",
        flush=True,
    )
    try:
        approval = asyncio.run(
            approve_agent(cfg.network, request.master_key, agent, name, wait_s=args.wait_s)
        )
    except HlcopyError as exc:
        print(f"hlcopy agent approve: not approved: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    check = "extraAgents" if name else "userRole"
    if not approval.confirmed:
        why = (
            "the reply was lost and"
            if approval.reply_lost
            else "the exchange accepted the approval but"
        )
        print(
            f"hlcopy agent approve: {why} after {args.wait_s:g} s {check} does not show agent "
            f"{agent} for {master}; check again later, or run this command again",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    until = ""
    if approval.valid_until_ms is not None:
        when = datetime.fromtimestamp(approval.valid_until_ms / 1000, tz=UTC)
        until = f", valid until {when:%Y-%m-%d %H:%M} UTC"
    print(
        f"approved: agent {agent} trades for account {master} (confirmed by {check}{until})\n"
        f'in the config: [account] address = "{master}", agent_key_file = the agent key file '
        "(or the systemd credential hl-agent); the master key was not stored"
    )
    return EXIT_OK


def cmd_backtest(args: argparse.Namespace) -> int:
    from hlcopy.backtest import run_cli
    from hlcopy.clock import SYSTEM
    from hlcopy.config import load_config
    from hlcopy.errors import BadInput, ConfigError, HlcopyError
    from hlcopy.log import configure_logging

    configure_logging("warning", "auto")  # stdout carries the result
    given = {key: getattr(args, key) for key in BACKTEST_OPTIONS}
    if args.min_notional == "off":
        given["min_notional"] = False
    elif args.min_notional is not None:
        given["min_notional_policy"] = args.min_notional
    for key in ("coins", "exclude_coins"):
        if given[key] is not None:
            given[key] = [c.strip() for c in given[key].split(",") if c.strip()]
    if args.no_risk:
        given["risk"] = False
    try:
        config = None if args.config is None else load_config(args.config)
        return run_cli(
            addresses=args.address,
            given=given,
            days=args.days,
            from_text=args.from_,
            to_text=args.to,
            config=config,
            fills_paths=args.fills,
            json_out=args.json,
            plot_path=args.plot,
            sweep_text=args.sweep,
            now_ms=SYSTEM.time_ms(),
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    except ConfigError as exc:
        return _report(exc)
    except BadInput as exc:
        print(f"hlcopy backtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HlcopyError as exc:
        print(f"hlcopy backtest: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# Options of ``hlcopy backtest`` passed on by name (see ``hlcopy.backtest.build_options``).
BACKTEST_OPTIONS = (
    "mode",
    "sizing",
    "ratio",
    "fixed_notional_usd",
    "coins",
    "exclude_coins",
    "max_notional_per_coin_usd",
    "max_total_notional_usd",
    "max_leverage",
    "ioc_slippage_bps",
    "max_fill_age_ms",
    "delay_ms",
    "daily_loss_limit_usd",
    "max_drawdown_pct",
    "latency_ms",
    "slippage_bps",
    "fee_bps",
    "equity_usd",
    "initial",
)


def _backtest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", nargs="+", help="leader address(es), netted in one account")
    p.add_argument(
        "--days", type=float, help="the last N days (default 7; offline: to the last fill)"
    )
    p.add_argument(
        "--from", dest="from_", metavar="TIME", help="start: 2024-05-01[T12:00] UTC or ms"
    )
    p.add_argument("--to", metavar="TIME", help="end: 2024-05-31[T12:00] UTC or ms (default now)")
    p.add_argument(
        "--config", type=Path, help="TOML file: [risk], account equity, network, follows"
    )
    p.add_argument(
        "--fills",
        action="append",
        metavar="FILE",
        help="offline: the address's fills as the exchange returns them (one per address)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write an SVG chart of the PnL curves")
    p.add_argument(
        "--sweep",
        metavar="KEY=V1,V2",
        help="run variants side by side: ratio, slippage_bps, latency_ms, fee_bps, delay_ms, "
        "equity_usd, fixed_notional_usd, ioc_slippage_bps",
    )
    f = p.add_argument_group("follow options (as a [[follow]] table)")
    f.add_argument("--mode", choices=["copy", "inverse"])
    f.add_argument("--sizing", choices=["ratio", "equity", "fixed_notional"])
    f.add_argument("--ratio", metavar="R")
    f.add_argument("--fixed-notional-usd", metavar="USD")
    f.add_argument("--coins", metavar="A,B", help="copy only these coins")
    f.add_argument("--exclude-coins", metavar="A,B")
    f.add_argument("--max-notional-per-coin-usd", metavar="USD")
    f.add_argument("--max-total-notional-usd", metavar="USD")
    f.add_argument("--max-leverage", metavar="X")
    f.add_argument(
        "--min-notional",
        choices=["skip", "round_up", "off"],
        help="orders under $10: skip (default), round_up, or off (no minimum)",
    )
    f.add_argument(
        "--ioc-slippage-bps", type=int, metavar="BPS", help="IOC limit from the mid (default 50)"
    )
    f.add_argument("--max-fill-age-ms", type=int, metavar="MS")
    f.add_argument("--delay-ms", type=int, metavar="MS", help="wait after a leader's change")
    f.add_argument("--daily-loss-limit-usd", metavar="USD")
    f.add_argument("--max-drawdown-pct", metavar="PCT")
    m = p.add_argument_group("the fill model and the account")
    m.add_argument("--latency-ms", type=int, metavar="MS", help="order round trip (default 200)")
    m.add_argument(
        "--slippage-bps", metavar="BPS", help="fills this much worse than the price (default 2)"
    )
    m.add_argument("--fee-bps", metavar="BPS", help="taker fee (default 4.5)")
    m.add_argument("--equity", dest="equity_usd", metavar="USD", help="starting equity")
    m.add_argument(
        "--initial",
        choices=["adopt", "ignore"],
        help="positions held before the window: adopt at the first price (default) or ignore",
    )
    m.add_argument("--no-risk", action="store_true", help="no account limits or kill switches")
    p.set_defaults(func=cmd_backtest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hlcopy", description="Copy-trading daemon for Hyperliquid."
    )
    parser.add_argument("--version", action="version", version=f"hlcopy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument(
        "--config", type=Path, default=Path("hlcopy.toml"), help="TOML file (default: hlcopy.toml)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a TOML file and its secret files")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("migrate", help="bring the database schema up to date")
    p.add_argument("--config", type=Path, default=Path("hlcopy.toml"))
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("sim", help="run the simulated exchange alone")
    _sim_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="TCP port, 0 for any (default 8787)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser(
        "demo", help="the simulator, embedded PostgreSQL and the daemon in paper mode"
    )
    _sim_arguments(p)
    p.add_argument("--config", type=Path, default=Path("config/demo.toml"))
    p.add_argument("--api-port", type=int, default=8080, help="daemon API port (default 8080)")
    p.add_argument("--sim-port", type=int, default=8787, help="simulator port (default 8787)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument(
        "--narrate-every-s",
        type=float,
        default=30.0,
        help="print the leaderboard every S seconds (default 30)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure performance (figures for closing notes)")
    p.add_argument(
        "name",
        choices=["sign", "sim", "firehose", "api", "memory", "decide", "latency", "backtest"],
        help="sign: build and sign one order; sim: simulator trades stream; "
        "firehose: discovery's trades ingest into PostgreSQL; "
        "api: leaderboard latency over HTTP; "
        "memory: resident memory of the daemon with 100,000 known traders; "
        "decide: leader fill frame -> order intent in the daemon, 5,000 trades/s around it; "
        "latency: leader fill frame -> signed order bytes written, live, with 64 API clients; "
        "backtest: compute seconds of a 10,000-fill backtest",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--orders", type=int, default=10_000, help="orders per run (>= 10000)")
    p.add_argument(
        "--runs", type=int, default=None, help="runs; the median is reported (sign 7, backtest 5)"
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="measuring time (memory: 60, others: 20)"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="trader actions per second of the simulator (sim, decide, latency: 6000; memory: 200)",
    )
    p.add_argument(
        "--fills",
        type=int,
        default=None,
        help="decide, latency: leader trades to copy, a fill or more each (default 600); "
        "backtest: the leader's fills (default 10000)",
    )
    p.add_argument(
        "--shared-cpus",
        action="store_true",
        help="decide, latency: let the simulator share the daemon's cores "
        "(default: a core of its own)",
    )
    p.add_argument(
        "--traders", type=int, default=100_000, help="memory: known traders (default 100000)"
    )
    p.add_argument(
        "--scored",
        type=int,
        default=None,
        help="memory: of them, traders with stored scores "
        "(default: tracking.max_tracked_traders, 2000)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "backtest", help="replay leaders' fills through the copier: what copying would have earned"
    )
    _backtest_arguments(p)

    p = sub.add_parser("agent", help="make and approve the API (agent) wallet hlcopy trades with")
    actions = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    a = actions.add_parser(
        "new", help="write a fresh agent key file (mode 0600), print its address"
    )
    a.add_argument("path", type=Path, help="the key file to create (never overwritten)")
    a.set_defaults(func=cmd_agent_new)
    a = actions.add_parser(
        "approve",
        help="sign approveAgent with the account's master key (prompted or from a 0600 file, "
        "never stored) and confirm it with extraAgents",
    )
    which = a.add_mutually_exclusive_group()
    which.add_argument(
        "--agent-key", type=Path, metavar="PATH", help="the agent key file (from agent new)"
    )
    which.add_argument("--agent-address", metavar="ADDR", help="the agent's address")
    a.add_argument(
        "--name",
        default="hlcopy",
        help='agent name (default "hlcopy"; approving another agent under the same name '
        'replaces it; "" for the one unnamed agent, confirmed with userRole)',
    )
    a.add_argument(
        "--master-key-file",
        type=Path,
        metavar="PATH",
        help="the master key from this 0600 file (default: a hidden prompt)",
    )
    a.add_argument(
        "--config",
        type=Path,
        default=Path("hlcopy.toml"),
        help="TOML file naming the network (default: hlcopy.toml)",
    )
    a.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="how long to wait for the exchange to list the agent (default 30)",
    )
    a.set_defaults(func=cmd_agent_approve)
    return parser


def _sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="market and traders seed (default 1)")
    p.add_argument("--traders", type=int, default=200, help="synthetic traders (default 200)")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="market time per real second (60: an hour of trading per minute)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="background flow: noise-trader actions per second of market time (default 5)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="seconds of live market traded before serving, after the 90-day past (default 60)",
    )
    p.add_argument(
        "--lazy-pasts",
        action="store_true",
        help="build each trader's 90-day past when first asked for, not in the background",
    )
    p.add_argument(
        "--fund",
        type=_fund_arg,
        action="append",
        metavar="ADDRESS=USD",
        help="deposit USD to an address at start (repeatable); unfunded addresses are empty",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    signals.capture_for([args.command])  # if the entry point has not already
    return func(args)
