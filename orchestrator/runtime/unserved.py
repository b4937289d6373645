"""Leader duty: say so when runs wait for a function that no live daemon serves.

A daemon claims only the runs of the functions its app has. A run of a function that no
running daemon serves (renamed, removed from the app, or every daemon was deployed with
another app) stays `queued` for ever, and nothing else would say a word about it. So every
few seconds the leader measures, per registered function that no running daemon serves, how
many runs are due and since when (one statement: db/functions.py `unserved_backlog`). It
hands the counts to the metrics (`orchestrator_unserved_runs`), and logs a warning once the
oldest due run of such a function has waited `unserved_warning_after` seconds: the function,
how many runs wait, since when, and what to do. The warning repeats at most every
`WARN_EVERY` seconds per function, so a lasting condition is a line every few minutes, not
one per check.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.db import functions
from orchestrator.db.database import Database

CHECK_EVERY = 5.0  # seconds between checks at most (half the warning threshold when smaller)
WARN_EVERY = 300.0  # seconds between two warnings about the same function
COUNT_CAP = 10_000  # due runs counted per function, at most


class UnservedWatch:
    def __init__(
        self,
        db: Database,
        *,
        warn_after: float,
        report: Callable[[Sequence[functions.UnservedBacklog]], None],
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.warn_after = warn_after
        self.report = report
        self.log = log
        self.clock = clock
        self.every = min(CHECK_EVERY, warn_after / 2)
        self.next_at = 0.0
        self.warned_at: dict[str, float] = {}  # function id -> when it was last warned about

    def tick(self) -> list[functions.UnservedBacklog]:
        """Check, if it is time to (the caller leads); returns what the check found."""
        now = self.clock()
        if now < self.next_at:
            return []
        self.next_at = now + self.every
        found = self.db.run(lambda conn: functions.unserved_backlog(conn, cap=COUNT_CAP))
        self.report(found)
        for backlog in found:
            if backlog.waited_seconds >= self.warn_after and self._may_warn(backlog, now):
                self._warn(backlog)
        return found

    def _may_warn(self, backlog: functions.UnservedBacklog, now: float) -> bool:
        last = self.warned_at.get(backlog.function_id)
        if last is not None and now - last < WARN_EVERY:
            return False
        self.warned_at[backlog.function_id] = now
        return True

    def _warn(self, backlog: functions.UnservedBacklog) -> None:
        fid = backlog.function_id
        self.log.warning(
            "runs wait for a function that no live daemon serves",
            function_id=fid,
            runs=backlog.runs,
            waiting_since=backlog.since.isoformat(),
            waited_seconds=round(backlog.waited_seconds, 1),
            fix=(
                f"deploy a daemon whose app has the function {fid!r}, or retire it with "
                f"`orchestrator functions remove {shlex.quote(fid)} --cancel-runs`"
            ),
        )
