"""Config: valid files, every error path, key paths in messages, check-config exit codes."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hlcopy.cli import main
from hlcopy.config import HlcopyConfig, changed_sections, load_config, parse_config, parse_toml
from hlcopy.errors import ConfigError
from pydantic import BaseModel, ValidationError

from tests.conftest import REPO

LEADER = "0x00000000000000000000000000000000000000aa"


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


@pytest.mark.parametrize(
    "path",
    ["hlcopy.toml.example", "config/demo.toml", "config/testnet.toml", "config/mainnet.toml"],
)
def test_shipped_configs_are_valid_and_paper(path: str) -> None:
    cfg = load_config(REPO / path)
    assert cfg.account.mode == "paper"


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.network.rest == "https://api.hyperliquid.xyz"
    assert cfg.network.is_mainnet
    assert cfg.api.host == "127.0.0.1"
    assert cfg.budget.weight_per_minute == 1200
    assert cfg.database.dsn is None
    assert cfg.account.mode == "paper"


def test_custom_network_and_chain() -> None:
    cfg = parse_config(
        {
            "network": {
                "name": "custom",
                "rest_url": "http://127.0.0.1:1/",
                "ws_url": "ws://127.0.0.1:1/ws",
                "chain": "testnet",
            }
        }
    )
    assert cfg.network.rest == "http://127.0.0.1:1"
    assert cfg.network.ws == "ws://127.0.0.1:1/ws"
    assert not cfg.network.is_mainnet


def test_follow_parsing_keeps_decimals_exact_and_lowercases_addresses() -> None:
    cfg = parse_toml(f"""
[[follow]]
leader = "{LEADER.upper().replace("0X", "0x")}"
ratio = 0.1
[[follow]]
leader = "{LEADER[:-1]}b"
name = "fixed-one"
sizing = "fixed_notional"
fixed_notional_usd = "250.50"
""")
    first, second = cfg.follow
    assert first.leader == LEADER
    assert first.ratio == Decimal("0.1")
    assert first.id == LEADER
    assert second.id == "fixed-one"
    assert second.fixed_notional_usd == Decimal("250.50")


def test_config_is_frozen() -> None:
    cfg = parse_config({})
    with pytest.raises(ValidationError):
        cfg.api.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"account": {"bogus": 1}}, "account.bogus: unknown key"),
        ({"nonsense": {}}, "nonsense: unknown key"),
        ({"api": {"port": 70000}}, "api.port: must be less than or equal to 65535"),
        ({"api": {"port": "eighty"}}, "api.port: must be a valid integer"),
        ({"account": {"mode": "yolo"}}, "account.mode: must be 'paper' or 'live'"),
        ({"budget": {"weight_per_minute": 0}}, "budget.weight_per_minute: must be greater than 0"),
        (
            {"follow": [{"leader": LEADER}, {"leader": LEADER, "ratio": 0}]},
            "follow[1].ratio: must be greater than 0",
        ),
        (
            {"follow": [{"leader": "0x123"}]},
            "follow[0].leader: must be an address: 0x followed by 40 hex digits",
        ),
        ({"follow": [{"ratio": 1}]}, "follow[0].leader: required"),
        ({"follow": [{"leader": LEADER, "name": "has space"}]}, "follow[0].name: "),
        ({"risk": {"max_daily_loss_usd": "nan"}}, "risk.max_daily_loss_usd: "),
        (
            {"tracking": {"user_fills_subscriptions": 11}},
            "tracking.user_fills_subscriptions: must be less than or equal to 10",
        ),
    ],
)
def test_schema_errors_name_the_key(data: dict[str, Any], expected: str) -> None:
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"network": {"name": "custom"}},
            [
                'network.rest_url: required when network.name = "custom"',
                'network.ws_url: required when network.name = "custom"',
                'network.chain: required when network.name = "custom"',
            ],
        ),
        (
            {
                "network": {
                    "name": "custom",
                    "rest_url": "ftp://x",
                    "ws_url": "http://x",
                    "chain": "testnet",
                }
            },
            [
                "network.rest_url: must start with http:// or https://",
                "network.ws_url: must start with ws:// or wss://",
            ],
        ),
        (
            {"network": {"rest_url": "http://x"}},
            ['network.rest_url: only used when network.name = "custom"'],
        ),
        (
            {"database": {"dsn": "postgresql://u:hunter2@db/x"}},
            [
                "database.dsn: must not contain a password; use database.password_file, "
                "the systemd credential db-password, or peer authentication"
            ],
        ),
        ({"database": {"dsn": "mysql://x"}}, ["database.dsn: must start with postgresql://"]),
        (
            {"database": {"password_file": "/x"}},
            ["database.password_file: only used with database.dsn"],
        ),
        (
            {"database": {"pool_min_size": 9, "pool_max_size": 2}},
            ["database.pool_min_size: must not exceed database.pool_max_size"],
        ),
        ({"account": {"mode": "live"}}, ['account.address: required when account.mode = "live"']),
        (
            {"follow": [{"leader": LEADER, "sizing": "fixed_notional"}]},
            ['follow[0].fixed_notional_usd: required when sizing = "fixed_notional"'],
        ),
        (
            {"follow": [{"leader": LEADER, "fixed_notional_usd": 5}]},
            ['follow[0].fixed_notional_usd: only used when sizing = "fixed_notional"'],
        ),
        (
            {"follow": [{"leader": LEADER, "coins": ["BTC", "ETH"], "exclude_coins": ["ETH"]}]},
            ["follow[0].exclude_coins: also listed in coins: ETH"],
        ),
        (
            {"account": {"address": LEADER}, "follow": [{"leader": LEADER}]},
            ["follow[0].leader: is the follower's own account"],
        ),
        (
            {"follow": [{"leader": LEADER}, {"leader": LEADER}]},
            [f"follow[1].name: follow id '{LEADER}' already used by follow[0]"],
        ),
    ],
)
def test_rule_errors_name_the_key(data: dict[str, Any], expected: list[str]) -> None:
    assert problems(data) == expected


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"api": {"port": -1, "host": 5}, "account": {"mode": "x"}, "extra": 1})
    assert len(found) == 4


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[api]\nport = 8080\nhost = "unterminated\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert re.match(r"line 3, column \d+: TOML syntax error: ", problem), problem
    assert info.value.source == str(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.toml")


def test_changed_sections() -> None:
    old = parse_config({})
    new = parse_config({"logging": {"level": "debug"}, "api": {"port": 9}})
    assert changed_sections(old, new) == ["api", "logging"]


def _fields(model: type[BaseModel]) -> list[tuple[str, Any]]:
    return list(model.model_fields.items())


def _section_model(name: str) -> type[BaseModel]:
    annotation = HlcopyConfig.model_fields[name].annotation
    if name in ("follow", "auto_follow"):  # lists of tables
        return annotation.__args__[0]  # type: ignore[union-attr,no-any-return]
    return annotation  # type: ignore[return-value]


def test_every_field_has_a_docstring() -> None:
    undocumented = []
    for section_name, section in _fields(HlcopyConfig):
        assert section.description, section_name
        for name, field in _fields(_section_model(section_name)):
            if not field.description:
                undocumented.append(f"{section_name}.{name}")
    assert undocumented == []


def test_example_documents_every_key() -> None:
    text = (REPO / "hlcopy.toml.example").read_text()
    # Uncomment every "# key = value" line so the example parses with all keys present.
    uncommented = re.sub(r"(?m)^# ?(\w+ = )", r"\1", text)
    # ... and every commented table header ("# [[follow]]", "# [auto_follow.template]").
    uncommented = re.sub(r"(?m)^# (\[\[?[\w.]+\]\]?)(\s+#.*)?$", r"\1", uncommented)
    data = tomllib.loads(uncommented)
    missing = []
    for section_name, _ in _fields(HlcopyConfig):
        table = data.get(section_name, {})
        if section_name in ("follow", "auto_follow"):
            table = data[section_name][0]
        for name, _ in _fields(_section_model(section_name)):
            if name not in table:
                missing.append(f"{section_name}.{name}")
    assert missing == []
    # The template takes the follow's keys (bar leader, name, mode), all documented above.
    assert set(data["auto_follow"][0]["template"]) <= set(data["follow"][0]) - {"mode"}


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(REPO / "hlcopy.toml.example")]) == 0
    assert "ok" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[[follow]]\nleader = "{LEADER}"\n[[follow]]\nleader = "{LEADER[:-1]}b"\nratio = -1\n'
    )
    assert main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().out.splitlines() == ["follow[1].ratio: must be greater than 0"]

    broken = tmp_path / "broken.toml"
    broken.write_text("[api\n")
    assert main(["check-config", str(broken)]) == 2
    assert capsys.readouterr().out.startswith("line 1, column")


def test_check_config_refuses_an_open_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agent_key: str
) -> None:
    key = tmp_path / "agent.key"
    key.write_text(agent_key)
    key.chmod(0o644)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[account]\nagent_key_file = "{key}"\n[state]\ndir = "{tmp_path}"\n')
    assert main(["check-config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "account.agent_key_file" in out
    assert "chmod 600" in out
    assert agent_key not in out
