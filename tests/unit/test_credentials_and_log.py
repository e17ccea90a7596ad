"""Secrets come from 0600 files or systemd credentials, and never reach a log line."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import orjson
import pytest
import structlog
from hlcopy.credentials import (
    Secret,
    check_secrets,
    load_agent_key,
    load_api_token,
    load_secrets,
)
from hlcopy.errors import SecretError
from hlcopy.log import REDACTED, configure_logging, register_secret, set_level

from tests.conftest import make_config, write_secret


def test_secret_never_shows_itself() -> None:
    s = Secret("hunter2-hunter2")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2-hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_agent_key_from_0600_file_is_normalised(tmp_path: Path, agent_key: str) -> None:
    path = write_secret(tmp_path / "k", agent_key[2:].upper())
    cfg = make_config(tmp_path, account={"agent_key_file": str(path)})
    key = load_agent_key(cfg)
    assert key is not None
    assert key.reveal() == agent_key.lower()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, agent_key: str, mode: int) -> None:
    path = write_secret(tmp_path / "k", agent_key, mode)
    cfg = make_config(tmp_path, account={"agent_key_file": str(path)})
    with pytest.raises(SecretError) as info:
        load_agent_key(cfg)
    (problem,) = info.value.problems
    assert problem.startswith("account.agent_key_file: ")
    assert f"mode {mode:04o}" in problem
    assert f"chmod 600 {path}" in problem
    assert agent_key not in problem


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("0x1234", "not a private key"),
        ("0x" + "0" * 64, "not a private key"),
        ("zz" * 32, "not a private key"),
    ],
)
def test_malformed_keys(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    path.chmod(0o600)
    cfg = make_config(tmp_path, account={"agent_key_file": str(path)})
    with pytest.raises(SecretError, match=expected):
        load_agent_key(cfg)


def test_missing_key_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, account={"agent_key_file": str(tmp_path / "nope")})
    with pytest.raises(SecretError, match="does not exist"):
        load_agent_key(cfg)


def test_live_mode_needs_a_key(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, account={"mode": "live", "address": "0x" + "1" * 40})
    with pytest.raises(SecretError, match="live mode needs the agent key"):
        load_agent_key(cfg)
    assert load_agent_key(make_config(tmp_path)) is None  # paper mode: fine without


def test_systemd_credentials_directory(
    tmp_path: Path, agent_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write_secret(creds / "hl-agent", agent_key, 0o400)
    write_secret(creds / "api-token", "t" * 40, 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    loaded = load_secrets(make_config(tmp_path / "state"))
    assert loaded.agent_key is not None
    assert loaded.agent_key.reveal() == agent_key
    assert loaded.api_token.reveal() == "t" * 40
    assert not (tmp_path / "state" / "api-token").exists()


def test_api_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert check_secrets(cfg) == []
    assert not (tmp_path / "api-token").exists()  # checking creates nothing
    first = load_api_token(cfg)
    second = load_api_token(cfg)
    assert first is not None
    assert second is not None
    assert first.reveal() == second.reveal()
    assert len(first.reveal()) >= 32
    assert (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600


def test_short_api_token_refused(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "t", "short")
    with pytest.raises(SecretError, match="shorter than 16"):
        load_api_token(make_config(tmp_path, api={"token_file": str(path)}))


def test_all_secret_problems_reported_together(tmp_path: Path, agent_key: str) -> None:
    key = write_secret(tmp_path / "k", agent_key, 0o644)
    token = write_secret(tmp_path / "t", "x" * 20, 0o644)
    cfg = make_config(
        tmp_path, account={"agent_key_file": str(key)}, api={"token_file": str(token)}
    )
    with pytest.raises(SecretError) as info:
        load_secrets(cfg)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "account.agent_key_file",
        "api.token_file",
    ]


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_registered_secret_never_appears_in_logs(log_stream: io.StringIO, agent_key: str) -> None:
    register_secret(Secret(agent_key))
    log = structlog.get_logger()
    log.info(
        f"loaded {agent_key}", nested={"deep": [f"k={agent_key[2:]}"]}, upper=agent_key.upper()
    )
    try:
        raise RuntimeError(f"bad key {agent_key}")
    except RuntimeError:
        log.exception("failed")
    log.info(
        "sensitive names", private_key="whatever", password="pw", secret_obj=Secret("abcdefgh")
    )
    logging.getLogger("aiohttp.client").warning("foreign %s", agent_key)
    text = log_stream.getvalue()
    assert agent_key not in text
    assert agent_key[2:] not in text
    assert agent_key[2:].upper() not in text
    assert "abcdefgh" not in text
    assert '"pw"' not in text
    lines = _lines(log_stream)
    assert len(lines) == 4
    assert lines[0]["event"] == f"loaded {REDACTED}"
    assert "RuntimeError" in str(lines[1]["exception"])
    assert REDACTED in str(lines[1]["exception"])
    assert lines[2]["private_key"] == REDACTED
    assert lines[3]["event"] == f"foreign {REDACTED}"


def test_json_lines_start_with_time_level_event(log_stream: io.StringIO) -> None:
    structlog.get_logger().info("hello", b=1)
    (line,) = log_stream.getvalue().splitlines()
    assert list(orjson.loads(line))[:3] == ["timestamp", "level", "event"]


def test_set_level_filters(log_stream: io.StringIO) -> None:
    set_level("warning")
    structlog.get_logger().info("hidden")
    structlog.get_logger().warning("shown")
    assert [e["event"] for e in _lines(log_stream)] == ["shown"]


def test_console_format() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    structlog.get_logger().info("for people", n=1)
    assert "for people" in stream.getvalue()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(stream.getvalue())
