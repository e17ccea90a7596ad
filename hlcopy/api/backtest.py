"""``POST /api/v1/backtest``, ``GET`` and ``DELETE /api/v1/backtest/{id}``: the backtest over the
API (``hlcopy/backtest.py`` does the work).

One at a time: a second start while one runs is a 409 naming the running one. The body names the
addresses, the window (``days``, or ``from_ms`` / ``to_ms``) and the same options as the command
line, checked before anything is read (400 names the first bad key). The job fetches through the
daemon's own REST client in the budget's gap-fill lane: behind the follower's and the leaders'
truth, so it never takes weight from copying, but ahead of scoring and exploration, which keep the
window nearly full (in the lowest lane a user's backtest waited minutes). Then it replays in a
worker thread (the event loop stays free); ``GET`` shows its progress and, once done, the result as
``hlcopy backtest --json`` prints it plus the SVG chart. ``DELETE`` cancels it (the fetch at once,
the replay at its next slice). The last few jobs are kept in memory only: a backtest is a question,
not state, and a restart forgets them."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from aiohttp import web

from hlcopy.api.params import ADDRESS_PATTERN, ApiError, Args, Param, Route, invalid
from hlcopy.api.responses import json_response, read_json
from hlcopy.backtest import (
    MAX_ADDRESSES,
    MAX_SWEEP_VALUES,
    MODEL_KEYS,
    SWEEP_KEYS,
    Cancelled,
    Options,
    Window,
    chart_svg,
    check_equity_data,
    check_fetched,
    check_request,
    fetch_history,
    needs_equity,
    report_json,
    resolve_window,
    run_in_thread,
)
from hlcopy.budget import Lane
from hlcopy.clock import SYSTEM, Clock
from hlcopy.config import FollowTemplate, HlcopyConfig
from hlcopy.errors import BadInput, HlcopyError
from hlcopy.hl import InfoClient

log = structlog.get_logger()

State = Literal["running", "done", "failed", "cancelled"]
KEPT: Final = 5
#: The follow keys the body takes (a [[follow]] table's, less what only a running daemon uses;
#: ``ioc_slippage_bps`` is the follow's ``slippage_bps``).
FOLLOW_KEYS: Final = tuple(
    ("ioc_slippage_bps" if k == "slippage_bps" else k)
    for k in FollowTemplate.model_fields
    if k not in ("protective_stop_pct", "priority", "enabled", "entry", "adopt_max_deviation_bps")
)
BODY_KEYS: Final = frozenset(
    {"addresses", "days", "from_ms", "to_ms", "sweep", *FOLLOW_KEYS, *MODEL_KEYS}
)
_ID: Final = re.compile(r"[^/]{1,64}")
_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")


def follow_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A follow's rules (its ``spec`` as GET /api/v1/follows shows it) as a backtest body's
    keys: a backtest of its leader by them says what this follow would have earned."""
    body = {}
    for key, value in spec.items():
        name = "ioc_slippage_bps" if key == "slippage_bps" else key
        if name in FOLLOW_KEYS and value is not None:
            body[name] = value
    return body


@dataclass(slots=True)
class Job:
    """One backtest asked over the API."""

    id: str
    addresses: tuple[str, ...]
    since_ms: int
    until_ms: int
    created_ms: int
    state: State = "running"
    phase: str = "starting"
    done: int = 0
    total: int = 0
    finished_ms: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    svg: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def progress(self, phase: str, done: int, total: int) -> None:
        self.phase, self.done, self.total = phase, done, total

    def as_json(self) -> dict[str, Any]:
        share = 1.0 if self.state == "done" else (self.done / self.total if self.total else 0.0)
        return {
            "id": self.id,
            "state": self.state,
            "addresses": list(self.addresses),
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "created_ms": self.created_ms,
            "finished_ms": self.finished_ms,
            "progress": {
                "phase": self.phase,
                "done": self.done,
                "total": self.total,
                "share": round(min(1.0, max(0.0, share)), 4),
            },
            "error": self.error,
            "result": self.result,
            "svg": self.svg,
        }


class BacktestJobs:
    """The API's backtests: one running at a time in a task it owns, the last few kept."""

    def __init__(
        self,
        info: InfoClient | None,
        config: HlcopyConfig | Callable[[], HlcopyConfig],
        clock: Clock = SYSTEM,
        *,
        kept: int = KEPT,
        lane: Lane = Lane.GAPFILL,
    ) -> None:
        self._info = info
        self._config = config
        self._clock = clock
        self._kept = kept
        self._lane = lane
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._seq = 0
        self.counters = {"started": 0, "done": 0, "failed": 0, "cancelled": 0, "refused": 0}

    @property
    def running(self) -> Job | None:
        for job in self._jobs.values():
            if job.state == "running":
                return job
        return None

    def start(self, body: dict[str, Any]) -> Job:
        """Check the body and start its job (BadInput for a bad body, ApiError 409 while
        another runs)."""
        running = self.running
        if running is not None:
            self.counters["refused"] += 1
            raise ApiError(
                409,
                f"backtest {running.id} is running: one at a time (DELETE it, or wait)",
                "busy",
                running=running.id,
            )
        addresses, given, window, sweep = _parse_body(body)
        # The config as it is now: a reload (SIGHUP) since the daemon started counts.
        config = self._config() if callable(self._config) else self._config
        picked, variants = check_request(addresses, given, config, sweep)
        now = self._clock.time_ms()
        span = resolve_window(
            days=window.get("days"),
            from_ms=window.get("from_ms"),
            to_ms=window.get("to_ms"),
            now_ms=now,
        )
        self._seq += 1
        job = Job(f"bt-{self._seq}", picked, span.since_ms, span.until_ms, now)
        self._jobs[job.id] = job
        while len(self._jobs) > self._kept:
            oldest = next(iter(self._jobs))
            if self._jobs[oldest].state == "running":
                break
            del self._jobs[oldest]
        job.task = asyncio.create_task(self._run(job, variants), name=f"api:backtest:{job.id}")
        self.counters["started"] += 1
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a running job (and wait for it to stop); a finished one is left as it is."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        task = job.task
        if job.state == "running" and task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return job

    async def close(self, _app: object = None) -> None:
        """Stop the running job (the API's shutdown)."""
        running = self.running
        if running is not None:
            await self.cancel(running.id)

    async def _run(self, job: Job, variants: list[Options]) -> None:
        try:
            if self._info is None:
                raise BadInput("this daemon has no REST client to read the exchange with")
            leaders, market = await fetch_history(
                self._info,
                job.addresses,
                job.since_ms,
                job.until_ms,
                latency_ms=max(v.latency_ms + v.delay_ms for v in variants),
                equity_sizing=needs_equity(variants),
                progress=job.progress,
                lane=self._lane,
            )
            check_fetched(leaders, Window(job.since_ms, job.until_ms))
            check_equity_data(variants, market)

            def replaying(done: int, total: int) -> None:
                job.progress("replaying", done, total)

            results = await run_in_thread(
                leaders, market, variants, job.since_ms, job.until_ms, progress=replaying
            )
            job.result = report_json(results, job.addresses)
            job.svg = chart_svg(results, job.addresses)
            job.state = "done"
            job.phase = "done"
            self.counters["done"] += 1
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.phase = "cancelled"
            self.counters["cancelled"] += 1
            raise
        except Cancelled:  # the replay saw the stop flag first: the same end
            job.state = "cancelled"
            job.phase = "cancelled"
            self.counters["cancelled"] += 1
        except HlcopyError as exc:
            job.state = "failed"
            job.error = str(exc)
            self.counters["failed"] += 1
            log.warning("backtest failed", id=job.id, error=str(exc))
        finally:
            job.finished_ms = self._clock.time_ms()

    def stats(self) -> dict[str, Any]:
        running = self.running
        return {"running": None if running is None else running.id, **self.counters}


def _parse_body(
    body: Any,
) -> tuple[list[str], dict[str, Any], dict[str, Any], tuple[str, list[Any]] | None]:
    """(addresses, options, window, sweep) from the body; BadInput names the key."""
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object with addresses")
    unknown = sorted(str(k) for k in body if k not in BODY_KEYS)
    if unknown:
        raise BadInput(f"{unknown[0][:64]}: unknown key")
    addresses = body.get("addresses")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise BadInput("addresses: must be a list of addresses")
    window: dict[str, Any] = {}
    days = body.get("days")
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int | float):
            raise BadInput("days: must be a number")
        window["days"] = float(days)
    for key in ("from_ms", "to_ms"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
                raise BadInput(f"{key}: must be milliseconds since the epoch")
            window[key] = value
    sweep = None
    raw = body.get("sweep")
    if raw is not None:
        if not isinstance(raw, dict) or set(raw) != {"key", "values"}:
            raise BadInput('sweep: must be {"key": ..., "values": [...]}')
        key, values = raw["key"], raw["values"]
        if key not in SWEEP_KEYS:
            raise BadInput(f"sweep.key: one of {', '.join(SWEEP_KEYS)}")
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_SWEEP_VALUES:
            raise BadInput(f"sweep.values: a list of 1 to {MAX_SWEEP_VALUES} values")
        sweep = (str(key), list(values))
    given = {k: v for k, v in body.items() if k in FOLLOW_KEYS or k in MODEL_KEYS}
    return list(addresses), given, window, sweep


BACKTESTS: Final = web.AppKey("backtests", BacktestJobs)


def _jobs(request: web.Request) -> BacktestJobs:
    jobs = request.app.get(BACKTESTS)
    if jobs is None:
        raise ApiError(503, "backtests are not served by this daemon", "unavailable")
    return jobs


async def start_backtest(request: web.Request, args: Args) -> web.StreamResponse:
    jobs = _jobs(request)
    body = await read_json(request)
    try:
        job = jobs.start(body)
    except BadInput as exc:
        first = str(exc).split(": ", 1)[0]
        key = first if _KEY.fullmatch(first) else "body"
        raise invalid(key, str(exc)) from exc
    return json_response(job.as_json(), 202)


async def get_backtest(request: web.Request, args: Args) -> web.StreamResponse:
    job = _jobs(request).get(args["id"])
    if job is None:
        raise ApiError(404, f"no backtest {args['id']!r} (only the last {KEPT} are kept)")
    return json_response(job.as_json())


async def cancel_backtest(request: web.Request, args: Args) -> web.StreamResponse:
    job = await _jobs(request).cancel(args["id"])
    if job is None:
        raise ApiError(404, f"no backtest {args['id']!r} (only the last {KEPT} are kept)")
    return json_response(job.as_json())


def _parse_id(text: str) -> str:
    if not _ID.fullmatch(text):
        raise invalid("id", "id must be 1 to 64 characters")
    return text


JOB_ID: Final = Param(
    "id",
    "The backtest's id, as POST answered it.",
    {"type": "string", "minLength": 1, "maxLength": 64},
    _parse_id,
    None,
    "path",
)
_DEC: Final = {
    "type": ["string", "number"],
    "pattern": "^-?[0-9]{1,15}([.][0-9]{1,18})?$",
    "description": "a decimal number: a JSON number, or a string for exactness",
}
_NDEC: Final = {**_DEC, "type": ["string", "number", "null"]}
_COINS: Final = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 64},
    "maxItems": 1000,
}


def _int(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


_BODY: Final = {
    "type": "object",
    "required": ["addresses"],
    "additionalProperties": False,
    "properties": {
        "addresses": {
            "type": "array",
            "items": {"type": "string", "pattern": ADDRESS_PATTERN},
            "minItems": 1,
            "maxItems": MAX_ADDRESSES,
            "description": "leaders netted in one follower account",
        },
        "days": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3650,
            "description": "the last N days (default 7)",
        },
        "from_ms": _int(0, 2**53 - 1),
        "to_ms": _int(0, 2**53 - 1),
        "mode": _enum("copy", "inverse"),
        "sizing": _enum("ratio", "equity", "fixed_notional"),
        "ratio": _DEC,
        "fixed_notional_usd": _NDEC,
        "coins": _COINS,
        "exclude_coins": _COINS,
        "max_notional_per_coin_usd": _NDEC,
        "max_total_notional_usd": _NDEC,
        "max_leverage": _NDEC,
        "min_notional_policy": _enum("skip", "round_up"),
        "ioc_slippage_bps": {**_int(0, 5000), "description": "the IOC limit from the mid"},
        "max_fill_age_ms": _int(1, 86_400_000),
        "delay_ms": _int(0, 600_000),
        "active_hours_utc": {
            "type": ["array", "null"],
            "items": {"type": "integer", "minimum": 0, "maximum": 24},
            "minItems": 2,
            "maxItems": 2,
        },
        "daily_loss_limit_usd": _NDEC,
        "max_drawdown_pct": _NDEC,
        "latency_ms": {**_int(0, 600_000), "description": "order round trip (default 200)"},
        "slippage_bps": {**_DEC, "description": "fills this much worse than the price (2)"},
        "fee_bps": {**_DEC, "description": "taker fee (default 4.5)"},
        "equity_usd": {**_DEC, "description": "starting equity (account.paper_equity_usd)"},
        "initial": _enum("adopt", "ignore"),
        "min_notional": {"type": "boolean", "description": "false: no $10 minimum"},
        "risk": {"type": "boolean", "description": "false: no account limits or kill switches"},
        "sweep": {
            "type": "object",
            "required": ["key", "values"],
            "additionalProperties": False,
            "properties": {
                "key": _enum(*SWEEP_KEYS),
                "values": {
                    "type": "array",
                    "items": {"type": ["string", "number"]},
                    "minItems": 1,
                    "maxItems": MAX_SWEEP_VALUES,
                },
            },
        },
    },
}
_JOB: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "id",
        "state",
        "addresses",
        "since_ms",
        "until_ms",
        "created_ms",
        "finished_ms",
        "progress",
        "error",
        "result",
        "svg",
    ],
    "properties": {
        "id": {"type": "string"},
        "state": _enum("running", "done", "failed", "cancelled"),
        "addresses": {"type": "array", "items": {"type": "string", "pattern": ADDRESS_PATTERN}},
        "since_ms": {"type": "integer"},
        "until_ms": {"type": "integer"},
        "created_ms": {"type": "integer"},
        "finished_ms": {"type": ["integer", "null"]},
        "progress": {
            "type": "object",
            "additionalProperties": False,
            "required": ["phase", "done", "total", "share"],
            "properties": {
                "phase": {"type": "string"},
                "done": {"type": "integer"},
                "total": {"type": "integer"},
                "share": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "error": {"type": ["string", "null"]},
        "result": {
            "type": ["object", "null"],
            "description": "as hlcopy backtest --json prints it: the window, then one result "
            "per variant (PnL, return, max drawdown, the leader's scaled PnL, the gap and its "
            "parts, fees, funding, orders, skips by reason, per leader, the curve)",
        },
        "svg": {"type": ["string", "null"], "description": "the chart, an SVG document"},
    },
}

ROUTES: Final = (
    Route(
        "POST",
        "/api/v1/backtest",
        start_backtest,
        "Start a backtest: what copying these addresses would have earned",
        "backtest",
        body=_BODY,
        response=_JOB,
        status=202,
        errors=(400, 409, 503),
        description="Checked before anything is read (400 names the key). One at a time: 409 "
        "while another runs. Reads through the daemon's REST budget in its gap-fill lane; poll "
        "GET /api/v1/backtest/{id} for progress and the result.",
    ),
    Route(
        "GET",
        "/api/v1/backtest/{id}",
        get_backtest,
        "A backtest's progress, and its result and chart once done",
        "backtest",
        params=(JOB_ID,),
        response=_JOB,
        errors=(400, 404, 503),
    ),
    Route(
        "DELETE",
        "/api/v1/backtest/{id}",
        cancel_backtest,
        "Cancel a running backtest",
        "backtest",
        params=(JOB_ID,),
        response=_JOB,
        errors=(400, 404, 503),
        description="A finished backtest is answered as it is.",
    ),
)
