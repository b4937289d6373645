"""The runs a worker executes whose cancellation it was told of.

A cancellation ends a run in the database at once (db/runs.py); the worker executing it learns
of it from its daemon (runtime/cancellations.py) and marks it here. An execution stops at its
next step boundary (an async one's task is cancelled at once), and the body of a plain
function's step can look (`ctx.cancelled`) or wait (`ctx.wait_cancelled(timeout)`) meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class CancelledRuns:
    """A set of lease tokens (one per execution told of its run's cancellation) that threads
    can wait on. Keyed by lease, not run id: a cancelled run may be resumed and handed to the
    same worker while its cancelled execution still runs, and the new execution goes on."""

    def __init__(self, run_ids: Iterable[str] = ()) -> None:
        self._ids = set(run_ids)
        self._changed = threading.Condition()

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def mark(self, tokens: Iterable[str]) -> None:
        with self._changed:
            self._ids.update(tokens)
            self._changed.notify_all()

    def discard(self, token: str) -> None:
        with self._changed:
            self._ids.discard(token)

    def wait(self, token: str, timeout: float | None) -> bool:
        """Block until the execution under this lease is marked, or `timeout` seconds (None:
        for good); True if it is marked."""
        with self._changed:
            return self._changed.wait_for(lambda: token in self._ids, timeout)
