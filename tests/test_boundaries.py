"""The seams hold: hl/'s public API speaks domain types only, nothing reaches past it, the
supervisor knows nothing of what it supervises, and time is read in one place."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hlcopy.hl as hl
import hlcopy.model as model

from tests.conftest import REPO

PACKAGE = REPO / "hlcopy"
# Figures for the API's JSON, not exchange data: their dicts are meant to be open.
FIGURES = {"stats"}


def _annotations(func: Callable[..., object]) -> dict[str, Any]:
    namespace = {**vars(model), **{name: getattr(hl, name) for name in hl.__all__}}
    return typing.get_type_hints(func, localns=namespace)


def _mentions_any(tp: Any) -> bool:
    if tp is Any:
        return True
    return any(_mentions_any(arg) for arg in typing.get_args(tp))


def _public_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    for name in hl.__all__:
        obj = getattr(hl, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            for attr, member in inspect.getmembers(obj):
                if attr.startswith("_") and attr != "__init__":
                    continue
                if attr in FIGURES:
                    continue
                if isinstance(member, property) and member.fget is not None:
                    yield f"{name}.{attr}", member.fget
                elif inspect.isfunction(member) and member.__qualname__.startswith(obj.__name__):
                    yield f"{name}.{attr}", member


def test_the_public_api_of_hl_takes_and_returns_no_any_and_no_wire_dict() -> None:
    found = dict(_public_callables())
    # The list is the API: a change to it is a change of the seam, made on purpose.
    assert {
        "ExchangeClient.place",
        "ExchangeClient.send_orders",
        "ActionSigner.orders",
        "InfoClient.clearinghouse_state",
        "InfoClient.user_fills_by_time",
        "StreamPool.trades",
        "StreamPool.user_fills",
        "StreamPool.order_updates",
        "StreamPool.l2_book",
        "StreamPool.all_mids",
        "round_price",
    } <= set(found)
    offenders = {
        name: {k: v for k, v in _annotations(func).items() if _mentions_any(v)}
        for name, func in found.items()
    }
    offenders = {name: bad for name, bad in offenders.items() if bad}
    assert offenders == {}


def _python_files(root: Path) -> Iterator[Path]:
    yield from sorted(root.rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_nothing_outside_hl_reaches_past_its_exports() -> None:
    # The simulator is an exchange and the signing benchmark measures hl's edge: both may.
    allowed_inside = ("hl/", "sim/", "bench.py")
    offenders = []
    for path in _python_files(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(allowed_inside):
            continue
        for module, names in _imports(path):
            if module.startswith("hlcopy.hl."):
                offenders.append(f"{rel}: from {module} import {', '.join(names)}")
            elif module == "hlcopy.hl":
                offenders += [f"{rel}: {n} is not exported" for n in names if n not in hl.__all__]
    assert offenders == []


def test_the_supervisor_imports_nothing_it_supervises() -> None:
    modules = [m for m, _ in _imports(PACKAGE / "daemon.py")]
    bad = [
        m
        for m in modules
        if m.startswith(("hlcopy.hl", "hlcopy.store", "hlcopy.api", "hlcopy.sim"))
    ]
    assert bad == []


def test_time_is_read_only_by_the_clock_and_the_simulator() -> None:
    pattern = re.compile(r"time\.monotonic|time\.time|time_ns")
    offenders = []
    for path in _python_files(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "clock.py" or rel.startswith("sim/"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []
