"""``@record``: frozen by type (mypy rejects a field's assignment), a value at run time."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import hlcopy
import pytest
from hlcopy.record import record
from mypy import api as mypy_api


@record
class _Point:
    x: int
    label: str = "p"
    tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)


def test_a_record_is_a_value() -> None:
    a, b = _Point(1), _Point(1)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != _Point(2)
    assert dataclasses.replace(a, x=2) == _Point(2)
    assert a.x == 1
    assert not hasattr(a, "__dict__")  # slotted: a typo cannot add a field either
    with pytest.raises(AttributeError):
        a.y = 3  # type: ignore[attr-defined]


def test_mypy_rejects_a_change_to_a_record(tmp_path: Path) -> None:
    """What keeps records unchanged is mypy --strict over hlcopy and its tests (CI runs it):
    an assignment to a field is an error, a replace() is not."""
    src = tmp_path / "uses_record.py"
    src.write_text(
        textwrap.dedent(
            """\
            from dataclasses import replace
            from decimal import Decimal
            from hlcopy.record import record

            @record
            class Order:
                sz: Decimal

            order = Order(Decimal(1))
            bigger = replace(order, sz=Decimal(2))
            order.sz = Decimal(3)
            """
        )
    )
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", str(src)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1, out
    assert len(errors) == 1, out
    assert errors[0].startswith(f"{src}:11:"), out
    assert 'Property "sz" defined in "Order" is read-only' in errors[0]


def test_hlcopy_makes_its_values_records() -> None:
    """One way to make a value: a frozen dataclass would cost the copy path its object.__setattr__
    per field (see hlcopy/record.py)."""
    root = Path(hlcopy.__file__).parent
    frozen = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*@(dataclasses\.)?dataclass\(.*frozen=True", line)
    ]
    assert frozen == [], "use @record (hlcopy/record.py) for these"
