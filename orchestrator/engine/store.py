"""The writes one execution makes, each fenced on the run's lease and retried over
transient connection errors (every write here is an idempotent upsert or a fenced update).

Checkpoints and finishes, the writes on the hot path, go through the group committer: the
concurrent runs of one worker process share their transactions (see engine/commit.py).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.db import events, runs, steps, waits
from orchestrator.db.checkpoints import GroupWrite
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct, driver, set_local
from orchestrator.db.session import notify_runs
from orchestrator.engine.commit import GroupCommitter
from orchestrator.errors import Cancelled, LeaseLost


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: str
    # the run has a parent or cancellation conditions: its end has effects beyond its row
    ties: bool = False


FOREVER = datetime(9999, 12, 31, tzinfo=UTC)  # the due time of a wait without a timeout


class RunStore:
    def __init__(self, db: Database, *, retry_for: float = 30.0) -> None:
        self.db = db
        self.retry_for = retry_for
        direct = Direct(db.url, application_name=f"{db.application_name}-commit")
        self.committer = GroupCommitter(direct, retry_for=retry_for)

    def warm(self) -> None:
        """Open the connections and plan the hot statements now, before the first run."""
        self.db.connect_now()
        self.committer.warm()

    def load(self, run_id: str) -> dict[str, steps.StepRow]:
        rows = self.db.run(lambda conn: steps.load(conn, run_id), retry_for=self.retry_for)
        return {row.step_id: row for row in rows}

    def checkpoint(self, lease: Lease, record: steps.StepRecord) -> Future[None]:
        """Commit a step record. The future raises `LeaseLost` if the lease was lost, and
        `Cancelled` after the commit if the run's cancellation was requested: the run stops
        at this step boundary."""
        write = GroupWrite(lease.run_id, lease.token, step=record)
        lost = f"run {lease.run_id}: lease lost before step '{record.step_id}'"
        cancelled = f"run {lease.run_id} was cancelled after step '{record.step_id}'"
        return _fenced(self.committer.commit(write), lost=lost, cancelled=cancelled)

    def suspend(
        self,
        lease: Lease,
        *,
        status: str,
        delay: float = 0.0,
        until: datetime | None = None,
        record: steps.StepRecord | None = None,
        records: tuple[steps.StepRecord, ...] = (),
    ) -> datetime:
        """Make the run due later and record `record` (and `records`) with its wake time,
        atomically."""
        written = (record, *records) if record is not None else records

        def write(conn: Any) -> datetime | None:
            due = runs.suspend(
                conn, lease.run_id, lease.token, status=status, delay_seconds=delay, until=until
            )
            for rec in written if due is not None else ():
                steps.save_locked(conn, lease.run_id, replace(rec, wake_at=due))
            return due

        due = self.db.run(write, retry_for=self.retry_for)
        if due is None:
            raise LeaseLost(f"run {lease.run_id}: lease lost while suspending")
        return due

    def wait(
        self,
        lease: Lease,
        record: steps.StepRecord,
        wait: waits.Wait,
        *,
        accept: Callable[[dict[str, Any]], bool],
        child: runs.NewRun | None = None,
    ) -> dict[str, Any] | None:
        """Wait for an event, race-free (see db/waits.py), in one transaction: start `child`
        (an invoked run) if given, then look back at the events received since `wait.since`;
        return the first that matches and that `accept`s, writing nothing else; if none does,
        suspend the run as waiting until `wait.expires_at` (or for good), with `record` and
        the wait stored, and return None."""

        def write(conn: Any) -> tuple[bool, dict[str, Any] | None]:
            # Two round trips: the name lock with the look back, then the suspension. The
            # commit does not wait for its WAL flush: if a crash loses it, the run is as it
            # was (running, its previous step durable), is rescued, and reaches the wait
            # again; anything that saw the wait commits after it in the WAL, so it is lost
            # with it or not at all.
            with driver(conn).pipeline():
                set_local(conn, {"synchronous_commit": "off"})
                waits.lock_names(conn, [wait.event_name], shared=True)
                if child is not None:
                    runs.create_many(conn, [child])
                    notify_runs(conn)  # any daemon may claim it (a limited one: see flow.py)
                seen = events.matching_since(
                    conn,
                    wait.event_name,
                    since=wait.since,
                    match_path=wait.match_path,
                    match_value_json=wait.match_value_json,
                )
                for payload in seen:
                    if accept(payload):
                        return True, payload
                due = wait.expires_at or FOREVER
                return waits.suspend(conn, wait, record, token=lease.token, due=due), None

        ok, found = self.db.run(write, retry_for=self.retry_for)
        if not ok:
            raise LeaseLost(f"run {lease.run_id}: lease lost while storing wait '{wait.step_id}'")
        return found

    def end_wait(self, lease: Lease, record: steps.StepRecord, *, cancel_run: str | None) -> None:
        """A wait timed out: remove it and record the step (and cancel `cancel_run`, an invoked
        run that is no longer awaited), fenced on the lease."""

        def write(conn: Any) -> bool:
            if runs.hold(conn, lease.run_id, lease.token) is None:
                return False
            waits.remove(conn, lease.run_id, record.step_id)
            steps.save_locked(conn, lease.run_id, record)
            if cancel_run is not None:
                runs.cancel(conn, [cancel_run], reason="the run that invoked it timed out")
            return True

        if not self.db.run(write, retry_for=self.retry_for):
            raise LeaseLost(f"run {lease.run_id}: lease lost while ending '{record.step_id}'")

    def send_events(self, batch: list[tuple[str, str, str]]) -> None:
        """Insert (id, name, data JSON) events; ids already sent are skipped."""
        self.db.run(lambda conn: events.insert_many(conn, batch), retry_for=self.retry_for)

    def finish(
        self,
        lease: Lease,
        *,
        status: str,
        output_json: str | None,
        error_json: str | None,
        step: steps.StepRecord | None = None,
    ) -> Future[None]:
        """Record the run's end, with `step` (its last step's record, not committed yet) in
        the same write; the future raises `LeaseLost` if the lease was lost."""
        write = GroupWrite(
            lease.run_id,
            lease.token,
            step=step,
            final_status=status,
            output_json=output_json,
            error_json=error_json,
            effects=lease.ties or status != "completed",
        )
        lost = f"run {lease.run_id}: lease lost before it could finish"
        return _fenced(self.committer.commit(write), lost=lost, cancelled=None)

    def release(self, lease: Lease) -> None:
        self.db.run(
            lambda conn: runs.release(conn, [(lease.run_id, lease.token)]),
            retry_for=self.retry_for,
        )


def _fenced(commit: Future[tuple[bool, bool]], *, lost: str, cancelled: str | None) -> Future[None]:
    """The outcome of a group commit as the run sees it: done, or a signal to stop."""
    done: Future[None] = Future()

    def settle(commit: Future[tuple[bool, bool]]) -> None:
        error = commit.exception()
        if error is None:
            ok, cancel = commit.result()
            if not ok:
                error = LeaseLost(lost)
            elif cancel and cancelled is not None:
                error = Cancelled(cancelled)
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    commit.add_done_callback(settle)
    return done
