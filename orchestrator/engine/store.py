"""The writes one execution makes, each fenced on the run's lease and retried over
transient connection errors (every write here is an idempotent upsert or a fenced update).

Checkpoints and finishes, the writes on the hot path, go through the group committer: the
concurrent runs of one worker process share their transactions (see engine/commit.py). So do
the hot path's other two calls: the waits runs reach are stored together (engine/waiter.py),
and the recorded steps of resumed runs are read together (engine/loader.py).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.db import checkpoints, events, runs, signals, steps, waits
from orchestrator.db.checkpoints import GroupWrite
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.commit import GroupCommitter
from orchestrator.engine.loader import Memo, StepLoader
from orchestrator.engine.waiter import Waiter
from orchestrator.errors import LeaseLost


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
        direct = Direct(
            db.url, application_name=f"{db.application_name}-commit", settings=checkpoints.SETTINGS
        )
        self.committer = GroupCommitter(direct, retry_for=retry_for)
        loads = Direct(db.url, application_name=f"{db.application_name}-load")
        self.loader = StepLoader(loads, retry_for=retry_for)
        waiting = Direct(db.url, application_name=f"{db.application_name}-wait")
        self.waiter = Waiter(waiting, retry_for=retry_for)

    def warm(self) -> None:
        """Open the connections and plan the hot statements now, before the first run."""
        self.db.connect_now()
        self.committer.warm()
        self.loader.warm()
        self.waiter.warm()

    def close(self) -> None:
        """Close the direct connections (the pool's are the database handle's to dispose)."""
        for direct in (
            self.committer.direct,
            self.loader.batcher.direct,
            self.waiter.batcher.direct,
        ):
            direct.close()

    def load(self, run_id: str) -> Memo:
        """The run's recorded steps by step id."""
        return self.loading(run_id).result()

    def loading(self, run_id: str) -> Future[Memo]:
        """`load`, as a future: read with the loads of the worker's other runs."""
        return self.loader.load(run_id)

    def checkpoint(
        self, lease: Lease, record: steps.StepRecord, *, state_json: str | None = None
    ) -> Future[None]:
        """Commit a step record (and merge `state_json` into the run's state). The future
        raises `Cancelled` if a cancellation ended the run (the record is refused),
        `LeaseLost` if the lease was lost otherwise."""
        write = GroupWrite(lease.run_id, lease.token, step=record, state_json=state_json)
        lost = f"run {lease.run_id}: lease lost before step '{record.step_id}'"
        return self.committer.commit_fenced(write, lost=lost)

    def suspend(
        self,
        lease: Lease,
        *,
        status: str,
        delay: float = 0.0,
        until: datetime | None = None,
        record: steps.StepRecord | None = None,
        records: tuple[steps.StepRecord, ...] = (),
        state_json: str | None = None,
        retry_error: str | None = None,
    ) -> datetime:
        """Make the run due later and record `record` (and `records`) with its wake time,
        and merge `state_json` into its state, atomically; with `retry_error`, as a
        function-level retry (db/runs.py `suspend`)."""
        written = (record, *records) if record is not None else records

        def write(conn: Any) -> datetime | None:
            due = runs.suspend(
                conn,
                lease.run_id,
                lease.token,
                status=status,
                delay_seconds=delay,
                until=until,
                state_json=state_json,
                retry_error=retry_error,
            )
            for rec in written if due is not None else ():
                steps.save_locked(conn, lease.run_id, replace(rec, wake_at=due))
            return due

        due = self.db.run(write, retry_for=self.retry_for)
        if due is None:
            raise LeaseLost(f"run {lease.run_id}: lease lost while suspending")
        return due

    def waiting(
        self,
        lease: Lease,
        record: steps.StepRecord,
        branches: tuple[waits.Branch, ...],
        *,
        state_json: str | None = None,
    ) -> Future[tuple[int, dict[str, Any]] | None]:
        """Wait for an event, race-free (see db/waits.py), in one transaction with the waits
        of the worker's other runs: look back at the events received since each branch's
        `wait.since`; the future holds the first received that matches a branch and that its
        `accept`s, with its branch, with nothing else written; if none does, the run is
        suspended as waiting until the waits expire (or for good), with `record` and the waits
        stored, the branches' children started and `state_json` merged into its state, and
        the future holds None. It raises `LeaseLost` if the run's lease no longer held."""
        wait = branches[0].wait
        due = wait.expires_at or FOREVER
        stored = self.waiter.store(waits.Storing(branches, record, lease.token, due, state_json))
        found: Future[tuple[int, dict[str, Any]] | None] = Future()

        def settle(stored: Future[waits.Stored]) -> None:
            error = stored.exception()
            if error is not None:
                found.set_exception(error)
            elif (outcome := stored.result()).found is None and not outcome.suspended:
                lost = f"run {lease.run_id}: lease lost while storing wait '{wait.step_id}'"
                found.set_exception(LeaseLost(lost))
            else:
                event = outcome.found
                found.set_result(None if event is None else (outcome.branch, event))

        stored.add_done_callback(settle)
        return found

    def end_wait(
        self,
        lease: Lease,
        record: steps.StepRecord,
        *,
        cancel_runs: tuple[str, ...],
        state_json: str | None = None,
    ) -> None:
        """A wait timed out: remove its waits and record the step (and cancel `cancel_runs`,
        invoked runs no longer awaited, and merge `state_json`), fenced on the lease."""

        def write(conn: Any) -> bool:
            if runs.hold(conn, lease.run_id, lease.token) is None:
                return False
            waits.remove(conn, lease.run_id, record.step_id)
            steps.save_locked(conn, lease.run_id, record)
            runs.merge_state(conn, lease.run_id, state_json)
            if cancel_runs:
                runs.cancel(conn, list(cancel_runs), reason="the run that invoked it timed out")
            return True

        if not self.db.run(write, retry_for=self.retry_for):
            raise LeaseLost(f"run {lease.run_id}: lease lost while ending '{record.step_id}'")

    def take_signal(self, taking: signals.Taking) -> signals.Taken:
        """Take a signal for a `wait_for_signal` step, record its timeout, or suspend the run
        waiting for one: one fenced transaction (see db/signals.py). Raises `LeaseLost` if
        the lease no longer held."""
        taken = self.db.run(lambda conn: signals.take(conn, taking), retry_for=self.retry_for)
        if taken.outcome == "lost":
            raise LeaseLost(f"run {taking.run_id}: lease lost at signal wait '{taking.step_id}'")
        return taken

    def cancel(self, run_ids: list[str], *, reason: str) -> None:
        """Cancel runs (and their unfinished descendants) that no step awaits any more."""
        self.db.run(
            lambda conn: runs.cancel(conn, run_ids, reason=reason), retry_for=self.retry_for
        )

    def send_events(
        self, lease: Lease, batch: list[tuple[str, str, str]], trace_context: str | None = None
    ) -> None:
        """Insert (id, name, data JSON) events with the sending step's trace context (JSON),
        fenced on the lease; ids already sent are skipped."""

        def write(conn: Any) -> bool:
            if runs.hold(conn, lease.run_id, lease.token) is None:
                return False
            events.insert_many(conn, batch, trace_context=trace_context)
            return True

        if not self.db.run(write, retry_for=self.retry_for):
            raise LeaseLost(f"run {lease.run_id}: lease lost before sending events")

    def finish(
        self,
        lease: Lease,
        *,
        status: str,
        output_json: str | None,
        error_json: str | None,
        step: steps.StepRecord | None = None,
        state_json: str | None = None,
    ) -> Future[None]:
        """Record the run's end, with `step` (its last step's record, not committed yet) and
        `state_json` (merged into its state) in the same write; the future raises
        `Cancelled` if a cancellation ended the run meanwhile (its end stays the
        cancellation's), `LeaseLost` if the lease was lost otherwise."""
        write = GroupWrite(
            lease.run_id,
            lease.token,
            step=step,
            final_status=status,
            output_json=output_json,
            error_json=error_json,
            effects=lease.ties or status != "completed",
            state_json=state_json,
        )
        lost = f"run {lease.run_id}: lease lost before it could finish"
        return self.committer.commit_fenced(write, lost=lost)

    def release(self, lease: Lease) -> None:
        self.db.run(
            lambda conn: runs.release(conn, [(lease.run_id, lease.token)]),
            retry_for=self.retry_for,
        )
