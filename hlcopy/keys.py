"""Addresses and private keys: the one place that says what a valid one is (and makes one).

Config, credentials, signing and the wire layer all ask here, so they can never disagree. Both
parsers raise ValueError; callers turn it into their own error type (config problem, secret
error, wire error).
"""

from __future__ import annotations

import re
import secrets

from coincurve import PrivateKey
from sha3 import keccak_256

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_PRIVATE_KEY = re.compile(r"(?:0[xX])?([0-9a-fA-F]{64})")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def parse_address(value: str) -> str:
    """``0x`` + 40 hex digits, returned lowercase (the exchange hashes lowercase addresses)."""
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValueError("must be an address: 0x followed by 40 hex digits")
    return value.lower()


def parse_private_key(value: str) -> bytes:
    """The 32 secret bytes of a key written as 64 hex digits (``0x`` optional, spaces around
    ignored); it must be a valid secp256k1 scalar."""
    m = _PRIVATE_KEY.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError("not a private key (expected 64 hex digits, optionally 0x-prefixed)")
    secret = bytes.fromhex(m[1])
    if not 0 < int.from_bytes(secret, "big") < SECP256K1_N:
        raise ValueError("not a private key (outside the secp256k1 range)")
    return secret


def new_private_key() -> bytes:
    """32 fresh secret bytes from the operating system's CSPRNG, a valid secp256k1 scalar."""
    while True:
        secret = secrets.token_bytes(32)
        if 0 < int.from_bytes(secret, "big") < SECP256K1_N:  # fails with probability ~2^-128
            return secret


def key_address(secret: bytes) -> str:
    """The address of a private key: the last 20 bytes of keccak(public key), lowercase."""
    public = PrivateKey(secret).public_key.format(compressed=False)[1:]
    digest: bytes = keccak_256(public).digest()
    return "0x" + digest[-20:].hex()
