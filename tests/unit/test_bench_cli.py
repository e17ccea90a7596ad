"""`hlcopy bench sign`: the command's contract (never its timing: figures go in closing notes)."""

from __future__ import annotations

import orjson
import pytest
from hlcopy.cli import main


@pytest.mark.timeout(300)
def test_bench_sign_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sign", "--json", "--runs", "1"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["benchmark"] == "sign"
    assert result["orders_per_run"] == 10_000
    assert result["us_per_order"] > 0
    assert result["ecdsa_us"] > 0
    assert len(result["runs_us"]) == 1
    assert {"cpu", "cores", "python"} <= set(result["machine"])


@pytest.mark.timeout(300)
def test_bench_sim_json_is_the_only_thing_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--json", "--seconds", "3", "--rate", "300"]) == 0
    result = orjson.loads(capfd.readouterr().out)  # fails on any stray line
    assert result["benchmark"] == "sim"
    assert result["trades_per_s"] > 0
    assert result["rest_requests"] > 0
    assert result["rest_errors"] == {}


def test_bench_sign_table_and_minimum(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sign", "--orders", "100"]) == 2
    assert "at least 10000" in capsys.readouterr().err
