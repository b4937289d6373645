"""The waiter: the waits a worker's runs reach at the same moment, stored in one transaction.

Storing a wait takes the shared lock of its event name, looks back at the events already
received, and suspends the run if none ends the wait (db/waits.py, which explains why that
is race-free). One transaction each, on the worker's small pool of connections, capped how
fast runs reached their waits; batched on a direct connection (see engine/batcher.py), the
runs that reach a wait together share the transaction and its two round trips. Each run is
still fenced on its own lease, and still sees every matching event received before its wait
was stored.

A failed batch is rolled back, so it is safe to repeat: a transient error retries it; any
other error serves its requests again one at a time, so that one bad wait fails alone.
"""

from __future__ import annotations

from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from orchestrator.db import waits
from orchestrator.db.direct import Direct
from orchestrator.db.steps import StepRecord
from orchestrator.engine.batcher import Batcher


class Waiter:
    def __init__(self, direct: Direct, *, retry_for: float, max_batch: int = 500) -> None:
        self.batcher: Batcher[waits.Storing, waits.Stored] = Batcher(
            direct,
            waits.store_many,
            name="waiter",
            retry_for=retry_for,
            max_batch=max_batch,
            isolate=True,
            key=lambda storing: storing.run_id,  # a run at most once per transaction
        )

    def store(self, storing: waits.Storing) -> Future[waits.Stored]:
        return self.batcher.submit(storing)

    def warm(self) -> None:
        """Connect and plan the statements now: a wait, on no event, of a run that does not
        exist, which writes nothing."""
        self.batcher.warm(lambda conn: waits.store_many(conn, [_NOBODY]))

    def close(self) -> None:
        self.batcher.direct.close()


def _never(event: dict[str, Any]) -> bool:
    return False


_NOTHING = "00000000-0000-0000-0000-000000000000"
_NOBODY = waits.Storing(
    (
        waits.Branch(
            waits.Wait(_NOTHING, "-", "-", None, "null", None, datetime.now(UTC), None), _never
        ),
    ),
    StepRecord("-", 0, "wait", "waiting", 1),
    token=_NOTHING,
    due=datetime.now(UTC),
)
