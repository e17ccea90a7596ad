"""Hyperliquid: the only package that knows the exchange's wire formats.

What the rest of hlcopy may use is exported here, and only from here: typed clients and feeds
whose functions take and return domain types (``model.py``), never ``Any`` or a wire dict.
``wire``, ``parse`` and ``signing`` are the package's edge, used inside it (and by the simulator,
which *is* an exchange, and the signing benchmark, which measures the edge). A test holds both
rules: the exports are free of ``Any``, and nothing else imports past this file.
"""

from hlcopy.hl.exchange import ActionSigner, ExchangeClient, PreparedAction, action_weight
from hlcopy.hl.info import FILLS_PAGE, InfoClient, new_session
from hlcopy.hl.parse import read_fills
from hlcopy.hl.signing import NonceSource, Signer, derive_cloid
from hlcopy.hl.stream import StreamPool, Subscription
from hlcopy.hl.universe import Universe, UniverseService, load_universe
from hlcopy.hl.wire import (
    MIN_NOTIONAL,
    Rounding,
    check_cloid,
    is_valid_price,
    is_valid_size,
    meets_min_notional,
    round_price,
    round_size,
)

__all__ = [
    "FILLS_PAGE",
    "MIN_NOTIONAL",
    "ActionSigner",
    "ExchangeClient",
    "InfoClient",
    "NonceSource",
    "PreparedAction",
    "Rounding",
    "Signer",
    "StreamPool",
    "Subscription",
    "Universe",
    "UniverseService",
    "action_weight",
    "check_cloid",
    "derive_cloid",
    "is_valid_price",
    "is_valid_size",
    "load_universe",
    "meets_min_notional",
    "new_session",
    "read_fills",
    "round_price",
    "round_size",
]
