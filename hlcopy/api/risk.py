"""Halt, resume and the risk state: the operator's hand on the brake.

``POST /api/v1/halt`` and ``/resume`` (authenticated, with a reason) act on a scope — the whole
account (``global``, the default), one follow (``follow:<id>``) or one leader
(``leader:<address>``) — and answer once the new state is persisted. The copier reads the
state before every decision, so a halt stops new exposure as soon as it has been answered.
"""

from __future__ import annotations

import re
from typing import Any, Final

from aiohttp import web

from hlcopy.api.params import ApiError, Args, Param, Route, choice, integer, invalid
from hlcopy.api.responses import json_response
from hlcopy.errors import StoreError
from hlcopy.follow.risk import TradingState
from hlcopy.follow.riskkeeper import GLOBAL, RiskKeeper, Transition, UnknownScope, event_json

RISK: Final = web.AppKey("risk", RiskKeeper)

_SCOPE = re.compile(r"global|follow:[A-Za-z0-9_.-]{1,64}|leader:0x[0-9a-f]{40}")
_REASON = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


def _scope_param() -> Param:
    def parse(text: str) -> str:
        if not _SCOPE.fullmatch(text):
            raise invalid("scope", "scope must be global, follow:<id> or leader:<address>")
        return text

    schema = {"type": "string", "pattern": "^(" + _SCOPE.pattern + ")$", "default": GLOBAL}
    return Param("scope", "What to act on; default: the whole account.", schema, parse, GLOBAL)


def _reason_param() -> Param:
    def parse(text: str) -> str:
        if not _REASON.fullmatch(text):
            raise invalid("reason", "reason must be 1 to 200 printable characters")
        return text

    schema = {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": "^[^\\x00-\\x1f\\x7f]+$",
    }
    return Param("reason", "Why: kept with the event (required).", schema, parse, None)


def _keeper(request: web.Request) -> RiskKeeper:
    keeper = request.app.get(RISK)
    if keeper is None:
        raise ApiError(503, "risk is not running in this daemon", "unavailable")
    return keeper


def _reason(args: Args) -> str:
    reason = args["reason"]
    if reason is None:
        raise invalid("reason", "reason is required")
    return str(reason)


def _transition_json(t: Transition) -> dict[str, Any]:
    return {
        "scope": t.scope,
        "state": t.state.value,
        "events": [event_json(e, with_scope=False) for e in t.events],
    }


async def _act(request: web.Request, args: Args, *, halting: bool) -> web.Response:
    keeper = _keeper(request)
    reason = _reason(args)
    try:
        if halting:
            level = TradingState(args["level"])
            done = await keeper.halt(args["scope"], reason, level)
        else:
            done = await keeper.resume(args["scope"], reason)
    except UnknownScope as exc:
        raise ApiError(404, str(exc), "unknown_scope") from exc
    except StoreError as exc:
        raise ApiError(503, f"the new state could not be stored: {exc}", "unavailable") from exc
    return json_response(_transition_json(done))


async def halt_route(request: web.Request, args: Args) -> web.Response:
    return await _act(request, args, halting=True)


async def resume_route(request: web.Request, args: Args) -> web.Response:
    return await _act(request, args, halting=False)


async def risk_route(request: web.Request, args: Args) -> web.Response:
    keeper = _keeper(request)
    try:
        events = await keeper.events(args["limit"])
    except StoreError as exc:
        raise ApiError(503, f"risk events unavailable: {exc}", "unavailable") from exc
    return json_response({**keeper.stats(), "events": events})


_TRANSITION = {
    "type": "object",
    "required": ["scope", "state", "events"],
    "properties": {
        "scope": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in TradingState]},
        "events": {"type": "array", "items": {"type": "object"}},
    },
}

ROUTES: Final = (
    Route(
        "POST",
        "/api/v1/halt",
        halt_route,
        "Halt trading (or switch to reduce-only) for the account, a follow or a leader",
        "risk",
        params=(
            _reason_param(),
            _scope_param(),
            choice(
                "level",
                ("halted", "reducing"),
                "halted",
                "halted: no orders; reducing: only orders that reduce exposure.",
            ),
        ),
        response=_TRANSITION,
        errors=(400, 401, 404, 503),
        description="Sticky: only a resume clears it. Persisted before the answer, so a "
        "restart keeps it.",
    ),
    Route(
        "POST",
        "/api/v1/resume",
        resume_route,
        "Clear every trip of a scope",
        "risk",
        params=(_reason_param(), _scope_param()),
        response=_TRANSITION,
        errors=(400, 401, 404, 503),
        description="A condition that still holds trips again at the next evaluation, with "
        "its cause: a resume forgives the past, it cannot hide a fact.",
    ),
    Route(
        "GET",
        "/api/v1/risk",
        risk_route,
        "Every scope's state and the latest transitions",
        "risk",
        params=(integer("limit", 1, 500, 50, "Latest transitions, at most 500."),),
        response={"type": "object"},
        errors=(400, 503),
    ),
)
