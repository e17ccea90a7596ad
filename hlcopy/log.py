"""structlog, configured once: JSON (orjson) for machines, console rendering for people.

Context (follow, leader, cloid) travels in contextvars. The redaction processor runs last before
rendering, on our events and on foreign stdlib records alike: registered secret values are
replaced wherever they appear (messages, tracebacks, nested values), and values under sensitive
key names are never printed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TextIO

import orjson
import structlog

from hlcopy.credentials import Secret

REDACTED = "[redacted]"
_SENSITIVE_KEYS = frozenset(
    {
        "private_key",
        "agent_key",
        "key_hex",
        "secret",
        "api_token",
        "token_value",
        "password",
        "authorization",
    }
)
# Longest first, so "0x<hex>" is replaced whole before its bare "<hex>" form is looked for.
_secrets: list[str] = []

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def register_secret(secret: Secret | str) -> None:
    """Redact this value (and its usual spellings) from every log line from now on."""
    value = secret.reveal() if isinstance(secret, Secret) else secret
    if len(value) < 8:  # too short to redact without mangling ordinary text
        return
    forms = {value, value.lower(), value.upper()}
    if value.lower().startswith("0x"):
        forms |= {value[2:], value[2:].lower(), value[2:].upper()}
    _secrets[:] = sorted(set(_secrets) | forms, key=len, reverse=True)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for s in _secrets:
            if s in value:
                value = value.replace(s, REDACTED)
        return value
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: REDACTED if k in _SENSITIVE_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseException):
        return _scrub(repr(value))
    return value


_FIRST = ("timestamp", "level", "event")


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove secrets from an event dict (and put time, level, event first)."""
    clean = {k: event[k] for k in _FIRST if k in event}
    for k, v in event.items():
        if k not in clean:
            clean[k] = REDACTED if k in _SENSITIVE_KEYS else _scrub(v)
    if isinstance(clean.get("event"), str):
        clean["event"] = _scrub(clean["event"])
    return clean


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal | Path):
        return str(obj)
    if isinstance(obj, Secret):
        return REDACTED
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return repr(obj)


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=_default).decode()


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: IO[str] | None = None
) -> None:
    """Configure structlog and the stdlib bridge. Safe to call again (reload changes level)."""
    out: TextIO = stream if stream is not None else sys.stderr  # type: ignore[assignment]
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: a SIGHUP may change the level, and bound loggers must see it.
        cache_logger_on_first_use=False,
    )
    # Foreign libraries (aiohttp, asyncpg, websockets) log through stdlib: same format, same
    # redaction, and only warnings unless we are debugging.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_hlcopy", False):
            root.removeHandler(old)
    handler._hlcopy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger, optionally bound to a component name."""
    log = structlog.get_logger()
    if name:
        initial["component"] = name
    return log.bind(**initial) if initial else log


def bind(**values: Any) -> None:
    """Bind values into the context of the current task (and tasks it creates afterwards)."""
    structlog.contextvars.bind_contextvars(**values)


def set_level(level: str) -> None:
    """Change the level of structlog and stdlib logging (for a reload)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]))
    logging.getLogger().setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
