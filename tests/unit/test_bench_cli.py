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


@pytest.mark.slow(6)
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


@pytest.mark.slow(8)
@pytest.mark.timeout(300)
def test_bench_api_measures_real_requests_from_another_process() -> None:
    from hlcopy.bench import bench_api, format_api

    result = bench_api(seconds=1.0, traders=2000, clients=8, refresh_s=0.5, warmup_s=0.5)
    assert result["benchmark"] == "api"
    assert result["requests"] > 0
    assert set(result["statuses"]) == {"200"}  # every request of the mix is a valid one
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["load_cpu_s"] > 0  # the load ran in its own process
    assert result["refresh_ms"]
    # The board was loaded from PostgreSQL twice: from the JSON, then from the packed figures.
    assert result["restart_load_s"] > 0
    assert result["upgrade_load_s"] > 0
    assert result["restart_from_json"] == 0
    assert "p99" in format_api(result)
    assert "restart" in format_api(result)


def test_bench_api_is_a_choice_of_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "api" in capsys.readouterr().out
