"""The copy engine's pure cores: the copier (targets -> order intents), risk (ACTIVE / REDUCING /
HALTED per scope) and the fill model (paper fills, funding, paper accounts).

No I/O, no asyncio, no clock: the async shells feed them and act on what they return, and the
backtest runs them unchanged in virtual time.
"""

from hlcopy.follow.copier import (
    AccountLimits,
    Decision,
    Follow,
    FollowerView,
    LeaderView,
    Market,
    Skip,
    SkipReason,
    Transfer,
    allocate,
    attribute_fill,
    decide,
    intent_cloid,
    split_fill,
)
from hlcopy.follow.fills import (
    Booked,
    PaperAccount,
    PaperFill,
    PaperPosition,
    funding_payment,
    simulate_ioc,
)
from hlcopy.follow.risk import (
    Cause,
    OrderResult,
    RiskEvent,
    RiskInputs,
    RiskLimits,
    RiskState,
    TradingState,
    Trip,
    evaluate,
    halt,
    most_severe,
    permits,
    result_of,
    resume,
)

__all__ = [
    "AccountLimits",
    "Booked",
    "Cause",
    "Decision",
    "Follow",
    "FollowerView",
    "LeaderView",
    "Market",
    "OrderResult",
    "PaperAccount",
    "PaperFill",
    "PaperPosition",
    "RiskEvent",
    "RiskInputs",
    "RiskLimits",
    "RiskState",
    "Skip",
    "SkipReason",
    "TradingState",
    "Transfer",
    "Trip",
    "allocate",
    "attribute_fill",
    "decide",
    "evaluate",
    "funding_payment",
    "halt",
    "intent_cloid",
    "most_severe",
    "permits",
    "result_of",
    "resume",
    "simulate_ioc",
    "split_fill",
]
