"""Signing: published vectors, eth-account as the reference, the official SDK as the oracle."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

import eth_account
import pytest
from eth_account.messages import encode_typed_data
from hlcopy.clock import VirtualClock
from hlcopy.errors import WireError
from hlcopy.hl import wire
from hlcopy.hl.signing import (
    NonceSource,
    Signer,
    action_hash,
    l1_digest,
    recover_l1_signer,
    user_signed_digest,
)
from hyperliquid.utils import signing as sdk
from hyperliquid.utils.types import Cloid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEST_KEY = "0x0123456789012345678901234567890123456789012345678901234567890123"
D = Decimal
DUMMY = {"type": "dummy", "num": 100000000000}  # float_to_int_for_hashing(1000)
VAULT = "0x1719884eb866cb12b2287399b15f7db5e7d775ea"


def sig(r: str, s: str, v: int) -> dict[str, Any]:
    return {"r": r, "s": s, "v": v}


def eth_order(cloid: str | None = None, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    return wire.order_action(
        [
            wire.order_wire(
                1, True, D(100), D(100), False, None if trigger else "Gtc", cloid, trigger
            )
        ]
    )


# Vectors from the official SDK's tests/signing_test.py (key 0x0123...0123, nonce 0).
VECTORS = [
    (
        "dummy",
        DUMMY,
        None,
        True,
        sig(
            "0x53749d5b30552aeb2fca34b530185976545bb22d0b3ce6f62e31be961a59298",
            "0x755c40ba9bf05223521753995abb2f73ab3229be8ec921f350cb447e384d8ed8",
            27,
        ),
    ),
    (
        "dummy",
        DUMMY,
        None,
        False,
        sig(
            "0x542af61ef1f429707e3c76c5293c80d01f74ef853e34b76efffcb57e574f9510",
            "0x17b8b32f086e8cdede991f1e2c529f5dd5297cbe8128500e00cbaf766204a613",
            28,
        ),
    ),
    (
        "order",
        eth_order(),
        None,
        True,
        sig(
            "0xd65369825a9df5d80099e513cce430311d7d26ddf477f5b3a33d2806b100d78e",
            "0x2b54116ff64054968aa237c20ca9ff68000f977c93289157748a3162b6ea940e",
            28,
        ),
    ),
    (
        "order",
        eth_order(),
        None,
        False,
        sig(
            "0x82b2ba28e76b3d761093aaded1b1cdad4960b3af30212b343fb2e6cdfa4e3d54",
            "0x6b53878fc99d26047f4d7e8c90eb98955a109f44209163f52d8dc4278cbbd9f5",
            27,
        ),
    ),
    (
        "cloid",
        eth_order("0x00000000000000000000000000000001"),
        None,
        True,
        sig(
            "0x41ae18e8239a56cacbc5dad94d45d0b747e5da11ad564077fcac71277a946e3",
            "0x3c61f667e747404fe7eea8f90ab0e76cc12ce60270438b2058324681a00116da",
            27,
        ),
    ),
    (
        "cloid",
        eth_order("0x00000000000000000000000000000001"),
        None,
        False,
        sig(
            "0xeba0664bed2676fc4e5a743bf89e5c7501aa6d870bdb9446e122c9466c5cd16d",
            "0x7f3e74825c9114bc59086f1eebea2928c190fdfbfde144827cb02b85bbe90988",
            28,
        ),
    ),
    (
        "vault",
        DUMMY,
        VAULT,
        True,
        sig(
            "0x3c548db75e479f8012acf3000ca3a6b05606bc2ec0c29c50c515066a326239",
            "0x4d402be7396ce74fbba3795769cda45aec00dc3125a984f2a9f23177b190da2c",
            28,
        ),
    ),
    (
        "vault",
        DUMMY,
        VAULT,
        False,
        sig(
            "0xe281d2fb5c6e25ca01601f878e4d69c965bb598b88fac58e475dd1f5e56c362b",
            "0x7ddad27e9a238d045c035bc606349d075d5c5cd00a6cd1da23ab5c39d4ef0f60",
            27,
        ),
    ),
    (
        "tpsl",
        eth_order(trigger={"triggerPx": D(103), "isMarket": True, "tpsl": "sl"}),
        None,
        True,
        sig(
            "0x98343f2b5ae8e26bb2587daad3863bc70d8792b09af1841b6fdd530a2065a3f9",
            "0x6b5bb6bb0633b710aa22b721dd9dee6d083646a5f8e581a20b545be6c1feb405",
            27,
        ),
    ),
    (
        "tpsl",
        eth_order(trigger={"triggerPx": D(103), "isMarket": True, "tpsl": "sl"}),
        None,
        False,
        sig(
            "0x971c554d917c44e0e1b6cc45d8f9404f32172a9d3b3566262347d0302896a2e4",
            "0x206257b104788f80450f8e786c329daa589aa0b32ba96948201ae556d5637eac",
            28,
        ),
    ),
    (
        "scheduleCancel",
        wire.schedule_cancel_action(None),
        None,
        True,
        sig(
            "0x6cdfb286702f5917e76cd9b3b8bf678fcc49aec194c02a73e6d4f16891195df9",
            "0x6557ac307fa05d25b8d61f21fb8a938e703b3d9bf575f6717ba21ec61261b2a0",
            27,
        ),
    ),
    (
        "scheduleCancel",
        wire.schedule_cancel_action(123456789),
        None,
        False,
        sig(
            "0x4e4f2dbd4107c69783e251b7e1057d9f2b9d11cee213441ccfa2be63516dc5bc",
            "0x706c656b23428c8ba356d68db207e11139ede1670481a9e01ae2dfcdb0e1a678",
            27,
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "action", "vault", "mainnet", "expected"),
    VECTORS,
    ids=[f"{v[0]}-{'mainnet' if v[3] else 'testnet'}" for v in VECTORS],
)
def test_published_vectors(
    name: str, action: dict[str, Any], vault: str | None, mainnet: bool, expected: dict[str, Any]
) -> None:
    assert Signer.from_key(TEST_KEY)._sign_l1_action(action, vault, 0, None, mainnet) == expected


def test_eth_ioc_order_connection_id() -> None:
    action = wire.order_action([wire.order_wire(4, True, D("1670.1"), D("0.0147"), False, "Ioc")])
    assert action_hash(action, None, 1677777606040, None).hex() == (
        "0fcbeda5ae3c4950a548021552a4fea2226858c4453571bf3f24ba017eac2908"
    )


def test_user_signed_vectors() -> None:
    """usdSend and withdraw vectors from the SDK's tests exercise the generic EIP-712 encoder."""
    signer = Signer.from_key(TEST_KEY)
    types = (
        ("hyperliquidChain", "string"),
        ("destination", "string"),
        ("amount", "string"),
        ("time", "uint64"),
    )
    action = {
        "signatureChainId": "0x66eee",
        "hyperliquidChain": "Testnet",
        "destination": "0x5e9ee1089755c3435139848e47e6635505d5a13a",
        "amount": "1",
        "time": 1687816341423,
    }
    assert signer._sign_user_action(action, types, "HyperliquidTransaction:UsdSend") == sig(
        "0x637b37dd731507cdd24f46532ca8ba6eec616952c56218baeff04144e4a77073",
        "0x11a6a24900e6e314136d2592e2f8d502cd89b7c15b198e1bee043c9589f9fad7",
        27,
    )
    assert signer._sign_user_action(action, types, "HyperliquidTransaction:Withdraw") == sig(
        "0x8363524c799e90ce9bc41022f7c39b4e9bdba786e5f9c72b20e43e1462c37cf9",
        "0x58b1411a775938b83e29182e8ef74975f9054c8e97ebf5ec2dc8d51bfc893881",
        28,
    )


# --- generated actions against the SDK --------------------------------------------------------

keys = st.binary(min_size=32, max_size=32).filter(
    lambda b: 0 < int.from_bytes(b, "big") < 2**256 - 2**130
)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
cloid_strings = st.binary(min_size=16, max_size=16).map(lambda b: "0x" + b.hex())
cloids = st.none() | cloid_strings
TIFS: list[wire.Tif] = ["Gtc", "Ioc", "Alo"]
GROUPINGS: list[wire.Grouping] = ["na", "normalTpsl", "positionTpsl"]
sz_decimals = st.integers(0, 5)


@st.composite
def orders(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same random order built by hlcopy (Decimal) and by the SDK (float)."""
    szd = draw(sz_decimals)
    raw_px = D(draw(st.integers(1, 99999))).scaleb(draw(st.integers(-4, 3)))
    px = wire.round_price(raw_px, szd, False, wire.Rounding.UP)  # up: never rounds to zero
    sz = D(draw(st.integers(1, 10**7))).scaleb(-szd)
    asset = draw(st.integers(0, 200_000))
    is_buy, reduce_only = draw(st.booleans()), draw(st.booleans())
    cloid = draw(cloids)
    if draw(st.booleans()):
        tif = draw(st.sampled_from(TIFS))
        ours = wire.order_wire(asset, is_buy, px, sz, reduce_only, tif, cloid)
        order_type: Any = {"limit": {"tif": tif}}
    else:
        trigger = {
            "triggerPx": px,
            "isMarket": draw(st.booleans()),
            "tpsl": draw(st.sampled_from(["tp", "sl"])),
        }
        ours = wire.order_wire(asset, is_buy, px, sz, reduce_only, None, cloid, trigger)
        order_type = {"trigger": {**trigger, "triggerPx": float(px)}}
    theirs = sdk.order_request_to_order_wire(
        {
            "coin": "X",
            "is_buy": is_buy,
            "sz": float(sz),
            "limit_px": float(px),
            "order_type": order_type,
            "reduce_only": reduce_only,
            "cloid": None if cloid is None else Cloid.from_str(cloid),
        },
        asset,
    )
    return ours, theirs


@st.composite
def actions(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    kind = draw(
        st.sampled_from(
            ["order", "cancel", "cancelByCloid", "scheduleCancel", "updateLeverage", "noop"]
        )
    )
    if kind == "order":
        pairs = draw(st.lists(orders(), min_size=1, max_size=5))
        grouping = draw(st.sampled_from(GROUPINGS))
        builder = draw(
            st.none() | st.builds(lambda a, f: {"b": a, "f": f}, addresses, st.integers(0, 100))
        )
        ours = wire.order_action([p[0] for p in pairs], grouping, builder)
        return ours, sdk.order_wires_to_order_action([p[1] for p in pairs], builder, grouping)
    if kind == "cancel":
        items = draw(
            st.lists(
                st.tuples(st.integers(0, 200_000), st.integers(0, 2**48)), min_size=1, max_size=5
            )
        )
        return wire.cancel_action(items), {
            "type": "cancel",
            "cancels": [{"a": a, "o": o} for a, o in items],
        }
    if kind == "cancelByCloid":
        by_cloid = draw(
            st.lists(st.tuples(st.integers(0, 200_000), cloid_strings), min_size=1, max_size=5)
        )
        return wire.cancel_by_cloid_action(by_cloid), {
            "type": "cancelByCloid",
            "cancels": [{"asset": a, "cloid": c} for a, c in by_cloid],
        }
    if kind == "scheduleCancel":
        t = draw(st.none() | st.integers(0, 2**50))
        theirs = {"type": "scheduleCancel"} if t is None else {"type": "scheduleCancel", "time": t}
        return wire.schedule_cancel_action(t), theirs
    if kind == "updateLeverage":
        asset, cross, lev = draw(st.integers(0, 200)), draw(st.booleans()), draw(st.integers(1, 50))
        return wire.update_leverage_action(asset, cross, lev), {
            "type": "updateLeverage",
            "asset": asset,
            "isCross": cross,
            "leverage": lev,
        }
    return wire.noop_action(), {"type": "noop"}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions(),
    st.none() | addresses,
    st.integers(0, 2**63 - 1),
    st.none() | st.integers(0, 2**63 - 1),
    st.booleans(),
)
def test_action_hash_equals_the_sdks(
    pair: tuple[dict[str, Any], dict[str, Any]],
    vault: str | None,
    nonce: int,
    expires_after: int | None,
    mainnet: bool,
) -> None:
    ours, theirs = pair
    assert ours == theirs
    assert action_hash(ours, vault, nonce, expires_after) == sdk.action_hash(
        theirs, vault, nonce, expires_after
    )


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys,
    actions(),
    st.none() | addresses,
    st.integers(0, 2**63 - 1),
    st.none() | st.integers(0, 2**63 - 1),
    st.booleans(),
)
def test_signatures_equal_the_sdks_and_recover_with_eth_account(
    key: bytes,
    pair: tuple[dict[str, Any], dict[str, Any]],
    vault: str | None,
    nonce: int,
    expires_after: int | None,
    mainnet: bool,
) -> None:
    ours, theirs = pair
    signer = Signer.from_key(key.hex())
    wallet = eth_account.Account.from_key(key)
    assert signer.address == wallet.address.lower()
    got = signer._sign_l1_action(ours, vault, nonce, expires_after, mainnet)
    assert got == sdk.sign_l1_action(wallet, theirs, vault, nonce, expires_after, mainnet)
    # eth-account, from the EIP-712 document itself, recovers the signer.
    conn_id = action_hash(ours, vault, nonce, expires_after)
    message = encode_typed_data(
        full_message=sdk.l1_payload(sdk.construct_phantom_agent(conn_id, mainnet))
    )
    vrs = (got["v"], int(got["r"], 16), int(got["s"], 16))
    assert eth_account.Account.recover_message(message, vrs=vrs) == wallet.address
    assert recover_l1_signer(ours, vault, nonce, expires_after, mainnet, got) == signer.address


@settings(max_examples=200, deadline=None)
@given(
    keys,
    addresses,
    st.none() | st.text(min_size=1, max_size=16),
    st.integers(0, 2**63 - 1),
    st.booleans(),
)
def test_approve_agent_equals_the_sdk(
    key: bytes, agent: str, name: str | None, nonce: int, mainnet: bool
) -> None:
    signer = Signer.from_key("0x" + key.hex())
    wallet = eth_account.Account.from_key(key)
    action = wire.approve_agent_action(agent, name, nonce, mainnet)
    got = signer._sign_user_action(
        action, wire.APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent"
    )
    theirs = {
        "type": "approveAgent",
        "agentAddress": agent,
        "agentName": name or "",
        "nonce": nonce,
    }
    assert got == sdk.sign_agent(wallet, theirs, mainnet)
    digest = user_signed_digest(
        action, wire.APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent"
    )
    vrs = (got["v"], int(got["r"], 16), int(got["s"], 16))
    assert eth_account.Account._recover_hash(digest, vrs=vrs) == wallet.address


def test_digest_is_what_eth_account_would_sign() -> None:
    conn = bytes(range(32))
    doc = sdk.l1_payload(sdk.construct_phantom_agent(conn, True))
    signable = encode_typed_data(full_message=doc)
    wallet = eth_account.Account.from_key(TEST_KEY)
    # Same key, deterministic nonces: equal signatures mean equal digests.
    by_document = wallet.sign_message(signable)
    by_our_digest = wallet.unsafe_sign_hash(l1_digest(conn, True))
    assert (by_document.r, by_document.s, by_document.v) == (
        by_our_digest.r,
        by_our_digest.s,
        by_our_digest.v,
    )


def test_signer_keeps_its_key_to_itself() -> None:
    key = "0x" + secrets.token_hex(32)
    signer = Signer.from_key(key)
    assert key[2:] not in repr(signer)
    assert signer.address == eth_account.Account.from_key(key).address.lower()
    for bad in ("0x1234", "zz" * 32, "0x" + "00" * 32, "0x" + "ff" * 32):
        with pytest.raises(WireError):
            Signer.from_key(bad)


def test_recovery_rejects_malformed_signatures() -> None:
    for bad in (
        {"r": "0x1", "s": "0x1", "v": 29},
        {"r": "zz", "s": "0x1", "v": 27},
        {"v": 27},
        {"r": "0x0", "s": "0x1", "v": 27},
    ):
        with pytest.raises(WireError):
            recover_l1_signer(DUMMY, None, 0, None, True, bad)


class SteppableClock(VirtualClock):
    """A virtual clock whose wall time can also be stepped back (as NTP may do to a real one);
    its monotonic time never goes backwards."""

    step_ms = 0

    def time_ms(self) -> int:
        return super().time_ms() + self.step_ms


async def test_nonce_source_never_repeats_and_follows_the_clock() -> None:
    clock = SteppableClock(epoch_ms=1_000)
    nonces = NonceSource(clock)
    got = [nonces.next() for _ in range(3)]
    assert got == [1000, 1001, 1002]  # same millisecond: still unique
    await clock.advance(4)
    assert clock.time_ms() == 5_000
    assert nonces.next() == 5000  # fast-forwards to the clock
    clock.step_ms = -1_000  # the clock stepped back: never below the last nonce
    assert clock.time_ms() == 4_000
    assert nonces.next() == 5001
    assert nonces.last == 5001
    real = NonceSource()
    seq = [real.next() for _ in range(1000)]
    assert len(set(seq)) == 1000
    assert seq == sorted(seq)


def test_derived_cloids_are_keccak_prefixes_and_stable() -> None:
    from eth_hash.auto import keccak as eth_keccak
    from hlcopy.hl import check_cloid, derive_cloid

    text = "follow-a|0x" + "11" * 20 + "|123456789|0"
    cloid = derive_cloid(text)
    assert cloid == "0x" + eth_keccak(text.encode()).hex()[:32]
    assert check_cloid(cloid) == cloid
    assert derive_cloid(text) == cloid
    assert derive_cloid(text + "x") != cloid
