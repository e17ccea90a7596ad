"""The follow registry: every follow, whatever declared it, as the copy engine sees it.

Three sources share one table and one set of ids:

* ``toml`` — the ``[[follow]]`` tables. The file is their truth: each start and each reload
  re-applies them (new ones added, changed ones updated, ones gone from the file removed). Over
  the API they can be paused and resumed, never edited or deleted: the next reload would undo it.
* ``api`` — added with ``POST /api/v1/follows``; edited, paused, resumed and removed there.
* ``auto`` — added by an ``[[auto_follow]]`` rule (the auto-follow shell calls ``add``), with the
  id ``auto_follow_id(rule, leader)``.

Flags live beside the spec: ``paused`` (over the API) and ``winding_down`` (a dropped auto follow
that still holds a position: reduce-only until flat). Both, and every API and auto follow,
survive a restart: every change is written to PostgreSQL before it is made in memory, so a
failed write changes nothing. ``started_ms`` is when the follow first began (entry "wait" ignores
leader positions opened before); it survives restarts, reloads, edits and pauses.

Listeners (``subscribe``) are called after every change, synchronously and without arguments;
they must not do I/O (set an event, bump a version) and read ``follows()`` when they run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import structlog

from hlcopy.clock import SYSTEM, Clock
from hlcopy.component import Component, Ready
from hlcopy.config import FollowConfig, HlcopyConfig, check_follow
from hlcopy.errors import HlcopyError, TransientError
from hlcopy.follow.copier import Follow
from hlcopy.record import record
from hlcopy.store import Store
from hlcopy.store.follows import FollowStore, Source, StoredFollow

log = structlog.get_logger()

MAX_FOLLOWS: Final = 1000
# What a PATCH may not change: the follow's identity.
_FIXED: Final = frozenset({"leader", "name"})


class FollowError(HlcopyError):
    """A follow operation refused. ``follow_id`` names the follow."""

    def __init__(self, message: str, follow_id: str | None = None) -> None:
        super().__init__(message)
        self.follow_id = follow_id


class FollowNotFound(FollowError):
    """No live follow has this id."""


class FollowConflict(FollowError):
    """The operation contradicts the follow's state or source (a TOML follow cannot be deleted
    over the API; an id is already in use; too many follows)."""


class FollowInvalid(FollowError):
    """The follow's fields break the TOML's rules. ``problems``: (key path, message) pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]], follow_id: str | None = None) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems), follow_id)
        self.problems = tuple(problems)


class FollowsNotLoaded(FollowError, TransientError):
    """The registry has not read the stored follows yet."""


def to_core(cfg: FollowConfig, started_ms: int, winding_down: bool) -> Follow:
    """The copier's ``Follow`` for a validated follow (pure). Delay, the daily-loss and drawdown
    limits, priority and enabled are the shell's and risk's, not the copier's."""
    hours = cfg.active_hours_utc
    return Follow(
        id=cfg.id,
        leader=cfg.leader,
        mode=cfg.mode,
        sizing=cfg.sizing,
        ratio=cfg.ratio,
        fixed_notional_usd=cfg.fixed_notional_usd,
        coins=frozenset(cfg.coins) if cfg.coins else None,
        exclude_coins=frozenset(cfg.exclude_coins),
        max_notional_per_coin_usd=cfg.max_notional_per_coin_usd,
        max_total_notional_usd=cfg.max_total_notional_usd,
        max_leverage=cfg.max_leverage,
        min_notional_policy=cfg.min_notional_policy,
        slippage_bps=cfg.slippage_bps,
        max_fill_age_ms=cfg.max_fill_age_ms,
        entry=cfg.entry,
        adopt_max_deviation_bps=cfg.adopt_max_deviation_bps,
        active_hours_utc=None if hours is None else (hours[0], hours[1]),
        winding_down=winding_down,
        started_ms=started_ms,
    )


def auto_follow_id(rule: str, leader: str) -> str:
    """The id of the follow an ``[[auto_follow]]`` rule makes for ``leader``."""
    return f"{rule}.{leader}"


@record
class FollowRecord:
    """One follow as the registry holds it: where it came from, its flags, its spec as
    validated, and the copier's ``Follow`` made from them."""

    id: str
    source: Source
    leader: str
    paused: bool
    winding_down: bool
    spec: FollowConfig
    core: Follow
    started_ms: int
    created_ms: int
    updated_ms: int

    @property
    def active(self) -> bool:
        """Whether the follow places orders: enabled in its spec and not paused."""
        return self.spec.enabled and not self.paused

    @property
    def priority(self) -> int:
        return self.spec.priority


def _record(row: StoredFollow, spec: FollowConfig) -> FollowRecord:
    return FollowRecord(
        row.id,
        row.source,
        row.leader,
        row.paused,
        row.winding_down,
        spec,
        to_core(spec, row.started_ms, row.winding_down),
        row.started_ms,
        row.created_ms,
        row.updated_ms,
    )


def _spec_json(spec: FollowConfig) -> dict[str, Any]:
    """What is stored: the fields as given (defaults stay the running hlcopy's)."""
    return spec.model_dump(mode="json", exclude_unset=True)


class FollowRegistry(Component):
    """Every follow, loaded from PostgreSQL and the TOML at start, re-applied on reload."""

    name = "follows"

    def __init__(self, store: Store, config: HlcopyConfig, clock: Clock = SYSTEM) -> None:
        self._rows = FollowStore(store)
        self._clock = clock
        self._toml: tuple[FollowConfig, ...] = tuple(config.follow)
        self._account = config.account.address
        self._records: dict[str, FollowRecord] = {}
        self._sorted: tuple[FollowRecord, ...] = ()
        self._loaded = False
        self._lock = asyncio.Lock()
        self._reload = asyncio.Event()
        self._draining = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self.version = 0
        self.reloads = 0
        self.dropped_rows = 0

    # -- reading ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    def follows(self) -> tuple[FollowRecord, ...]:
        """Every live follow, by id."""
        return self._sorted

    def get(self, follow_id: str) -> FollowRecord | None:
        return self._records.get(follow_id)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change; returns the call that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        await self.load()
        ready.set()
        while True:
            await self._reload.wait()
            if self._draining.is_set():
                return
            self._reload.clear()
            await self.apply_toml(self._toml)

    async def drain(self) -> None:
        self._draining.set()
        self._reload.set()

    def reconfigure(self, config: HlcopyConfig) -> None:
        self._account = config.account.address
        if tuple(config.follow) != self._toml:
            self._toml = tuple(config.follow)
            self._reload.set()

    async def load(self) -> None:
        """Read the stored follows, then apply the TOML's (idempotent; run calls it)."""
        async with self._lock:
            stored = await self._rows.live()
            records: dict[str, FollowRecord] = {}
            for row in stored:
                spec, problems = check_follow(row.spec)
                if spec is None or spec.id != row.id or spec.leader != row.leader:
                    # Written by another version, or damaged: never stop the start for it.
                    self.dropped_rows += 1
                    log.warning(
                        "stored follow unreadable; ignored", follow=row.id, problems=problems
                    )
                    continue
                records[row.id] = _record(row, spec)
            self._records = records
            self._loaded = True
            self._changed()
            await self._apply_toml_locked(self._toml)
        log.info("follows loaded", follows=len(self._records))

    async def apply_toml(self, follows: Sequence[FollowConfig]) -> None:
        """Make the TOML follows exactly ``follows`` (a reload); other sources are untouched."""
        async with self._lock:
            self._need_loaded()
            self._toml = tuple(follows)
            await self._apply_toml_locked(self._toml)
            self.reloads += 1

    async def _apply_toml_locked(self, follows: Sequence[FollowConfig]) -> None:
        now = self._clock.time_ms()
        wanted = {f.id: f for f in follows}
        rows: list[StoredFollow] = []
        for fid, spec in wanted.items():
            old = self._records.get(fid)
            if old is not None and old.source == "toml" and old.spec == spec:
                continue
            if old is not None and old.source != "toml":
                log.warning(
                    "a [[follow]] in the TOML takes over a follow of the same id",
                    follow=fid,
                    source=old.source,
                )
            keep = old is not None and old.leader == spec.leader
            rows.append(
                StoredFollow(
                    fid,
                    "toml",
                    spec.leader,
                    _spec_json(spec),
                    old.paused if keep and old else False,
                    old.winding_down if keep and old else False,
                    old.started_ms if keep and old else now,
                    old.created_ms if keep and old else now,
                    now,
                )
            )
        gone = [r.id for r in self._records.values() if r.source == "toml" and r.id not in wanted]
        if not rows and not gone:
            return
        await self._rows.sync(rows, gone, now)
        for fid in gone:
            del self._records[fid]
        for row in rows:
            self._records[row.id] = _record(row, wanted[row.id])
        self._changed()

    # -- changing -----------------------------------------------------------------------------

    async def add(
        self, spec: Mapping[str, Any] | FollowConfig, source: Literal["api", "auto"] = "api"
    ) -> FollowRecord:
        """Add a follow validated like a [[follow]] table. FollowInvalid names the fields;
        FollowConflict when its id is taken."""
        data = _spec_json(spec) if isinstance(spec, FollowConfig) else spec
        follow = self._check(data)
        async with self._lock:
            self._need_loaded()
            if follow.id in self._records:
                raise FollowConflict(f"follow {follow.id!r} already exists", follow.id)
            if len(self._records) >= MAX_FOLLOWS:
                raise FollowConflict(f"at most {MAX_FOLLOWS} follows", follow.id)
            now = self._clock.time_ms()
            row = StoredFollow(
                follow.id, source, follow.leader, _spec_json(follow), False, False, now, now, now
            )
            if not await self._rows.insert(row):
                raise FollowConflict(f"follow {follow.id!r} already exists", follow.id)
            record = self._records[row.id] = _record(row, follow)
            self._changed()
        log.info("follow added", follow=follow.id, source=source, leader=follow.leader)
        return record

    async def update(self, follow_id: str, patch: Mapping[str, Any]) -> FollowRecord:
        """Change some of a follow's fields (a null resets one to its default) and, with the
        key ``paused``, pause or resume it. A TOML follow takes only ``paused``."""
        changes = dict(patch)
        paused = changes.pop("paused", None)
        if paused is not None and not isinstance(paused, bool):
            raise FollowInvalid([("paused", "must be true or false")], follow_id)
        fixed = sorted(_FIXED & changes.keys())
        if fixed:
            raise FollowInvalid(
                [(k, "cannot be changed; remove the follow and add a new one") for k in fixed],
                follow_id,
            )
        async with self._lock:
            old = self._existing(follow_id)
            spec = old.spec
            if changes:
                if old.source == "toml":
                    raise FollowConflict(
                        "declared in the TOML: edit the file (only pausing works here)", follow_id
                    )
                data = {**_spec_json(old.spec), **changes}
                data = {k: v for k, v in data.items() if v is not None}
                spec = self._check(data, follow_id)
            new_paused = old.paused if paused is None else paused
            if spec == old.spec and new_paused == old.paused:
                return old
            return await self._save(old, spec=spec, paused=new_paused)

    async def pause(self, follow_id: str) -> FollowRecord:
        return await self.update(follow_id, {"paused": True})

    async def resume(self, follow_id: str) -> FollowRecord:
        return await self.update(follow_id, {"paused": False})

    async def set_winding_down(self, follow_id: str, winding_down: bool) -> FollowRecord:
        """Mark a follow reduce-only until flat (a dropped auto follow), or clear it."""
        async with self._lock:
            old = self._existing(follow_id)
            if old.winding_down == winding_down:
                return old
            return await self._save(old, winding_down=winding_down)

    async def remove(self, follow_id: str) -> FollowRecord:
        """Remove an API or auto follow; FollowConflict for a TOML one."""
        async with self._lock:
            old = self._existing(follow_id)
            if old.source == "toml":
                raise FollowConflict("declared in the TOML: pause it or edit the file", follow_id)
            await self._rows.remove(follow_id, self._clock.time_ms())
            del self._records[follow_id]
            self._changed()
        log.info("follow removed", follow=follow_id, source=old.source)
        return old

    # -- internals ----------------------------------------------------------------------------

    def _check(self, data: Any, follow_id: str | None = None) -> FollowConfig:
        follow, problems = check_follow(data, self._account)
        if follow is None:
            raise FollowInvalid(problems, follow_id)
        return follow

    def _need_loaded(self) -> None:
        if not self._loaded:
            raise FollowsNotLoaded("the stored follows are not loaded yet")

    def _existing(self, follow_id: str) -> FollowRecord:
        self._need_loaded()
        record = self._records.get(follow_id)
        if record is None:
            raise FollowNotFound(f"no follow {follow_id!r}", follow_id)
        return record

    async def _save(
        self,
        old: FollowRecord,
        *,
        spec: FollowConfig | None = None,
        paused: bool | None = None,
        winding_down: bool | None = None,
    ) -> FollowRecord:
        spec = old.spec if spec is None else spec
        row = StoredFollow(
            old.id,
            old.source,
            old.leader,
            _spec_json(spec),
            old.paused if paused is None else paused,
            old.winding_down if winding_down is None else winding_down,
            old.started_ms,
            old.created_ms,
            self._clock.time_ms(),
        )
        await self._rows.put(row)
        record = self._records[old.id] = _record(row, spec)
        self._changed()
        log.info(
            "follow changed",
            follow=old.id,
            paused=record.paused,
            winding_down=record.winding_down,
        )
        return record

    def _changed(self) -> None:
        self._sorted = tuple(self._records[k] for k in sorted(self._records))
        self.version += 1
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not undo a change already stored
                log.exception("follow listener failed")

    def stats(self) -> dict[str, Any]:
        by_source = dict.fromkeys(("toml", "api", "auto"), 0)
        for r in self._records.values():
            by_source[r.source] += 1
        return {
            "loaded": self._loaded,
            "follows": len(self._records),
            "by_source": by_source,
            "paused": sum(r.paused for r in self._records.values()),
            "winding_down": sum(r.winding_down for r in self._records.values()),
            "version": self.version,
            "reloads": self.reloads,
            "dropped_rows": self.dropped_rows,
        }
