"""The follows' routes: list, add, pause / resume / edit, remove.

Bodies are validated exactly like a ``[[follow]]`` table (``hlcopy.config.check_follow``), so a
400 names each wrong field as the TOML's errors name each wrong key. A follow declared in the TOML
can be paused and resumed here, not edited or removed (409): the file is its truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from hlcopy.api import schemas
from hlcopy.api.params import ApiError, Args, Param, Route, invalid
from hlcopy.api.responses import json_response, read_json
from hlcopy.config import FOLLOW_ID_PATTERN
from hlcopy.follow.follows import (
    FollowConflict,
    FollowError,
    FollowInvalid,
    FollowNotFound,
    FollowRecord,
    FollowRegistry,
)


@dataclass(slots=True)
class Follows:
    """The API's collaborator for these routes (missing means 503)."""

    registry: FollowRegistry | None = None


FOLLOWS: Final = web.AppKey("follows", Follows)

_ID = re.compile(FOLLOW_ID_PATTERN)


def _parse_id(text: str) -> str:
    if not _ID.fullmatch(text):
        raise invalid("id", "id must be 1 to 64 letters, digits, '.', '_' or '-'")
    return text


FOLLOW_ID: Final = Param(
    "id",
    "The follow's id: its name, or its leader's address when it has none.",
    {"type": "string", "pattern": FOLLOW_ID_PATTERN},
    _parse_id,
    None,
    "path",
)


def follow_json(r: FollowRecord) -> dict[str, Any]:
    """A follow as the API shows it: every field, defaults filled in."""
    return {
        "id": r.id,
        "source": r.source,
        "leader": r.leader,
        "paused": r.paused,
        "winding_down": r.winding_down,
        "active": r.active,
        "started_ms": r.started_ms,
        "created_ms": r.created_ms,
        "updated_ms": r.updated_ms,
        "spec": r.spec.model_dump(mode="json"),
    }


def _registry(request: web.Request) -> FollowRegistry:
    registry = request.app[FOLLOWS].registry
    if registry is None:
        raise ApiError(503, "follows are not managed by this daemon", "unavailable")
    if not registry.loaded:
        raise ApiError(503, "the follows are loading", "loading", headers={"Retry-After": "1"})
    return registry


def _api_error(exc: FollowError) -> ApiError:
    """One translation of the registry's refusals into the API's errors."""
    if isinstance(exc, FollowInvalid):
        field, message = exc.problems[0] if exc.problems else ("(body)", str(exc))
        return ApiError(
            400,
            "; ".join(f"{k}: {m}" for k, m in exc.problems) or message,
            "invalid_field",
            field=field,
            problems=[{"field": k, "message": m} for k, m in exc.problems],
        )
    if isinstance(exc, FollowNotFound):
        return ApiError(404, str(exc), "unknown_follow")
    if isinstance(exc, FollowConflict):
        return ApiError(409, str(exc), "conflict")
    return ApiError(503, str(exc), "loading", headers={"Retry-After": "1"})


async def _object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_body")
    return body


async def list_follows(request: web.Request, args: Args) -> web.StreamResponse:
    registry = _registry(request)
    return json_response({"follows": [follow_json(r) for r in registry.follows()]})


async def add_follow(request: web.Request, args: Args) -> web.StreamResponse:
    registry = _registry(request)
    body = await _object(request)
    try:
        record = await registry.add(body, "api")
    except FollowError as exc:
        raise _api_error(exc) from exc
    return json_response(follow_json(record), 201)


async def change_follow(request: web.Request, args: Args) -> web.StreamResponse:
    registry = _registry(request)
    body = await _object(request)
    try:
        record = await registry.update(args["id"], body)
    except FollowError as exc:
        raise _api_error(exc) from exc
    return json_response(follow_json(record))


async def remove_follow(request: web.Request, args: Args) -> web.StreamResponse:
    registry = _registry(request)
    try:
        record = await registry.remove(args["id"])
    except FollowError as exc:
        raise _api_error(exc) from exc
    return json_response({"id": record.id, "removed": True})


ROUTES: Final = (
    Route(
        "GET",
        "/api/v1/follows",
        list_follows,
        "Every follow: its source, flags and fields",
        "follows",
        response=schemas.ref("FollowsPage"),
        errors=(400, 503),
        description="source: toml ([[follow]] in the file), api (added here) or auto (an "
        "[[auto_follow]] rule). active: enabled and not paused. winding_down: reduce-only "
        "until flat (a dropped auto follow).",
    ),
    Route(
        "POST",
        "/api/v1/follows",
        add_follow,
        "Add a follow",
        "follows",
        body=schemas.ref("FollowCreate"),
        response=schemas.ref("Follow"),
        status=201,
        errors=(400, 409, 503),
        description="Validated like a [[follow]] table; 400 names each wrong field "
        "(error.field, error.problems). 409 when a follow already has the id.",
    ),
    Route(
        "PATCH",
        "/api/v1/follows/{id}",
        change_follow,
        "Pause, resume or edit a follow",
        "follows",
        params=(FOLLOW_ID,),
        body=schemas.ref("FollowPatch"),
        response=schemas.ref("Follow"),
        errors=(400, 404, 409, 503),
        description='{"paused": true} pauses, {"paused": false} resumes; other fields edit the '
        "follow (null resets one to its default). A follow declared in the TOML can only be "
        "paused or resumed (409 otherwise: edit the file).",
    ),
    Route(
        "DELETE",
        "/api/v1/follows/{id}",
        remove_follow,
        "Remove a follow",
        "follows",
        params=(FOLLOW_ID,),
        response=schemas.ref("FollowRemoved"),
        errors=(400, 404, 409, 503),
        description="409 for a follow declared in the TOML: pause it or edit the file.",
    ),
)
