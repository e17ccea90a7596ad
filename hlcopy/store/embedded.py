"""An embedded PostgreSQL server in the state directory, started, adopted and stopped by hlcopy.

Zero setup for the user: the same SQL as a real server, data under ``<state.dir>/pg``, reached
over a unix socket only (no TCP port). The ``pgserver`` package supplies the binaries; the
lifecycle is ours. pgserver's own bookkeeping (a shared list of handle PIDs and a per-process
cache of servers) goes wrong after a crash: a killed daemon's PID stays listed, so a later clean
stop never stops the server, and a server that died is handed out again and never restarted.

hlcopy needs none of that, because the state-directory lock (``instance.py``) guarantees one
daemon per data directory: whatever server runs there is ours. So ``start`` adopts a live
postmaster of this data directory (left behind by a killed daemon), otherwise starts one —
leaving a ``postmaster.pid`` of a dead process for PostgreSQL itself to judge, which also checks
for orphaned backends, but removing one whose PID now belongs to an unrelated process. ``stop``
stops whatever postmaster we started or adopted. pgserver's calls are synchronous: they run in a
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pwd
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import structlog

from hlcopy.errors import StoreUnavailable
from hlcopy.record import record

log = structlog.get_logger()

_SYSTEM_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver creates this user
_SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH = 100  # unix socket paths are limited to ~107 bytes


def _pgserver() -> tuple[Any, Any]:
    # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset; that is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import _commands, utils

    return _commands, utils


@record
class Postmaster:
    """What ``postmaster.pid`` says about a server."""

    pid: int
    socket_dir: Path | None
    port: int | None
    status: str

    @staticmethod
    def read(data_dir: Path) -> Postmaster | None:
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        field = (lines + [""] * 8)[:8]
        return Postmaster(
            pid=pid,
            socket_dir=Path(field[4].strip()) if field[4].strip() else None,
            port=int(field[3]) if field[3].strip().isdigit() else None,
            status=field[7].strip(),
        )


def postmaster_alive(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) postgres serving ``data_dir``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.name() == "postgres" and str(data_dir) in proc.cmdline()
    except (psutil.Error, OSError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether any live process has ``pid``."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class EmbeddedPostgres:
    """One data directory's server. See the module docstring."""

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 60.0) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._start_timeout_s = start_timeout_s
        self._system_user = _SYSTEM_USER if os.geteuid() == 0 else None
        self._postmaster: Postmaster | None = None
        self.starts = 0
        self.adoptions = 0

    @property
    def pid(self) -> int | None:
        """The postmaster's PID, while we hold one."""
        return None if self._postmaster is None else self._postmaster.pid

    @property
    def running(self) -> bool:
        """Whether the postmaster we started or adopted is alive."""
        pm = self._postmaster
        return pm is not None and postmaster_alive(pm.pid, self.data_dir)

    @property
    def dsn(self) -> str:
        pm = self._postmaster
        if pm is None or pm.socket_dir is None:
            raise StoreUnavailable("the embedded PostgreSQL is not running")
        return f"postgresql://postgres:@/postgres?host={quote(str(pm.socket_dir), safe='/')}"

    async def start(self) -> str:
        """Start (or adopt) the server if it is not running; return its DSN."""
        if not self.running:
            try:
                self._postmaster = await asyncio.to_thread(self._start)
            except (OSError, subprocess.SubprocessError, StoreUnavailable) as exc:
                self._postmaster = None
                detail = exc if isinstance(exc, StoreUnavailable) else _describe(exc)
                raise StoreUnavailable(
                    f"embedded PostgreSQL did not start in {self.data_dir}: {detail}"
                ) from exc
        return self.dsn

    async def stop(self) -> None:
        """Stop the server we started or adopted (a fast shutdown: sessions are cut)."""
        pm, self._postmaster = self._postmaster, None
        if pm is not None:
            await asyncio.to_thread(self._stop, pm.pid)

    # -- the synchronous work, in a thread -------------------------------------------------

    def _start(self) -> Postmaster:
        commands, utils = _pgserver()
        self._prepare(utils)
        if not (self.data_dir / "PG_VERSION").exists():
            if any(self.data_dir.iterdir()):
                raise StoreUnavailable(
                    f"{self.data_dir} is neither empty nor a PostgreSQL data directory; "
                    "move it away to let hlcopy create a new database"
                )
            log.info("creating the embedded database", data_dir=str(self.data_dir))
            commands.initdb(
                ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=self._system_user,
                timeout=self._start_timeout_s,
            )
        found = Postmaster.read(self.data_dir)
        if found is not None and postmaster_alive(found.pid, self.data_dir):
            log.warning(
                "adopting the embedded PostgreSQL left running by an earlier process",
                pid=found.pid,
            )
            self.adoptions += 1
            return self._ready(found.pid)
        if found is not None and pid_alive(found.pid):
            # The dead server's PID now belongs to someone else: PostgreSQL would refuse to
            # start ("is another postmaster running?"), so the stale file goes.
            log.warning("removing a stale postmaster.pid", pid=found.pid)
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "postmaster.pid").unlink()
        socket_dir = self._socket_dir()
        commands.pg_ctl(
            [
                "-w",
                "-t",
                str(int(self._start_timeout_s)),
                "-o",
                '-h ""',  # no TCP listener at all
                "-o",
                f"-k {socket_dir}",
                "-l",
                str(self.data_dir / "log"),
                "start",
            ],
            pgdata=self.data_dir,
            user=self._system_user,
            timeout=self._start_timeout_s + 5,
        )
        started = Postmaster.read(self.data_dir)
        if started is None:
            raise StoreUnavailable("pg_ctl reported a start but wrote no postmaster.pid")
        self.starts += 1
        log.info("embedded PostgreSQL started", pid=started.pid, data_dir=str(self.data_dir))
        return self._ready(started.pid)

    def _ready(self, pid: int) -> Postmaster:
        """The postmaster's details once it accepts connections (``pg_ctl -w`` waited for it;
        an adopted one may still be starting or stopping: then the caller retries later)."""
        pm = Postmaster.read(self.data_dir)
        if pm is None or pm.pid != pid or pm.status != "ready" or pm.socket_dir is None:
            status = "gone" if pm is None or pm.pid != pid else pm.status
            raise StoreUnavailable(f"the postmaster (pid {pid}) is not ready ({status})")
        return pm

    def _prepare(self, utils: Any) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stale = self.data_dir / ".handle_pids.json"  # pgserver's bookkeeping; not used here
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
        if self._system_user is None:
            return
        # As root, PostgreSQL runs as a dedicated user that must reach the data directory and
        # the binaries (what pgserver does for its own servers).
        commands, _ = _pgserver()
        # Two hlcopy processes creating the user at once (a fresh machine's first test run)
        # race in useradd: one's entry can overwrite the other's, leaving a uid without a user.
        with _exclusive(Path(tempfile.gettempdir()) / "hlcopy-pg-user.lock"):
            utils.ensure_user_exists(self._system_user)
        utils.ensure_prefix_permissions(self.data_dir)
        utils.ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
        entry = pwd.getpwnam(self._system_user)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _socket_dir(self) -> Path:
        if len(str(self.data_dir / _SOCKET_NAME)) < _MAX_SOCKET_PATH:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"hlcopy-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        if self._system_user is not None:
            entry = pwd.getpwnam(self._system_user)
            os.chown(short, entry.pw_uid, entry.pw_gid)
        return short

    def _stop(self, pid: int) -> None:
        commands, _ = _pgserver()
        if not postmaster_alive(pid, self.data_dir):
            return
        try:
            commands.pg_ctl(
                ["-w", "-t", "30", "-m", "fast", "stop"],
                pgdata=self.data_dir,
                user=self._system_user,
                timeout=35,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("pg_ctl stop failed; terminating the postmaster", pid=pid, error=str(exc))
        if postmaster_alive(pid, self.data_dir):
            _terminate(pid)
        log.info("embedded PostgreSQL stopped", pid=pid)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` across processes (flock: released on exit)."""
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _terminate(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    except psutil.Error:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return f"{Path(str(exc.cmd[0])).name} exited with {exc.returncode}"
    return f"{type(exc).__name__}: {exc}"
