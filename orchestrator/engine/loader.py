"""The loader of resumed runs' memos: the recorded steps of the runs a worker resumes at the
same moment, read with one statement (`WHERE run_id = ANY(...)`) on a direct connection.

Thousands of waits resolved at once resume thousands of runs, each of which reads its
recorded steps before it replays them. One transaction each, on the worker's small pool of
connections, made those reads queue for a connection (and open and close overflow ones);
batched, a worker's concurrent runs share one round trip (see engine/batcher.py). A read is
safe to repeat, so a transient error retries the batch; an error fails every load of it.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from orchestrator.db import steps
from orchestrator.db.direct import Direct
from orchestrator.engine.batcher import Batcher

Memo = dict[str, steps.StepRow]
"""A run's recorded steps by step id."""


class StepLoader:
    def __init__(self, direct: Direct, *, retry_for: float, max_batch: int = 500) -> None:
        self.batcher: Batcher[str, Memo] = Batcher(
            direct, _load, name="step-loader", retry_for=retry_for, max_batch=max_batch
        )

    def load(self, run_id: str) -> Future[Memo]:
        """The run's recorded steps by step id (empty for a run that has none)."""
        return self.batcher.submit(run_id)

    def warm(self) -> None:
        self.batcher.warm(lambda conn: steps.load_many(conn, [_NOBODY]))

    def close(self) -> None:
        self.batcher.direct.close()


_NOBODY = "00000000-0000-0000-0000-000000000000"


def _load(conn: Any, run_ids: list[str]) -> list[Memo]:
    loaded = steps.load_many(conn, run_ids)
    return [{row.step_id: row for row in loaded[run_id]} for run_id in run_ids]
