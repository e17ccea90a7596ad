"""Auto-follow: ``[[auto_follow]]`` rules pick leaders from the leaderboard or the losers list.

Each rule is re-evaluated every ``reevaluate_interval_s``. A pure core (``plan``) decides, from
the ranking and what the rule follows now, which leaders to add and which to let go, with
hysteresis: a followed leader is dropped only after it has ranked worse than ``drop_rank`` (or
not at all) for ``drop_after_s``, so a leader hovering around the cut is not followed and
dropped on every refresh. A dropped leader's follow winds down — reduce-only until the copied
position is flat — and is removed once it is. The shell adds, winds down and removes through
the follow registry, so auto follows show up in the API with source ``auto``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.config import AutoFollowConfig, HlcopyConfig
from hlcopy.follow.executor import PaperExecutor
from hlcopy.follow.follows import FollowError, FollowRegistry, auto_follow_id
from hlcopy.record import record
from hlcopy.scout.analytics import RiskLevel, Style
from hlcopy.scout.leaderboard import Filters, Leaderboard

log = structlog.get_logger(__name__)


@record
class Plan:
    """What a rule does now: follow ``add``, wind down ``drop``; ``out_since`` is the updated
    memory of when each followed leader fell out of the selection."""

    add: tuple[str, ...]
    drop: tuple[str, ...]
    out_since: Mapping[str, int]


def plan(
    ranked: Sequence[str],
    followed: Sequence[str],
    winding: int,
    out_since: Mapping[str, int],
    rule: AutoFollowConfig,
    now_ms: int,
) -> Plan:
    """Decide one rule's changes. ``ranked``: eligible leaders, best first (only the first
    ``drop_rank`` matter); ``followed``: the rule's active leaders; ``winding``: how many of its
    follows are still winding down (they count toward ``max_follows``)."""
    keep_rank = rule.effective_drop_rank
    position = {a: i for i, a in enumerate(ranked[:keep_rank])}
    memory: dict[str, int] = {}
    drop: list[str] = []
    for leader in followed:
        if leader in position:
            continue  # still within reach: it stays, and its clock resets
        since = out_since.get(leader, now_ms)
        if now_ms - since >= rule.drop_after_s * 1000:
            drop.append(leader)
        else:
            memory[leader] = since
    staying = [a for a in followed if a not in drop]
    room = rule.max_follows - winding - len(staying) - len(drop)
    wanted = min(rule.top_n, len(staying) + max(0, room))
    add: list[str] = []
    for leader in ranked[: rule.top_n]:
        if len(staying) + len(add) >= wanted:
            break
        if leader not in followed:
            add.append(leader)
    return Plan(tuple(add), tuple(drop), memory)


class AutoFollower(Component):
    """See the module docstring."""

    name = "autofollow"
    core = False  # copying goes on without it; its follows stay as they are

    def __init__(
        self,
        registry: FollowRegistry,
        board: Leaderboard,
        executor: PaperExecutor,
        config: HlcopyConfig,
        clock: Clock = SYSTEM,
    ) -> None:
        self._registry = registry
        self._board = board
        self._executor = executor
        self._clock = clock
        self._rules: tuple[AutoFollowConfig, ...] = ()
        self._due: dict[str, float] = {}
        self._out_since: dict[str, dict[str, int]] = {}
        self._draining = asyncio.Event()
        self.counters = {"evaluations": 0, "added": 0, "dropped": 0, "removed": 0, "errors": 0}
        self.reconfigure(config)

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._rules = tuple(config.auto_follow)

    async def run(self, ready: Ready) -> None:
        self._draining.clear()
        ready.set()
        while not self._draining.is_set():
            now = self._clock.monotonic()
            for rule in self._rules:
                if now >= self._due.get(rule.name, 0.0):
                    try:
                        if await self.evaluate(rule):
                            self._due[rule.name] = now + rule.reevaluate_interval_s
                        else:
                            self._due[rule.name] = now + 5.0  # no ranking yet: look again soon
                    except FollowError as exc:
                        self.counters["errors"] += 1
                        log.warning("auto-follow failed", rule=rule.name, error=str(exc))
                        self._due[rule.name] = now + rule.reevaluate_interval_s
            await self._wind_down_done()
            if await sleep_unless(self._clock, self._draining, 1.0):
                return

    async def drain(self) -> None:
        self._draining.set()

    async def evaluate(self, rule: AutoFollowConfig) -> bool:
        """Apply one rule now; False when the ranking cannot be read yet."""
        ranked = self._ranking(rule)
        if ranked is None:
            return False
        self.counters["evaluations"] += 1
        mine = [
            f
            for f in self._registry.follows()
            if f.source == "auto" and _rule_of(f.id) == rule.name
        ]
        followed = [f.leader for f in mine if not f.winding_down]
        winding = sum(1 for f in mine if f.winding_down)
        now_ms = self._clock.time_ms()
        p = plan(ranked, followed, winding, self._out_since.get(rule.name, {}), rule, now_ms)
        self._out_since[rule.name] = dict(p.out_since)
        for leader in p.drop:
            await self._registry.set_winding_down(auto_follow_id(rule.name, leader), True)
            self.counters["dropped"] += 1
            log.info("auto-follow: winding down", rule=rule.name, leader=leader)
        for leader in p.add:
            follow_id = auto_follow_id(rule.name, leader)
            spec: dict[str, Any] = rule.template.model_dump(mode="json", exclude_none=True)
            spec.update({"name": follow_id, "leader": leader, "mode": rule.follow_mode})
            await self._registry.add(spec, "auto")
            self.counters["added"] += 1
            log.info("auto-follow: following", rule=rule.name, leader=leader, mode=rule.follow_mode)
        return True

    def _ranking(self, rule: AutoFollowConfig) -> list[str] | None:
        board = self._board
        if board.loading:
            return None
        limit = rule.effective_drop_rank
        if rule.source == "losers":
            rows = board.losers(rule.window, limit=limit, offset=0).rows
        else:
            filters = Filters(
                min_trades=rule.min_trades,
                risk_levels=frozenset(RiskLevel(r) for r in rule.risk_levels) or None,
                styles=frozenset(Style(s) for s in rule.styles) or None,
                min_copyable_share=rule.min_copyable_share or None,
            )
            rows = board.ranking(
                rule.window, "score", descending=True, filters=filters, limit=limit, offset=0
            ).rows
        if len(rows) < rule.top_n:
            return None  # too few ranked yet to choose from
        return [r["address"] for r in rows]

    async def _wind_down_done(self) -> None:
        """Remove the auto follows that wound down to flat."""
        held = self._executor.attributed()
        pending = self._executor.pending()
        for f in self._registry.follows():
            if f.source != "auto" or not f.winding_down:
                continue
            open_sz = any(v != 0 for v in held.get(f.id, {}).values())
            in_flight = any(k[0] == f.id and v != 0 for k, v in pending.items())
            if not open_sz and not in_flight:
                await self._registry.remove(f.id)
                self.counters["removed"] += 1
                log.info("auto-follow: wound down and removed", follow=f.id)

    def stats(self) -> dict[str, Any]:
        return {"rules": len(self._rules), **self.counters}


def _rule_of(follow_id: str) -> str:
    return follow_id.split(".", 1)[0]
