"""[[follow]] and [[auto_follow]]: validation naming the key, and the pure mapping onto the
copier's Follow."""

from __future__ import annotations

from dataclasses import fields
from decimal import Decimal
from typing import Any

import pytest
from hlcopy.config import FollowConfig, FollowTemplate, check_follow, parse_config, parse_toml
from hlcopy.errors import ConfigError
from hlcopy.follow.copier import Follow
from hlcopy.follow.follows import auto_follow_id, to_core

LEADER = "0x00000000000000000000000000000000000000aa"


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_a_full_follow_table_parses_exactly() -> None:
    cfg = parse_toml(f"""
[[follow]]
leader = "{LEADER}"
name = "whale"
mode = "inverse"
sizing = "equity"
ratio = "0.25"
coins = ["BTC", "ETH"]
exclude_coins = ["DOGE"]
max_notional_per_coin_usd = 1000.5
max_total_notional_usd = 3000
max_leverage = 2.5
min_notional_policy = "round_up"
slippage_bps = 30
max_fill_age_ms = 5000
entry = "adopt"
adopt_max_deviation_bps = 20
delay_ms = 250
active_hours_utc = [22, 6]
daily_loss_limit_usd = 100
max_drawdown_pct = 12.5
priority = 7
enabled = false
""")
    (f,) = cfg.follow
    assert f.id == "whale"
    assert f.ratio == Decimal("0.25")
    assert f.max_notional_per_coin_usd == Decimal("1000.5")
    assert f.max_leverage == Decimal("2.5")
    assert f.active_hours_utc == [22, 6]
    assert (f.priority, f.delay_ms, f.enabled) == (7, 250, False)


def test_defaults_are_the_cores() -> None:
    f = FollowConfig.model_validate({"leader": LEADER})
    core = to_core(f, 0, False)
    default = Follow(id=LEADER, leader=LEADER)
    assert core == default
    assert f.min_notional_policy == "skip"  # never silently double an order


@pytest.mark.parametrize(
    ("follow", "expected"),
    [
        ({"sizing": "fixed"}, "follow[0].sizing: must be 'ratio', 'equity' or 'fixed_notional'"),
        ({"inverse": True}, "follow[0].inverse: unknown key"),
        ({"max_position_notional_usd": 5}, "follow[0].max_position_notional_usd: unknown key"),
        ({"mode": "fade"}, "follow[0].mode: must be 'copy' or 'inverse'"),
        ({"ratio": 0}, "follow[0].ratio: must be greater than 0"),
        ({"ratio": True}, "follow[0].ratio: must be a number"),
        ({"slippage_bps": 5001}, "follow[0].slippage_bps: must be less than or equal to 5000"),
        ({"slippage_bps": 1.5}, "follow[0].slippage_bps: must be a valid integer"),
        ({"max_fill_age_ms": 0}, "follow[0].max_fill_age_ms: must be greater than or equal to 1"),
        ({"max_leverage": 101}, "follow[0].max_leverage: must be less than or equal to 100"),
        ({"max_drawdown_pct": 0}, "follow[0].max_drawdown_pct: must be greater than 0"),
        ({"daily_loss_limit_usd": -1}, "follow[0].daily_loss_limit_usd: must be greater than 0"),
        ({"max_total_notional_usd": "1e13"}, "follow[0].max_total_notional_usd: must be less"),
        ({"active_hours_utc": [1]}, "follow[0].active_hours_utc: "),
        ({"active_hours_utc": [24, 3]}, "follow[0].active_hours_utc: the start hour must be 0-23"),
        ({"active_hours_utc": [3, 25]}, "follow[0].active_hours_utc: the end hour must be 0-24"),
        ({"active_hours_utc": [0, 24]}, "follow[0].active_hours_utc: start and end must differ"),
        ({"priority": -1}, "follow[0].priority: must be greater than or equal to 0"),
        ({"entry": "now"}, "follow[0].entry: must be 'wait' or 'adopt'"),
        ({"min_notional_policy": "double"}, "follow[0].min_notional_policy: must be 'skip'"),
        ({"coins": [""]}, "follow[0].coins[0]: "),
        ({"sizing": "fixed_notional"}, "follow[0].fixed_notional_usd: required when sizing"),
        ({"fixed_notional_usd": 5}, "follow[0].fixed_notional_usd: only used when sizing"),
        ({"coins": ["BTC"], "exclude_coins": ["BTC"]}, "follow[0].exclude_coins: also listed"),
    ],
)
def test_follow_errors_name_the_key(follow: dict[str, Any], expected: str) -> None:
    found = problems({"follow": [{"leader": LEADER, **follow}]})
    assert any(p.startswith(expected) for p in found), found


def test_check_follow_is_the_same_validation_without_the_table_index() -> None:
    follow, found = check_follow({"leader": LEADER, "ratio": 0, "bogus": 1})
    assert follow is None
    assert found == [("ratio", "must be greater than 0"), ("bogus", "unknown key")]
    follow, found = check_follow({"leader": LEADER, "sizing": "fixed_notional"})
    assert follow is None
    assert found == [("fixed_notional_usd", 'required when sizing = "fixed_notional"')]
    follow, found = check_follow({"leader": LEADER}, account=LEADER)
    assert (follow, found) == (None, [("leader", "is the follower's own account")])
    follow, found = check_follow({"leader": LEADER.upper().replace("0X", "0x"), "ratio": 0.1})
    assert found == []
    assert follow is not None
    assert follow.leader == LEADER
    assert follow.ratio == Decimal("0.1")
    assert check_follow([1])[1][0][0] == "(top level)"


def test_to_core_maps_every_field() -> None:
    f, found = check_follow(
        {
            "leader": LEADER,
            "name": "w",
            "mode": "inverse",
            "sizing": "fixed_notional",
            "fixed_notional_usd": "150",
            "coins": ["BTC"],
            "exclude_coins": ["ETH"],
            "max_notional_per_coin_usd": 500,
            "max_total_notional_usd": 900,
            "max_leverage": 3,
            "min_notional_policy": "round_up",
            "slippage_bps": 12,
            "max_fill_age_ms": 999,
            "entry": "adopt",
            "adopt_max_deviation_bps": 7,
            "active_hours_utc": [20, 4],
        }
    )
    assert f is not None, found
    core = to_core(f, started_ms=123, winding_down=True)
    assert core == Follow(
        id="w",
        leader=LEADER,
        mode="inverse",
        sizing="fixed_notional",
        ratio=Decimal(1),
        fixed_notional_usd=Decimal(150),
        coins=frozenset({"BTC"}),
        exclude_coins=frozenset({"ETH"}),
        max_notional_per_coin_usd=Decimal(500),
        max_total_notional_usd=Decimal(900),
        max_leverage=Decimal(3),
        min_notional_policy="round_up",
        slippage_bps=12,
        max_fill_age_ms=999,
        entry="adopt",
        adopt_max_deviation_bps=7,
        active_hours_utc=(20, 4),
        winding_down=True,
        started_ms=123,
    )
    # Every core field but the band (a copier tuning, not a user setting) comes from the config.
    mapped = {fl.name for fl in fields(Follow)} - {"id", "winding_down", "started_ms"}
    assert mapped - set(FollowConfig.model_fields) == {"fixed_notional_band_bps"}


def test_auto_follow_rules() -> None:
    cfg = parse_toml("""
[[auto_follow]]
name = "top"
source = "leaderboard"
top_n = 2
risk_levels = ["LOW"]
[auto_follow.template]
ratio = 0.1
max_notional_per_coin_usd = 500

[[auto_follow]]
name = "fade"
source = "losers"
top_n = 1
""")
    top, fade = cfg.auto_follow
    assert (top.follow_mode, fade.follow_mode) == ("copy", "inverse")
    assert top.template.ratio == Decimal("0.1")
    assert top.effective_drop_rank == 4
    assert fade.template == FollowTemplate()  # the defaults
    assert auto_follow_id("top", LEADER) == f"top.{LEADER}"
    assert len(auto_follow_id("x" * 20, LEADER)) <= 64


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({}, "auto_follow[0].source: required"),
        ({"source": "winners"}, "auto_follow[0].source: must be 'leaderboard' or 'losers'"),
        ({"source": "losers", "name": "a b"}, "auto_follow[0].name: "),
        ({"source": "losers", "top_n": 0}, "auto_follow[0].top_n: must be greater"),
        ({"source": "losers", "risk_levels": ["low"]}, "auto_follow[0].risk_levels[0]: "),
        ({"source": "losers", "styles": ["hodl"]}, "auto_follow[0].styles[0]: "),
        ({"source": "losers", "window": "year"}, "auto_follow[0].window: "),
        ({"source": "losers", "min_copyable_share": 2}, "auto_follow[0].min_copyable_share: "),
        ({"source": "losers", "template": {"leader": LEADER}}, "auto_follow[0].template.leader"),
        ({"source": "losers", "template": {"mode": "copy"}}, "auto_follow[0].template.mode: set"),
        (
            {"source": "losers", "template": {"sizing": "fixed_notional"}},
            "auto_follow[0].template.fixed_notional_usd: required",
        ),
        ({"source": "losers", "top_n": 5, "max_follows": 4}, "auto_follow[0].max_follows: must"),
        ({"source": "losers", "top_n": 5, "drop_rank": 4}, "auto_follow[0].drop_rank: must be"),
    ],
)
def test_auto_follow_errors_name_the_key(rule: dict[str, Any], expected: str) -> None:
    found = problems({"auto_follow": [{"name": "r", **rule}]})
    assert any(p.startswith(expected) for p in found), found


def test_auto_follow_names_are_unique() -> None:
    rule = {"name": "r", "source": "losers"}
    assert problems({"auto_follow": [rule, rule]}) == [
        "auto_follow[1].name: 'r' already used by auto_follow[0]"
    ]


def test_the_api_schemas_list_exactly_the_follow_fields() -> None:
    from hlcopy.api.schemas import FOLLOW_SCHEMAS

    fields_ = set(FollowConfig.model_fields)
    assert set(FOLLOW_SCHEMAS["FollowSpec"]["properties"]) == fields_
    assert set(FOLLOW_SCHEMAS["FollowCreate"]["properties"]) == fields_
    patch = set(FOLLOW_SCHEMAS["FollowPatch"]["properties"])
    assert patch == fields_ - {"leader", "name"} | {"paused"}
