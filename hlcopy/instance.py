"""One daemon per state directory: an exclusive ``flock`` held for the life of the process.

Two daemons on one state directory would share an embedded PostgreSQL and, once they trade,
double every order. The lock is taken before anything is started or connected; the kernel
drops it when the process dies, however it dies, so there is never a stale lock to clean up.
The holder writes its PID into the file so a refused second start can name it. (The database
is guarded the same way by a PostgreSQL advisory lock: see ``store/db.py``.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from hlcopy.errors import InstanceLocked

LOCK_FILE = "hlcopy.lock"


class StateLock:
    """``with StateLock(state_dir):`` — raises InstanceLocked when another process holds it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "pid unknown"
            raise InstanceLocked(
                f"another hlcopy ({who}) is running with the state directory "
                f"{self.path.parent}; stop it first",
                holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the lock

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
