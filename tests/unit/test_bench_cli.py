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


def test_bench_sign_table_and_minimum(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sign", "--orders", "100"]) == 2
    assert "at least 10000" in capsys.readouterr().err
