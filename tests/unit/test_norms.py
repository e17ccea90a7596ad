"""A leader's 30-day leverage norm: daily means of the days before today, once enough are known."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hlcopy.follow.norms import Day, leverage_of, norm
from hlcopy.model import AccountState, MarginSummary

D = Decimal


def day(*samples: float) -> Day:
    d = Day()
    for s in samples:
        d.add(s)
    return d


def test_the_norm_is_the_mean_of_daily_means_before_today() -> None:
    days = {100: day(1.0, 3.0), 101: day(4.0), 102: day(10.0)}  # 102 is today
    assert norm(days, 102, min_days=2) == pytest.approx((2.0 + 4.0) / 2)


def test_no_norm_until_enough_days_and_old_days_drop_out() -> None:
    days = {100: day(1.0), 101: day(2.0)}
    assert norm(days, 102, min_days=3) is None
    assert norm({60: day(5.0), 101: day(1.0)}, 102, min_days=1) == pytest.approx(1.0)


def test_a_days_row_folds_in_like_its_samples() -> None:
    a = day(1.0, 2.0, 6.0)
    b = Day()
    b.add(9.0, samples=3, most=6.0)
    assert (a.total, a.samples, a.most) == (b.total, b.samples, b.most)


def test_leverage_is_notional_over_account_value() -> None:
    state = AccountState((), MarginSummary(D(1000), D(100), D(2500), D(0)), None, None, None, 0)
    assert leverage_of(state) == pytest.approx(2.5)
    empty = AccountState((), MarginSummary(D(0), D(0), D(0), D(0)), None, None, None, 0)
    assert leverage_of(empty) is None
