"""The writes one execution makes, each fenced on the run's lease and retried over
transient connection errors (every write here is an idempotent upsert or a fenced update).

Checkpoints and finishes, the writes on the hot path, go through the group committer: the
concurrent runs of one worker process share their transactions (see engine/commit.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from orchestrator.db import runs, steps
from orchestrator.db.checkpoints import GroupWrite
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.commit import GroupCommitter
from orchestrator.errors import LeaseLost


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: str


class RunStore:
    def __init__(self, db: Database, *, retry_for: float = 30.0) -> None:
        self.db = db
        self.retry_for = retry_for
        direct = Direct(db.url, application_name=f"{db.application_name}-commit")
        self.committer = GroupCommitter(direct, retry_for=retry_for)

    def load(self, run_id: str) -> dict[str, steps.StepRow]:
        rows = self.db.run(lambda conn: steps.load(conn, run_id), retry_for=self.retry_for)
        return {row.step_id: row for row in rows}

    def checkpoint(self, lease: Lease, record: steps.StepRecord) -> None:
        if not self.committer.commit(GroupWrite(lease.run_id, lease.token, step=record)):
            raise LeaseLost(f"run {lease.run_id}: lease lost before step '{record.step_id}'")

    def suspend(
        self,
        lease: Lease,
        *,
        status: str,
        delay: float = 0.0,
        until: datetime | None = None,
        record: steps.StepRecord | None = None,
    ) -> datetime:
        """Make the run due later and record `record` with its wake time, atomically."""

        def write(conn: Any) -> datetime | None:
            due = runs.suspend(
                conn, lease.run_id, lease.token, status=status, delay_seconds=delay, until=until
            )
            if due is not None and record is not None:
                steps.save_locked(conn, lease.run_id, replace(record, wake_at=due))
            return due

        due = self.db.run(write, retry_for=self.retry_for)
        if due is None:
            raise LeaseLost(f"run {lease.run_id}: lease lost while suspending")
        return due

    def finish(
        self, lease: Lease, *, status: str, output_json: str | None, error_json: str | None
    ) -> None:
        write = GroupWrite(
            lease.run_id,
            lease.token,
            final_status=status,
            output_json=output_json,
            error_json=error_json,
        )
        if not self.committer.commit(write):
            raise LeaseLost(f"run {lease.run_id}: lease lost before it could finish")

    def release(self, lease: Lease) -> None:
        self.db.run(
            lambda conn: runs.release(conn, [(lease.run_id, lease.token)]),
            retry_for=self.retry_for,
        )
