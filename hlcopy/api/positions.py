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
            "required": ["mode", "positions"],
            "properties": {
                "mode": {"type": "string", "enum": ["paper", "live"]},
                "positions": {"type": "array", "items": {"type": "object"}},
            },
        },
        errors=(503,),
        description="Paper mode: the paper account. A follow's target is where the copier last "
        "decided it should be; its part (attributed_szi) is what it holds. Live, outside_szi is "
        "the part of the position opened outside hlcopy (left alone).",
    ),
)
