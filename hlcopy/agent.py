"""The API (agent) wallet hlcopy trades with: make one, and have the account approve it.

An agent key signs orders for the account but cannot move its funds, so it is the only key
hlcopy keeps. The account's own (master) key is needed once, to sign ``approveAgent``: it is
read from a 0600 file or a hidden prompt, held in memory for that one signature, and never
written, printed or logged. The approval is then confirmed from the exchange itself, with
``extraAgents`` of the master (named agents) or ``userRole`` of the agent (the unnamed one, which
``extraAgents`` does not list).

The CLI (``hlcopy agent new|approve``) is a thin shell over these functions; every bad input is
a ``ConfigError`` (``SecretError`` for key files) with one line per problem.
"""

from __future__ import annotations

import getpass
from pathlib import Path

from hlcopy.budget import WeightBudget
from hlcopy.clock import SYSTEM, Clock
from hlcopy.config import HlcopyConfig, NetworkConfig
from hlcopy.credentials import (
    Secret,
    create_secret_file,
    load_agent_key,
    normalise_private_key,
    read_secret_file,
)
from hlcopy.errors import AmbiguousOutcome, ConfigError, ExchangeTransient, SecretError
from hlcopy.hl import ExchangeClient, InfoClient, Signer, new_session
from hlcopy.keys import key_address, new_private_key, parse_address, parse_private_key
from hlcopy.record import record

MAX_NAME_CHARS = 64
CONFIRM_WAIT_S = 30.0
CONFIRM_POLL_S = 1.0
PROMPT = "master (account) private key, hidden, never stored: "


def new_agent_key(path: Path) -> str:
    """Write a fresh agent key to ``path`` (mode 0600, never over an existing file) and return
    its address."""
    secret = new_private_key()
    create_secret_file(path, "0x" + secret.hex(), "agent key")
    return key_address(secret)


def agent_address_of_key_file(path: Path) -> str:
    """The address of the agent key in ``path`` (which must be a 0600 key file)."""
    key = normalise_private_key(read_secret_file(path, "--agent-key").reveal(), "--agent-key")
    return key_address(parse_private_key(key.reveal()))


def check_agent_address(value: str) -> str:
    """``value`` as an address, lowercase; ConfigError naming the option otherwise."""
    try:
        return parse_address(value)
    except ValueError as exc:
        raise ConfigError([f"--agent-address: {exc}"]) from None


def check_name(name: str) -> str:
    """An agent name: empty (the one unnamed agent) or up to 64 visible characters."""
    if len(name) > MAX_NAME_CHARS or not name.isprintable() or name != name.strip():
        raise ConfigError(
            [f"--name: at most {MAX_NAME_CHARS} printable characters, no spaces around"]
        )
    return name


def read_master_key(path: Path | None) -> Secret:
    """The master key from a 0600 file, or typed at a hidden prompt when ``path`` is None."""
    if path is not None:
        raw = read_secret_file(path, "--master-key-file")
    else:
        try:
            raw = Secret(getpass.getpass(PROMPT))
        except EOFError:
            raise SecretError(["master key: nothing was entered"]) from None
    return normalise_private_key(raw.reveal(), "master key")


@record
class ApprovalRequest:
    """What ``hlcopy agent approve`` was asked to do, its inputs checked."""

    agent: str
    name: str
    master: str
    master_key: Secret


def prepare_approval(
    cfg: HlcopyConfig,
    *,
    agent_key_file: Path | None,
    agent_address: str | None,
    name: str,
    master_key_file: Path | None,
) -> ApprovalRequest:
    """Check every input, the master key last: nobody types it for a command bound to fail.

    The agent is given by its key file or its address; with neither, the configured agent key
    (``account.agent_key_file`` or the systemd credential) is used.
    """
    name = check_name(name)
    if agent_address is not None:
        agent = check_agent_address(agent_address)
    elif agent_key_file is not None:
        agent = agent_address_of_key_file(agent_key_file)
    else:
        configured = load_agent_key(cfg)
        if configured is None:
            raise ConfigError(
                ["give --agent-key PATH or --agent-address ADDR (no agent key is configured)"]
            )
        agent = key_address(parse_private_key(configured.reveal()))
    master_key = read_master_key(master_key_file)
    master = key_address(parse_private_key(master_key.reveal()))
    if agent == master:
        raise ConfigError(
            [
                f"--agent-address: {agent} is the master's own address; an agent is a key of "
                "its own (make one with: hlcopy agent new PATH)"
            ]
        )
    return ApprovalRequest(agent, name, master, master_key)


@record
class Approval:
    """What the exchange says after an approval was sent."""

    master: str
    agent: str
    name: str
    confirmed: bool
    reply_lost: bool  # the reply never came; the approval may still have landed
    valid_until_ms: int | None = None


async def approve_agent(
    network: NetworkConfig,
    master_key: Secret,
    agent: str,
    name: str,
    *,
    wait_s: float = CONFIRM_WAIT_S,
    poll_s: float = CONFIRM_POLL_S,
    clock: Clock = SYSTEM,
) -> Approval:
    """Sign ``approveAgent`` with the master key, send it once, and wait up to ``wait_s`` for
    the exchange to list the agent.

    A refusal raises (``Rejected``, ``BadRequest``, ``ExchangeTransient`` when nothing was
    sent). A lost reply is not a refusal: the approval may have landed, and the confirmation
    poll says whether it did. The action is never sent twice.
    """
    master = Signer.from_key(master_key.reveal())
    agent = parse_address(agent)
    async with new_session(network.request_timeout_s) as session:
        budget = WeightBudget()
        exchange = ExchangeClient(
            session, network.rest, master, budget, is_mainnet=network.is_mainnet
        )
        info = InfoClient(session, network.rest, budget)
        reply_lost = False
        try:
            await exchange.approve_agent(master, agent, name or None)
        except AmbiguousOutcome:
            reply_lost = True
        deadline = clock.monotonic() + wait_s
        while True:
            try:
                found, valid_until_ms = await _listed(info, master.address, agent, name)
            except ExchangeTransient:
                found, valid_until_ms = False, None  # unknown, not "no": ask again
            if found or clock.monotonic() >= deadline:
                return Approval(master.address, agent, name, found, reply_lost, valid_until_ms)
            await clock.sleep(poll_s)


async def _listed(info: InfoClient, master: str, agent: str, name: str) -> tuple[bool, int | None]:
    """Whether the exchange has ``agent`` approved for ``master``, and until when."""
    if name:
        for listed in await info.extra_agents(master):
            if listed.address == agent:
                return True, listed.valid_until_ms
        return False, None
    role = await info.user_role(agent)
    return role.role == "agent" and role.master == master, None
