"""Executing runs in process, as a worker does, one claimed run at a time: the harness of the
tests that drive the executor on a real database (the `harness` fixture, tests/db/conftest.py).
Each test claims a run with the daemon's claim statement and drives it with the worker's
`execute()` (on the sync face, or the async face on a loop of its own); what the run and its
steps recorded is read back with SQL. A further attempt is made due with an UPDATE."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from orchestrator import Orchestrator
from orchestrator import log as logging
from orchestrator.db import runs, steps
from orchestrator.db.database import Database
from orchestrator.engine.cancelled import CancelledRuns
from orchestrator.engine.execution import Limits
from orchestrator.engine.executor import Outcome, Task, execute, settled
from orchestrator.engine.faces import AsyncFace, Face, SyncFace, run_sync
from orchestrator.engine.observer import NOBODY, StepObserver
from orchestrator.engine.store import RunStore
from orchestrator.engine.tracer import NOTRACE, Tracer
from tests.db.helpers import claim
from tests.db.helpers import execute as sql


class Harness:
    """An app, a database and the worker's `execute()`, one claimed run at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.app = Orchestrator()
        self.store = RunStore(db, retry_for=5.0)
        self.threads = ThreadPoolExecutor(8)
        self.cancelled = CancelledRuns()  # as a worker is told by its daemon
        self.calls: dict[str, int] = {}
        self.observer: StepObserver = NOBODY  # what counts steps for the metrics
        self.tracer: Tracer = NOTRACE  # what makes spans of runs and steps

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def start(self, function_id: str) -> str:
        with self.db.transaction() as conn:
            event = {"id": str(uuid.uuid4()), "name": "test/start", "data": {}, "ts": ""}
            return runs.create_many(conn, [runs.NewRun(function_id, [event])])[0]

    def step(self, function_id: str) -> Outcome:
        """Claim the run of `function_id` that is due and execute it once."""
        task = self.task(function_id)
        fdef = self.app.functions[function_id]
        if fdef.is_async:  # on a loop of its own, as a worker's event loop would run it
            return asyncio.run(self.execute(task, self.async_face()))
        return run_sync(self.execute(task, SyncFace()))

    def task(self, function_id: str) -> Task:
        """Claim the run of `function_id` that is due."""
        (claimed,) = claim(self.db, str(uuid.uuid4()), limit=1, fids=(function_id,))
        return Task.of(claimed)

    def async_face(self) -> AsyncFace:
        return AsyncFace(bodies=self.threads, io=self.threads)

    async def execute(self, task: Task, face: Face) -> Outcome:
        if isinstance(face, AsyncFace):
            face.adopt()  # this task is the run's: the one its cancellation interrupts
        log = logging.get("test")
        outcome = await execute(
            task,
            self.app.functions[task.function_id],
            self.store,
            limits=Limits(),
            draining=threading.Event(),
            log=log,
            cancelled=self.cancelled,
            observer=self.observer,
            face=face,
            tracer=self.tracer,
        )
        if outcome.commit is not None:  # the run's end, handed to the group committer
            wait([outcome.commit], timeout=30)
        return settled(outcome, log)

    def make_due(self, run_id: str) -> None:
        sql(
            self.db,
            "UPDATE orchestrator.runs SET due_at = now() WHERE id = CAST(:r AS uuid)",
            r=run_id,
        )

    def run(self, run_id: str) -> dict[str, Any]:
        (row,) = sql(
            self.db,
            "SELECT status, error, attempts FROM orchestrator.runs WHERE id = CAST(:r AS uuid)",
            r=run_id,
        )
        return {"status": row[0], "error": row[1], "attempts": row[2]}

    def steps(self, run_id: str) -> dict[str, steps.StepRow]:
        return self.store.load(run_id)

    def close(self) -> None:
        self.store.close()  # its direct connections (commits, loads, waits)
        self.threads.shutdown(wait=False, cancel_futures=True)
