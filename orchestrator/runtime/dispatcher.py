"""The dispatcher: ingest new events, claim due runs for the free worker slots, hand them over.

It is ticked on every pass of the daemon's loop (it has no interval of its own). A tick:

1. ingests, when told that events arrived (`notified`) and at least every `poll_interval` (a
   NOTIFY can be lost across a reconnect, or never sent through a pooler). Each ingest
   transaction also claims due runs for the free slots (`IngestClaim`), so a new event's run
   starts without a claim transaction of its own;
2. claims due runs into the pool, lane by lane: runs of plain functions go to worker threads,
   those of async functions to event loops, each claimed for its own free slots; the
   flow-controlled functions are claimed on their own (runtime/flow.py), taking turns with
   the others at going first;
3. looks for suspects (runs that were in a step body when a worker died) for the quarantine
   process after a crash here (`look_for_suspects`), else once per `poll_interval`;
4. keeps the next-due bookkeeping the loop sleeps by (`wait_limit`): when a lane drained,
   the time until its next run falls due; a run of a full lane finishing wakes the loop.

Under a backlog it claims in batches: when only a few threads are free, it holds the claim
for up to CLAIM_HOLD seconds for more, rather than make one claim transaction per finished run.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator.config import Config
from orchestrator.db import runs
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.executor import Task
from orchestrator.functions import FunctionDef
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.pool import WorkerPool
from orchestrator.runtime.service import Looper

CLAIM_HOLD = 0.002  # seconds a claim may wait for more free threads under a backlog


class Dispatcher(Looper):
    name = "dispatcher"  # no interval: ticked on every pass of the loop

    def __init__(
        self,
        *,
        owner: str,
        config: Config,
        registry: dict[str, FunctionDef],
        db: Database,
        direct: Direct,
        pool: WorkerPool,
        ingester: Ingester,
        flow: FlowClaimer,
        metrics: DaemonMetrics,
    ) -> None:
        super().__init__()
        self.owner = owner
        self.cfg = config
        self.db = db
        self.direct = direct  # the hot statements (ingest, claims): see db/direct.py
        self.pool = pool
        self.ingester = ingester
        self.flow = flow
        self.metrics = metrics
        self.claim_batch = max(1, config.workers * config.concurrency // 4)
        flow_ids = set(flow.function_ids)
        plain_ids = [f for f in sorted(registry) if f not in flow_ids]
        self.lanes = {
            lane: [f for f in plain_ids if registry[f].is_async == lane] for lane in (False, True)
        }
        # The ingest's claim leaves out functions with `cancel_on` conditions: it is sent
        # before the batch's events are matched against them, and a run one of its own
        # events cancels must end cancelled, not start. A NOTIFY brings them to the claim.
        self.ingest_lanes = {
            lane: [f for f in ids if not registry[f].cancel_on] for lane, ids in self.lanes.items()
        }
        self.events_hint = threading.Event()  # an event arrived since the last ingest
        self.ingested_at = 0.0
        self.suspects_hint = threading.Event()  # a worker crash here made suspects
        self.suspects_at = 0.0
        self.backlogged = False
        self.hold_until: float | None = None
        self.next_due_in: float | None = None
        self.flow_due_at: float | None = None  # when a flow-controlled run falls due
        self.flow_first = False

    # -- the functions it serves (from the loop thread) ----------------------------------

    def serve(self, function_id: str, fdef: FunctionDef) -> None:
        """Take on (or update) a function: its runs go to its lane, or to the flow claimer."""
        self.forget(function_id)
        if self.flow.serve(function_id, fdef):
            return
        lane = fdef.is_async
        self.lanes = self.lanes | {lane: sorted([*self.lanes[lane], function_id])}
        if not fdef.cancel_on:
            ingest = sorted([*self.ingest_lanes[lane], function_id])
            self.ingest_lanes = self.ingest_lanes | {lane: ingest}

    def forget(self, function_id: str) -> None:
        """Stop claiming a function's runs."""
        self.flow.forget(function_id)
        self.lanes = {k: [f for f in v if f != function_id] for k, v in self.lanes.items()}
        self.ingest_lanes = {
            k: [f for f in v if f != function_id] for k, v in self.ingest_lanes.items()
        }

    # -- told from other threads ---------------------------------------------------------

    def notified(self, channel: str) -> None:
        """A NOTIFY arrived (the session's thread)."""
        if channel == "orchestrator_events":
            self.events_hint.set()
        elif channel == "orchestrator_functions":  # one was removed or synced: read again
            self.ingester.invalidate()
        self.flow.poke()

    def finished(self, run_id: str, due_at: datetime | None) -> None:
        """A run handed over here ended or suspended until `due_at` (the pool's thread)."""
        self.flow.finished(run_id)
        if due_at is not None:
            due_in = (due_at - datetime.now(UTC)).total_seconds()
            if self.next_due_in is None or due_in < self.next_due_in:
                self.next_due_in = due_in

    def look_for_suspects(self) -> None:
        self.suspects_hint.set()

    def wait_limit(self) -> float | None:
        """The longest the loop may sleep before the next tick (None: no limit of its own)."""
        limits = []
        if self.hold_until is not None:
            limits.append(self.hold_until - time.monotonic())
        if self.next_due_in is not None:
            limits.append(max(self.next_due_in, 0.0) + 0.001)
        flow_in = self.flow.next_in()
        if flow_in is not None:
            limits.append(flow_in + 0.001)
        return min(limits, default=None)

    # -- a tick --------------------------------------------------------------------------

    def run(self, now: float) -> None:
        if self.events_hint.is_set() or now - self.ingested_at >= self.cfg.poll_interval:
            self.events_hint.clear()
            self.ingested_at = now
            self._ingest()
        if self.flow_due_at is not None and now >= self.flow_due_at:
            self.flow_due_at = None
            self.flow.poke()
        self._dispatch()

    def _ingest(self) -> None:
        while self._ingest_batch() >= self.cfg.ingest_batch_size:
            pass

    def _ingest_batch(self) -> int:
        along = IngestClaim(self)
        taken = self.ingester.tick(then=along)
        self.metrics.events_ingested(taken)
        self.submit(along.claimed, suspects=False)
        if taken:  # it may have made runs of flow-controlled functions
            self.flow.poke()
        return taken

    def _dispatch(self) -> None:
        if self._hold_claims(time.monotonic()):
            return
        # flow-controlled functions and the others take turns at going first
        self.flow_first = not self.flow_first
        if self.flow_first:
            self.submit(self.flow.claim(self.rooms(ahead=False)), suspects=False)
        drained = self._claim_into_pool(suspects=False)
        if not self.flow_first:
            self.submit(self.flow.claim(self.rooms(ahead=False)), suspects=False)
        self.backlogged = any(ids and lane not in drained for lane, ids in self.lanes.items())
        self._claim_suspects()
        self.next_due_in = None  # a full lane: a run of it finishing wakes the loop
        if drained:
            self._sleep_until_due(drained)

    def _claim_suspects(self) -> None:
        # Suspects are rare: look for them after a crash here, else once per poll interval,
        # not on every pass (the quarantine is nearly always free, so that would be one more
        # transaction per finished run on the hot path).
        now = time.monotonic()
        if self.suspects_hint.is_set() or now - self.suspects_at >= self.cfg.poll_interval:
            self.suspects_hint.clear()
            self.suspects_at = now
            self.submit(self.flow.claim(self.rooms(quarantine=True), suspects=True), suspects=True)
            self._claim_into_pool(suspects=True)

    def _sleep_until_due(self, drained: set[bool]) -> None:
        """No more due work in these lanes: sleep until their next run falls due."""
        quiet = [fid for lane in drained for fid in self.lanes[lane]]
        with self.db.transaction() as conn:
            self.next_due_in = runs.seconds_until_next_due(conn, quiet)
            flow_due_in = runs.seconds_until_next_due(conn, self.flow.function_ids, future=True)
        if flow_due_in is not None:
            self.flow_due_at = time.monotonic() + flow_due_in
            due_in = self.next_due_in
            self.next_due_in = flow_due_in if due_in is None else min(due_in, flow_due_in)

    def _hold_claims(self, now: float) -> bool:
        """While due work is waiting and few threads are free, hold the claim for up to
        CLAIM_HOLD seconds so that one transaction claims for several threads."""
        free = self.pool.free_slots()
        if not self.backlogged or free == 0 or free >= self.claim_batch:
            self.hold_until = None
            return False
        if self.hold_until is None:
            self.hold_until = now + CLAIM_HOLD
        if now < self.hold_until:
            return True
        self.hold_until = None
        return False

    def rooms(self, *, quarantine: bool = False, ahead: bool = True) -> dict[bool, int]:
        """Free slots by lane: False for plain functions' runs, True for async ones'. Without
        `ahead`, idle threads only: a flow-controlled run is claimed only when it can start
        at once, so its limits hold at its body's start (a throttle's spacing, a priority)."""
        return {
            lane: self.pool.free_slots(quarantine=quarantine, is_async=lane, ahead=ahead)
            for lane in self.lanes
        }

    def _claim_into_pool(self, *, suspects: bool) -> set[bool]:
        """Claim as many due runs as there are free slots in each lane, and hand them over.
        Returns the lanes drained: those where fewer were due than there was room for."""
        drained = set()
        for lane, function_ids in self.lanes.items():
            while True:
                free = self.pool.free_slots(quarantine=suspects, is_async=lane)
                if not function_ids or free <= 0:
                    break
                claim = functools.partial(self.claim, limit=free, suspects=suspects, is_async=lane)
                claimed = self.direct.run(claim, retry_for=0)
                self.submit(claimed, suspects=suspects)
                if len(claimed) < free:
                    break
            if not function_ids or free > 0:
                drained.add(lane)
        return drained

    def claim(
        self,
        conn: Any,
        limit: int,
        *,
        suspects: bool = False,
        is_async: bool = False,
        function_ids: list[str] | None = None,
    ) -> list[runs.ClaimedRun]:
        return runs.claim_due(
            conn,
            owner=self.owner,
            limit=limit,
            lease_seconds=self.cfg.lease_duration,
            function_ids=self.lanes[is_async] if function_ids is None else function_ids,
            suspects=suspects,
        )

    def submit(self, claimed: list[runs.ClaimedRun], *, suspects: bool) -> None:
        """Hand claimed runs to the pool (its quarantine process, for `suspects`)."""
        tasks = [Task.of(c) for c in claimed]
        if tasks:
            self.pool.submit(tasks, quarantine=suspects)
        for c in claimed:
            if c.attempts == 1:  # its first claim: the run starts
                self.metrics.run_started(c.function_id)


class IngestClaim:
    """The dispatcher's claim inside one ingest transaction (runtime/ingest.py `ClaimAlong`):
    due runs for each lane's free slots, on the ingest's connection, so that their leases
    commit with the ingest. Each lane's claim is sent before any is read (one round trip for
    all). It keeps what it claimed in `claimed`, for the dispatcher to hand over once the
    ingest has committed (a rolled-back ingest hands over nothing: it raised)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.claimed: list[runs.ClaimedRun] = []

    def __call__(self, conn: Any) -> Callable[[], set[str]]:
        dispatcher = self.dispatcher
        # called again for a batch the ingest in SQL left (runtime/ingest.py): the runs its
        # first call claimed are not in the pool yet, but take their slots
        async_ids = set(dispatcher.lanes[True])
        held = Counter(c.function_id in async_ids for c in self.claimed)
        sent = [
            runs.claim_due_sent(
                conn,
                owner=dispatcher.owner,
                limit=free - held[lane],
                lease_seconds=dispatcher.cfg.lease_duration,
                function_ids=dispatcher.ingest_lanes[lane],
            )
            for lane, free in dispatcher.rooms().items()
        ]

        def claimed() -> set[str]:
            for fetch in sent:
                self.claimed.extend(fetch())
            return {c.id for c in self.claimed}

        return claimed
