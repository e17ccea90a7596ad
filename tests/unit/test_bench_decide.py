"""`hlcopy bench decide`: the command's contract, run small (never its timings: the figures
go in closing notes). It starts the simulator and a leader's driver in their own processes and
the real daemon, with an embedded PostgreSQL, in this one."""

from __future__ import annotations

import os
import sys

import orjson
import psutil
import pytest
from hlcopy.bench import format_decide, format_latency
from hlcopy.cli import main
from hlcopy.log import configure_logging


@pytest.mark.slow(14)
@pytest.mark.timeout(240)
def test_bench_decide_times_real_leader_fills_through_the_daemon(
    capfd: pytest.CaptureFixture[str],
) -> None:
    try:
        assert main(["bench", "decide", "--json", "--fills", "24", "--rate", "400"]) == 0
    finally:
        # The command logs to the captured stderr, which closes after the test: later tests
        # must not log there.
        configure_logging("info", "json", sys.__stderr__)
    result = orjson.loads(capfd.readouterr().out)  # fails on any stray line
    assert result["benchmark"] == "decide"
    # The leader's trades reached the simulator; the ones that filled (a fill or more each, all
    # in one userFills frame) were copied: one intent each, triggered by a leader fill.
    assert result["leader_trades_sent"] == 24
    filled = result["leader_trade_statuses"]["filled"]
    assert filled > 0
    assert result["leader_fills"] >= filled
    assert result["intents"] == result["n"] > 0
    # Only a copy the paper book left unfilled (IOC, no match) can leave the leader's next
    # trade in that coin with nothing to order.
    paper = result["paper"]
    assert 0 <= result["trades_without_intent"] <= paper["rejected"] + paper["partial"]
    assert result["intents_other"] == 0
    assert result["copier"]["errors"] == 0
    assert sum(f["n"] for f in result["by_source"].values()) == result["intents"]
    assert set(result["by_source"]) <= {"userFills", "firehose"}
    # The figures have their shapes: ordered percentiles, the legs measured for each fill.
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    for leg in ("to_core", "core", "after_core", "handler_wall", "handler_cpu"):
        figures = result["legs"][leg]
        # The handler's figures are of the intents its userFills frames triggered.
        by = "userFills" if leg.startswith("handler") else None
        assert figures["n"] == (result["by_source"][by]["n"] if by else result["intents"])
        assert 0 <= figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    # The handler's CPU time is part of its wall time (a little slack: two clocks).
    wall, cpu = result["legs"]["handler_wall"], result["legs"]["handler_cpu"]
    assert 0 < cpu["p50_ms"] <= wall["p50_ms"] * 1.05
    # Samples off the CPU over 50 us: counted among the handler's, and named in the text.
    off = result["handler_off_cpu"]
    assert off["over_us"] == 50
    assert 0 <= off["n"] <= wall["n"]
    assert f"over 50 us in {off['n']} of {wall['n']}" in format_decide(result)
    assert wall["p50_ms"] < result["p50_ms"]  # it starts after the frame arrived
    # The background firehose was measured as delivered, not assumed; the daemon stopped clean.
    assert result["trades_per_s"] > 0
    assert result["messages_per_s"] > 0
    assert result["users_order"] in ("buyer_seller", "maker_taker")
    assert result["exit_code"] == 0
    assert len(result["loadavg_start"]) == len(result["loadavg_end"]) == 3
    assert {"cpu", "cores", "python"} <= set(result["machine"])
    # The host's steal over the window: a difference of its counter, never negative.
    steal = result["host_steal_s"]
    if os.path.exists("/proc/stat"):
        assert steal is not None
        assert 0 <= steal <= result["seconds"] * (os.cpu_count() or 1)
        assert f"host steal        {steal} CPU s" in format_decide(result)
    # The embedded PostgreSQL ran on the daemon's cores, as it would on the daemon's machine.
    if len(os.sched_getaffinity(0)) >= 2:
        assert result["cpus"]["postgres"] == result["cpus"]["daemon"]
    text = format_decide(result)
    assert "p99" in text
    assert "trades/s delivered" in text
    assert "the thread's CPU time" in text
    # The simulator and the leader's driver are gone.
    assert psutil.Process().children() == []


@pytest.mark.timeout(240)
def test_bench_latency_times_live_orders_to_the_socket_and_the_reply(
    capfd: pytest.CaptureFixture[str],
) -> None:
    try:
        assert main(["bench", "latency", "--json", "--fills", "16", "--rate", "400"]) == 0
    finally:
        configure_logging("info", "json", sys.__stderr__)
    result = orjson.loads(capfd.readouterr().out)
    assert result["benchmark"] == "latency"
    assert result["leader_trades_sent"] == 16
    # Live orders, each written to the simulator's socket and answered: the headline is the
    # frame -> bytes written figure, the reply comes later, the intent earlier.
    wire = result["wire"]
    assert 0 < result["n"] == wire["written"]["n"]
    assert wire["acked"]["n"] == wire["written"]["n"]
    assert result["p50_ms"] == wire["written"]["p50_ms"]
    assert wire["committed"]["n"] >= wire["written"]["n"]
    # Each order's steps: its commit, then the bytes; both inside the frame -> bytes figure.
    assert wire["commit"]["n"] == wire["commit_to_written"]["n"] == wire["written"]["n"]
    assert 0 < wire["commit"]["p50_ms"] <= wire["commit"]["max_ms"] <= result["max_ms"]
    assert 0 < wire["commit_to_written"]["max_ms"] <= result["max_ms"]
    assert result["decide"]["p50_ms"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    # The API was read all the while, every request answered.
    api = result["api"]
    assert result["api_clients"] == 64
    assert api["requests"] > 0
    assert set(api["statuses"]) == {"200"}
    assert result["exit_code"] == 0
    assert "bytes written" in format_latency(result)
    assert "write-ahead commit (durable)" in format_latency(result)
    assert "the thread's CPU time" in format_latency(result)
    assert "host steal" in format_latency(result)
    assert psutil.Process().children() == []


def test_bench_decide_is_a_choice_of_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "decide" in out
    assert "latency" in out
