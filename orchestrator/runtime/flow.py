"""Claiming the runs of flow-controlled functions: concurrency, throttle, priority, and the
debounced or batched runs made from buffered events.

Such a function is claimed on its own, in one transaction under its flow-control lock
(db/flow.py), which any daemon takes for it: first the buffered events that are due become
runs; then the runs executing are counted by key, the due runs are read in claim order
(priority, then due time; taking turns by key when a limit has one), and each is taken if
every limit allows it: concurrency by the counts, a throttle by its rate state (db/limiters.py)
for a run not started yet. The counts cannot be stale: every claim of the function commits
before the next one reads them.

A function that could not take all the room it was offered is not looked at again until
something may have changed: a run of it ended here, new runs or events arrived (`poke`), its
throttle's next slot or its next buffered run falls due, or `poll_interval` passed (its runs
may have ended on another daemon).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator.db import buffers, flow, limiters, runs
from orchestrator.db.direct import Direct
from orchestrator.flow import FlowPolicy
from orchestrator.functions import FunctionDef
from orchestrator.runtime.gcra import Rate

FAIR_KEYS = 256  # keys read per claim when runs take turns by key (then the next ones)
BACKFILL_EVERY = 60.0  # seconds between looks for due runs without a flow_key
THROTTLE_SLICE = 0.001  # seconds of a fast throttle's starts one claim may take at once


@dataclass
class Outcome:
    claimed: list[runs.ClaimedRun] = field(default_factory=list)
    retry_in: float | None = None  # seconds until this function is worth a new look


class FlowClaimer:
    def __init__(
        self,
        direct: Direct,
        registry: dict[str, FunctionDef],
        *,
        owner: str,
        lease_seconds: float,
        poll_interval: float,
        log: Any,
    ) -> None:
        self.direct = direct
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.log = log
        self.policies = {fid: f.policy() for fid, f in registry.items()}
        self.is_async = {fid: f.is_async for fid, f in registry.items()}  # its lane
        self.function_ids = sorted(fid for fid, p in self.policies.items() if p.claims)
        self.watches = {
            fid: [
                runs.CancelWatch(fid, i, c.event, c.match, c.if_, c.timeout)
                for i, c in enumerate(registry[fid].cancel_on)
            ]
            for fid in self.function_ids
        }
        self._lock = threading.Lock()
        self._not_before: dict[str, float] = {}  # monotonic time of a function's next look
        self._mine: dict[str, str] = {}  # run id → function id, of the runs claimed here
        self._start = 0
        self._backfilled: dict[str, float] = {}  # fair function → next flow_key backfill
        self._after: dict[str, str | None] = {}  # fair function → the last key its claim read

    # -- the functions it claims (from the daemon's loop thread) ---------------------------

    def serve(self, function_id: str, fdef: FunctionDef) -> bool:
        """Take on (or update) a function; returns whether its runs are claimed here (it is
        flow-controlled). Lists are replaced, never changed in place: other threads read them."""
        self.forget(function_id)
        policy = fdef.policy()
        self.policies = self.policies | {function_id: policy}
        self.is_async = self.is_async | {function_id: fdef.is_async}
        if not policy.claims:
            return False
        watches = [
            runs.CancelWatch(function_id, i, c.event, c.match, c.if_, c.timeout)
            for i, c in enumerate(fdef.cancel_on)
        ]
        self.watches = self.watches | {function_id: watches}
        self.function_ids = sorted([*self.function_ids, function_id])
        return True

    def forget(self, function_id: str) -> None:
        """Stop claiming a function's runs (an SDK app no longer has it)."""
        self.function_ids = [f for f in self.function_ids if f != function_id]
        self.watches = {f: w for f, w in self.watches.items() if f != function_id}

    # -- when to look again (called from other threads too) ------------------------------

    def poke(self, function_id: str | None = None) -> None:
        """Look at the function (every one by default) again at the next pass."""
        now = time.monotonic()
        with self._lock:
            for fid in [function_id] if function_id else self.function_ids:
                if now < self._not_before.get(fid, 0.0):
                    self._not_before[fid] = now

    def finished(self, run_id: str) -> None:
        """A run claimed here ended or suspended: its function may take another now."""
        with self._lock:
            fid = self._mine.pop(run_id, None)
        if fid is not None:
            self.poke(fid)

    def next_in(self) -> float | None:
        """Seconds until some function is worth a new look."""
        with self._lock:
            if not self._not_before:
                return None
            return max(0.0, min(self._not_before.values()) - time.monotonic())

    # -- claiming ------------------------------------------------------------------------

    def claim(self, rooms: dict[bool, int], *, suspects: bool = False) -> list[runs.ClaimedRun]:
        """Claim runs of the flow-controlled functions, up to `rooms[lane]` of the plain
        (False) and the async (True) ones (only runs that were in a step body when a worker
        died, with `suspects`)."""
        claimed: list[runs.ClaimedRun] = []
        taken = dict.fromkeys(rooms, 0)
        now = time.monotonic()
        # each pass starts with the next function, so one with a long backlog and no limit
        # that holds it (a priority alone) cannot take every free thread pass after pass
        self._start = (self._start + 1) % max(1, len(self.function_ids))
        order = self.function_ids[self._start :] + self.function_ids[: self._start]
        for fid in order:
            lane = self.is_async[fid]
            left = rooms.get(lane, 0) - taken.get(lane, 0)
            if left <= 0:
                continue
            with self._lock:
                if not suspects and self._not_before.get(fid, 0.0) > now:
                    continue
            outcome = self.claim_function(fid, left, suspects=suspects)
            claimed.extend(outcome.claimed)
            taken[lane] = taken.get(lane, 0) + len(outcome.claimed)
            with self._lock:
                self._mine.update((c.id, fid) for c in outcome.claimed)
                if suspects:
                    continue
                if len(outcome.claimed) < left:  # held back: look again when told, or later
                    wait = self.poll_interval if outcome.retry_in is None else outcome.retry_in
                    self._not_before[fid] = now + min(wait, self.poll_interval)
                else:  # it took all the room: look again as soon as there is more
                    self._not_before[fid] = now
        return claimed

    def claim_function(self, fid: str, room: int, *, suspects: bool = False) -> Outcome:
        """Claim up to `room` runs of one flow-controlled function, by its limits; the
        outcome says when to look again if it held some back (`retry_in`, seconds)."""
        policy = self.policies[fid]

        def claim(conn: Any) -> Outcome:
            return self._claim_function(conn, fid, policy, room, suspects)

        return self.direct.run(claim, retry_for=0)

    def _claim_function(
        self, conn: Any, fid: str, policy: FlowPolicy, room: int, suspects: bool
    ) -> Outcome:
        # planned with the claim connection's settings: the due runs are walked in index order
        with conn.transaction():
            flow.lock_function(conn, fid)
            retry_in = (
                self._form_runs(conn, fid, policy) if policy.buffers and not suspects else None
            )
            fair, per_key = _fairness(policy)
            if fair and not suspects and time.monotonic() >= self._backfilled.get(fid, 0.0):
                flow.backfill_flow_keys(conn, fid)
                self._backfilled[fid] = time.monotonic() + BACKFILL_EVERY
            now, executing = flow.running(conn, fid)
            priority = policy.priority is not None
            if fair:
                candidates, self._after[fid] = flow.fair_candidates(
                    conn,
                    fid,
                    after=self._after.get(fid),
                    keys=FAIR_KEYS,
                    per_key=per_key,
                    priority=priority,
                    suspects=suspects,
                )
            else:
                candidates = flow.candidates(
                    conn, fid, limit=room, priority=priority, suspects=suspects
                )
            throttle = _rate(policy)
            fresh_keys = [c.throttle_key or "" for c in candidates if c.fresh]
            state = (
                limiters.load(conn, fid, "throttle", fresh_keys, lock=False)[1] if throttle else {}
            )
            chosen, next_at = _choose(
                policy, throttle, executing, candidates, dict(state), now, room
            )
            claimed = flow.claim_ids(
                conn, chosen, owner=self.owner, lease_seconds=self.lease_seconds
            )
            if throttle is not None:
                limiters.store(
                    conn, fid, "throttle", _advance(throttle, state, candidates, claimed, now)
                )
        waits = [retry_in, None if next_at is None else (next_at - now).total_seconds()]
        known = [w for w in waits if w is not None]
        return Outcome(claimed, min(known) if known else None)

    def _form_runs(self, conn: Any, fid: str, policy: FlowPolicy) -> float | None:
        """Make runs of the buffered events that are due; returns the seconds until the next
        buffered run of the function is due, if any."""
        now, groups = buffers.groups(conn, fid)
        made: list[runs.NewRun] = []
        next_at: datetime | None = None
        for group in groups:
            due = _buffer_due(policy, group, now)
            if due > now:
                next_at = due if next_at is None else min(next_at, due)
                continue
            for size in _buffer_takes(policy, group, now):
                items = buffers.take(conn, fid, group.key, size)
                if items:
                    made.append(self._buffered_run(fid, policy, items))
        if made:
            runs.create_many(conn, made, self.watches.get(fid))
            self.log.debug("buffered runs made", function_id=fid, runs=len(made))
            return 0.0  # what is left of the groups is judged again at once
        return None if next_at is None else max(0.0, (next_at - now).total_seconds())

    def _buffered_run(
        self, fid: str, policy: FlowPolicy, items: list[buffers.Buffered]
    ) -> runs.NewRun:
        if policy.batch is not None:
            lead, events, key = items[0], [i.event for i in items], f"batch:{items[0].event_id}"
        else:  # debounce: the last event
            lead, events, key = items[-1], [items[-1].event], f"debounce:{items[-1].event_id}"
        keys = policy.run_keys(lead.event)
        return runs.NewRun(
            fid,
            events,
            event_id=lead.event_id,
            idempotency_key=key,
            since=lead.received_at,
            **keys.fields(),
        )


def _fairness(policy: FlowPolicy) -> tuple[bool, int]:
    """Whether due runs take turns by key (`runs.flow_key`: the first keyed concurrency
    constraint's key, else the throttle's), and how many of one key can be taken at once."""
    keyed = policy.keyed_concurrency
    if keyed is not None:
        return True, policy.concurrency[keyed][0]
    if policy.throttle is not None and policy.throttle.key is not None:
        return True, policy.throttle.burst
    return False, 1


def _rate(policy: FlowPolicy) -> Rate | None:
    """The throttle's rate. A claim judges every run by one clock reading, so at most
    `burst` of a key start per claim; above a thousand starts a second, a claim may take one
    millisecond's worth at once (THROTTLE_SLICE), or the claims, not the throttle, would set
    the pace."""
    t = policy.throttle
    if t is None:
        return None
    return Rate(t.limit, t.period, max(t.burst, int(t.limit * THROTTLE_SLICE / t.period)))


def _choose(  # noqa: PLR0917 (a pure function of the claim's inputs, named at its one call)
    policy: FlowPolicy,
    throttle: Rate | None,
    executing: list[tuple[list[str] | None, int]],
    candidates: list[flow.Candidate],
    state: dict[str, datetime],
    now: datetime,
    room: int,
) -> tuple[list[str], datetime | None]:
    """The candidates every limit allows, in order; and when a throttled one may start."""
    counts: list[dict[str, int]] = [defaultdict(int) for _ in policy.concurrency]
    for keys, n in executing:
        for i, k in enumerate(_keys(policy, keys)):
            counts[i][k] += n
    chosen: list[str] = []
    next_at: datetime | None = None
    for cand in candidates:
        if len(chosen) >= room:
            break
        keys = _keys(policy, cand.concurrency_keys)
        if any(counts[i][k] >= policy.concurrency[i][0] for i, k in enumerate(keys)):
            continue
        if throttle is not None and cand.fresh:
            tk = cand.throttle_key or ""
            if not throttle.allows(state[tk], now):
                at = throttle.next_at(state[tk])
                next_at = at if next_at is None else min(next_at, at)
                continue
            state[tk] = throttle.passed(state[tk], now)
        for i, k in enumerate(keys):
            counts[i][k] += 1
        chosen.append(cand.id)
    return chosen, next_at


def _keys(policy: FlowPolicy, recorded: list[str] | None) -> list[str]:
    """The key of each concurrency constraint for a run ('' for one without a key, or for a
    run recorded before the function had the constraint)."""
    return [
        (recorded[i] if recorded is not None and i < len(recorded) else "") if key else ""
        for i, (_, key) in enumerate(policy.concurrency)
    ]


def _advance(
    throttle: Rate,
    state: dict[str, datetime],
    candidates: list[flow.Candidate],
    claimed: list[runs.ClaimedRun],
    now: datetime,
) -> dict[str, datetime]:
    """The throttle state after the runs actually claimed started (a chosen run that was
    claimed by nobody, because it stopped being due meanwhile, does not use a slot)."""
    fresh = {c.id: c.throttle_key or "" for c in candidates if c.fresh}
    changed: dict[str, datetime] = {}
    for run in claimed:
        key = fresh.get(run.id)
        if key is not None:
            changed[key] = throttle.passed(changed.get(key, state[key]), now)
    return changed


def _buffer_due(policy: FlowPolicy, group: buffers.Group, now: datetime) -> datetime:
    """When the group's next run is due: a batch when full or `timeout` after its first
    event; a debounce `period` after its last event, or `timeout` after its first."""
    if policy.batch is not None:
        size, timeout, _ = policy.batch
        return now if group.count >= size else group.first_at + timedelta(seconds=timeout)
    assert policy.debounce is not None
    period, _, cap = policy.debounce
    due = group.last_at + timedelta(seconds=period)
    if cap is not None:
        due = min(due, group.first_at + timedelta(seconds=float(cap)))
    return due


def _buffer_takes(policy: FlowPolicy, group: buffers.Group, now: datetime) -> list[int]:
    """How many events each run made from a due group takes: a debounce, all of them (the
    run keeps the last); a batch, full batches, and the rest too once the first event has
    waited `timeout` (else the rest waits for its own timeout)."""
    if policy.batch is None:
        return [group.count]
    size, timeout, _ = policy.batch
    full, rest = divmod(group.count, size)
    timed_out = group.first_at + timedelta(seconds=timeout) <= now
    return [size] * full + ([rest] if rest and timed_out else [])
