"""ruff (lint + format) and mypy --strict stay clean: CI runs them through this suite."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow(7)
@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "hlcopy", "tests"],
        ["ruff", "format", "--check", "hlcopy", "tests"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
@pytest.mark.timeout(600)
def test_static_checks_are_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
