"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of what the API answers.

The fuzz test checks every 2xx body against these, so they are kept exact: objects list every
property and forbid others, except where a body is open on purpose (figures, stored metrics).
"""

from __future__ import annotations

from typing import Any, Final

from hlcopy.api.params import ADDRESS_PATTERN
from hlcopy.config import FOLLOW_ID_PATTERN
from hlcopy.scout.analytics import WINDOWS, RiskLevel, Style
from hlcopy.scout.leaderboard import ROW_FIELDS, SORT_KEYS

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(schema: Schema) -> Schema:
    out = dict(schema)
    types = schema["type"]
    out["type"] = [*types, "null"] if isinstance(types, list) else [types, "null"]
    if "enum" in schema:
        out["enum"] = [*schema["enum"], None]
    return out


def nullable(kind: str, **extra: Any) -> Schema:
    """A value of JSON type ``kind`` or null."""
    return {"type": [kind, "null"], **extra}


def obj(properties: dict[str, Schema], *, open_: bool = False) -> Schema:
    """An object with exactly ``properties``, all required (others allowed with ``open_``)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": open_,
    }


_ADDRESS: Final = {"type": "string", "pattern": ADDRESS_PATTERN}
DEC: Final = {"type": "string", "description": "an exact decimal number"}
NDEC: Final = {"type": ["string", "null"], "description": "an exact decimal number"}
_INT: Final = {"type": "integer"}
_NUM: Final = {"type": "number"}
_STR: Final = {"type": "string"}
MS: Final = {"type": "integer", "description": "milliseconds since the epoch"}
NMS: Final = {"type": ["integer", "null"], "description": "milliseconds since the epoch"}

_ROW_SCHEMAS: Final[dict[str, Schema]] = {
    "address": _ADDRESS,
    "account_value": _null(DEC),
    "pnl": _null(DEC),
    "return": _null(_NUM),
    "max_drawdown": _null(_NUM),
    "win_rate": _null(_NUM),
    "win_rate_lower": _null(_NUM),
    "profit_factor": _null(_NUM),
    "sharpe": _null(_NUM),
    "total_volume_usd": _null(DEC),
    "trade_count": _null(_INT),
    "account_age_days": _null(_NUM),
    "avg_risk_ratio": _null(_NUM),
    "avg_leverage": _null(_NUM),
    "max_profit_usd": _null(DEC),
    "max_loss_usd": _null(DEC),
    "risk_level": _null({"type": "string", "enum": [r.value for r in RiskLevel]}),
    "style": _null({"type": "string", "enum": [s.value for s in Style]}),
    "copyable_share": _null(_NUM),
    "score": _null(_NUM),
    "updated_at": MS,
}
assert tuple(_ROW_SCHEMAS) == ROW_FIELDS  # one list of fields


def _page(rows: str, **extra: Schema) -> Schema:
    return obj(
        {
            "window": {"type": "string", "enum": list(WINDOWS)},
            **extra,
            "total": _INT,
            "limit": _INT,
            "offset": _INT,
            "version": _INT,
            "as_of": _null(MS),
            "rows": {"type": "array", "items": ref(rows)},
        }
    )


_ACTIVITY: Final = obj(
    {
        "address": _ADDRESS,
        "first_seen_ms": MS,
        "last_seen_ms": MS,
        "trades": _INT,
        "volume_usd": DEC,
        "taker": _INT,
        "maker": _INT,
        "coins": {"type": "array", "items": _STR},
    }
)

_EVENT: Final = obj(
    {
        "id": _INT,
        "address": _ADDRESS,
        "coin": _STR,
        "kind": {
            "type": "string",
            "enum": ["open", "increase", "decrease", "close", "flip", "liquidated"],
        },
        "prev_szi": DEC,
        "new_szi": DEC,
        "px": _null(DEC),
        "entry_px": _null(DEC),
        "notional": _null(DEC),
        "leverage": _null(DEC),
        "time_ms": MS,
        "tid": _null(_INT),
    }
)

_FILL: Final = obj(
    {
        "address": _ADDRESS,
        "tid": _INT,
        "coin": _STR,
        "px": DEC,
        "sz": DEC,
        "side": {"type": "string", "enum": ["B", "A"]},
        "time_ms": MS,
        "start_position": _null(DEC),
        "dir": _null(_STR),
        "closed_pnl": _null(DEC),
        "hash": _null(_STR),
        "oid": _null(_INT),
        "crossed": {"type": ["boolean", "null"]},
        "fee": _null(DEC),
        "fee_token": _null(_STR),
        "cloid": _null(_STR),
        "source": _STR,
        "received_ms": MS,
    }
)


def _paged(name: str, item: str) -> Schema:
    return obj(
        {
            "address": _ADDRESS,
            "limit": _INT,
            "offset": _INT,
            "more": {"type": "boolean"},
            name: {"type": "array", "items": ref(item)},
        }
    )


# -- follows: the answer (every field, defaults filled in) and the two request bodies ----------

_DEC_IN: Final = {
    "type": ["string", "number"],
    "pattern": "^[0-9]{1,15}([.][0-9]{1,18})?$",
    "description": "a decimal number: a JSON number, or a string for exactness",
}
_COINS: Final = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 64},
    "maxItems": 1000,
}
_HOURS: Final = {
    "type": ["array", "null"],
    "items": {"type": "integer", "minimum": 0, "maximum": 24},
    "minItems": 2,
    "maxItems": 2,
    "description": "[start hour 0-23, end hour 0-24] UTC, may wrap midnight; null: always",
}


def _int(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def _follow_fields(dec: Schema) -> dict[str, Schema]:
    """The fields of a follow (hlcopy.config.FollowTemplate), with ``dec`` for decimals."""
    return {
        "mode": _enum("copy", "inverse"),
        "sizing": _enum("ratio", "equity", "fixed_notional"),
        "ratio": dec,
        "fixed_notional_usd": _null(dec),
        "coins": _COINS,
        "exclude_coins": _COINS,
        "max_notional_per_coin_usd": _null(dec),
        "max_total_notional_usd": _null(dec),
        "max_leverage": _null(dec),
        "min_notional_policy": _enum("skip", "round_up"),
        "slippage_bps": _int(0, 5000),
        "max_fill_age_ms": _int(1, 86_400_000),
        "entry": _enum("wait", "adopt"),
        "adopt_max_deviation_bps": _int(0, 10_000),
        "delay_ms": _int(0, 600_000),
        "active_hours_utc": _HOURS,
        "daily_loss_limit_usd": _null(dec),
        "max_drawdown_pct": _null(dec),
        "protective_stop_pct": _null(dec),
        "priority": _int(0, 1000),
        "enabled": {"type": "boolean"},
    }


_FOLLOW_NAME: Final = {"type": "string", "pattern": FOLLOW_ID_PATTERN}
_FOLLOW_SPEC: Final = obj({**_follow_fields(DEC), "leader": _ADDRESS, "name": _null(_FOLLOW_NAME)})
_FOLLOW_CREATE: Final = {
    "type": "object",
    "properties": {"leader": _ADDRESS, "name": _FOLLOW_NAME, **_follow_fields(_DEC_IN)},
    "required": ["leader"],
    "additionalProperties": False,
    "description": "A [[follow]] table as JSON: leader, then any other field (default if "
    "absent). 400 names every field that is wrong.",
}
_FOLLOW_PATCH: Final = {
    "type": "object",
    "properties": {
        "paused": {"type": "boolean", "description": "true pauses, false resumes"},
        **{
            k: v if isinstance(v["type"], list) and "null" in v["type"] else _null(v)
            for k, v in _follow_fields(_DEC_IN).items()
        },
    },
    "additionalProperties": False,
    "description": "The fields to change (null resets one to its default); a follow declared "
    "in the TOML takes only paused.",
}
FOLLOW_SCHEMAS: Final[dict[str, Schema]] = {
    "FollowSpec": _FOLLOW_SPEC,
    "Follow": obj(
        {
            "id": _FOLLOW_NAME,
            "source": _enum("toml", "api", "auto"),
            "leader": _ADDRESS,
            "paused": {"type": "boolean"},
            "winding_down": {"type": "boolean"},
            "active": {"type": "boolean"},
            "started_ms": MS,
            "created_ms": MS,
            "updated_ms": MS,
            "spec": ref("FollowSpec"),
        }
    ),
    "FollowsPage": obj({"follows": {"type": "array", "items": ref("Follow")}}),
    "FollowRemoved": obj({"id": _FOLLOW_NAME, "removed": {"const": True}}),
    "FollowCreate": _FOLLOW_CREATE,
    "FollowPatch": _FOLLOW_PATCH,
}


COMPONENTS: Final[dict[str, Schema]] = {
    "Error": obj(
        {
            "error": obj(
                {"code": _STR, "message": _STR},
                open_=True,  # some errors say more: "parameter", "allowed", "problems"
            )
        }
    ),
    "LeaderboardRow": obj(_ROW_SCHEMAS),
    "LoserRow": obj({**_ROW_SCHEMAS, "badness": _NUM}),
    "LeaderboardPage": _page(
        "LeaderboardRow",
        sort_by={"type": "string", "enum": list(SORT_KEYS)},
        order={"type": "string", "enum": ["desc", "asc"]},
    ),
    "LosersPage": _page("LoserRow"),
    "Activity": _ACTIVITY,
    "TradersPage": obj(
        {
            "q": _STR,
            "total": _INT,
            "limit": _INT,
            "offset": _INT,
            "traders": {"type": "array", "items": ref("Activity")},
        }
    ),
    "PositionEvent": _EVENT,
    "Fill": _FILL,
    "EventsPage": _paged("events", "PositionEvent"),
    "FillsPage": _paged("fills", "Fill"),
    "Trader": obj(
        {
            "address": _ADDRESS,
            "activity": {"oneOf": [ref("Activity"), {"type": "null"}]},
            "role": _null(_STR),
            "master": _null(_STR),
            "tracked": {"type": "boolean"},
            "track_requested_ms": _null(MS),
            "account_value": _null(DEC),
            "metrics": {
                "type": "object",
                "description": "TraderMetrics per window, as the tracker stored them",
                "additionalProperties": {"type": "object"},
            },
            "metrics_at_ms": _null(MS),
            "ranks": obj({w: _null(_INT) for w in WINDOWS}),
            "positions": {"type": "array", "items": {"type": "object"}},
            "positions_at_ms": _null(MS),
            "index_points": {
                "type": "object",
                "description": "per window, [time ms, equity index] pairs for a chart",
                "additionalProperties": {"type": "array", "items": {"type": "array"}},
            },
            "events": {"type": "array", "items": ref("PositionEvent")},
        }
    ),
    "TrackAccepted": obj({"address": _ADDRESS, "track_requested": {"const": True}}),
    "Figures": {"type": "object", "description": "figures by component; open"},
    "ReloadResult": obj(
        {
            "ok": {"type": "boolean"},
            "changed": {"type": "array", "items": _STR},
            "restart_required": {"type": "array", "items": _STR},
        }
    ),
    "FeedMessage": obj(
        {
            "type": {"type": "string", "description": '"connection" first, then event types'},
            "data": {"type": "object"},
            "timestamp": MS,
        }
    ),
    "OpenApi": {"type": "object", "required": ["openapi", "paths"]},
    **FOLLOW_SCHEMAS,
}
