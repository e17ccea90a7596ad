"""What the demo prints about the leaderboard, from the API's own JSON."""

from __future__ import annotations

from typing import Any

from hlcopy.demo import backtest_body, render_backtest, render_board, render_copying

ROW = {
    "address": "0x" + "ab" * 19 + "cd",
    "return": 0.5,
    "max_drawdown": 0.07,
    "win_rate": 0.62,
    "trade_count": 40,
    "risk_level": "LOW",
    "style": "day",
    "score": 0.63,
    "account_value": "1000",
}
STATS = {
    "components": {"discovery": {"addresses": 74}, "tracker": {"scored": 36}},
    "budget": {"utilization": 0.9492},
}


def test_the_board_shows_the_top_traders_and_the_worst_losers() -> None:
    loser = {**ROW, "address": "0x" + "11" * 20, "return": -0.99, "account_value": "21726.5"}
    text = render_board(90.4, STATS, {"total": 11, "rows": [ROW]}, {"rows": [loser]})
    head, columns, first, losers = text.splitlines()
    assert head.startswith("hlcopy demo: 1:30 in: 74 traders discovered, 36 scorings, 11 ranked")
    assert "REST budget 94.9% used" in head
    assert "score" in columns
    assert first.split() == ["1", "0xabab…abcd", "+50.0%", "7.0%", "62", "40", "LOW", "day", "0.63"]
    assert "0x1111…1111 -99.0% on 21,726 USD" in losers  # rounded to the dollar


def test_a_negative_score_is_explained_once_under_the_board() -> None:
    rows = [ROW, {**ROW, "score": -1.8}, {**ROW, "score": -1.9}]
    text = render_board(60, STATS, {"total": 3, "rows": rows}, {"rows": []})
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) + 1
    assert lines[-1].strip().startswith("(a score below 0:")
    assert "below 0" not in render_board(60, STATS, {"total": 1, "rows": [ROW]}, {"rows": []})


def test_before_any_complete_score_it_says_why_the_board_is_empty() -> None:
    text = render_board(30, STATS, {"total": 0, "rows": []}, {"rows": []})
    assert "0 ranked" in text
    assert "no complete score yet" in text


def test_a_finished_backtest_is_one_line_with_its_gap_and_parts() -> None:
    job = {
        "id": "bt-1",
        "state": "done",
        "addresses": ["0x" + "ad" * 20],
        "result": {
            "results": [
                {
                    "pnl": "-94.65",
                    "return": -0.009465,
                    "leader_scaled_pnl": "3123.39",
                    "orders": 13,
                    "gap": "-3218.04",
                    "parts": {"latency_slippage": "-2.01", "skips": "0", "limits": "-3216.03"},
                }
            ]
        },
    }
    line = render_backtest(job)
    assert "0xadad…adad" in line
    assert "/api/v1/backtest/bt-1" in line
    assert "our PnL -94.65 USD" in line
    assert "gap -3218.04 (latency_slippage -2.01, limits -3216.03)" in line  # zero parts left out
    failed = render_backtest({**job, "state": "failed", "result": None, "error": "no fills"})
    assert failed.endswith("failed no fills")


def test_the_copying_line_names_who_is_copied_and_faded_and_what_is_held() -> None:
    follows = {
        "follows": [
            {"leader": "0x" + "ad" * 20, "spec": {"mode": "copy"}, "paused": False},
            {"leader": "0x" + "e9" * 20, "spec": {"mode": "inverse"}, "winding_down": True},
        ]
    }
    positions = {
        "mode": "paper",
        "equity": "9987.4",
        "realized_pnl": "-3.2",
        "fees": "1.1",
        "positions": [{"coin": "ETH", "szi": "0.1462"}, {"coin": "BTC", "szi": "0"}],
    }
    line = render_copying(follows, positions)
    assert line.startswith("hlcopy demo: paper: copying 0xadad…adad, fading 0xe9e9…e9e9 (winding")
    assert "equity 9,987 USD, realised -3.20, fees 1.10" in line
    assert "holds ETH +0.1462;" in line  # a flat coin is not listed
    empty = render_copying({"follows": []}, positions)
    assert "no follow yet" in empty


def test_the_backtest_is_of_the_best_ranked_leader_copied_by_its_follows_rules() -> None:
    a, b, c = ("0x" + x * 40 for x in "abc")
    board = {"rows": [{"address": a}, {"address": b}, {"address": c}]}

    def follow(leader: str, mode: str, active: bool = True) -> dict[str, Any]:
        spec: dict[str, Any] = {"leader": leader, "name": "n", "mode": mode, "ratio": "1"}
        spec["sizing"] = "equity"
        spec |= {"slippage_bps": 50, "priority": 0, "entry": "adopt", "allow_coins": None}
        return {"leader": leader, "active": active, "spec": spec}

    assert backtest_body(board, {"follows": []}) is None  # nobody copied yet
    faded = {"follows": [follow(a, "inverse"), follow(b, "copy", active=False)]}
    assert backtest_body(board, faded) is None  # a faded or a paused leader is not "copying"
    both = {"follows": [follow(c, "copy"), follow(b, "copy")]}
    assert backtest_body(board, both) == {
        "addresses": [b],  # the better ranked of the two
        "days": 1,
        "mode": "copy",
        "sizing": "equity",
        "ratio": "1",
        "ioc_slippage_bps": 50,  # the follow's IOC slippage, by the body's name
    }
