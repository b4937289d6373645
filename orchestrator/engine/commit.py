"""Group commit: the checkpoints and finishes of a worker's concurrent runs share one
transaction, so one WAL flush makes many steps durable.

Each executor thread hands its write to the committer and waits; the committer takes every
write waiting at that moment, commits them together and only then wakes their threads. No
step is acknowledged before the transaction holding it has committed, and nothing waits for
company: a write that arrives while the database is idle is committed at once, and writes
pile up only while a commit is already in flight.

Every write stays fenced. The transaction first locks the run rows of the whole group in id
order and reads their lease tokens; a write whose token no longer matches is dropped (its
thread sees the lease as lost), and a rescue of a locked run waits for the commit.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.db import runs, steps
from orchestrator.db.database import Database, DatabaseError, is_transient


@dataclass(eq=False)
class Write:
    """One run's write: a step record, or its terminal status."""

    run_id: str
    token: str
    step: steps.StepRecord | None = None
    finish: runs.Finish | None = None
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    error: BaseException | None = None


class GroupCommitter:
    def __init__(self, db: Database, *, retry_for: float, max_group: int = 500) -> None:
        self.db = db
        self.retry_for = retry_for
        self.max_group = max_group
        self._pending: deque[Write] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def commit(self, write: Write) -> bool:
        """Commit `write` with whatever else is waiting; True if its lease still held.

        Raises the database error if the write could not be committed (after retrying
        transient errors for `retry_for` seconds)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="committer", daemon=True)
                self._thread.start()
            self._pending.append(write)
            self._cond.notify()
        write.done.wait()
        if write.error is not None:
            raise write.error
        return write.ok

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                group = [
                    self._pending.popleft()
                    for _ in range(min(self.max_group, len(self._pending)))
                ]
            self._commit(group)

    def _commit(self, group: list[Write]) -> None:
        try:
            held = self.db.run(lambda conn: _write(conn, group), retry_for=self.retry_for)
        except DatabaseError as exc:
            if len(group) > 1 and not is_transient(exc):
                for write in group:  # one bad write must not fail the others: isolate it
                    self._commit([write])
                return
            _settle(group, error=exc)
            return
        except Exception as exc:  # a bug: fail the writes rather than leave threads waiting
            _settle(group, error=exc)
            return
        for write in group:
            write.ok = write.run_id in held
            write.done.set()


def _settle(group: list[Write], *, error: BaseException) -> None:
    for write in group:
        write.error = error
        write.done.set()


def _write(conn: Any, group: list[Write]) -> set[str]:
    tokens = runs.lock_leases(conn, [w.run_id for w in group])
    held = [w for w in group if tokens.get(w.run_id) == w.token]
    steps.save_many(conn, [(w.run_id, w.step) for w in held if w.step is not None])
    finished = runs.finish_many(conn, [w.finish for w in held if w.finish is not None])
    return {w.run_id for w in held if w.step is not None} | finished
