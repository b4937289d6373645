"""Group commit: the checkpoints and finishes of a worker's concurrent runs share one
transaction, so one WAL flush makes many steps durable.

Each run hands its write to the committer and waits on the future it gets back (an executor
thread blocks on it; an async run awaits it on the loop); the committer takes every write
waiting at that moment, commits them together and only then settles their futures. No
step is acknowledged before the transaction holding it has committed, and nothing waits for
company: a write that arrives while the database is idle is committed at once, and writes
pile up only while a commit is already in flight.

Every write stays fenced: the group is one statement on a direct connection (see
db/checkpoints.py) that drops the write of a run whose lease token no longer matches (its
thread sees the lease as lost); a rescue of a run in the group waits for the commit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from orchestrator import log as logging
from orchestrator.db.checkpoints import GroupWrite, prepare, write_group
from orchestrator.db.database import DatabaseError, is_transient
from orchestrator.db.direct import Direct
from orchestrator.errors import Cancelled, LeaseLost


@dataclass(eq=False, slots=True)
class _Pending:
    write: GroupWrite
    # True: made; False: refused, a cancellation ended the run; None: refused, lease lost
    done: Future[Any] = field(default_factory=Future)
    # `commit_fenced`: the refusals are settled as errors (LeaseLost says this), the write
    # made as None
    lost: str | None = None

    def made(self, made: bool | None) -> None:
        if self.lost is None:
            self.done.set_result(made)
        elif made:
            self.done.set_result(None)
        elif made is False:
            self.done.set_exception(Cancelled(f"run {self.write.run_id} was cancelled"))
        else:
            self.done.set_exception(LeaseLost(self.lost))


class GroupCommitter:
    def __init__(self, direct: Direct, *, retry_for: float, max_group: int = 500) -> None:
        self.direct = direct
        self.retry_for = retry_for
        self.max_group = max_group
        self._pending: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # called on the committer thread after each group's futures are settled (a worker
        # sends the daemon one message for the runs whose end the group committed)
        self.after_group: Callable[[], None] | None = None
        self._committing = False  # a group is being written

    def commit(self, write: GroupWrite) -> Future[bool | None]:
        """Commit `write` with whatever else is waiting. The future's result is True if it was
        made, False if it was refused because a cancellation ended the run, None if it was
        refused because the lease was lost otherwise; its exception is
        the database error if the write could not be committed (after retrying transient
        errors for `retry_for` seconds)."""
        done: Future[bool | None] = self._enqueue(_Pending(write))
        return done

    def commit_fenced(self, write: GroupWrite, *, lost: str) -> Future[None]:
        """`commit`, as the run sees it: the future's result is None once the write is
        made; it raises `Cancelled` if a cancellation ended the run (the write was refused),
        `LeaseLost` (saying `lost`) if the lease was lost otherwise, or the database error.
        One future per write, settled by the committer itself."""
        done: Future[None] = self._enqueue(_Pending(write, lost=lost))
        return done

    def _enqueue(self, pending: _Pending) -> Future[Any]:
        with self._cond:
            self._start()
            self._pending.append(pending)
            self._cond.notify()
        return pending.done

    def warm(self) -> None:
        """Connect, plan the group statement and start the committer thread now (a worker at
        start-up), so that its first checkpoint pays for none of them: a slow first commit
        widens the window in which a crash re-runs a step body that had finished."""
        self.direct.run(prepare, retry_for=self.retry_for)
        with self._cond:
            self._start()

    def drain(self, timeout: float) -> bool:
        """Wait until every write handed over so far is committed (or has failed), for at
        most `timeout` seconds; False if some are still waiting. A worker that stops calls
        it: a thread no longer waits for its run's end to commit."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending and not self._committing, timeout=timeout
            )

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="committer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                group = [
                    self._pending.popleft() for _ in range(min(self.max_group, len(self._pending)))
                ]
                self._committing = True
            try:
                self._commit(group)
                if self.after_group is not None:
                    self.after_group()
            except Exception:  # a bug: the committer must outlive it, or every write hangs
                logging.get("committer").exception("group commit hook failed")
            finally:
                with self._cond:
                    self._committing = False
                    self._cond.notify_all()

    def _commit(self, group: list[_Pending]) -> None:
        writes = [p.write for p in group]
        try:
            made = self.direct.run(lambda conn: write_group(conn, writes), retry_for=self.retry_for)
        except DatabaseError as exc:
            if len(group) > 1 and not is_transient(exc):
                for pending in group:  # one bad write must not fail the others: isolate it
                    self._commit([pending])
                return
            _settle(group, error=exc)
            return
        except Exception as exc:  # a bug: fail the writes rather than leave threads waiting
            _settle(group, error=exc)
            return
        for pending in group:
            pending.made(made.get(pending.write.run_id))


def _settle(group: list[_Pending], *, error: BaseException) -> None:
    for pending in group:
        pending.done.set_exception(error)
