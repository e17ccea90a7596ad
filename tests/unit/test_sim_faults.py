"""The simulator's fault switches that the chaos suite added: a seeded share of requests for
``http_error``, and actions applied then answered with a 5xx."""

from __future__ import annotations

import pytest
from hlcopy.sim.faults import Faults


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _hits(faults: Faults, n: int, path: str = "/info") -> list[bool]:
    return [faults.http_error(path) is not None for _ in range(n)]


def test_a_fractional_http_error_hits_a_seeded_share_of_requests() -> None:
    clock = _Clock()
    faults = Faults(now=clock)
    spec = {"status": 429, "seconds": 30, "fraction": 0.1, "seed": 7, "paths": ["/info"]}
    faults.update({"http_error": spec})
    first = _hits(faults, 2000)
    assert 140 <= sum(first) <= 260  # about 10 %
    assert faults.snapshot()["http_fraction"] == 0.1
    # The same seed draws the same requests again.
    faults.update({"http_error": spec})
    assert _hits(faults, 2000) == first
    # A path the fault does not name is never hit; after the period nothing is.
    assert not any(_hits(faults, 200, "/exchange"))
    clock.t += 31
    assert not any(_hits(faults, 200))
    assert faults.http_status is None


def test_a_whole_http_error_hits_every_request_and_names_paths() -> None:
    faults = Faults(now=_Clock())
    faults.update({"http_error": {"status": 503, "seconds": 5, "paths": ["/ws"]}})
    assert all(_hits(faults, 50, "/ws"))
    assert not any(_hits(faults, 50, "/info"))
    faults.update({"clear": True})
    assert not any(_hits(faults, 50, "/ws"))
    assert faults.http_fraction == 1.0


def test_actions_applied_then_answered_with_a_gateway_error() -> None:
    faults = Faults(now=_Clock())
    assert faults.take_fail() is None
    faults.update({"exchange_fail_after_apply": {"status": 502, "count": 2}})
    assert [faults.take_fail() for _ in range(3)] == [502, 502, None]
    faults.update({"exchange_fail_after_apply": {"count": 1}, "clear": True})
    assert faults.take_fail() == 502  # clear first, then this spec
    assert faults.snapshot()["exchange_fail_count"] == 0


@pytest.mark.parametrize(
    "spec",
    [
        {"http_error": {"status": 429, "fraction": 0}},
        {"http_error": {"status": 429, "fraction": 1.5}},
        {"http_error": {"status": 429, "fraction": "0.1"}},
        {"http_error": {"status": 429, "fraction": float("nan")}},
        {"http_error": {"status": 429, "fraction": True}},
        {"http_error": {"status": 429, "seed": "7"}},
        {"exchange_fail_after_apply": {"status": 429}},
        {"exchange_fail_after_apply": {"status": 502, "count": -1}},
        {"exchange_fail_after_apply": 1},
    ],
)
def test_nonsense_is_refused_before_anything_changes(spec: dict[str, object]) -> None:
    faults = Faults(now=_Clock())
    before = faults.snapshot()
    with pytest.raises(ValueError, match=r"fraction|seed|5xx|count|status"):
        faults.update(spec)
    assert faults.snapshot() == before
