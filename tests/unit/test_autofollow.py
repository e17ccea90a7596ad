"""The auto-follow rule's pure core: add the top N, drop with hysteresis, cap the follows."""

from __future__ import annotations

from hlcopy.config import AutoFollowConfig
from hlcopy.follow.autofollow import plan

RULE = AutoFollowConfig(name="top", source="leaderboard", top_n=2, drop_after_s=60, max_follows=3)


def test_the_top_n_are_followed() -> None:
    p = plan(["a", "b", "c"], [], 0, {}, RULE, 0)
    assert (p.add, p.drop) == (("a", "b"), ())


def test_a_leader_within_the_drop_rank_stays_and_one_below_it_goes_only_after_a_while() -> None:
    # "b" fell to rank 4 (drop rank 2 x top_n = 4: out of reach at index 4); "a" stays in reach.
    ranked = ["c", "a", "d", "e", "b"]
    p = plan(ranked, ["a", "b"], 0, {}, RULE, 1_000)
    assert p.drop == ()  # out of the selection since now: not yet
    assert p.out_since == {"b": 1_000}
    assert p.add == ()  # two followed already
    later = plan(ranked, ["a", "b"], 0, p.out_since, RULE, 61_000)
    assert later.drop == ("b",)
    assert later.add == ("c",)  # the best not yet followed takes its place
    back = plan(["b", "a"], ["a", "b"], 0, p.out_since, RULE, 30_000)
    assert back.drop == ()
    assert back.out_since == {}  # back in reach: the clock resets


def test_follows_winding_down_count_toward_the_cap() -> None:
    p = plan(["x", "y"], [], 2, {}, RULE, 0)
    assert p.add == ("x",)  # 3 at most: 2 still winding down leave room for one
    assert plan(["x", "y"], [], 3, {}, RULE, 0).add == ()
