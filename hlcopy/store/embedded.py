"""An embedded PostgreSQL server (the ``pgserver`` package) in the state directory.

Zero setup for the user: the same SQL as a real server, data under ``<state.dir>/pg``, reached
over a unix socket only (no TCP port). pgserver is synchronous, so start and stop run in a thread.
A server left running by a killed process is adopted on the next start.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

from hlcopy.errors import StoreUnavailable


def _import_pgserver() -> Any:
    # platformdirs warns at pgserver's import time when XDG_RUNTIME_DIR is unset (it falls back
    # to /tmp/runtime-<uid>, which is what we want); the warning is noise, not a problem.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


class EmbeddedPostgres:
    """Starts PostgreSQL in ``data_dir`` and stops it again when this handle closes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    @property
    def running(self) -> bool:
        """Whether the server process this handle started is alive."""
        if self._server is None:
            return False
        info = self._server.get_postmaster_info()
        return bool(info is not None and info.is_running())

    async def start(self) -> str:
        """Start (or adopt) the server and return its DSN."""
        if self._server is None:
            try:
                self._server = await asyncio.to_thread(self._start)
            except Exception as exc:
                raise StoreUnavailable(
                    f"embedded PostgreSQL did not start in {self.data_dir}: {exc}"
                ) from exc
        return str(self._server.get_uri())

    def _start(self) -> Any:
        pgserver = _import_pgserver()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return pgserver.get_server(self.data_dir, cleanup_mode="stop")

    async def stop(self) -> None:
        """Stop the server unless another process still holds a handle on it."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.cleanup)
