"""Who sent an action: signature recovery and the nonce rules, as the exchange applies them.

The connectionId comes from hlcopy's action hashing (msgpack of the action as sent), but the
signer is recovered independently of hlcopy's signing code: the EIP-712 document is built here
and recovered with eth-account. A signature over different bytes recovers a different address,
which the exchange then refuses as an unknown user (HYPERLIQUID.md §7).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from hlcopy.errors import WireError
from hlcopy.hl.signing import action_hash

DAY_MS = 86_400_000
KEPT_NONCES = 100
_ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
# Fields of the user-signed actions the simulator accepts, in signing order.
USER_SIGNED: dict[str, tuple[str, list[dict[str, str]]]] = {
    "approveAgent": (
        "HyperliquidTransaction:ApproveAgent",
        [
            {"name": "hyperliquidChain", "type": "string"},
            {"name": "agentAddress", "type": "address"},
            {"name": "agentName", "type": "string"},
            {"name": "nonce", "type": "uint64"},
        ],
    ),
}


def _vrs(signature: Any) -> tuple[int, int, int]:
    try:
        r = int(str(signature["r"]), 16)
        s = int(str(signature["s"]), 16)
        v = int(signature["v"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed signature: {exc}") from exc
    return v, r, s


def _recover(document: dict[str, Any], signature: Any) -> str:
    try:
        address: str = Account.recover_message(
            encode_typed_data(full_message=document), vrs=_vrs(signature)
        )
    except WireError:
        raise
    except Exception as exc:  # eth-account raises several types for unrecoverable input
        raise WireError(f"bad signature: {exc}") from exc
    return address.lower()


def recover_l1(
    action: Mapping[str, Any],
    vault: str | None,
    nonce: int,
    expires_after: int | None,
    is_mainnet: bool,
    signature: Any,
) -> str:
    """The address that signed an L1 action, for this chain."""
    connection_id = action_hash(action, vault, nonce, expires_after)
    document = {
        "domain": {
            "chainId": 1337,
            "name": "Exchange",
            "verifyingContract": _ZERO_ADDRESS,
            "version": "1",
        },
        "types": {
            "EIP712Domain": _DOMAIN_TYPE,
            "Agent": [
                {"name": "source", "type": "string"},
                {"name": "connectionId", "type": "bytes32"},
            ],
        },
        "primaryType": "Agent",
        "message": {"source": "a" if is_mainnet else "b", "connectionId": connection_id},
    }
    return _recover(document, signature)


def recover_user_signed(action: Mapping[str, Any], signature: Any) -> str:
    """The address that signed a user-signed action (its own chain id and fields)."""
    primary, fields = USER_SIGNED[str(action["type"])]
    message = {
        f["name"]: action.get(f["name"], "" if f["type"] == "string" else None) for f in fields
    }
    document = {
        "domain": {
            "chainId": int(str(action["signatureChainId"]), 16),
            "name": "HyperliquidSignTransaction",
            "verifyingContract": _ZERO_ADDRESS,
            "version": "1",
        },
        "types": {"EIP712Domain": _DOMAIN_TYPE, primary: fields},
        "primaryType": primary,
        "message": message,
    }
    return _recover(document, signature)


@dataclass
class NonceBook:
    """The 100 highest nonces each signer has used (the exchange's rule, §10.1)."""

    kept: dict[str, list[int]] = field(default_factory=dict)

    def use(self, signer: str, nonce: int, now_ms: int) -> str | None:
        """Record ``nonce`` for ``signer``; the exchange's error message if it is refused."""
        if nonce >= now_ms + DAY_MS:
            return f"Invalid nonce: nonce too high {nonce} > {now_ms + DAY_MS}"
        if nonce <= now_ms - 2 * DAY_MS:
            return f"Invalid nonce: nonce too low {nonce} < {now_ms - 2 * DAY_MS}"
        kept = self.kept.setdefault(signer, [])
        i = bisect.bisect_left(kept, nonce)
        if i < len(kept) and kept[i] == nonce:
            return f"Invalid nonce: duplicate nonce {nonce}"
        if len(kept) >= KEPT_NONCES and nonce <= kept[0]:
            return f"Invalid nonce: nonce too low {nonce} < {kept[0]}"
        kept.insert(i, nonce)
        if len(kept) > KEPT_NONCES:
            del kept[0]
        return None
