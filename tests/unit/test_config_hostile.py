"""Config input a hostile tester or a careless operator would try: strict types, finite numbers,
passwords hidden in DSNs, unsafe hosts, odd files, and generated junk that must never crash."""

from __future__ import annotations

import asyncio
import os
import string
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hlcopy.cli import main
from hlcopy.config import HlcopyConfig, load_config, load_config_async, parse_config, parse_toml
from hlcopy.credentials import load_api_token
from hlcopy.errors import ConfigError, SecretError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import write_secret


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"api": {"port": "8080"}}, "api.port"),
        ({"api": {"port": 8080.0}}, "api.port"),
        ({"api": {"read_auth": "yes"}}, "api.read_auth"),
        ({"api": {"read_auth": 1}}, "api.read_auth"),
        ({"network": {"request_timeout_s": "10"}}, "network.request_timeout_s"),
        ({"logging": {"level": 3}}, "logging.level"),
        ({"state": {"dir": 5}}, "state.dir"),
        ({"risk": {"max_daily_loss_usd": True}}, "risk.max_daily_loss_usd"),
        ({"risk": {"max_daily_loss_usd": "lots"}}, "risk.max_daily_loss_usd"),
        ({"discovery": {"coins": "BTC"}}, "discovery.coins"),
    ],
)
def test_no_silent_coercion(data: dict[str, Any], key: str) -> None:
    assert any(p.startswith(f"{key}: ") for p in problems(data)), problems(data)


def test_numbers_that_toml_gives_as_int_or_float_are_fine() -> None:
    cfg = parse_config(
        {
            "network": {"request_timeout_s": 10},  # an int where seconds are a float
            "risk": {"max_leverage": 3, "max_daily_loss_usd": 250.5},
            "account": {"paper_equity_usd": "1000.25"},
        }
    )
    assert cfg.network.request_timeout_s == 10.0
    assert str(cfg.risk.max_leverage) == "3"
    assert str(cfg.risk.max_daily_loss_usd) == "250.5"
    assert str(cfg.account.paper_equity_usd) == "1000.25"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    "key",
    [
        "network.request_timeout_s",
        "tracking.reconcile_interval_s",
        "budget.headroom_pct",
        "risk.max_daily_loss_usd",
        "risk.max_leverage",
    ],
)
def test_only_finite_numbers(key: str, value: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        parse_toml(f"[{section}]\n{name} = {value}\n")
    assert any(p.startswith(f"{key}: ") for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://hl:secret@db/hlcopy",
        "postgresql://db/hlcopy?password=secret",
        "postgresql://db/hlcopy?sslmode=require&PASSWORD=secret",
        "postgres://:secret@/hlcopy?host=/run/postgresql",
        "postgresql://[::1/hlcopy",  # unparseable: refused rather than guessed at
    ],
)
def test_a_password_in_the_dsn_is_refused_in_any_form(dsn: str) -> None:
    assert any(
        p.startswith("database.dsn: must not contain a password")
        for p in problems({"database": {"dsn": dsn}})
    )


@pytest.mark.parametrize(
    "dsn", ["postgresql://hl@db/hlcopy", "postgresql://postgres:@/db?host=/tmp/x&sslmode=disable"]
)
def test_a_dsn_without_a_password_is_fine(dsn: str) -> None:
    assert parse_config({"database": {"dsn": dsn}}).database.dsn == dsn


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])  # noqa: S104
def test_binding_every_interface_needs_read_auth_and_allow_public(host: str) -> None:
    for api in ({}, {"read_auth": True}, {"allow_public": True}):
        found = problems({"api": {"host": host, **api}})
        assert any(p.startswith("api.host: ") and "every interface" in p for p in found), found
    cfg = parse_config({"api": {"host": host, "read_auth": True, "allow_public": True}})
    assert cfg.api.host == host


@pytest.mark.parametrize("host", ["example.com", "127.0.0.1:8080", "999.1.1.1", " 127.0.0.1"])
def test_api_host_must_be_an_address(host: str) -> None:
    assert any(
        p.startswith("api.host: must be an IP address") for p in problems({"api": {"host": host}})
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "10.0.0.5"])
def test_valid_api_hosts(host: str) -> None:
    assert parse_config({"api": {"host": host}}).api.host == host


def test_deeply_nested_toml_is_a_config_error_not_a_recursion_error() -> None:
    for text in ("x = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 3000 + "1" + "}" * 3000):
        with pytest.raises(ConfigError) as info:
            parse_toml(text)
        assert "nested too deeply" in info.value.problems[0]


def test_deep_nesting_inside_a_valid_key_is_refused_cleanly() -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml("[discovery]\ncoins = " + "[" * 400 + "]" * 400 + "\n")
    assert info.value.problems[0].startswith("discovery.coins")


def test_paths_with_nul_are_refused() -> None:
    assert any(p.startswith("state.dir: ") for p in problems({"state": {"dir": "a\x00b"}}))


def test_a_fifo_at_the_config_path_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "hlcopy.toml"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe[api]", "not UTF-8"), (b"#" * (1024 * 1024 + 1), "larger than")],
)
def test_odd_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "hlcopy.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)


async def test_a_load_that_hangs_is_given_up_after_the_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    def stuck(path: str | os.PathLike[str]) -> HlcopyConfig:
        release.wait(30)  # a read on a hung file system
        return parse_config({})

    t0 = asyncio.get_running_loop().time()
    try:
        with pytest.raises(ConfigError, match=r"no answer within 0\.2 s"):
            await load_config_async(tmp_path / "x.toml", 0.2, loader=stuck)
    finally:
        release.set()
    assert asyncio.get_running_loop().time() - t0 < 2


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("abcdefghijklmnop qrstuv", "one line of visible ASCII"),
        ("abcdefghijklmnopqrstuv\nsecond-line-here", "one line of visible ASCII"),
        ("abcdefghijklmnopqrstuvé", "one line of visible ASCII"),
        ('abcdefghij"klmnopqrstuv', "one line of visible ASCII"),
    ],
)
def test_token_must_be_one_header_safe_line(tmp_path: Path, token: str, message: str) -> None:
    path = write_secret(tmp_path / "token", token)
    cfg = parse_config({"state": {"dir": str(tmp_path)}, "api": {"token_file": str(path)}})
    with pytest.raises(SecretError, match=message):
        load_api_token(cfg)


# -- generated junk: check-config always answers 0 or 2 with lines, never a traceback ---------

_KEYS = [
    "network.name",
    "network.request_timeout_s",
    "api.port",
    "api.host",
    "api.read_auth",
    "database.dsn",
    "database.pool_max_size",
    "budget.weight_per_minute",
    "risk.max_leverage",
    "risk.max_drawdown_pct",
    "tracking.reconcile_interval_s",
    "discovery.coins",
    "state.dir",
    "logging.level",
]

_scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["inf", "nan", "1e999999", "8080", "yes", "0.0.0.0", "\x00", "-1"]),  # noqa: S104
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    escaped = "".join(
        c if c in string.printable and c not in '"\\\r\n\t\x0b\x0c' else f"\\u{ord(c):04x}"
        for c in str(value)
    )
    return f'"{escaped}"'


@st.composite
def junk_documents(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["values", "nesting", "bytes", "tables"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)).decode("latin-1")
    if kind == "nesting":
        depth = draw(st.integers(min_value=50, max_value=4000))
        opener = draw(st.sampled_from(["[", "{a = "]))
        closer = "]" if opener == "[" else "}"
        return "x = " + opener * depth + closer * depth
    if kind == "tables":
        return draw(st.sampled_from(["[[follow]]\n" * 3, "[api]\n[api]\n", "[[api]]\n", "]["]))
    lines: dict[str, list[str]] = {}
    for key in draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=6, unique=True)):
        section, name = key.split(".")
        value = draw(st.one_of(_scalars, st.lists(_scalars, max_size=3)))
        if isinstance(value, list):
            text = "[" + ", ".join(_toml_value(v) for v in value) + "]"
        else:
            text = _toml_value(value)
        lines.setdefault(section, []).append(f"{name} = {text}")
    return "".join(f"[{sec}]\n" + "\n".join(body) + "\n" for sec, body in lines.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk_documents())
def test_generated_junk_never_escapes_as_anything_but_a_config_error(text: str) -> None:
    def outcome() -> list[str] | None:
        try:
            parse_toml(text)
        except ConfigError as exc:
            return exc.problems
        return None

    found = outcome()
    assert found is None or (found and all(isinstance(p, str) and p for p in found))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk_documents())
def test_check_config_on_junk_exits_0_or_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "junk.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    code = main(["check-config", str(path)])
    out = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in out.out + out.err
    if code == 2:
        assert out.out.strip()
