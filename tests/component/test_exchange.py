"""The /exchange client: every response and error shape, and how each outcome is classified."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hlcopy.budget import WeightBudget
from hlcopy.clock import VirtualClock
from hlcopy.errors import (
    AmbiguousOutcome,
    BadRequest,
    ExchangeTransient,
    RateLimited,
    Rejected,
    Unavailable,
    WireError,
)
from hlcopy.hl import ExchangeClient, NonceSource, Signer, action_weight, wire
from hlcopy.hl.signing import recover_digest_signer, recover_l1_signer, user_signed_digest
from hlcopy.model import Asset, CancelStatus, OrderSpec, OrderStatus

from tests.scripted_server import ScriptedServer, scripted_server

D = Decimal
VAULT = "0x" + "5a" * 20
# Asset id 4, as in the exchange's error messages below ("... asset=4").
ASSET = Asset("ETH", asset_id=4, sz_decimals=4, max_leverage=50)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with scripted_server() as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
        yield s


@pytest.fixture
def signer() -> Signer:
    return Signer.from_key("0x" + secrets.token_hex(32))


def client(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer, **kwargs: Any
) -> tuple[ExchangeClient, WeightBudget]:
    budget = WeightBudget(1200, 10)
    ex = ExchangeClient(
        session,
        server.url,
        signer,
        budget,
        is_mainnet=False,
        nonces=NonceSource(VirtualClock(epoch_ms=1_700_000_000_000)),
        **kwargs,
    )
    return ex, budget


def specs(n: int) -> list[OrderSpec]:
    return [OrderSpec(ASSET, True, D("1670.1"), D("0.0147"), cloid=f"0x{i:032x}") for i in range(n)]


def orders(n: int) -> list[dict[str, Any]]:
    """The wire orders ``specs(n)`` must become (the price and size are already valid)."""
    return [
        wire.order_wire(4, True, D("1670.1"), D("0.0147"), False, "Ioc", f"0x{i:032x}")
        for i in range(n)
    ]


def ok(kind: str, statuses: list[Any]) -> tuple[int, Any]:
    return 200, {"status": "ok", "response": {"type": kind, "data": {"statuses": statuses}}}


async def test_order_statuses_and_the_signed_body(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    ex, budget = client(server, session, signer, vault_address=VAULT)
    server.then(
        ok(
            "order",
            [
                {"resting": {"oid": 77738308, "cloid": "0x" + "00" * 15 + "00"}},
                {"filled": {"totalSz": "0.02", "avgPx": "1891.4", "oid": 77747314}},
                {"error": "Order must have minimum value of $10. asset=4"},
                "waitingForFill",
                "waitingForTrigger",
            ],
        )
    )
    statuses = await ex.place(specs(5), expires_after=1_700_000_010_000)
    assert statuses == [
        OrderStatus("resting", oid=77738308, cloid="0x" + "00" * 16),
        OrderStatus("filled", oid=77747314, total_sz=D("0.02"), avg_px=D("1891.4")),
        OrderStatus("error", error="Order must have minimum value of $10."),
        OrderStatus("waitingForFill"),
        OrderStatus("waitingForTrigger"),
    ]
    assert [s.accepted for s in statuses] == [True, True, False, True, True]
    (body,) = server.bodies("/exchange")
    assert list(body) == ["action", "nonce", "signature", "vaultAddress", "expiresAfter"]
    assert body["nonce"] == 1_700_000_000_000
    assert body["vaultAddress"] == VAULT
    assert body["expiresAfter"] == 1_700_000_010_000
    assert body["action"] == wire.order_action(orders(5))
    assert (
        recover_l1_signer(
            body["action"], VAULT, body["nonce"], body["expiresAfter"], False, body["signature"]
        )
        == signer.address
    )
    assert budget.stats()["lanes"]["order"]["weight_total"] == 1


async def test_orders_are_rounded_the_safe_way_inside_hl(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    ex, _ = client(server, session, signer)
    server.then(ok("order", [{"resting": {"oid": 1}}, {"resting": {"oid": 2}}]))
    await ex.place(
        [
            OrderSpec(ASSET, True, D("1670.1299"), D("0.01479"), tif="Gtc"),
            OrderSpec(ASSET, False, D("1670.1201"), D("0.01471"), tif="Gtc"),
        ]
    )
    (body,) = server.bodies("/exchange")
    buy, sell = body["action"]["orders"]
    # Five significant figures; sizes down to the lot. A buy never pays more than asked...
    assert (buy["p"], buy["s"]) == ("1670.1", "0.0147")
    assert (sell["p"], sell["s"]) == ("1670.2", "0.0147")  # ...and a sell never takes less.
    with pytest.raises(WireError, match="less than one lot"):
        ex.actions.orders([OrderSpec(ASSET, True, D("1670"), D("0.00009"))])
    with pytest.raises(WireError, match="delisted"):
        ex.actions.orders([OrderSpec(Asset("OLD", 9, 2, 3, delisted=True), True, D(1), D(1))])
    with pytest.raises(WireError, match="leverage"):
        ex.actions.update_leverage(ASSET, 51, is_cross=True)
    assert len(server.bodies("/exchange")) == 1  # refused before anything was sent


async def test_a_whole_batch_error_fans_out_to_every_order(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    ex, _ = client(server, session, signer)
    msg = "Order price cannot be more than 80% away from the reference price"
    server.then(ok("order", [{"error": msg}]))
    statuses = await ex.place(specs(3))
    assert statuses == [OrderStatus("error", error=msg)] * 3


async def test_status_err_is_a_definite_rejection(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    ex, _ = client(server, session, signer)
    for message in (
        "Invalid nonce: duplicate nonce 1700000000000",
        "User or API Wallet 0x123 does not exist.",
        "Too many cumulative requests sent (97460 > 97456) for cumulative volume "
        "traded $87457.46. Place taker orders to free up 1 request per USDC traded.",
        "Action already expired",
    ):
        server.then((200, {"status": "err", "response": message}))
        with pytest.raises(Rejected) as info:
            await ex.place(specs(1))
        assert str(info.value) == message
    assert ex.outcomes["rejected"] == 4


async def test_default_responses_and_cancels(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    ex, _ = client(server, session, signer)
    await ex.update_leverage(ASSET, 10, is_cross=True)
    await ex.schedule_cancel(1_700_000_100_000)
    await ex.schedule_cancel(None)
    await ex.noop(nonce=1_700_000_000_000)  # a chosen nonce: the fence for an in-flight order
    missing = "Order was never placed, already canceled, or filled. asset=4"
    server.then(ok("cancel", ["success", {"error": missing}]))
    assert await ex.cancel([(ASSET, 1), (ASSET, 2)]) == [
        CancelStatus(True),
        CancelStatus(False, "Order was never placed, already canceled, or filled."),
    ]
    server.then(ok("cancel", ["success"]))
    assert await ex.cancel_by_cloid([(ASSET, "0x" + "01" * 16)]) == [CancelStatus(True)]
    actions = [b["action"] for b in server.bodies("/exchange")]
    assert actions[:4] == [
        {"type": "updateLeverage", "asset": 4, "isCross": True, "leverage": 10},
        {"type": "scheduleCancel", "time": 1_700_000_100_000},
        {"type": "scheduleCancel"},
        {"type": "noop"},
    ]
    nonces = [b["nonce"] for b in server.bodies("/exchange")]
    assert nonces[3] == 1_700_000_000_000
    assert len(set(nonces[:3] + nonces[4:])) == len(nonces) - 1  # our own nonces never repeat


@pytest.mark.parametrize(
    ("reply", "error", "kind"),
    [
        ((429, b"null"), RateLimited, "transient"),
        ((500, b"internal"), AmbiguousOutcome, "ambiguous"),
        ((502, b"<html>bad gateway"), AmbiguousOutcome, "ambiguous"),
        (
            (422, b"Failed to deserialize the JSON body into the target type"),
            BadRequest,
            "rejected",
        ),
        ((200, b"not json"), AmbiguousOutcome, "ambiguous"),
        ((200, {"status": "weird"}), AmbiguousOutcome, "ambiguous"),
        ((200, {"status": "ok", "response": {"type": "order"}}), AmbiguousOutcome, "ambiguous"),
        ("timeout", AmbiguousOutcome, "ambiguous"),
        ("disconnect", AmbiguousOutcome, "ambiguous"),
    ],
)
async def test_error_classification(
    server: ScriptedServer,
    session: aiohttp.ClientSession,
    signer: Signer,
    reply: Any,
    error: type[Exception],
    kind: str,
) -> None:
    ex, budget = client(server, session, signer)
    server.then(reply)
    with pytest.raises(error):
        await ex.place(specs(1))
    assert ex.outcomes[kind] == 1
    assert len(server.bodies("/exchange")) == 1  # never retried
    if error is RateLimited:
        assert budget.stats()["rate_limited"] == 1


async def test_connection_refused_is_transient(
    session: aiohttp.ClientSession, signer: Signer
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = ExchangeClient(
        session, f"http://127.0.0.1:{port}", signer, WeightBudget(), is_mainnet=True
    )
    with pytest.raises(Unavailable) as info:
        await ex.place(specs(1))
    assert isinstance(info.value, ExchangeTransient)
    assert ex.outcomes["transient"] == 1


async def test_batch_weight(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    assert [action_weight(n) for n in (1, 39, 40, 79, 80, 200)] == [1, 1, 2, 2, 3, 6]
    ex, budget = client(server, session, signer)
    server.then(ok("order", [{"resting": {"oid": i}} for i in range(79)]))
    assert len(await ex.place(specs(79))) == 79
    assert budget.stats()["lanes"]["order"]["weight_total"] == 2


async def test_approve_agent_is_user_signed_by_the_master(
    server: ScriptedServer, session: aiohttp.ClientSession, signer: Signer
) -> None:
    master = Signer.from_key("0x" + secrets.token_hex(32))
    ex, _ = client(server, session, signer)
    await ex.approve_agent(master, signer.address)
    await ex.approve_agent(master, signer.address, "bot")
    unnamed, named = server.bodies("/exchange")
    assert "agentName" not in unnamed["action"]  # signed with "", sent without
    assert named["action"]["agentName"] == "bot"
    for body, name in ((unnamed, ""), (named, "bot")):
        signed = {**body["action"], "agentName": name}
        digest = user_signed_digest(
            signed, wire.APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent"
        )
        assert recover_digest_signer(digest, body["signature"]) == master.address
        assert body["nonce"] == body["action"]["nonce"]
