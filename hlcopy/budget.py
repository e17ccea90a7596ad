"""The REST weight budget: one per egress IP, every REST call waits on it.

Weight spent at time t comes back at t + 61 s, so no 60-second window ever holds more than the
limit (a plain token bucket, capacity N refilled at N/60 per second, could admit 2N in its first
minute). The extra second is for the road: the exchange counts a request when it arrives, we
count it when we send it, and a later request may travel faster than an earlier one. A read is
also kept a minute past its answer (``settle``), which comes after the exchange counted it
however long the road or the exchange's work took.

Lanes are served in priority order: orders and cancels, follower truth, leader truth, gap-fill,
scoring, enrichment. A request that does not fit yet is never delayed by a lower one; smaller
requests behind it go first only within the room its own admission will leave (backfilling), so a
large read waiting for weight to expire does not leave the window idle.

Orders never wait behind reads. The read lanes stop at ``limit x (1 - headroom)``; the headroom is
kept for orders. While orders flow, the reads also leave room for the orders of a whole window at
their pace: twice what exchange actions spent in the window, or their pace of the last
``PACE_HORIZON_S`` seconds over a whole window, whichever is more (at most half the read limit).
Reads can be paced too (``read_burst_pct``; live, ``LIVE_READ_BURST_PCT``): they spend at most
the read limit over a window, evenly, after a burst of that share. A window full of reads bunched
together would otherwise free nothing for up to a minute, and a burst of orders beyond the
headroom would wait that long; paced, the reads' weight comes back evenly, faster than a burst of
orders takes it.

Two reserves keep the lower lanes from filling the window to the brim, since weight spent stays
spent for a whole window: the truth reserve (``reserve_for_truth``) is out of reach of scoring and
enrichment, and the scoring reserve (``reserve_for_scoring``) out of reach of enrichment, so the
read that completes a candidate's score finds room at once instead of waiting up to a minute
behind exploration. The truth reserve is a window's worth of truth reads, so what the truth lanes
already spent in the window comes off it (as with the order reserve): kept whole, it would stand
idle beside the reads it was kept for. A request whose weight depends on the size of its answer
reserves the most it can cost and is refunded the rest (``settle``); one whose answer did not
reach us (timed out, cut off) keeps it all, since the exchange may have answered and charged it.
An HTTP 429 sends the read lanes into back-off.

Time comes from the injected clock (``clock.py``), so tests drive it without sleeping.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from hlcopy.clock import SYSTEM, TIMER_SLACK_S, Clock, Timer

EXCHANGE_WINDOW_S = 60.0
"""The exchange's window: what it counted leaves it this long after it counted it."""

BULK_PATIENCE_S = 30.0
"""How long a bulk request that does not fit lets smaller ones that do go first."""

LIVE_READ_BURST_PCT = 10.0
"""The share of the read limit a live daemon spends at once after a quiet spell; beyond it the
reads are paced (see the module docstring). Paper mode sends no orders and does not pace."""

PACE_HORIZON_S = 5.0
"""How far back the orders' pace is read: a burst of orders makes the reads leave room for a
whole window of orders at that pace until it is this old."""


class Lane(IntEnum):
    """Budget lanes, highest priority first."""

    ORDER = 0  # orders and cancels
    FOLLOWER = 1  # the follower's own positions
    LEADER = 2  # leaders' positions and fills
    GAPFILL = 3  # backfilling missed fills
    SCORING = 4  # ranking traders
    ENRICHMENT = 5  # roles, metadata, nice-to-haves


def extra_weight(items: int, per: int = 20) -> int:
    """Weight a response adds for its size: 1 per ``per`` items, rounded up (the docs leave the
    rounding open; up is the safe side)."""
    return math.ceil(items / per) if items > 0 else 0


@dataclass(slots=True)
class _Waiter:
    weight: int
    future: asyncio.Future[int]
    since: float
    likely: int  # what it will most likely cost (its weight, unless told otherwise)
    action: bool = False  # an exchange action: its room is kept for the next ones


class WeightBudget:
    """See the module docstring."""

    def __init__(
        self,
        weight_per_minute: int = 1200,
        headroom_pct: float = 10.0,
        *,
        window_s: float = 61.0,
        clock: Clock | None = None,
        backoff_base_s: float = 5.0,
        backoff_cap_s: float = 60.0,
        read_burst_pct: float = 100.0,
    ) -> None:
        if weight_per_minute <= 0 or not 0 <= headroom_pct < 100:
            raise ValueError("weight_per_minute must be positive and headroom_pct in [0, 100)")
        if not 0 < read_burst_pct <= 100:
            raise ValueError("read_burst_pct must be in (0, 100]")
        self.limit = weight_per_minute
        self.read_limit = max(1, math.floor(weight_per_minute * (1 - headroom_pct / 100)))
        self.window_s = window_s
        self._clock: Clock = clock or SYSTEM
        # The reads' pace: a bucket of ``read_burst`` refilled at the read limit per window (at
        # 100% it never binds before the window does).
        self.read_burst = max(1, math.floor(self.read_limit * read_burst_pct / 100))
        self._refill_per_s = self.read_limit / window_s
        self._tokens = float(self.read_burst)
        self._tokens_at = self._clock.monotonic()
        self._backoff = (backoff_base_s, backoff_cap_s)
        # (time, weight, lane, ticket): what was spent, oldest first.
        self._spent: deque[tuple[float, int, Lane, int]] = deque()
        self._actions: set[int] = set()  # tickets of exchange actions still in the window
        self._actions_used = 0
        self._tickets = 0
        self._used = 0
        self._used_by_lane = [0] * len(Lane)
        self._queues: list[deque[_Waiter]] = [deque() for _ in Lane]
        self._timer: Timer | None = None
        self._reads_blocked_until = 0.0
        self._bulk_reserve = 0  # kept free of the scoring and enrichment lanes for truth reads
        self._scoring_wanted = 0  # asked to keep free of the enrichment lane for scoring reads
        self._backoff_step = 0
        self._last_429 = -math.inf
        # Cumulative figures for stats.
        self._admitted = [0] * len(Lane)
        self._weight_total = [0] * len(Lane)
        self._waits = 0
        self._wait_s = 0.0
        self._max_wait_by_lane = [0.0] * len(Lane)  # orders never wait behind reads: shown here
        self._rate_limited = 0

    # -- the budget -----------------------------------------------------------------------

    async def acquire(
        self, weight: int, lane: Lane, *, likely: int | None = None, action: bool = False
    ) -> int:
        """Wait until ``weight`` may be spent in ``lane``, then spend it; the ticket returned
        names this spend for ``settle``. ``action``: an exchange action (an order, a cancel),
        whose weight the read lanes leave free while it is in the window.

        ``likely`` (a reservation's probable cost, refunded down to it within moments) lets a
        large reservation in once its likely cost fits the lane while its whole weight still
        fits the exchange's limit: the room it borrows meanwhile is the truth reserve's and the
        order headroom's, never beyond the limit, so it cannot draw a 429."""
        cap = self.limit if lane == Lane.ORDER else self.read_limit
        if weight <= 0 or weight > cap:
            raise ValueError(f"weight {weight} outside 1..{cap} for lane {lane.name}")
        probable = weight if likely is None else max(1, min(likely, weight))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        now = self._clock.monotonic()
        waiter = _Waiter(weight, future, now, probable, action)
        if not any(self._queues[ahead] for ahead in Lane if ahead <= lane):
            # Nobody waits in this lane or above: ``_dispatch`` would take this one first, and
            # admit it if it fits now. Deciding that alone spares an order the walk over every
            # waiting read (tens of them while tracking: 85 us per order, measured in-daemon).
            self._expire(now)
            if self._delay(weight, lane, now, probable) <= 0:
                self._admit(waiter, lane, now)
                return future.result()
        self._queues[lane].append(waiter)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            self._dispatch()  # a waiter gave up: the ones behind it may go now
            raise

    def debit(self, weight: int, lane: Lane) -> None:
        """Record weight the exchange charged on top (known only from the response)."""
        if weight > 0:
            self._spend(weight, lane, self._clock.monotonic())
            self._weight_total[lane] += weight

    def settle(self, ticket: int, unused: int = 0) -> None:
        """The answer to the spend ``ticket`` names came (or the request failed): give back
        ``unused`` of it, reserved but not charged, and keep the rest at least a minute from
        now.

        The exchange counted the request when it arrived, somewhere between our acquire and its
        answer, and a per-item charge once it knew the answer's size. Kept until a minute after
        the answer (and at least a window after the acquire), a spend never leaves our window
        before it leaves the exchange's, however long the road or the exchange's work took (a
        simulator answering large reads on a loaded machine took over a second: one 429, CI on
        8f808e1). A request whose weight depends on the size of its answer reserves the most
        it can cost and settles the difference: debiting afterwards instead could push a full
        window past the limit and draw a 429.
        """
        spent = self._spent
        for i in range(len(spent) - 1, -1, -1):  # it is recent: search from the newest
            t, w, lane, entry_ticket = spent[i]
            if entry_ticket != ticket:
                continue
            back = min(w, max(0, unused))
            # Counted from a minute before its expiry: its answer's, or its acquire's window.
            at = max(t, self._clock.monotonic() - (self.window_s - EXCHANGE_WINDOW_S))
            del spent[i]
            j = len(spent)
            while j > 0 and spent[j - 1][0] > at:  # the spends stay in time order
                j -= 1
            spent.insert(j, (at, w - back, lane, entry_ticket))
            if back:
                if entry_ticket in self._actions:
                    self._actions_used -= back
                if lane != Lane.ORDER:  # the bucket takes it back too, never past the burst
                    level = self._pace(self._clock.monotonic()) + back
                    self._tokens = min(float(self.read_burst), level)
                self._used -= back
                self._used_by_lane[lane] -= back
                self._weight_total[lane] -= back
                self._dispatch()
            return
        # Already outside the window: it no longer counts, nothing to give back.

    def reserve_for_truth(self, weight: int) -> None:
        """Keep ``weight`` of every window out of reach of the bulk lanes (scoring,
        enrichment), for the follower's, leaders' and watched traders' reads (their weight in a
        window; what they spent in it comes off). Without it, tracking spends a whole window in
        a burst and a leader's next read waits for it to expire (up to a minute). At most half
        the read budget: scoring never stops."""
        self._bulk_reserve = max(0, min(weight, self.read_limit // 2))
        self._dispatch()

    def reserve_for_scoring(self, weight: int) -> None:
        """Keep ``weight`` of every window out of reach of the enrichment lane, for the scoring
        reads to come (at most a quarter of what the truth reserve leaves the bulk lanes)."""
        self._scoring_wanted = max(0, weight)
        self._dispatch()

    @property
    def _truth_reserve(self) -> int:
        """What is kept for truth reads now: the reserve less what the truth lanes spent in the
        window. The reserve counts the reads of a 61-second window and they come every 60 (or
        oftener), so a read's own twin of a window ago has left it by the time it is due."""
        spent = self._used_by_lane[Lane.FOLLOWER] + self._used_by_lane[Lane.LEADER]
        return max(0, self._bulk_reserve - spent)

    @property
    def _scoring_reserve(self) -> int:
        """What is kept for scoring: as asked, within a quarter of what the truth reserve
        leaves the bulk lanes now (the truth reserve may grow after it was asked)."""
        return min(self._scoring_wanted, (self.read_limit - self._truth_reserve) // 4)

    def _order_reserve(self, now: float) -> int:
        """Weight the reads leave for orders (see the module docstring). Exchange actions
        only: the order lane's reads (a paper fill's book) keep no room."""
        recent = 0
        horizon = now - PACE_HORIZON_S
        for t, w, _, ticket in reversed(self._spent):
            if t <= horizon:
                break
            if ticket in self._actions:
                recent += w
        paced = math.ceil(recent * self.window_s / PACE_HORIZON_S)
        held = 2 * self._actions_used
        return min(max(held, paced), self.read_limit // 2)

    def _cap(self, lane: Lane) -> int:
        if lane == Lane.ORDER:
            return self.limit
        if lane == Lane.SCORING:
            return self.read_limit - self._truth_reserve
        if lane > Lane.SCORING:
            return self.read_limit - self._truth_reserve - self._scoring_reserve
        return self.read_limit

    def _pace(self, now: float) -> float:
        """The reads' bucket, refilled up to ``now`` (never past the burst)."""
        if now > self._tokens_at:
            refilled = self._tokens + (now - self._tokens_at) * self._refill_per_s
            self._tokens = min(float(self.read_burst), refilled)
            self._tokens_at = now
        return self._tokens

    def rate_limited(self) -> None:
        """The exchange answered 429: our count and its differ. Back the read lanes off."""
        now = self._clock.monotonic()
        self._rate_limited += 1
        if now - self._last_429 > self.window_s:
            self._backoff_step = 0
        self._last_429 = now
        base, cap = self._backoff
        delay = min(cap, base * 2**self._backoff_step)
        self._backoff_step += 1
        self._reads_blocked_until = max(self._reads_blocked_until, now + delay)
        self._dispatch()

    # -- internals ------------------------------------------------------------------------

    def _spend(self, weight: int, lane: Lane, now: float, action: bool = False) -> int:
        self._tickets += 1
        self._spent.append((now, weight, lane, self._tickets))
        if action:
            self._actions.add(self._tickets)
            self._actions_used += weight
        if lane != Lane.ORDER:
            self._tokens = self._pace(now) - weight
        self._used += weight
        self._used_by_lane[lane] += weight
        return self._tickets

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        spent = self._spent
        while spent and spent[0][0] <= horizon:
            _, weight, lane, ticket = spent.popleft()
            self._used -= weight
            self._used_by_lane[lane] -= weight
            if ticket in self._actions:
                self._actions.discard(ticket)
                self._actions_used -= weight

    def _delay(self, weight: int, lane: Lane, now: float, likely: int | None = None) -> float:
        """Seconds until ``weight`` fits in ``lane`` (0: it fits now): its ``likely`` cost
        within the lane's cap and its pace, and all of it within the exchange's limit."""
        if lane == Lane.ORDER:
            return self._until(weight, self.limit, now)
        need = weight if likely is None else likely
        delay = max(0.0, self._reads_blocked_until - now)
        cap = self._cap(lane)
        if weight > cap:  # too big for what the reserve leaves: it may use the reserve too
            cap = self.read_limit
        reserve = self._order_reserve(now)
        if reserve:
            # It fits as reads expire, or sooner as the reserve falls: looked at again by then.
            wait = self._until(need, cap - reserve, now, reads_only=True)
            delay = max(delay, min(wait, PACE_HORIZON_S))
        if self.read_burst < self.read_limit:  # a full bucket never binds before the window
            pace = min(need, self.read_burst)  # a read larger than the burst waits for a full one
            short = pace - self._pace(now)
            if short > 1e-9:
                delay = max(delay, short / self._refill_per_s)
        return max(delay, self._until(need, cap, now), self._until(weight, self.limit, now))

    def _until(self, need: int, limit: int, now: float, *, reads_only: bool = False) -> float:
        """Seconds until ``need`` more fits under ``limit`` as the window's spends expire
        (``reads_only``: counting only what is not an exchange action)."""
        used = self._used - self._actions_used if reads_only else self._used
        excess = used + need - limit
        if excess <= 0:
            return 0.0
        for t, w, _, ticket in self._spent:
            if reads_only and ticket in self._actions:
                continue
            excess -= w
            if excess <= 0:
                return max(0.0, t + self.window_s - now)
        return self.window_s  # more than the limit itself: never by expiry (refused earlier)

    def _slack(self, weight: int, lane: Lane, at: float, now: float) -> int:
        """Weight that may be spent now without delaying ``weight`` in ``lane`` past ``at``:
        what will still be unused in the window at ``at`` once that request is admitted (for a
        read, also within the reads' room and pace then)."""
        cap = self._cap(lane)
        horizon = at + TIMER_SLACK_S - self.window_s
        expired = expired_reads = 0
        for t, w, _, ticket in self._spent:
            if t > horizon:
                break
            expired += w
            if ticket not in self._actions:
                expired_reads += w
        slack = cap - (self._used - expired) - weight
        if lane != Lane.ORDER:
            reserve = self._order_reserve(now)
            if reserve:
                reads = self._used - self._actions_used - expired_reads
                slack = min(slack, cap - reserve - reads - weight)
            if self.read_burst < self.read_limit:  # a full bucket never binds before the window
                tokens = self._pace(now) + max(0.0, at - now) * self._refill_per_s
                slack = min(slack, math.floor(min(float(self.read_burst), tokens)) - weight)
        return max(0, slack)

    def _dispatch(self) -> None:
        """Admit waiters in lane order while they fit; arm one timer for the next.

        The first waiter that does not fit keeps its place: nothing is admitted that would
        delay it. Smaller requests behind it (in its lane or below) go meanwhile if they fit
        now and within the slack its own admission will leave ("backfilling"). In the bulk
        lanes (scoring, enrichment), whose work has no deadline, a request that does not fit
        lets the ones of its own lane that do go first — for ``BULK_PATIENCE_S``, after which it
        keeps its place like any other: a large read no longer leaves the window idle while it
        waits for weight to expire, and it still cannot starve. A lower lane never overtakes
        it: it only backfills within its slack.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock.monotonic()
        self._expire(now)
        blocked_delay: float | None = None
        slack = 0
        wake: float | None = None  # the soonest a passed-over bulk request needs a look
        patient: tuple[float, _Waiter] | None = None  # the first passed over, in this lane
        waiting_lane = Lane.SCORING
        for lane in Lane:
            if blocked_delay is None and patient is not None:
                # A patient request of a higher lane was passed over: from here on it blocks
                # like any other (lower lanes only backfill within its slack).
                blocked_delay, waiting = patient
                slack = self._slack(waiting.weight, waiting_lane, now + blocked_delay, now)
            patient = None
            queue = self._queues[lane]
            i = 0
            while i < len(queue):
                waiter = queue[i]
                if waiter.future.done():  # cancelled while waiting
                    del queue[i]
                    continue
                delay = self._delay(waiter.weight, lane, now, waiter.likely)
                if blocked_delay is None and delay > 0:
                    patience = waiter.since + BULK_PATIENCE_S - now
                    if lane >= Lane.SCORING and patience > 0:
                        # Passed over for now: the first of its fit or of its patience's end.
                        soon = min(delay, patience)
                        wake = soon if wake is None else min(wake, soon)
                        if patient is None:
                            patient, waiting_lane = (delay, waiter), lane
                        i += 1
                        continue
                    blocked_delay = delay
                    slack = self._slack(waiter.weight, lane, now + delay, now)
                    i += 1
                    continue
                if blocked_delay is not None and (delay > 0 or waiter.weight > slack):
                    i += 1
                    continue
                if blocked_delay is not None:
                    slack -= waiter.weight
                del queue[i]
                self._admit(waiter, lane, now)
        if blocked_delay is not None:
            wake = blocked_delay if wake is None else min(wake, blocked_delay)
        if wake is not None:
            # A hair late, so rounding cannot leave the weight a hair unexpired.
            self._timer = self._clock.call_later(wake + TIMER_SLACK_S, self._dispatch)

    def _admit(self, waiter: _Waiter, lane: Lane, now: float) -> None:
        ticket = self._spend(waiter.weight, lane, now, waiter.action)
        self._admitted[lane] += 1
        self._weight_total[lane] += waiter.weight
        waited = now - waiter.since
        if waited > 0:
            self._waits += 1
            self._wait_s += waited
            self._max_wait_by_lane[lane] = max(self._max_wait_by_lane[lane], waited)
        waiter.future.set_result(ticket)

    def used(self) -> int:
        """Weight spent within the current window."""
        self._expire(self._clock.monotonic())
        return self._used

    def stats(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        self._expire(now)
        return {
            "limit_per_minute": self.limit,
            "read_limit_per_minute": self.read_limit,
            "truth_reserve": self._bulk_reserve,
            "truth_reserve_left": self._truth_reserve,
            "scoring_reserve": self._scoring_reserve,
            "used_last_window": self._used,
            "utilization": round(self._used / self.limit, 4),
            "lanes": {
                lane.name.lower(): {
                    "used_last_window": self._used_by_lane[lane],
                    "requests": self._admitted[lane],
                    "weight_total": self._weight_total[lane],
                    "waiting": sum(1 for w in self._queues[lane] if not w.future.done()),
                    "wait_s_max": round(self._max_wait_by_lane[lane], 3),
                }
                for lane in Lane
            },
            "waits": self._waits,
            "wait_s_total": round(self._wait_s, 3),
            "wait_s_max": round(max(self._max_wait_by_lane), 3),
            "rate_limited": self._rate_limited,
            "read_backoff_s": round(max(0.0, self._reads_blocked_until - now), 3),
            "order_reserve": self._order_reserve(now),
            "read_burst": self.read_burst,
            "read_pace_left": max(0, math.floor(self._pace(now))),
        }
