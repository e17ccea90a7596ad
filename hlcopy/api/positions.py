"""The follower's positions beside each follow's part and target: ``GET /api/v1/positions``."""

from __future__ import annotations

from typing import Any, Final, Protocol

from aiohttp import web

from hlcopy.api.params import ApiError, Args, Route
from hlcopy.api.responses import json_response


class PositionsView(Protocol):
    def positions(self) -> dict[str, Any]: ...


POSITIONS: Final = web.AppKey("positions", PositionsView)


async def positions_route(request: web.Request, args: Args) -> web.Response:
    view = request.app.get(POSITIONS)
    if view is None:
        raise ApiError(503, "the copy engine is not running in this daemon", "unavailable")
    return json_response(view.positions())


ROUTES: Final = (
    Route(
        "GET",
        "/api/v1/positions",
        positions_route,
        "The follower's positions, each with the follows' parts and targets",
        "copy",
        response={
            "type": "object",
            "required": ["mode", "positions", "leaders"],
            "properties": {
                "mode": {"type": "string", "enum": ["paper", "live"]},
                "positions": {"type": "array", "items": {"type": "object"}},
                "leaders": {
                    "type": "object",
                    "description": "each followed leader's address -> how it is followed",
                    "additionalProperties": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": ["via", "live", "state_ms", "last_change_ms"],
                                "properties": {
                                    "via": {"type": "string", "enum": ["userFills", "firehose"]},
                                    "live": {"type": "boolean"},
                                    "state_ms": {"type": ["integer", "null"]},
                                    "last_change_ms": {"type": ["integer", "null"]},
                                    "equity": {"type": ["string", "null"]},
                                },
                            },
                        ]
                    },
                },
            },
        },
        errors=(503,),
        description="Paper mode: the paper account. A follow's target is where the copier last "
        "decided it should be; its part (attributed_szi) is what it holds. Live, outside_szi is "
        "the part of the position opened outside hlcopy (left alone). leaders: each followed "
        "leader, via its own userFills stream (the highest-priority ones, up to the stream's "
        "slots) or the public trades firehose; live once its state is read and, via userFills, "
        "the stream's snapshot is in (a fill before that snapshot is history, never copied).",
    ),
)
