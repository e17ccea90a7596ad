"""The ``hlcopy`` command: run | check-config | migrate (and later demo, sim, backtest, bench).

Exit codes: 0 success, 1 a runtime failure, 2 bad usage or an invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hlcopy import __version__
from hlcopy.config import HlcopyConfig, load_config
from hlcopy.credentials import Secrets, check_secrets, load_secrets
from hlcopy.errors import ConfigError, HlcopyError
from hlcopy.log import configure_logging, register_secret

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _report(exc: ConfigError) -> int:
    prefix = f"{exc.source}: " if exc.source else ""
    for problem in exc.problems:
        print(f"{prefix}{problem}", file=sys.stderr)
    return EXIT_USAGE


def _prepare(path: Path) -> tuple[HlcopyConfig, Secrets]:
    """Load the config and every secret; configure logging; register secrets for redaction."""
    cfg = load_config(path)
    configure_logging(cfg.logging.level, cfg.logging.format)
    secrets = load_secrets(cfg)
    for secret in (secrets.agent_key, secrets.api_token, secrets.db_password):
        if secret is not None:
            register_secret(secret)
    return cfg, secrets


def cmd_run(args: argparse.Namespace) -> int:
    from hlcopy.daemon import serve

    try:
        cfg, secrets = _prepare(args.config)
    except ConfigError as exc:
        return _report(exc)
    return asyncio.run(serve(cfg, secrets, args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
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
        applied, version = asyncio.run(migrate())
    except HlcopyError as exc:
        print(f"migrate failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    done = ", ".join(f"{v:04d}" for v in applied) if applied else "nothing to apply"
    print(f"schema at version {version} ({done})")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    import orjson

    from hlcopy.bench import BENCHMARKS, MIN_ORDERS_PER_RUN

    run, render = BENCHMARKS[args.name]
    if args.orders < MIN_ORDERS_PER_RUN:
        print(f"--orders must be at least {MIN_ORDERS_PER_RUN}", file=sys.stderr)
        return EXIT_USAGE
    result = run(orders_per_run=args.orders, runs=args.runs)
    print(orjson.dumps(result).decode() if args.json else render(result))
    return EXIT_OK


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

    p = sub.add_parser("bench", help="measure performance (figures for closing notes)")
    p.add_argument("name", choices=["sign"], help="sign: build and sign one order")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--orders", type=int, default=10_000, help="orders per run (>= 10000)")
    p.add_argument("--runs", type=int, default=7, help="runs; the median is reported")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return func(args)
