"""`hlcopy bench firehose`: the command's contract (never its timing: figures go in closing
notes). It starts its own embedded PostgreSQL, so it lives with the component tests."""

from __future__ import annotations

import os
import sys

import orjson
import pytest
from hlcopy.bench import firehose_frames
from hlcopy.cli import main
from hlcopy.hl import parse
from hlcopy.log import configure_logging


def test_firehose_frames_are_what_the_parser_takes() -> None:
    frames, addresses = firehose_frames(200, 1000)
    trades = [t for raw in frames for t in parse.parse_trades(orjson.loads(raw)["data"])]
    assert len(trades) > 200
    assert all(t.users is not None and set(t.users) <= set(addresses) for t in trades)
    assert {t.side for t in trades} == {"B", "A"}
    assert all(t.px > 0 and t.sz > 0 for t in trades)


@pytest.mark.slow(11)
@pytest.mark.timeout(300)
def test_bench_firehose_json(capfd: pytest.CaptureFixture[str]) -> None:
    cores = os.sched_getaffinity(0)
    try:
        assert main(["bench", "firehose", "--json", "--seconds", "3"]) == 0
    finally:
        # The command logs to the captured stderr, which closes after the test: later tests
        # must not log there.
        configure_logging("info", "json", sys.__stderr__)
    result = orjson.loads(capfd.readouterr().out)  # fails on any stray line
    assert os.sched_getaffinity(0) == cores  # the pinning is undone
    assert result["benchmark"] == "firehose"
    assert result["trades_per_s"] > 0
    assert len(result["runs_trades_per_s"]) == 3
    # Everything ingested was written: every known trader is a row, nothing was dropped.
    assert result["known_traders"] == result["traders_rows"] == 100_000
    assert result["persisted_rows"] > 0
    assert result["dropped"] == 0
    assert result["frames_dropped"] == 0
    assert result["leader_fills"] > 0
    assert {"cpu", "cores", "python"} <= set(result["machine"])
