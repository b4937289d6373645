"""Which of the runs an ingest would start are created, and how: the flow-control options
that act when a run is made from an event.

In the ingest's transaction, in this order:

1. `idempotency`: a run whose key was seen within the period is not created at all (the key
   is recorded in `idempotency_keys`; a key recorded by another open transaction waits for
   it, so two daemons cannot both take it as new);
2. `debounce`, `batch_events`: the event is buffered (`buffered_events`) instead; the
   function's claim makes the run of it later (runtime/flow.py);
3. `rate_limit`: over the limit, the run is recorded as `skipped` with the reason; the rate
   state rows are locked, so two daemons take turns;
4. `singleton`: with an active run of the same key, the new run is recorded as `skipped`
   (mode "skip"), or the active one is cancelled for it (mode "cancel"). The unique index
   `runs_singleton` backs this up: a run that would make two active ones is not created.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.db import buffers, flow, idempotency, limiters, runs
from orchestrator.db.runs import NewRun
from orchestrator.flow import FlowPolicy, key_of
from orchestrator.runtime.gcra import Rate


@dataclass(frozen=True)
class Source:
    """The event a new run comes from."""

    id: str
    seq: int
    received_at: Any
    payload: dict[str, Any]


@dataclass
class Admitted:
    runs: list[runs.NewRun] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # active runs a singleton cancels
    buffered: int = 0

    def may_refuse(self) -> bool:
        """Whether the database may refuse a run (see `refused`)."""
        return any(r.singleton_key is not None and r.skipped is None for r in self.runs)

    def refused(self, created: list[str]) -> list[NewRun]:
        """The singleton runs the database did not create (`runs_singleton` found an active
        run this ingest could not see: one made meanwhile from another event name), to
        record as skipped."""
        made = set(created)
        return [
            dataclasses.replace(r, id=str(uuid.uuid4()), skipped=_SINGLETON_RACE)
            for r in self.runs
            if r.singleton_key is not None and r.skipped is None and r.id not in made
        ]


def admit(
    conn: Any,
    proposed: list[tuple[runs.NewRun, Source]],
    policies: dict[str, FlowPolicy],
) -> Admitted:
    """Apply the options above to the proposed runs, in event order."""
    none = FlowPolicy()
    with_policy = [(run, src, policies.get(run.function_id, none)) for run, src in proposed]
    if not any(_admits(p) for _, _, p in with_policy):
        return Admitted([run for run, _ in proposed])
    with_policy = _dedupe(conn, with_policy)
    buffered = [(r, s, p) for r, s, p in with_policy if p.buffers]
    buffers.add(conn, [_buffered(r, s, p) for r, s, p in buffered])
    kept = [(r, s, p) for r, s, p in with_policy if not p.buffers]
    kept = _rate_limit(conn, kept)
    admitted = _singleton(conn, kept)
    admitted.buffered = len(buffered)
    return admitted


def _admits(policy: FlowPolicy) -> bool:
    return bool(policy.idempotency or policy.buffers or policy.rate_limit or policy.singleton)


Entry = tuple[runs.NewRun, Source, FlowPolicy]


def _dedupe(conn: Any, entries: list[Entry]) -> list[Entry]:
    """Drop runs whose idempotency key was seen (earlier in the batch, or in the table)."""
    pending: dict[int, tuple[str, str]] = {}
    seen: set[tuple[str, str]] = set()
    dropped: set[int] = set()
    claims: list[tuple[str, str, str, float]] = []
    for i, (run, src, policy) in enumerate(entries):
        if policy.idempotency is None:
            continue
        expression, period = policy.idempotency
        key = key_of(expression, {"event": src.payload})
        if key is None:  # no key (a missing field): no de-duplication
            continue
        pair = (run.function_id, key)
        if pair in seen:
            dropped.add(i)
            continue
        seen.add(pair)
        pending[i] = pair
        claims.append((run.function_id, key, src.id, period))
    fresh = idempotency.claim(conn, claims)
    return [
        e
        for i, e in enumerate(entries)
        if i not in dropped and (i not in pending or pending[i] in fresh)
    ]


def _buffered(run: runs.NewRun, src: Source, policy: FlowPolicy) -> buffers.Buffered:
    if policy.batch is not None:
        expression = policy.batch[2]
    else:
        assert policy.debounce is not None
        expression = policy.debounce[1]
    key = key_of(expression, {"event": src.payload}) or ""
    return buffers.Buffered(run.function_id, key, src.id, src.seq, src.payload, src.received_at)


def _rate_limit(conn: Any, entries: list[Entry]) -> list[Entry]:
    """Mark the runs over their function's rate limit as skipped."""
    by_function: dict[str, list[int]] = {}
    keys: dict[int, str] = {}
    for i, (run, src, policy) in enumerate(entries):
        if policy.rate_limit is not None:
            keys[i] = key_of(policy.rate_limit.key, {"event": src.payload}) or ""
            by_function.setdefault(run.function_id, []).append(i)
    out = list(entries)
    for fid in sorted(by_function):
        indexes = by_function[fid]
        limit = entries[indexes[0]][2].rate_limit
        assert limit is not None
        rate = Rate(limit.limit, limit.period, burst=limit.limit)
        now, state = limiters.load(conn, fid, "rate_limit", [keys[i] for i in indexes], lock=True)
        changed: dict[str, datetime] = {}
        for i in indexes:
            key = keys[i]
            tat = changed.get(key, state[key])
            if rate.allows(tat, now):
                changed[key] = rate.passed(tat, now)
                continue
            reason = f"rate limit reached: at most {limit.limit} runs per {limit.period:g} s" + (
                f" for key {key!r}" if limit.key is not None else ""
            )
            out[i] = _skip(entries[i], "RateLimited", "rate_limited", reason)
        limiters.store(conn, fid, "rate_limit", changed)
    return out


def _singleton(conn: Any, entries: list[Entry]) -> Admitted:
    """Skip, or let replace, the runs whose singleton key has an active run."""
    keyed: dict[int, str] = {}
    for i, (run, src, policy) in enumerate(entries):
        if policy.singleton is not None and run.skipped is None:
            keyed[i] = key_of(policy.singleton[0], {"event": src.payload}) or ""
    active: dict[tuple[str, str], list[str]] = {}
    pairs = sorted({(entries[i][0].function_id, k) for i, k in keyed.items()})
    for fid, key, run_id in flow.active_singletons(conn, pairs):
        active.setdefault((fid, key), []).append(run_id)
    admitted = Admitted()
    last = {(entries[i][0].function_id, k): i for i, k in keyed.items()}  # the latest wins
    for i, entry in enumerate(entries):
        run, _, policy = entry
        if i not in keyed:
            admitted.runs.append(run)
            continue
        pair = (run.function_id, keyed[i])
        mode = policy.singleton[1] if policy.singleton else "skip"
        if mode == "cancel" and last[pair] == i:
            admitted.replaced.extend(active.get(pair, []))
            admitted.runs.append(_singleton_run(run, keyed[i]))
        elif mode == "cancel":
            reason = "singleton: replaced by a later event in the same ingest"
            admitted.runs.append(_skip(entry, "SingletonSkipped", "singleton", reason)[0])
        elif pair in active:
            reason = f"singleton: run {active[pair][0]} of key {keyed[i]!r} is still active"
            admitted.runs.append(_skip(entry, "SingletonSkipped", "singleton", reason)[0])
        else:
            singleton_run = _singleton_run(run, keyed[i])
            active[pair] = [str(singleton_run.id)]
            admitted.runs.append(singleton_run)
    return admitted


def _singleton_run(run: runs.NewRun, key: str) -> runs.NewRun:
    """The run with its singleton key, and an id of its own (to tell whether the database
    created it)."""
    return dataclasses.replace(run, singleton_key=key, id=run.id or str(uuid.uuid4()))


_SINGLETON_RACE = {
    "type": "SingletonSkipped",
    "code": "singleton",
    "message": "singleton: another run of the key became active at the same moment",
}


def _skip(entry: Entry, kind: str, code: str, message: str) -> Entry:
    run, src, policy = entry
    skipped = {"type": kind, "code": code, "message": message}
    return dataclasses.replace(run, skipped=skipped), src, policy
