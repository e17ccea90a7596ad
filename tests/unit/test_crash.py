"""The crash harness's switch: unset it does nothing; a bad spec is refused at import."""

from __future__ import annotations

import pytest
from hlcopy.crash import POINTS, _armed


def test_unset_arms_nothing() -> None:
    assert _armed(None) == {}
    assert _armed("") == {}


def test_a_point_with_and_without_a_count() -> None:
    assert _armed("after_ack") == {"after_ack": 1}
    assert _armed("after_book:3") == {"after_book": 3}
    assert set(POINTS) == {"after_commit", "after_mark", "after_ack", "after_book"}


@pytest.mark.parametrize("spec", ["after_lunch", "after_ack:0", "after_ack:x"])
def test_nonsense_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is the point's list
        _armed(spec)
