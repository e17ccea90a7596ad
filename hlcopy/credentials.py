"""Secrets: the agent key, the API token and the database password.

They never come from the TOML. Each is read from a file named in the config, or from the systemd
credential directory (``LoadCredential=``, exported as ``$CREDENTIALS_DIRECTORY``). A file that
group or others can read is refused: a key that leaked to another local user is a lost account.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from hlcopy.config import HlcopyConfig
from hlcopy.errors import SecretError
from hlcopy.keys import key_address, parse_private_key
from hlcopy.record import record

AGENT_KEY_CREDENTIAL = "hl-agent"
API_TOKEN_CREDENTIAL = "api-token"  # noqa: S105 - a credential's name, not its value
DB_PASSWORD_CREDENTIAL = "db-password"  # noqa: S105 - a credential's name, not its value

_MIN_TOKEN_CHARS = 16
_MAX_SECRET_BYTES = 4096
# What may travel in an Authorization header unquoted: visible ASCII, no spaces or quotes.
_HEADER_SAFE = re.compile(r"[!#-~]+")


class Secret:
    """A string that never shows itself in reprs, logs or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('[redacted]')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


@record
class Secrets:
    """Everything secret the daemon needs, loaded once at start."""

    agent_key: Secret | None
    api_token: Secret
    db_password: Secret | None


def _locate(configured: Path | None, credential: str) -> Path | None:
    if configured is not None:
        return configured
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / credential
        if candidate.exists():
            return candidate
    return None


def read_secret_file(path: Path, key: str) -> Secret:
    """Read a secret file after checking that only its owner can read it."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise SecretError([f"{key}: {path} does not exist"]) from exc
    except OSError as exc:
        raise SecretError([f"{key}: cannot read {path}: {exc.strerror}"]) from exc
    except ValueError as exc:  # a NUL in the path
        raise SecretError([f"{key}: not a usable path: {exc}"]) from exc
    if not stat.S_ISREG(st.st_mode):
        raise SecretError([f"{key}: {path} is not a regular file"])
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise SecretError(
            [
                f"{key}: {path} is readable by group or others (mode {mode:04o}); "
                f"fix it with: chmod 600 {path}"
            ]
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise SecretError(
            [
                f"{key}: {path} is owned by uid {st.st_uid}, not by the user hlcopy runs as "
                f"(uid {os.geteuid()}); fix it with: chown {os.geteuid()} {path}"
            ]
        )
    if st.st_size > _MAX_SECRET_BYTES:
        raise SecretError([f"{key}: {path} is larger than {_MAX_SECRET_BYTES} bytes"])
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError([f"{key}: cannot read {path}: {exc}"]) from exc
    if not value:
        raise SecretError([f"{key}: {path} is empty"])
    return Secret(value)


def normalise_private_key(raw: str, key: str) -> Secret:
    """Return the key as ``0x`` + 64 lowercase hex digits, or raise naming ``key``."""
    try:
        return Secret("0x" + parse_private_key(raw).hex())
    except ValueError as exc:
        raise SecretError([f"{key}: {exc}"]) from None


def load_agent_key(cfg: HlcopyConfig) -> Secret | None:
    """The agent key, or None when none is configured (fine in paper mode).

    The key only signs; the account it trades for is ``account.address``, configured apart. The
    two must differ: every read (positions, fills, rate limits) is keyed by the account, and the
    exchange answers an agent's address as an empty account (HYPERLIQUID.md §11.18).
    """
    key = "account.agent_key_file"
    path = _locate(cfg.account.agent_key_file, AGENT_KEY_CREDENTIAL)
    if path is None:
        if cfg.account.mode == "live":
            raise SecretError(
                [
                    f"{key}: live mode needs the agent key: set {key} or provide the systemd "
                    f"credential {AGENT_KEY_CREDENTIAL}"
                ]
            )
        return None
    agent_key = normalise_private_key(read_secret_file(path, key).reveal(), key)
    if cfg.account.address is not None:
        agent = key_address(parse_private_key(agent_key.reveal()))
        if agent == cfg.account.address:
            raise SecretError(
                [
                    f"account.address: {agent} is the address of the agent key in {path}; set "
                    "the follower account's address (the master or sub-account that approved "
                    "the agent), never the agent's"
                ]
            )
    return agent_key


def create_secret_file(path: Path, value: str, key: str) -> None:
    """Write ``value`` to a new file that only its owner can read, never over an existing one.

    ``O_EXCL`` makes creation atomic (a file, or a symlink planted there, is never followed or
    replaced) and the mode is 0600 from the first byte, whatever the umask. A failed write
    removes the file it created, so no half-written key is left behind.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SecretError(
            [f"{key}: {path} already exists; hlcopy never overwrites a key file"]
        ) from None
    except FileNotFoundError:
        raise SecretError([f"{key}: the directory {path.parent} does not exist"]) from None
    except OSError as exc:
        raise SecretError([f"{key}: cannot create {path}: {exc.strerror}"]) from exc
    except ValueError as exc:  # a NUL in the path
        raise SecretError([f"{key}: not a usable path: {exc}"]) from exc
    done = False
    try:
        os.fchmod(fd, 0o600)  # a umask cannot have taken the owner's read bit
        data = memoryview((value + "\n").encode())
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
        done = True
    except OSError as exc:
        raise SecretError([f"{key}: cannot write {path}: {exc.strerror}"]) from exc
    finally:
        os.close(fd)
        if not done:
            path.unlink(missing_ok=True)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a new file's name durable (best effort: not every file system can)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_api_token(cfg: HlcopyConfig, *, create: bool = True) -> Secret | None:
    """The API bearer token; generated once into <state.dir>/api-token when none is configured."""
    key = "api.token_file"
    path = _locate(cfg.api.token_file, API_TOKEN_CREDENTIAL)
    if path is None:
        path = cfg.state.dir / "api-token"
        if not path.exists():
            if not create:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two starts racing must not both write; 0600 from the first byte.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(32) + "\n")
    token = read_secret_file(path, key)
    if not _HEADER_SAFE.fullmatch(token.reveal()):
        raise SecretError(
            [
                f"{key}: the token in {path} must be one line of visible ASCII characters "
                "(no spaces or quotes), as it travels in an Authorization header"
            ]
        )
    if len(token.reveal()) < _MIN_TOKEN_CHARS:
        raise SecretError(
            [f"{key}: the token in {path} is shorter than {_MIN_TOKEN_CHARS} characters"]
        )
    return token


def load_db_password(cfg: HlcopyConfig) -> Secret | None:
    """The database password, when the DSN needs one."""
    if cfg.database.dsn is None:
        return None
    path = _locate(cfg.database.password_file, DB_PASSWORD_CREDENTIAL)
    return None if path is None else read_secret_file(path, "database.password_file")


def load_secrets(cfg: HlcopyConfig) -> Secrets:
    """Load every secret, collecting all problems before raising."""
    problems: list[str] = []
    values: dict[str, Secret | None] = {}
    for name, loader in (
        ("agent_key", load_agent_key),
        ("api_token", load_api_token),
        ("db_password", load_db_password),
    ):
        try:
            values[name] = loader(cfg)
        except SecretError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SecretError(problems)
    token = values["api_token"]
    assert token is not None  # load_api_token creates one when none is configured
    return Secrets(values["agent_key"], token, values["db_password"])


def check_secrets(cfg: HlcopyConfig) -> list[str]:
    """Problems with the configured secrets, without creating anything (for check-config)."""
    problems: list[str] = []
    checks: list[Callable[[], Secret | None]] = [
        lambda: load_agent_key(cfg),
        lambda: load_api_token(cfg, create=False),
        lambda: load_db_password(cfg),
    ]
    for check in checks:
        try:
            check()
        except SecretError as exc:
            problems.extend(exc.problems)
    return problems
