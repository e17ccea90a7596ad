"""Signing for Hyperliquid: L1 actions (orders, cancels, ...) and user-signed actions.

L1 actions (HYPERLIQUID.md §7.1): ``connectionId = keccak(msgpack(action) | nonce | vault |
expiresAfter)``, signed as the EIP-712 struct ``Agent(string source, bytes32 connectionId)`` in
the ``Exchange`` domain, ``source`` "a" on mainnet and "b" on testnet. User-signed actions
(§7.2) sign the action's own fields in the ``HyperliquidSignTransaction`` domain.

Fast path: the domain separators, type hashes and ``keccak(source)`` are computed once, keccak is
a C extension, and the ECDSA signature comes from libsecp256k1 (coincurve) — RFC 6979, so it is
byte-identical to eth-account's. Every step is checked against eth-account and the official SDK
in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
from coincurve import PrivateKey
from sha3 import keccak_256

from hlcopy.clock import SYSTEM, Clock
from hlcopy.errors import WireError
from hlcopy.keys import SECP256K1_N, parse_private_key

_ZERO_ADDRESS_WORD = bytes(32)


def keccak(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's, not SHA3-256)."""
    digest: bytes = keccak_256(data).digest()
    return digest


_DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


def domain_separator(name: str, version: str, chain_id: int) -> bytes:
    """EIP-712 domain separator with the zero verifying contract Hyperliquid uses."""
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(name.encode())
        + keccak(version.encode())
        + chain_id.to_bytes(32, "big")
        + _ZERO_ADDRESS_WORD
    )


_L1_PREFIX = b"\x19\x01" + domain_separator("Exchange", "1", 1337)
_AGENT_TYPEHASH = keccak(b"Agent(string source,bytes32 connectionId)")
# keccak(typehash | keccak(source) | connectionId): everything but the connectionId is fixed.
_AGENT_STRUCT_PREFIX = {
    True: _AGENT_TYPEHASH + keccak(b"a"),
    False: _AGENT_TYPEHASH + keccak(b"b"),
}


def _address_bytes(address: str) -> bytes:
    raw = address[2:] if address[:2] in ("0x", "0X") else address
    if len(raw) != 40:
        raise WireError(f"not an address: {address!r}")
    return bytes.fromhex(raw)


def action_hash(
    action: Mapping[str, Any], vault_address: str | None, nonce: int, expires_after: int | None
) -> bytes:
    """The connectionId of an L1 action."""
    data = msgpack.packb(action) + nonce.to_bytes(8, "big")
    data += b"\x00" if vault_address is None else b"\x01" + _address_bytes(vault_address)
    if expires_after is not None:
        data += b"\x00" + expires_after.to_bytes(8, "big")
    return keccak(data)


def l1_digest(connection_id: bytes, is_mainnet: bool) -> bytes:
    """The EIP-712 digest signed for an L1 action."""
    return keccak(_L1_PREFIX + keccak(_AGENT_STRUCT_PREFIX[is_mainnet] + connection_id))


def _encode_field(kind: str, value: Any) -> bytes:
    if kind == "string":
        return keccak(str(value).encode())
    if kind == "address":
        return bytes(12) + _address_bytes(str(value))
    if kind == "bool":
        return (1 if value else 0).to_bytes(32, "big")
    if kind.startswith("uint"):
        return int(value).to_bytes(32, "big")
    if kind == "bytes32":
        raw = bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)
        if len(raw) != 32:
            raise WireError(f"bytes32 field must be 32 bytes, got {len(raw)}")
        return raw
    raise WireError(f"unsupported EIP-712 field type {kind!r}")


def user_signed_digest(
    action: Mapping[str, Any], types: Sequence[tuple[str, str]], primary_type: str
) -> bytes:
    """The EIP-712 digest of a user-signed action (flat struct of the listed fields)."""
    chain_id = int(str(action["signatureChainId"]), 16)
    type_string = f"{primary_type}({','.join(f'{kind} {name}' for name, kind in types)})"
    struct = keccak(
        keccak(type_string.encode())
        + b"".join(_encode_field(kind, action[name]) for name, kind in types)
    )
    return keccak(
        b"\x19\x01" + domain_separator("HyperliquidSignTransaction", "1", chain_id) + struct
    )


class Signer:
    """An ECDSA key that signs Hyperliquid actions. The key never appears in its repr.

    Outside ``hl/`` a signer is only made (``from_key``) and handed to the exchange client,
    which alone signs: its signing methods take wire actions and stay inside the package.
    """

    __slots__ = ("_key", "address")

    def __init__(self, key: PrivateKey) -> None:
        self._key = key
        public = key.public_key.format(compressed=False)[1:]
        self.address = "0x" + keccak(public)[-20:].hex()

    @classmethod
    def from_key(cls, hex_private_key: str) -> Signer:
        """From ``0x`` + 64 hex digits (the prefix is optional)."""
        try:
            return cls(PrivateKey(parse_private_key(hex_private_key)))
        except ValueError as exc:
            raise WireError(str(exc)) from None

    def __repr__(self) -> str:
        return f"Signer(address={self.address!r})"

    def _sign_digest(self, digest: bytes) -> dict[str, Any]:
        """``{"r", "s", "v"}`` as the exchange (and the official SDK) writes them."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        # The SDK formats r and s with to_hex(int): minimal hex, leading zeros dropped
        # (r and s are never zero in a valid signature).
        return {
            "r": "0x" + sig[:32].hex().lstrip("0"),
            "s": "0x" + sig[32:64].hex().lstrip("0"),
            "v": 27 + sig[64],
        }

    def _sign_l1_action(
        self,
        action: Mapping[str, Any],
        vault_address: str | None,
        nonce: int,
        expires_after: int | None,
        is_mainnet: bool,
    ) -> dict[str, Any]:
        """Sign an order, cancel, modify, leverage, scheduleCancel or noop action."""
        return self._sign_digest(
            l1_digest(action_hash(action, vault_address, nonce, expires_after), is_mainnet)
        )

    def _sign_user_action(
        self, action: Mapping[str, Any], types: Sequence[tuple[str, str]], primary_type: str
    ) -> dict[str, Any]:
        """Sign a user-signed action such as approveAgent."""
        return self._sign_digest(user_signed_digest(action, types, primary_type))


def recover_l1_signer(
    action: Mapping[str, Any],
    vault_address: str | None,
    nonce: int,
    expires_after: int | None,
    is_mainnet: bool,
    signature: Mapping[str, Any],
) -> str:
    """The address that signed an L1 action (what the exchange does to authenticate it)."""
    digest = l1_digest(action_hash(action, vault_address, nonce, expires_after), is_mainnet)
    return recover_digest_signer(digest, signature)


def recover_digest_signer(digest: bytes, signature: Mapping[str, Any]) -> str:
    """The address whose key produced ``signature`` over ``digest``."""
    from coincurve import PublicKey

    try:
        r = int(str(signature["r"]), 16)
        s = int(str(signature["s"]), 16)
        v = int(signature["v"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed signature: {exc}") from exc
    if v not in (27, 28) or not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise WireError("malformed signature: r, s or v out of range")
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v - 27])
    try:
        public = PublicKey.from_signature_and_message(compact, digest, hasher=None)
    except Exception as exc:  # coincurve raises plain Exception for unrecoverable signatures
        raise WireError("signature does not recover to any key") from exc
    return "0x" + keccak(public.format(compressed=False)[1:])[-20:].hex()


def derive_cloid(text: str) -> str:
    """A client order id derived from ``text``: the first 16 bytes of its keccak-256, as
    ``0x`` + 32 hex digits. Deciding the same thing twice derives the same id (DESIGN §4.3)."""
    return "0x" + keccak(text.encode()).hex()[:32]


class NonceSource:
    """Per-signer nonces: ``max(now_ms, last + 1)``, so two actions never share one."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        nonce = max(self._clock.time_ms(), self._last + 1)
        self._last = nonce
        return nonce

    @property
    def last(self) -> int:
        return self._last
