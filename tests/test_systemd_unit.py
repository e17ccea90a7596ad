"""The shipped unit parses and keeps its sandbox (when systemd's tools are on this machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    # verify checks that ExecStart's binary exists: point it at this environment's hlcopy.
    text = (REPO / "systemd" / "hlcopy.service").read_text()
    path = tmp_path / "hlcopy.service"
    path.write_text(
        text.replace("/opt/hlcopy/venv/bin/hlcopy", str(Path(sys.executable).parent / "hlcopy"))
    )
    return path


def test_unit_verifies(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_sandbox_exposure_stays_low(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert m, result.stdout + result.stderr
    assert float(m[1]) <= 2.0


def test_unit_has_what_the_daemon_relies_on() -> None:
    text = (REPO / "systemd" / "hlcopy.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StartLimitBurst=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=hlcopy",
        "User=hlcopy",
        "LoadCredential=api-token:",
        "#LoadCredential=hl-agent:",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ):
        assert line in text, line
