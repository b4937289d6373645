"""The daemon: the composition root that wires the services and runs the scheduler loop.

Each pass of the loop ingests new events, claims as many due runs as there are free worker
slots, and on its own intervals heartbeats, renews leases and (leader only) rescues runs and
fires cron. It wakes on a LISTEN/NOTIFY hint, on a worker finishing, at the next due time, or
after `poll_interval` at the latest. Database errors are logged and retried; they never stop
the daemon.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from orchestrator import log as logging
from orchestrator.app import Orchestrator
from orchestrator.config import Config
from orchestrator.db import daemons, functions, migrate, runs
from orchestrator.db.connect import check_schema
from orchestrator.db.database import Database, DatabaseError
from orchestrator.db.direct import Direct
from orchestrator.db.session import Session, notify_runs
from orchestrator.engine.executor import Task
from orchestrator.errors import first_line
from orchestrator.redact import redact_url
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.metrics import TallyDelta
from orchestrator.runtime.pool import Handback, WorkerPool
from orchestrator.runtime.rescuer import Rescuer
from orchestrator.runtime.retention import Policy, Retention
from orchestrator.runtime.telemetry import Telemetry
from orchestrator.runtime.unserved import UnservedWatch
from orchestrator.runtime.upkeep import Upkeep

CLAIM_HOLD = 0.002  # seconds a claim may wait for more free threads under a backlog


class Interval:
    """Calls `fn` at most every `seconds` when ticked."""

    def __init__(self, seconds: float, fn: Callable[[], Any]) -> None:
        self.seconds = seconds
        self.fn = fn
        self.next_at = 0.0

    def tick(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = now + self.seconds
            self.fn()


class Daemon:
    def __init__(self, app: Orchestrator, app_path: str, url: str, config: Config) -> None:
        self.app = app
        self.app_path = app_path
        self.url = url
        self.cfg = config
        self.id = str(uuid.uuid4())
        self.registry = app.functions
        self.function_ids = sorted(self.registry)
        self.version = config.version or app.version()
        self.log = logging.get("daemon", daemon_id=self.id)
        self.db = Database(url, pool_size=4, application_name="orchestrator-daemon")
        # the hot statements of the loop (ingest, claims) run on a direct connection
        # (see db/direct.py); its settings pin the claim's plan
        self.direct = Direct(
            url, application_name="orchestrator-scheduler", settings=runs.CLAIM_SETTINGS
        )
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.signals = 0
        self.next_due_in: float | None = None
        self.events_hint = threading.Event()  # an event arrived since the last ingest
        self.ingested_at = 0.0
        self.suspects_hint = threading.Event()  # a worker crash here made suspects
        self.suspects_at = 0.0
        # Under a backlog, claim in batches: when only a few threads are free, wait a moment
        # for more rather than make one claim transaction per finished run.
        self.backlogged = False
        self.claim_batch = max(1, config.workers * config.concurrency // 4)
        self.hold_until: float | None = None
        self.pool = WorkerPool(
            app_path=app_path,
            url=url,
            config=config,
            on_done=self._on_done,
            on_crash=self._on_crash,
            log=self.log,
            on_stats=self._on_stats,
            async_ids=frozenset(f for f, d in self.registry.items() if d.is_async),
        )
        # metrics, /healthz and /readyz, systemd notifications (runtime/telemetry.py)
        self.telemetry = Telemetry(
            config,
            function_ids=self.function_ids,
            app_version=self.version,
            db=self.db,
            leader=lambda: self.is_leader,
            executing=self.pool.inflight,
            log=self.log,
        )
        self.metrics = self.telemetry.metrics
        self.ingester = Ingester(
            self.db,
            self.direct,
            batch_size=config.ingest_batch_size,
            max_event_bytes=config.max_event_bytes,
            log=self.log,
        )
        self.rescuer = Rescuer(
            self.db,
            daemon_id=self.id,
            max_recoveries=config.max_recoveries,
            dead_after=config.dead_daemon_after,
            log=self.log,
        )
        self.cron = CronScheduler(self.db, self.registry, self.log)
        # flow-controlled functions are claimed one by one under their own lock (runtime/flow.py)
        self.flow = FlowClaimer(
            self.direct,
            self.registry,
            owner=self.id,
            lease_seconds=config.lease_duration,
            poll_interval=config.poll_interval,
            log=self.log,
        )
        self.plain_ids = [f for f in self.function_ids if f not in set(self.flow.function_ids)]
        # the runs of plain functions go to threads, those of async ones to event loops: each
        # lane is claimed for its own free slots
        self.lanes = {
            lane: [f for f in self.plain_ids if self.registry[f].is_async == lane]
            for lane in (False, True)
        }
        self.flow_due_at: float | None = None  # when a flow-controlled run falls due
        self.flow_first = False
        self.upkeep = Upkeep(self.db, self.registry, self.log)
        # leader: warns about runs that wait for a function no live daemon serves
        self.unserved = UnservedWatch(
            self.db,
            warn_after=config.unserved_warning_after,
            report=self.metrics.set_unserved,
            log=self.log,
        )
        # deletes old rows on a thread of its own while this daemon leads (runtime/retention.py)
        self.retention = Retention(
            url,
            Policy.from_config(config),
            interval=config.retention_interval,
            is_leader=lambda: self.is_leader and not self.stop_requested.is_set(),
            log=self.log,
        )
        self.session: Session | None = None
        self.leader_until = 0.0  # monotonic time until which this daemon's term surely holds
        self.intervals = [
            Interval(config.heartbeat_interval, self._heartbeat),
            Interval(config.lease_duration / 3, self._renew_leases),
            Interval(config.rescue_interval, self._rescue),
            Interval(max(5.0, 10 * config.rescue_interval), self._park_unknown_functions),
            Interval(config.poll_interval, self._apply_cancellations),
        ]

    # -- start-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Migrate (or check) the schema and record functions, schedules and this daemon."""
        if self.cfg.auto_migrate:
            migrate.upgrade(self.db.engine)
        else:
            check_schema(self.db.engine)
        lock_key = self.db.run(self._register)  # a deadlock is transient: it is retried
        self.cron.register()
        self.session = Session(
            self.url,
            lock_key=lock_key,
            on_wake=self._on_notify,
            on_error=self._on_session_error,
            application_name="orchestrator-session",
        )

    def _register(self, conn: Any) -> int:
        """Record the functions, in id order (the order every statement locks their rows
        in), and this daemon; returns its liveness lock key."""
        for fid, fdef in sorted(self.registry.items()):
            desc = fdef.describe()
            functions.upsert(
                conn, fid, triggers=desc.pop("triggers"), options=desc, version=fdef.source_hash()
            )
        return daemons.register(
            conn,
            self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            app=self.app_path,
            version=self.version,
            workers=self.cfg.workers,
            concurrency=self.cfg.concurrency,
            functions=self.function_ids,
        )

    def run(self) -> int:
        self.telemetry.listen()
        self.prepare()
        assert self.session is not None
        self.session.start()
        self.session.wait_connected(10)
        self.pool.start()
        self._install_signals()
        self.pool.wait_ready(60)
        self.log.info(
            "daemon serving",
            app=self.app_path,
            functions=len(self.registry),
            workers=self.cfg.workers,
            concurrency=self.cfg.concurrency,
            version=self.version,
            database=redact_url(self.url),
        )
        self.metrics.rescued("dead_daemon", self.rescuer.rescue_dead_daemons())
        self.retention.start()
        self.telemetry.serving(
            f"serving {len(self.registry)} functions with {self.cfg.workers} workers "
            f"x {self.cfg.concurrency} threads"
        )
        self._loop()
        return self._shutdown()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stop_requested.set()
        self.wake.set()

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.1
        while not self.stop_requested.is_set():
            self.telemetry.tick()
            try:
                self._pass()
                backoff = 0.1
            except DatabaseError as exc:
                self.log.warning("database error; retrying", error=first_line(exc))
                self.telemetry.database_error(first_line(exc))
                self.stop_requested.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                # a bug in one pass must not take the daemon (and every run it serves) down
                self.log.exception("scheduler pass failed; retrying")
                self.stop_requested.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.wake.wait(self._timeout())
            self.wake.clear()

    def _pass(self) -> None:
        # ingest when told that events arrived, and by polling as a fallback (a NOTIFY can be
        # lost across a reconnect, or never sent through a pooler)
        now = time.monotonic()
        if self.events_hint.is_set() or now - self.ingested_at >= self.cfg.poll_interval:
            self.events_hint.clear()
            self.ingested_at = now
            self._ingest()
        if self.flow_due_at is not None and now >= self.flow_due_at:
            self.flow_due_at = None
            self.flow.poke()
        self._dispatch()
        now = time.monotonic()
        for interval in self.intervals:
            interval.tick(now)

    def _dispatch(self) -> None:
        if self._hold_claims(time.monotonic()):
            return
        # flow-controlled functions and the others take turns at going first
        self.flow_first = not self.flow_first
        if self.flow_first:
            self._submit(self.flow.claim(self._rooms()), suspects=False)
        drained = self._claim_into_pool(suspects=False)
        if not self.flow_first:
            self._submit(self.flow.claim(self._rooms()), suspects=False)
        self.backlogged = any(ids and lane not in drained for lane, ids in self.lanes.items())
        # Suspects are rare: look for them after a crash here, else once per poll interval,
        # not on every pass (the quarantine is nearly always free, so that would be one more
        # transaction per finished run on the hot path).
        now = time.monotonic()
        if self.suspects_hint.is_set() or now - self.suspects_at >= self.cfg.poll_interval:
            self.suspects_hint.clear()
            self.suspects_at = now
            self._submit(
                self.flow.claim(self._rooms(quarantine=True), suspects=True), suspects=True
            )
            self._claim_into_pool(suspects=True)
        self.next_due_in = None  # a full lane: a run of it finishing wakes the loop
        if drained:  # no more due work in these lanes: sleep until their next run falls due
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

    def _ingest(self) -> None:
        """Ingest every pending event. Each ingest transaction also claims due runs for the
        free threads, so a new event's run starts without a claim transaction of its own;
        the claimed runs are handed over only once that transaction has committed."""
        while self._ingest_batch() >= self.cfg.ingest_batch_size:
            pass

    def _ingest_batch(self) -> int:
        claimed: list[runs.ClaimedRun] = []

        def claim(conn: Any) -> set[str]:
            for lane, free in self._rooms().items():
                claimed.extend(self._claim(conn, free, is_async=lane))
            return {c.id for c in claimed}

        taken = self.ingester.tick(then=claim)
        self.metrics.events_ingested(taken)
        self._submit(claimed, suspects=False)
        if taken:  # it may have made runs of flow-controlled functions
            self.flow.poke()
        return taken

    def _rooms(self, *, quarantine: bool = False) -> dict[bool, int]:
        """Free slots by lane: False for plain functions' runs, True for async ones'."""
        return {
            lane: self.pool.free_slots(quarantine=quarantine, is_async=lane) for lane in self.lanes
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
                claim = functools.partial(self._claim, limit=free, suspects=suspects, is_async=lane)
                claimed = self.direct.run(claim, retry_for=0)
                self._submit(claimed, suspects=suspects)
                if len(claimed) < free:
                    break
            if not function_ids or free > 0:
                drained.add(lane)
        return drained

    def _claim(
        self, conn: Any, limit: int, *, suspects: bool = False, is_async: bool = False
    ) -> list[runs.ClaimedRun]:
        return runs.claim_due(
            conn,
            owner=self.id,
            limit=limit,
            lease_seconds=self.cfg.lease_duration,
            function_ids=self.lanes[is_async],
            suspects=suspects,
        )

    def _submit(self, claimed: list[runs.ClaimedRun], *, suspects: bool) -> None:
        tasks = [
            Task(
                c.id,
                c.function_id,
                c.lease_token,
                c.events,
                c.attempts,
                c.claimed_at,
                c.created_at,
                c.parent_run_id,
                c.origin,
            )
            for c in claimed
        ]
        if tasks:
            self.pool.submit(tasks, quarantine=suspects)
        for c in claimed:
            if c.attempts == 1:  # its first claim: the run starts
                self.metrics.run_started(c.function_id)

    def _timeout(self) -> float:
        timeout = self.cfg.poll_interval
        if self.hold_until is not None:
            timeout = min(timeout, self.hold_until - time.monotonic())
        if self.next_due_in is not None:
            timeout = min(timeout, max(self.next_due_in, 0.0) + 0.001)
        flow_in = self.flow.next_in()
        if flow_in is not None:
            timeout = min(timeout, flow_in + 0.001)
        pet_in = self.telemetry.wait_limit()  # systemd's watchdog wants a pass by then
        if pet_in is not None:
            timeout = min(timeout, pet_in + 0.001)
        return max(timeout, 0.001)

    # -- callbacks from the pool (supervisor thread) --------------------------------------

    def _on_done(self, run_id: str, status: str, due_at: datetime | None) -> None:
        self.flow.finished(run_id)
        if due_at is not None:
            due_in = (due_at - datetime.now(UTC)).total_seconds()
            if self.next_due_in is None or due_in < self.next_due_in:
                self.next_due_in = due_in
        self.wake.set()

    def _on_stats(self, counts: TallyDelta) -> None:
        self.metrics.merge(counts)

    def _on_crash(self, worker: int, handback: Handback) -> None:
        """A worker process died or gave up: requeue its runs at once."""
        cap = self.cfg.max_recoveries
        try:
            requeued = self.db.run(lambda conn: _requeue_and_notify(conn, handback, cap))
        except DatabaseError as exc:
            self.log.error(
                "could not requeue runs of a dead worker; their leases will expire",
                worker=worker,
                error=first_line(exc),
            )
            return
        self.metrics.rescued("abandoned" if handback.abandoned else "worker_crash", requeued)
        if handback.crashed:
            self.suspects_hint.set()
        for run in requeued:
            self.log.warning(
                "run requeued after worker crash",
                run_id=run.id,
                function_id=run.function_id,
                status=run.status,
                worker=worker,
            )
        self.wake.set()

    def _on_notify(self, channel: str) -> None:
        if channel == "orchestrator_events":
            self.events_hint.set()
        elif channel == "orchestrator_functions":  # one was removed: stop starting it
            self.ingester.invalidate()
        self.flow.poke()
        self.wake.set()

    def _on_session_error(self, exc: Exception) -> None:
        self.log.warning("session connection lost; reconnecting", error=first_line(exc))

    # -- interval duties -----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self.leader_until

    def _heartbeat(self) -> None:
        """Heartbeat, and take or extend leadership (not while stopping)."""
        stopping = self.stop_requested.is_set()
        started = time.monotonic()
        ttl = self.cfg.leader_ttl
        with self.db.transaction() as conn:
            leading = not stopping and daemons.elect(conn, self.id, ttl=ttl)
            previous = daemons.heartbeat(
                conn, self.id, is_leader=leading, status="stopping" if stopping else "running"
            )
        # a term measured from before the statement ran, with a margin: a daemon that was
        # paused past its term sees it expired by its own monotonic clock and stops leading
        self.leader_until = started + ttl * 0.8 if leading else 0.0
        self.telemetry.heartbeat_ok()  # the database is reachable: /readyz
        if previous == "dead":
            self.log.error(
                "this daemon was declared dead (stalled or cut off); its runs were "
                "requeued and its late writes are refused; serving again"
            )

    def _renew_leases(self) -> None:
        # only the runs the pool executes: one this daemon never heard of (its claim committed
        # but the answer was lost with the connection) is left to expire and be rescued
        before = self.pool.held_leases()
        with self.db.transaction() as conn:
            held = runs.renew_leases(
                conn, owner=self.id, run_ids=before, lease_seconds=self.cfg.lease_duration
            )
        # held by the pool both before and after the renewal, yet not renewed: a run that
        # finished or was handed over meanwhile is not lost
        lost = (before & self.pool.held_leases()) - held
        if lost:
            self.log.warning("leases lost; their runs will be fenced", runs=len(lost))

    def _rescue(self) -> None:
        expired = self.rescuer.rescue_expired()
        self.metrics.rescued("expired_lease", expired)
        rescued = len(expired)
        if self.is_leader:
            dead = self.rescuer.rescue_dead_daemons()
            self.metrics.rescued("dead_daemon", dead)
            rescued += len(dead) + self.cron.tick()
            self.metrics.runs_ended(self.upkeep.tick())  # a running one ends at a boundary
            self.unserved.tick()
        if rescued:
            self.flow.poke()
            self.wake.set()

    def _apply_cancellations(self) -> None:
        """Cancellations requested with an UPDATE of `runs.cancel_requested_at` (or by another
        process): idle runs end here, and the workers executing runs of this daemon whose
        cancellation was requested stop them at their next step boundary."""

        def apply(conn: Any) -> tuple[list[runs.RequeuedRun], set[str]]:
            return runs.cancel_requested(conn), runs.cancelling(conn, owner=self.id)

        changed, running = self.db.run(apply)
        self.metrics.runs_ended(changed)  # the idle ones end here; the others at a boundary
        if running:
            self.pool.cancel(running)
        for run in changed:
            if run.status == "cancelled":
                self.log.info("run cancelled", run_id=run.id, function_id=run.function_id)

    def _park_unknown_functions(self) -> None:
        if self.is_leader:
            self.rescuer.park_unknown_functions()

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> int:
        grace = self.cfg.shutdown_grace
        self.log.info("shutting down", in_flight=self.pool.inflight(), grace=grace)
        self.telemetry.stopping(f"stopping: draining {self.pool.inflight()} runs")
        self.retention.stop()
        self.pool.drain()
        deadline = time.monotonic() + grace
        self.stop_requested.set()  # heartbeats now report 'stopping'
        heartbeat, renew = self.intervals[0], self.intervals[1]
        heartbeat.next_at = 0.0
        self._safe(lambda: heartbeat.tick(time.monotonic()))
        while self.pool.inflight() and time.monotonic() < deadline and self.signals < 2:
            time.sleep(0.02)
            self.telemetry.tick()  # draining is progress: /healthz and the watchdog
            self._safe(lambda: heartbeat.tick(time.monotonic()))
            self._safe(lambda: renew.tick(time.monotonic()))
        if self.signals >= 2:
            leases = self.pool.kill()
        else:
            leases = self.pool.stop(timeout=max(0.0, deadline - time.monotonic()))
        if leases:
            self._safe(lambda: self.db.run(lambda conn: runs.release(conn, leases), retry_for=5))
            self.log.info("released runs still in flight", runs=len(leases))
        self._safe(lambda: self.db.run(self._sign_off, retry_for=5))
        if self.session is not None:
            self.session.stop()
        self.direct.close()
        self.db.dispose()
        self.telemetry.close()
        self.log.info("daemon stopped")
        return 0

    def _sign_off(self, conn: Any) -> None:
        daemons.resign(conn, self.id)
        daemons.mark_stopped(conn, self.id)

    def _safe(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except DatabaseError as exc:
            self.log.warning("database error during shutdown", error=first_line(exc))


def _requeue_and_notify(conn: Any, handback: Handback, cap: int) -> list[Any]:
    requeued = (
        runs.requeue_crashed(conn, handback.crashed, max_recoveries=cap)
        + runs.requeue_interrupted(conn, handback.interrupted, max_recoveries=cap)
        + runs.release(conn, handback.released)
    )
    if requeued:
        notify_runs(conn)
    return requeued
