"""One exception tree for hlcopy.

Foreign exceptions (aiohttp, asyncpg, websockets, tomllib) are translated where they enter and
chained with ``from exc``. The supervisor restarts a component only for ``TransientError``;
anything else that escapes a component stops the daemon.

    HlcopyError
    ├── ConfigError                  invalid TOML or values; carries one line per problem
    │   └── SecretError              key or token file missing, malformed or too open
    ├── TransientError               worth retrying after a pause (mixin for the leaves below)
    ├── StoreError
    │   ├── StoreUnavailable         (transient) cannot reach PostgreSQL
    │   ├── StoreConflict            a unique constraint said no
    │   └── MigrationError           schema cannot be brought up to date
    ├── WireError                    a value cannot be put on, or read off, the wire exactly
    ├── ExchangeError                carries status / context
    │   ├── ExchangeTransient        (transient) nothing reached the exchange, or a read failed
    │   │   ├── RateLimited          HTTP 429
    │   │   ├── Unavailable          5xx, connection refused before sending
    │   │   └── Timeout              a read timed out
    │   ├── AmbiguousOutcome         an action may have reached the exchange: settle by cloid
    │   └── Permanent
    │       ├── Rejected             the exchange refused the action ("status": "err")
    │       └── BadRequest           4xx: the request itself is malformed
    ├── StreamError
    │   └── SubscriptionLimit        a WebSocket per-IP limit would be exceeded
    ├── InstanceLocked               another hlcopy holds this state directory or database
    ├── BadInput                     a one-off command's input is unusable (a backtest's)
    └── ComponentFailed              a component failed for good: the daemon exits with 1
"""

from __future__ import annotations

from typing import Any


class HlcopyError(Exception):
    """Base of every error hlcopy raises on purpose."""


class TransientError(HlcopyError):
    """A failure that may pass: the supervisor restarts the component, reads may retry."""


class ConfigError(HlcopyError):
    """The configuration is invalid. ``problems`` holds one ``key.path: message`` per fault."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class SecretError(ConfigError):
    """A key or token file is missing, malformed or readable by others."""


class StoreError(HlcopyError):
    """A PostgreSQL operation failed."""


class StoreUnavailable(StoreError, TransientError):
    """PostgreSQL cannot be reached right now."""


class StoreConflict(StoreError):
    """A unique constraint rejected the write."""


class MigrationError(StoreError):
    """The schema cannot be migrated (changed history, newer database, bad SQL)."""


class WireError(HlcopyError, ValueError):
    """A value cannot be represented exactly on the wire, or a message is malformed."""


class ExchangeError(HlcopyError):
    """Talking to the exchange failed. ``context`` names what was being done."""

    def __init__(self, message: str, *, status: int | None = None, **context: Any) -> None:
        self.status = status
        self.context = context
        super().__init__(message)


class ExchangeTransient(ExchangeError, TransientError):
    """Nothing reached the exchange, or a read failed in a way worth retrying."""


class RateLimited(ExchangeTransient):
    """HTTP 429: the per-IP weight budget is exhausted."""


class Unavailable(ExchangeTransient):
    """A 5xx answer, or the connection was refused before the request was sent."""


class Timeout(ExchangeTransient):
    """A read timed out."""


class AmbiguousOutcome(ExchangeError):
    """An action may have reached the exchange (timeout or disconnect after sending).

    Never resend it: the executor settles it by cloid once ``expiresAfter`` has passed.
    """


class Permanent(ExchangeError):
    """The exchange answered and the answer will not change on retry."""


class Rejected(Permanent):
    """The exchange refused the whole action (``{"status": "err", ...}``)."""


class BadRequest(Permanent):
    """HTTP 4xx other than 429: the request is malformed."""


class StreamError(HlcopyError):
    """The WebSocket layer cannot do what was asked."""


class SubscriptionLimit(StreamError):
    """A WebSocket per-IP limit (connections, subscriptions, users) would be exceeded."""


class InstanceLocked(HlcopyError):
    """Another hlcopy runs on the same state directory or database: two would double orders."""

    def __init__(self, message: str, holder_pid: int | None = None) -> None:
        self.holder_pid = holder_pid
        super().__init__(message)


class BadInput(HlcopyError):
    """What a user gave a one-off command (a backtest's addresses, window, options or fills
    file) cannot be used; the message is one line that says what to fix."""


class ComponentFailed(HlcopyError):
    """A component raised a non-transient error, or returned while the daemon was running."""
