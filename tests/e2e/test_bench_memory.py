"""`hlcopy bench memory`: the command's contract, run small (never its figures: they go in
closing notes). It starts an embedded PostgreSQL, the simulator and the real daemon process."""

from __future__ import annotations

import sys

import orjson
import psutil
import pytest
from hlcopy.bench import format_memory
from hlcopy.cli import main
from hlcopy.log import configure_logging


@pytest.mark.slow(6)
@pytest.mark.timeout(300)
def test_bench_memory_measures_the_daemon_with_the_seeded_traders(
    capfd: pytest.CaptureFixture[str],
) -> None:
    try:
        args = ["--traders", "2000", "--scored", "150", "--seconds", "3", "--rate", "50"]
        assert main(["bench", "memory", "--json", *args]) == 0
    finally:
        # The command logs to the captured stderr, which closes after the test: later tests
        # must not log there.
        configure_logging("info", "json", sys.__stderr__)
    result = orjson.loads(capfd.readouterr().out)  # fails on any stray line
    assert result["benchmark"] == "memory"
    # Measured in the daemon's process, from its start to its clean stop.
    assert 0 < result["rss_ready_mib"] <= result["rss_peak_mib"]
    assert 0 < result["rss_final_mib"] <= result["rss_peak_mib"]
    assert result["samples"] > 3
    assert result["exit_code"] == 0
    # What was seeded is what the daemon loaded: every known trader into discovery's registry,
    # every scored one onto the leaderboard.
    assert result["traders_rows"] == result["registry_loaded"] == 2000
    assert result["registry_addresses"] >= 2000
    assert result["scored_rows"] == result["board_loaded"] == 150
    assert result["api_requests"] > 0
    assert set(result["api_statuses"]) == {"200"}
    assert {"cpu", "cores", "python"} <= set(result["machine"])
    assert "peak RSS" in format_memory(result)
    # The simulator and the daemon are gone.
    assert psutil.Process().children() == []
