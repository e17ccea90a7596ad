"""``hlcopy agent new`` and the checks before ``agent approve`` sends anything: key files are
made 0600 and never overwritten, addresses match eth-account's, and every bad input is one line
and exit 2 — with no network at all (the config points at a closed port)."""

from __future__ import annotations

import getpass
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from hlcopy import agent, cli
from hlcopy.credentials import load_agent_key, load_secrets
from hlcopy.errors import SecretError
from hlcopy.keys import SECP256K1_N, key_address, new_private_key
from hlcopy.log import configure_logging

from tests.conftest import make_config, write_secret

CLOSED = (
    '[network]\nname = "custom"\nrest_url = "http://127.0.0.1:9"\nws_url = "ws://127.0.0.1:9/ws"\n'
    'chain = "testnet"\n'
)


def eth_address(key: str) -> str:
    return str(Account.from_key(key).address).lower()


def new_key(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run ``hlcopy agent new path``; the key written and the address printed."""
    assert cli.main(["agent", "new", str(path)]) == 0
    out = capsys.readouterr().out
    printed = next(line for line in out.splitlines() if line.startswith("agent address: "))
    return path.read_text().strip(), printed.removeprefix("agent address: ")


@pytest.fixture(autouse=True)
def real_stderr_logs() -> Iterator[None]:
    """``agent approve`` configures logging to the stderr of the moment, a capture here: log to
    the real one after the test."""
    yield
    configure_logging("info", "json", sys.__stderr__)


@pytest.fixture(params=[0o000, 0o477])
def umask(request: pytest.FixtureRequest) -> Iterator[None]:
    """The most permissive umask, and one that would take the owner's read bit: the file must
    come out 0600 either way."""
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask")
def test_agent_new_writes_a_0600_key_and_prints_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.key"
    key, printed = new_key(path, capsys)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert key.startswith("0x")
    assert len(key) == 66
    assert printed == eth_address(key)
    # The file is what the daemon loads as its agent key.
    cfg = make_config(tmp_path / "state", account={"agent_key_file": str(path)})
    loaded = load_agent_key(cfg)
    assert loaded is not None
    assert loaded.reveal() == key


def test_agent_new_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.key"
    key, _ = new_key(path, capsys)
    assert cli.main(["agent", "new", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"agent key: {path} already exists; hlcopy never overwrites a key file\n"
    assert path.read_text().strip() == key
    # Nor through a symlink planted where the key goes (dangling or not).
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere")
    assert cli.main(["agent", "new", str(link)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_agent_new_into_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["agent", "new", str(tmp_path / "nope" / "agent.key")]) == 2
    assert capsys.readouterr().err == (
        f"agent key: the directory {tmp_path / 'nope'} does not exist\n"
    )


def test_fresh_keys_are_distinct_and_addresses_match_eth_account(tmp_path: Path) -> None:
    keys = {new_private_key() for _ in range(50)}
    assert len(keys) == 50
    for secret in keys:
        assert 0 < int.from_bytes(secret, "big") < SECP256K1_N
        assert key_address(secret) == eth_address("0x" + secret.hex())
    addresses = {agent.new_agent_key(tmp_path / f"k{i}") for i in range(3)}
    assert len(addresses) == 3


def test_approve_defaults_to_the_configured_agent_key(
    tmp_path: Path, master_file: tuple[Path, str]
) -> None:
    key = "0x" + secrets.token_hex(32)
    path = write_secret(tmp_path / "agent.key", key)
    cfg = make_config(tmp_path / "state", account={"agent_key_file": str(path)})
    master_path, master_key = master_file
    request = agent.prepare_approval(
        cfg, agent_key_file=None, agent_address=None, name="bot", master_key_file=master_path
    )
    assert (request.agent, request.name) == (eth_address(key), "bot")
    assert request.master == eth_address(master_key)
    assert request.master_key.reveal() == master_key
    assert master_key not in repr(request)


def test_account_address_must_not_be_the_agents(tmp_path: Path) -> None:
    key = "0x" + secrets.token_hex(32)
    path = write_secret(tmp_path / "agent.key", key)
    cfg = make_config(
        tmp_path / "state",
        account={"mode": "live", "address": eth_address(key), "agent_key_file": str(path)},
    )
    with pytest.raises(SecretError) as info:
        load_secrets(cfg)
    assert info.value.problems == [
        f"account.address: {eth_address(key)} is the address of the agent key in {path}; set "
        "the follower account's address (the master or sub-account that approved the agent), "
        "never the agent's"
    ]
    other = "0x" + secrets.token_hex(20)
    fine = make_config(
        tmp_path / "state",
        account={"mode": "live", "address": other, "agent_key_file": str(path)},
    )
    assert load_secrets(fine).agent_key is not None


# --- agent approve: bad input stops it before anything is read from a prompt or sent ------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hlcopy.toml"
    path.write_text(CLOSED + f'[state]\ndir = "{tmp_path / "state"}"\n')
    return path


@pytest.fixture
def master_file(tmp_path: Path) -> tuple[Path, str]:
    key = "0x" + secrets.token_hex(32)
    return write_secret(tmp_path / "master.key", key), key


def approve(config: Path, *extra: str) -> int:
    return cli.main(["agent", "approve", "--config", str(config), *extra])


def no_prompt(prompt: str = "") -> str:
    raise AssertionError("the master key was asked for")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--agent-address", "0x1234"],
            "--agent-address: must be an address: 0x followed by 40 hex digits",
        ),
        (["--agent-key", "{tmp}/missing.key"], "--agent-key: {tmp}/missing.key does not exist"),
        (
            ["--agent-address", "0x" + "ab" * 20, "--name", " padded"],
            "--name: at most 64 printable characters, no spaces around",
        ),
        ([], "give --agent-key PATH or --agent-address ADDR (no agent key is configured)"),
    ],
)
def test_bad_agent_input_is_one_line_and_exit_2_before_the_master_key_is_asked(
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: str,
) -> None:
    monkeypatch.setattr(getpass, "getpass", no_prompt)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert approve(config, *argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == expected.replace("{tmp}", str(tmp_path)) + "\n"


def test_agent_key_file_must_be_0600(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loose = write_secret(tmp_path / "agent.key", "0x" + secrets.token_hex(32), 0o644)
    assert approve(config, "--agent-key", str(loose)) == 2
    assert capsys.readouterr().err == (
        f"--agent-key: {loose} is readable by group or others (mode 0644); "
        f"fix it with: chmod 600 {loose}\n"
    )


def test_master_key_file_must_be_0600_and_never_shows(
    tmp_path: Path,
    config: Path,
    master_file: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, key = master_file
    agent_address = "0x" + secrets.token_hex(20)
    path.chmod(0o640)
    assert approve(config, "--agent-address", agent_address, "--master-key-file", str(path)) == 2
    out, err = capsys.readouterr()
    assert err == (
        f"--master-key-file: {path} is readable by group or others (mode 0640); "
        f"fix it with: chmod 600 {path}\n"
    )
    path.write_text("0x" + "zz" * 32 + "\n")
    path.chmod(0o600)
    assert approve(config, "--agent-address", agent_address, "--master-key-file", str(path)) == 2
    out, err = capsys.readouterr()
    assert err == (
        "master key: not a private key (expected 64 hex digits, optionally 0x-prefixed)\n"
    )
    assert key[2:] not in out + err


def test_the_master_cannot_approve_itself(
    config: Path, master_file: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = master_file
    master = eth_address(key)
    assert approve(config, "--agent-address", master, "--master-key-file", str(path)) == 2
    out, err = capsys.readouterr()
    assert err == (
        f"--agent-address: {master} is the master's own address; an agent is a key of its own "
        "(make one with: hlcopy agent new PATH)\n"
    )
    assert key[2:] not in out + err


def test_an_empty_prompt_is_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", eof)
    assert approve(config, "--agent-address", "0x" + "ab" * 20) == 2
    assert capsys.readouterr().err == "master key: nothing was entered\n"


def test_missing_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert approve(tmp_path / "none.toml", "--agent-address", "0x" + "ab" * 20) == 2
    assert "none.toml" in capsys.readouterr().err
