"""Leader duty: retention, deleting what is old and no longer referenced.

A pass deletes, in this order (see db/retention.py for what is kept):

- finished runs older than `retain_completed` (completed, skipped) or `retain_failed`
  (failed, cancelled), with their steps and waits;
- ingested events older than `retain_events`;
- rows of daemons stopped or declared dead more than DAEMON_ROWS_KEPT seconds ago.

Each batch of `retention_batch_size` rows is one statement, its own short transaction, on a
connection of the pass's own whose lock and statement timeouts are short; the pass pauses
after each batch for PAUSE_FACTOR times as long as the batch took (at least MIN_PAUSE). So
the clean-up keeps at most about a quarter of one connection busy, in bursts of a few
milliseconds, however large the backlog, and never waits on a row another transaction holds.
A batch that hits the statement timeout halves the batch size for the rest of the pass.

Runs are walked in creation order and events in `seq` order (db/retention.py). A `Cleaner`
keeps where its walks stopped and the next pass goes on from there, so a pass in the steady
state reads only the rows that have aged past the cutoff since the last one. Rows a walk
went past and had to keep (still referenced, locked, a failed run not yet as old as
`retain_failed`, a run that finished long after it was created) are read again by a full
sweep from the start, every FULL_SWEEP_EVERY seconds.

The daemon runs passes on a thread of its own (`Retention`, a service of runtime/service.py),
every `retention_interval` seconds while it leads, so that a long pass never holds up the
scheduler loop; a pass stops between batches when leadership is lost or the daemon stops.
`orchestrator gc` runs one pass (`Cleaner`) on demand; its `on_batch` hook draws the progress
bar, and its `keep_going` stops the pass at Ctrl-C.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.config import Config
from orchestrator.db import retention
from orchestrator.db.database import DatabaseError
from orchestrator.db.direct import Direct
from orchestrator.errors import first_line
from orchestrator.runtime.service import OwnThread

DAEMON_ROWS_KEPT = 86400.0  # a stopped or dead daemon's row stays a day, for post-mortems
PAUSE_FACTOR = 3.0
MIN_PAUSE = 0.01
LOCK_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 10.0
FULL_SWEEP_EVERY = 3600.0

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """What a pass deletes: ages in seconds (None keeps that class forever)."""

    completed: float | None
    failed: float | None
    events: float | None
    daemons: float = DAEMON_ROWS_KEPT
    batch_size: int = 50

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        return cls(
            completed=cfg.retain_completed or None,
            failed=cfg.retain_failed or None,
            events=cfg.retain_events or None,
            batch_size=cfg.retention_batch_size,
        )


@dataclass
class PassResult:
    completed: int = 0  # completed and skipped runs
    failed: int = 0  # failed and cancelled runs
    steps: int = 0
    waits: int = 0
    events: int = 0
    daemons: int = 0
    batches: int = 0
    seconds: float = 0.0  # the whole pass, pauses included
    busy: float = 0.0  # seconds the batch statements took
    slowest: float = 0.0  # seconds the longest batch took
    interrupted: bool = False  # stopped early: leadership lost, shutdown or a database error
    error: str | None = None  # the database error that stopped it

    @property
    def deleted(self) -> int:
        return self.completed + self.failed + self.steps + self.waits + self.events + self.daemons

    def rows(self) -> dict[str, int]:
        """Rows deleted (or to delete), by kind."""
        return {
            "runs_completed": self.completed,
            "runs_failed": self.failed,
            "steps": self.steps,
            "waits": self.waits,
            "events": self.events,
            "daemons": self.daemons,
        }

    def counts(self) -> dict[str, Any]:
        """The rows, and how the pass went."""
        return {
            **self.rows(),
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "busy_seconds": round(self.busy, 3),
            "slowest_batch_ms": round(self.slowest * 1000, 1),
        }


class Cleaner:
    """One pass of retention over the database at `url`, paced (see the module doc)."""

    def __init__(
        self,
        url: str,
        policy: Policy,
        *,
        keep_going: Callable[[], bool] = lambda: True,
        pause: Callable[[float], object] = time.sleep,
        pause_factor: float = PAUSE_FACTOR,
        sweep_every: float = FULL_SWEEP_EVERY,
        log: Any = None,
        on_batch: Callable[[PassResult], object] = lambda result: None,
    ) -> None:
        self.url = url
        self.policy = policy
        self.keep_going = keep_going
        self.pause = pause
        self.pause_factor = pause_factor
        self.sweep_every = sweep_every
        self.log = log
        self.on_batch = on_batch  # after each batch, with the counts so far
        self.batch_size = policy.batch_size
        # where the walks stopped, kept from one pass to the next until the next full sweep
        self.run_cursor: retention.RunCursor | None = None
        self.event_cursor: int | None = None
        self.swept_at: float | None = None
        settings = {
            "lock_timeout": f"{int(LOCK_TIMEOUT * 1000)}ms",
            "statement_timeout": f"{int(STATEMENT_TIMEOUT * 1000)}ms",
            # the batch statements are index probes whatever their parameters (db/retention.py);
            # their generic plan saves about a millisecond of planning a batch
            "plan_cache_mode": "force_generic_plan",
        }
        # connects at a pass's first batch and closes at its end (nothing held between passes)
        self.conn = Direct(url, application_name="orchestrator-retention", settings=settings)

    def run_pass(self) -> PassResult:
        result = PassResult()
        started = time.monotonic()
        self.batch_size = self.policy.batch_size
        if self.swept_at is None or started - self.swept_at >= self.sweep_every:
            self.swept_at = started
            self.run_cursor, self.event_cursor = None, None
        try:
            if self.policy.completed is not None or self.policy.failed is not None:
                self._runs(result)
            if self.policy.events is not None and not result.interrupted:
                self._events(result)
            if not result.interrupted:
                self._daemons(result)
        finally:
            self.conn.close()
            result.seconds = time.monotonic() - started
        return result

    def backlog(self) -> PassResult:
        """What a pass would delete now, deleting nothing (one read of every candidate)."""
        started = time.monotonic()
        conn = Direct(self.url, application_name="orchestrator-retention")
        try:
            found = conn.run(
                lambda c: retention.backlog(
                    c,
                    completed_age=self.policy.completed,
                    failed_age=self.policy.failed,
                    event_age=self.policy.events,
                    daemon_age=self.policy.daemons,
                ),
                retry_for=5,
            )
        finally:
            conn.close()
        return PassResult(
            completed=found.completed,
            failed=found.failed,
            steps=found.steps,
            waits=found.waits,
            events=found.events,
            daemons=found.daemons,
            seconds=time.monotonic() - started,
        )

    def _runs(self, result: PassResult) -> None:
        def delete(conn: Any, limit: int) -> retention.RunBatch:
            return retention.delete_runs(
                conn,
                completed_age=self.policy.completed,
                failed_age=self.policy.failed,
                after=self.run_cursor,
                limit=limit,
            )

        while True:
            batch = self._batch(result, delete)
            if batch is None:
                return
            result.completed += batch.completed
            result.failed += batch.failed
            result.steps += batch.steps
            result.waits += batch.waits
            self.on_batch(result)
            self.run_cursor = batch.cursor or self.run_cursor
            if batch.exhausted:
                return

    def _events(self, result: PassResult) -> None:
        assert self.policy.events is not None
        age = self.policy.events

        def delete(conn: Any, limit: int) -> retention.EventBatch:
            return retention.delete_events(conn, age=age, after=self.event_cursor, limit=limit)

        while True:
            batch = self._batch(result, delete)
            if batch is None:
                return
            result.events += batch.deleted
            self.on_batch(result)
            if batch.last_seq is not None:
                self.event_cursor = batch.last_seq
            if batch.exhausted:
                return

    def _daemons(self, result: PassResult) -> None:
        def delete(conn: Any, limit: int) -> tuple[int, int]:
            return retention.delete_daemons(conn, age=self.policy.daemons, limit=limit), limit

        while True:
            batch = self._batch(result, delete)
            if batch is None:
                return
            deleted, limit = batch
            result.daemons += deleted
            self.on_batch(result)
            if deleted < limit:
                return

    def _batch(self, result: PassResult, statement: Callable[[Any, int], T]) -> T | None:
        """Run `statement(conn, batch size)` (one statement: its own transaction), then
        pause; None if the pass must stop (told to, or a database error). A batch that timed
        out is tried again at half the size."""
        while True:
            if not self.keep_going():
                result.interrupted = True
                return None
            began = time.monotonic()
            try:
                value = self.conn.run(
                    functools.partial(_call, statement, self.batch_size), retry_for=0
                )
            except DatabaseError as exc:
                if retention.timed_out(exc) and self.batch_size > 1:
                    self.batch_size = max(1, self.batch_size // 2)
                    self._warn("retention batch timed out; halving it", exc)
                    continue
                self._warn("retention pass stopped by a database error", exc)
                result.interrupted = True
                result.error = first_line(exc)
                return None
            elapsed = time.monotonic() - began
            result.batches += 1
            result.busy += elapsed
            result.slowest = max(result.slowest, elapsed)
            self.pause(max(MIN_PAUSE, elapsed * self.pause_factor))
            return value

    def _warn(self, message: str, exc: BaseException) -> None:
        if self.log is not None:
            self.log.warning(message, batch_size=self.batch_size, error=first_line(exc))


class Retention(OwnThread):
    """The daemon's retention service: a pass every `interval` seconds while `is_leader()`,
    on a thread of its own (runtime/service.py). A pass in progress stops between batches
    when the service is stopped or leadership is lost."""

    name = "retention"

    def __init__(
        self,
        url: str,
        policy: Policy,
        *,
        interval: float,
        is_leader: Callable[[], bool],
        log: Any,
    ) -> None:
        super().__init__(interval)
        self.url = url
        self.policy = policy
        self.is_leader = is_leader
        self.log = log
        self.cleaner = Cleaner(
            url, policy, keep_going=self._may_go_on, pause=self.stopped.wait, log=log
        )

    def run(self, now: float) -> None:
        if not self.is_leader():
            return
        try:
            result = self.cleaner.run_pass()
        except Exception:
            # a bug here must not take the daemon (and every run it serves) down
            self.log.exception("retention pass failed")
            return
        level = self.log.info if result.deleted or result.interrupted else self.log.debug
        level("retention pass", interrupted=result.interrupted, **result.counts())

    def _may_go_on(self) -> bool:
        return self.started and self.is_leader()


def _call(statement: Callable[[Any, int], T], limit: int, conn: Any) -> T:
    return statement(conn, limit)
