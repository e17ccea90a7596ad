"""``@record``: a value that never changes once made (a fill, an order intent, a view, a setting),
frozen by type rather than at run time.

mypy --strict, which CI runs over hlcopy and its tests, rejects an assignment to a record's
field as it would for ``@dataclass(frozen=True)``; ``dataclasses.replace`` makes a changed copy.
At run time a record is a slotted dataclass, equal and hashed by value. Why not frozen at run
time: a frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``, and a
leader's fill makes about ten records (some eighty fields) between its frame and the order. In
``hlcopy bench decide`` that was about a fifth of the path's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from typing_extensions import dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """The class as a record (see the module docstring)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
