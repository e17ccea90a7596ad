"""What the demo prints about the leaderboard, from the API's own JSON."""

from __future__ import annotations

from hlcopy.demo import render_backtest, render_board

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
