"""The copy log: ``GET /api/v1/copies`` — per order, what the leader did, what we meant to do,
what we got and what it cost; per skip, why.

Read from PostgreSQL (one index range, newest first); the collaborator is ``app[COPIES]``, and a
daemon without it answers 503.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Protocol

from aiohttp import web

from hlcopy.api.params import ApiError, Args, Param, Route, choices, integer, invalid
from hlcopy.api.responses import json_response
from hlcopy.api.schemas import DEC, NDEC, NMS, nullable, obj
from hlcopy.store.copies import COPY_STATUSES


class CopyReads(Protocol):
    """What the route needs of the store (``hlcopy.store.copies.CopyStore``)."""

    async def copies(
        self, follow: str | None, statuses: Sequence[str] | None, limit: int
    ) -> list[dict[str, Any]]: ...


COPIES: Final = web.AppKey("copies", CopyReads)

MAX_LIMIT: Final = 1000
FOLLOW_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,80}$"
_FOLLOW = re.compile(FOLLOW_PATTERN)


def _follow_param() -> Param:
    def parse(text: str) -> str:
        if not _FOLLOW.fullmatch(text):
            raise invalid("follow", "follow must be a follow id: 1-80 letters, digits, _ . : -")
        return text

    schema = {"type": "string", "pattern": FOLLOW_PATTERN, "examples": ["my-follow"]}
    return Param("follow", "Only copies caused by this follow (its id).", schema, parse, None)


async def copies(request: web.Request, args: Args) -> web.StreamResponse:
    reads = request.app.get(COPIES)
    if reads is None:
        raise ApiError(503, "copy execution is not running in this daemon", "unavailable")
    status = args["status"]
    rows = await reads.copies(
        args["follow"], None if status is None else sorted(status), args["limit"]
    )
    return json_response(
        {
            "follow": args["follow"],
            "status": None if status is None else sorted(status),
            "limit": args["limit"],
            "copies": rows,
        }
    )


# -- the response's schema ------------------------------------------------------------------------


COPY: Final = obj(
    {
        "id": {"type": "integer"},
        "cloid": nullable("string", description="the client order id (none for a skip)"),
        "status": {"type": "string", "enum": list(COPY_STATUSES)},
        "paper": {"type": "boolean"},
        "follows": {"type": "array", "items": {"type": "string"}},
        "attribution": {
            "type": "array",
            "items": obj({"follow": {"type": "string"}, "sz": DEC}),
        },
        "leader": nullable("string"),
        "coin": {"type": "string"},
        "leader_fill": {
            "oneOf": [
                {"type": "null"},
                obj(
                    {
                        "tid": nullable("integer"),
                        "side": {"type": ["string", "null"], "enum": ["B", "A", None]},
                        "px": NDEC,
                        "sz": NDEC,
                        "time_ms": NMS,
                    }
                ),
            ]
        },
        "intent": obj(
            {
                "side": {"type": ["string", "null"], "enum": ["B", "A", None]},
                "sz": NDEC,
                "limit_px": NDEC,
                "reduce_only": nullable("boolean"),
                "reason": nullable("string"),
                "attempt": {"type": "integer"},
                "decided_ms": {"type": "integer"},
            }
        ),
        "fill": obj(
            {
                "filled_sz": DEC,
                "avg_px": NDEC,
                "fee": DEC,
                "closed_pnl": NDEC,
                "sent_ms": NMS,
                "settled_ms": NMS,
            }
        ),
        "slippage_bps": nullable(
            "string", description="vs the leader's fill price; positive: we did worse"
        ),
        "delay_ms": obj(
            {
                "decision": nullable("integer", description="leader fill to our decision"),
                "send": nullable("integer", description="leader fill to our send"),
            }
        ),
        "fee": DEC,
        "skip_reason": nullable("string"),
        "error": nullable("string"),
    }
)

COPIES_PAGE: Final = obj(
    {
        "follow": nullable("string"),
        "status": {
            "type": ["array", "null"],
            "items": {"type": "string", "enum": list(COPY_STATUSES)},
        },
        "limit": {"type": "integer"},
        "copies": {"type": "array", "items": COPY},
    }
)

ROUTES: Final = (
    Route(
        "GET",
        "/api/v1/copies",
        copies,
        "The copy log: every order and every skip, newest first",
        "follow",
        params=(
            _follow_param(),
            choices("status", COPY_STATUSES, "Only copies in these states."),
            integer("limit", 1, MAX_LIMIT, 100, f"Rows, at most {MAX_LIMIT}."),
        ),
        response=COPIES_PAGE,
        errors=(400, 503),
        description="Per order: the leader fill's price, size and time; our intent; our fill "
        "price and size; slippage in basis points against the leader (positive: worse); the "
        "delay from the leader's fill to our decision and to our send; fees; status. A skip "
        "has status skipped and its skip_reason.",
    ),
)
