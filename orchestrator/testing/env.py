"""`TestEnv`: an app's functions run in the test's process, on a real Postgres, by virtual time.

The environment is the daemon's loop without its timers: it ingests events, fires cron ticks,
applies timeouts, claims due runs with the daemon's own statements (flow control included)
and executes each with the worker's `execute()`, one at a time, until nothing is due
(`run_until_idle`). Every statement reads the virtual clock (orchestrator/db/clock.py), so
`advance` moves time forward by jumping from one due moment to the next (a sleep's end, a
wait's timeout, a retry's back-off, a cron tick, a debounce window, a run's `timeouts`) and
running what fell due at each, in order. Nothing is imitated: runs, steps, waits and events
are the rows production writes, read back with `runs()` and `events()`.

The virtual clock is one per process: one environment at a time per process (pytest-xdist
gives each worker its own process, and its own databases).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator import log as logging
from orchestrator.app import Orchestrator
from orchestrator.db import clock, clones, functions, inspection, migrate, runs, steps
from orchestrator.db.connect import embedded_url, libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.cancelled import CancelledRuns
from orchestrator.engine.execution import Limits
from orchestrator.engine.executor import Outcome, Task, execute, settled
from orchestrator.engine.faces import AsyncFace, Face, SyncFace, run_sync
from orchestrator.engine.store import RunStore
from orchestrator.errors import RunNotFoundError
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.upkeep import Upkeep
from orchestrator.testing.results import RunResult, result_of, sent_ids
from orchestrator.testing.stand_ins import FailureKind, StandIns, StepCall, StepMock, matches

SERVER_ENV = "ORCHESTRATOR_TEST_DATABASE_URL"
EMBEDDED_DIR = Path(".orchestrator") / "test-pgdata"  # under the working directory
CLAIM_LIMIT = 64  # runs claimed per pass; they are executed one after another
MAX_EXECUTIONS = 10_000  # per run_until_idle: a run that never settles is a bug to report
_open_envs: set[TestEnv] = set()  # at most one: the virtual clock is the process's


def server_url() -> str:
    """The server test databases are made on: $ORCHESTRATOR_TEST_DATABASE_URL, else the
    embedded Postgres in .orchestrator/test-pgdata under the working directory."""
    url = os.environ.get(SERVER_ENV)
    if url:
        return libpq_url(url)
    return embedded_url(str(Path.cwd() / EMBEDDED_DIR))


class NotIdleError(RuntimeError):
    """`run_until_idle` executed MAX_EXECUTIONS runs and work was still due: some run never
    settles (a step retried at once forever, a run that invokes itself)."""


class TestEnv:
    """An app's functions executed in this process against a fresh database.

    `TestEnv(app)` clones a new database from a migrated template on the test server
    ($ORCHESTRATOR_TEST_DATABASE_URL, else the embedded Postgres) and drops it at `close()`;
    `TestEnv(app, url=...)` uses that database as it is (migrating it) and keeps it. The
    app is bound to the test database meanwhile, so `app.send` and friends in the code
    under test go there too. The clock starts at `start` (default: the real time now) and
    moves only with `advance` and `advance_to`."""

    __test__ = False  # not a test class, whatever pytest's collection thinks of its name

    def __init__(
        self,
        app: Orchestrator,
        *,
        url: str | None = None,
        start: datetime | None = None,
        database: Callable[[], tuple[str, Callable[[], None]]] | None = None,
    ) -> None:
        if _open_envs:
            raise RuntimeError(
                "another TestEnv is open in this process; close it first: the virtual clock "
                "belongs to the process (pytest-xdist runs tests in parallel processes)"
            )
        self.app = app
        self.stand_ins = StandIns()
        self._drop: Callable[[], None] | None = None
        if url is not None:
            self.url = libpq_url(url)
            db = Database(self.url, pool_size=1)
            try:
                migrate.upgrade(db.engine)
            finally:
                db.dispose()
        elif database is not None:  # the pytest plugin's clone, made ahead of need
            self.url, self._drop = database()
        else:
            self.url, self._drop = fresh_database(server_url())
        clock.set(start or datetime.now(UTC))
        self._bound_before = app.bind(self.url)
        self._closed = False
        _open_envs.add(self)
        try:
            self._open()
        except BaseException:
            self._closed = True  # what _open made is left to the garbage collector
            _open_envs.discard(self)
            app.bind(self._bound_before)
            clock.reset()
            if self._drop is not None:
                self._drop()
            raise

    # -- setting up and tearing down -------------------------------------------------------

    def _open(self) -> None:
        cfg = self.app.config
        registry = self.app.functions
        self.owner = str(uuid.uuid4())
        self.log = logging.get("testing")
        self.db = Database(self.url, pool_size=2, application_name="orchestrator-testing")
        self.direct = Direct(
            self.url, application_name="orchestrator-testing-claims", settings=runs.CLAIM_SETTINGS
        )
        self.store = RunStore(self.db, retry_for=5.0)
        self.limits = Limits(cfg.max_step_output_bytes, cfg.max_event_bytes, cfg.max_state_bytes)
        self.lease_seconds = cfg.lease_duration
        self.max_recoveries = cfg.max_recoveries
        self.policies = {fid: f.policy() for fid, f in registry.items()}
        self.flow = FlowClaimer(
            self.direct,
            registry,
            owner=self.owner,
            lease_seconds=cfg.lease_duration,
            poll_interval=cfg.poll_interval,
            log=self.log,
        )
        flow_ids = set(self.flow.function_ids)
        self.plain_ids = [f for f in sorted(registry) if f not in flow_ids]
        self.ingester = Ingester(
            self.db,
            self.direct,
            batch_size=cfg.ingest_batch_size,
            max_event_bytes=cfg.max_event_bytes,
            log=self.log,
        )
        self.cron = CronScheduler(self.db, registry, self.log)
        self.upkeep = Upkeep(self.db, registry, self.log)
        self.cancelled = CancelledRuns()
        self.draining = threading.Event()  # never set: a test's worker does not drain
        self._flow_next: datetime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._threads: ThreadPoolExecutor | None = None
        with self.db.transaction() as conn:
            functions.record_all(conn, registry)
        self.cron.register()

    def close(self) -> None:
        """Drop the test database (unless it was given by URL), unbind the app, and give the
        process its real clock back."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._loop is not None:  # stopped, then closed (an unclosed loop warns)
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._loop_thread is not None:
                    self._loop_thread.join(10)
                if not self._loop.is_running():
                    self._loop.close()
            if self._threads is not None:
                self._threads.shutdown(wait=False, cancel_futures=True)
            self.store.close()
            self.direct.close()
            self.db.dispose()
            self.app.bind(self._bound_before)
        finally:
            clock.reset()
            _open_envs.discard(self)
            if self._drop is not None:
                self._drop()

    def __enter__(self) -> TestEnv:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> TestEnv:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    # -- the clock -------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The virtual time."""
        now = clock.current()
        if now is None:
            raise RuntimeError("this test environment is closed: it has no clock")
        return now

    def advance(self, by: timedelta | float) -> datetime:
        """Move the clock forward by `by` (a timedelta or seconds), running whatever falls
        due on the way at its own time, in order; returns the new time."""
        delta = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if delta < timedelta(0):
            raise ValueError(f"advance({by!r}): the virtual clock only moves forward")
        return self.advance_to(self.now + delta)

    def advance_to(self, at: datetime) -> datetime:
        """Move the clock forward to `at` (aware; naive means UTC), as `advance` does."""
        at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        if at < self.now:
            raise ValueError(
                f"advance_to({at.isoformat()}): it is already {self.now.isoformat()}; the "
                "virtual clock only moves forward"
            )
        self.run_until_idle()
        while (due := self.next_due()) is not None and due <= at:
            clock.set(due)
            self.run_until_idle()
        clock.set(at)
        self.run_until_idle()
        return at

    def next_due(self) -> datetime | None:
        """When something next falls due (a run, a cron tick, a flow-control window, a run's
        `timeouts`), if anything does."""
        with self.db.transaction() as conn:
            due = inspection.next_due(conn)
            for fid, t in sorted(self.upkeep.timeouts.items()):
                late = inspection.next_timeout(
                    conn, fid, start=_seconds(t.start), finish=_seconds(t.finish)
                )
                due = late if due is None or (late is not None and late < due) else due
        flow = self._flow_next
        if flow is not None and flow > self.now:
            due = flow if due is None else min(due, flow)
        return due

    # -- making work -----------------------------------------------------------------------

    def send(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
    ) -> str:
        """Send an event (`app.send`); returns its id. Nothing runs until `run_until_idle`."""
        return self.app.send(name, data, id=id, ts=ts)

    def start(
        self,
        function_id: str,
        data: dict[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
    ) -> str:
        """Start a run of `function_id` (`app.start`); returns its id."""
        return self.app.start(function_id, data, delay=delay).run_id

    def signal(self, run_id: str, name: str, data: dict[str, Any] | None = None) -> int:
        """Send a signal to a run (`app.signal`)."""
        return self.app.signal(run_id, name, data)

    def cancel(self, run_id: str, *, reason: str = "cancelled by request") -> str:
        """Cancel a run and its unfinished invoked runs (`app.cancel`)."""
        return self.app.cancel(run_id, reason=reason)

    # -- step bodies -------------------------------------------------------------------------

    def mock_step(
        self,
        function_id: str,
        step_id: str,
        *,
        return_value: Any = None,
        side_effect: Any = None,
    ) -> StepMock:
        """Replace the body of a `ctx.step.run` step (every call of `step_id`, or one call:
        `"step#1"`) for this environment. `side_effect` is as in unittest.mock: an exception
        (raised), a callable (called with the step's arguments; async for an async
        function's step if you like), or an iterable (one item per call, exceptions raised).
        The result is recorded and replayed like a real body's; returns the mock."""
        self._known(function_id)
        return self.stand_ins.mock(function_id, step_id, return_value, side_effect)

    def fail_step(
        self,
        function_id: str,
        step_id: str,
        *,
        kind: FailureKind = "transient",
        times: int = 1,
        error: BaseException | None = None,
    ) -> None:
        """Make the next `times` calls of a step's body fail: `"transient"` raises `error`
        (default `InjectedFailure`) instead of running the body, and the step retries by its
        policy; `"non_retriable"` raises `NonRetriableError`: the step fails for good;
        `"crash"` runs the body, then kills the execution before its result is recorded, as
        a worker process dying there would: the run is requeued with a recovery and a crash,
        and the body runs again (at-least-once)."""
        self._known(function_id)
        self.stand_ins.fail(function_id, step_id, kind, times, error)

    def calls(self, function_id: str | None = None, step_id: str | None = None) -> list[StepCall]:
        """The step body calls made so far (real, mocked or failed), in order, with the
        virtual time of each; of one function and step id (`charge` matches `charge#1`)."""
        with self.stand_ins.lock:
            calls = list(self.stand_ins.calls)
        if function_id is not None:
            calls = [c for c in calls if c.function_id == function_id]
        if step_id is not None:
            calls = [c for c in calls if matches(c.step_id, step_id)]
        return calls

    def _known(self, function_id: str) -> None:
        if function_id not in self.app.functions:
            raise KeyError(
                f"function '{function_id}' is not registered on this app; it has: "
                + ", ".join(sorted(self.app.functions))
            )

    # -- running -----------------------------------------------------------------------------

    def run_until_idle(self) -> int:
        """Run everything due now (new events' runs, woken waits, due sleeps and retries,
        cron ticks) to its next suspension or end, until nothing is due at the current
        virtual time; returns how many executions it made."""
        executed = 0
        self._flow_next = None
        while True:
            moved, claimed = self._pass()
            for task in claimed:
                self._execute(task)
            executed += len(claimed)
            if executed > MAX_EXECUTIONS:
                raise NotIdleError(
                    f"still not idle after {executed} executions at {self.now.isoformat()}: "
                    "a run that never settles (a step retried at once without end?)"
                )
            if not moved and not claimed:
                return executed

    def _pass(self) -> tuple[int, list[Task]]:
        """One pass of the daemon's duties; returns what it moved (events ingested, cron
        ticks fired, runs timed out) and the runs it claimed."""
        moved = 0
        while taken := self.ingester.tick():
            moved += taken
        moved += self.cron.tick()
        moved += len(self.upkeep.tick())
        claimed: list[runs.ClaimedRun] = []
        for suspects in (False, True):
            claim = self._claim_plain(suspects)
            claimed += self.direct.run(claim, retry_for=0)
            for fid in self.flow.function_ids:
                outcome = self.flow.claim_function(fid, CLAIM_LIMIT, suspects=suspects)
                claimed += outcome.claimed
                if outcome.retry_in and not outcome.claimed:
                    at = self.now + timedelta(seconds=outcome.retry_in)
                    self._flow_next = at if self._flow_next is None else min(self._flow_next, at)
        return moved, [Task.of(c) for c in claimed]

    def _claim_plain(self, suspects: bool) -> Callable[[Any], list[runs.ClaimedRun]]:
        def claim(conn: Any) -> list[runs.ClaimedRun]:
            return runs.claim_due(
                conn,
                owner=self.owner,
                limit=CLAIM_LIMIT,
                lease_seconds=self.lease_seconds,
                function_ids=self.plain_ids,
                suspects=suspects,
            )

        return claim

    def _execute(self, task: Task) -> Outcome:
        fdef = self.app.functions[task.function_id]
        if fdef.is_async:
            outcome = asyncio.run_coroutine_threadsafe(self._on_loop(task), self._async()).result()
        else:
            outcome = run_sync(self._execute_on(task, SyncFace()))
        if outcome.commit is not None:  # the run's end, handed to the group committer
            wait([outcome.commit], timeout=60)
            outcome = settled(outcome, self.log)
        if outcome.status == "lease_lost" and task.run_id in self.stand_ins.crashed:
            self.stand_ins.crashed.discard(task.run_id)
            lease = [(task.run_id, task.lease_token)]
            self.db.run(
                lambda conn: runs.requeue_crashed(conn, lease, max_recoveries=self.max_recoveries)
            )
        return outcome

    async def _on_loop(self, task: Task) -> Outcome:
        assert self._threads is not None
        face = AsyncFace(bodies=self._threads, io=self._threads)
        face.adopt()  # this task is the run's: the one its cancellation interrupts
        return await self._execute_on(task, face)

    async def _execute_on(self, task: Task, face: Face) -> Outcome:
        return await execute(
            task,
            self.app.functions[task.function_id],
            self.store,
            limits=self.limits,
            draining=self.draining,
            log=self.log,
            cancelled=self.cancelled,
            policies=self.policies,
            face=face,
            stand_ins=self.stand_ins,
        )

    def _async(self) -> asyncio.AbstractEventLoop:
        """The event loop async functions run on, on a thread of its own (as in a worker)."""
        if self._loop is None:
            self._threads = ThreadPoolExecutor(8, thread_name_prefix="testenv-body")
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name="testenv-loop", daemon=True
            )
            self._loop_thread.start()
        return self._loop

    # -- reading back ------------------------------------------------------------------------

    def runs(self, function_id: str | None = None, *, status: str | None = None) -> list[RunResult]:
        """The runs (of `function_id`, with `status`), oldest first, with their steps."""
        with self.db.transaction() as conn:
            rows = inspection.runs_in_order(conn, function_id=function_id, status=status)
            return [_result(conn, row) for row in rows]

    def run(self, run_id: str) -> RunResult:
        """One run, with its steps; `RunNotFoundError` for an unknown id."""
        with self.db.transaction() as conn:
            row = runs.get(conn, run_id)
            if row is None:
                raise RunNotFoundError(f"no run {run_id}")
            return _result(conn, row)

    def events(self, name: str | None = None) -> list[inspection.EventRow]:
        """The events in the database (named `name`), in the order they arrived: those the
        test sent and those its runs sent."""
        with self.db.transaction() as conn:
            return inspection.events_in_order(conn, name=name)

    # -- the same, for asyncio ----------------------------------------------------------------

    async def run_until_idle_async(self) -> int:
        """`run_until_idle`, awaited (the executions run off the caller's event loop)."""
        return await asyncio.to_thread(self.run_until_idle)

    async def advance_async(self, by: timedelta | float) -> datetime:
        return await asyncio.to_thread(self.advance, by)

    async def advance_to_async(self, at: datetime) -> datetime:
        return await asyncio.to_thread(self.advance_to, at)

    async def send_async(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
    ) -> str:
        return await asyncio.to_thread(self.send, name, data, id=id, ts=ts)

    async def start_async(
        self,
        function_id: str,
        data: dict[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
    ) -> str:
        return await asyncio.to_thread(self.start, function_id, data, delay=delay)

    async def signal_async(self, run_id: str, name: str, data: dict[str, Any] | None = None) -> int:
        return await asyncio.to_thread(self.signal, run_id, name, data)

    async def runs_async(
        self, function_id: str | None = None, *, status: str | None = None
    ) -> list[RunResult]:
        return await asyncio.to_thread(self.runs, function_id, status=status)

    async def run_async(self, run_id: str) -> RunResult:
        return await asyncio.to_thread(self.run, run_id)


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _result(conn: Any, row: runs.RunRow) -> RunResult:
    recorded = steps.load(conn, row.id)
    ids = sent_ids(recorded)
    sent = inspection.events_in_order(conn, ids=ids) if ids else []
    return result_of(row, recorded, sent)


def fresh_database(server: str) -> tuple[str, Callable[[], None]]:
    """A new database cloned from the migrated template on `server` (made if missing), and
    what drops it."""
    template = clones.ensure_template(server)
    with clones.admin(server) as conn:
        name = clones.clone(conn, template)

    def drop() -> None:
        with clones.admin(server) as conn:
            clones.drop(conn, name)

    return clones.with_database(server, name), drop
