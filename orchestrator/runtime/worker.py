"""A worker process: `concurrency` threads executing the runs of plain functions its daemon
hands it, and one event loop executing up to `async_concurrency` runs of async ones.

Talks to its daemon over a pipe: it receives ("run", [task fields, ...]) (`Task.wire`),
("cancel", [(run id, lease token), ...]) (a cancellation ended these runs: the executions
under these leases stop), ("drain",) and ("stop",) and answers ("ready",) once, then
("done", [(run_id, status, due_at, lease_token), ...], counts) for the executions that
stopped since its last message. `counts` is what its metrics tally counted since then (None
when metrics are off or nothing was); ("stats", counts) carries them alone when they have
waited long during a long run. It is forked from the daemon's fork server and dies with it
(PR_SET_PDEATHSIG), which dies with the daemon; it ignores SIGINT/SIGTERM, which the daemon
handles for the whole group.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import log as logging
from orchestrator.config import Config
from orchestrator.db.database import Database, DatabaseError
from orchestrator.engine.cancelled import CancelledRuns
from orchestrator.engine.execution import Limits
from orchestrator.engine.executor import Outcome, Task, execute, settled
from orchestrator.engine.faces import AsyncFace, Face, SyncFace, run_sync
from orchestrator.engine.observer import NOBODY
from orchestrator.engine.store import RunStore
from orchestrator.engine.tracer import NOTRACE, Tracer
from orchestrator.errors import first_line
from orchestrator.flow import FlowPolicy
from orchestrator.redact import url_secrets
from orchestrator.runtime import tracing
from orchestrator.runtime.loader import load_app
from orchestrator.runtime.metrics import StepTally

if TYPE_CHECKING:
    from orchestrator.inngest.remote import RemoteFunctions

_PR_SET_PDEATHSIG = 1
SLOT = 36  # bytes per run slot in the shared `busy` array (a run id); see pool.py
IO_THREADS = 4  # the worker's pooled connections (twice that with overflow)
BODY_THREADS = 32  # threads per worker for the plain step bodies of async functions
STOP_COMMIT_TIMEOUT = 10.0  # seconds a stopping worker waits for the ends handed over


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the pipe EOF check below still ends the worker


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    app_path: str
    url: str = field(repr=False)  # both may hold a password
    config: dict[str, Any] = field(repr=False)


def worker_main(spec: WorkerSpec, conn: Any, busy: Any) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cfg = Config(**spec.config)
    logging.hide(*url_secrets(spec.url))
    logging.configure(cfg.log_format, cfg.log_level, payloads=cfg.log_payloads)
    log = logging.get("worker", worker=spec.index, pid=os.getpid())
    app = load_app(spec.app_path)
    app.bind(spec.url)
    traces = tracing.set_up()  # after the fork: the provider's export thread is this process's
    # the hot writes share one direct connection (the group committer); this pool serves
    # the rarer ones (suspends, releases, loading a resumed run's steps)
    db = Database(
        spec.url,
        pool_size=IO_THREADS,
        application_name=f"orchestrator-worker-{spec.index}",
    )
    store = RunStore(db)
    try:
        store.warm()  # before "ready": the first runs find their connections open
    except DatabaseError as exc:  # the first write connects again, and retries
        log.warning("could not connect at start-up", error=first_line(exc))
    remote = _remote_functions(db, cfg)
    try:
        Worker(
            app.functions,
            store,
            cfg,
            conn=conn,
            log=log,
            busy=busy,
            tracer=traces.tracer,
            remote=remote,
        ).serve()
    finally:
        traces.shutdown()  # export the spans not exported yet


def _remote_functions(db: Database, cfg: Config) -> RemoteFunctions | None:
    """With `inngest = true`, the SDK-served functions, built from their rows when needed."""
    if not cfg.inngest:
        return None
    from orchestrator.inngest.calls import Settings
    from orchestrator.inngest.remote import RemoteFunctions

    return RemoteFunctions(db, Settings.from_config(cfg))


class Worker:
    def __init__(
        self,
        functions: dict[str, Any],
        store: RunStore,
        cfg: Config,
        *,
        conn: Any,
        log: Any,
        busy: Any = None,
        tracer: Tracer = NOTRACE,
        remote: RemoteFunctions | None = None,
    ) -> None:
        self.functions = functions
        self.tracer = tracer  # spans of the runs and steps, if tracing is on (runtime/tracing.py)
        self.remote = remote  # the SDK-served functions (orchestrator/inngest/remote.py)
        self.policies: Mapping[str, FlowPolicy] = {fid: f.policy() for fid, f in functions.items()}
        if remote is not None:  # an invoke may start an SDK-served function's run
            from orchestrator.inngest.remote import Policies

            self.policies = Policies(self.policies, remote)
        self.busy = busy
        self.store = store
        self.cfg = cfg
        self.conn = conn
        self.log = log
        self.limits = Limits(cfg.max_step_output_bytes, cfg.max_event_bytes, cfg.max_state_bytes)
        self.draining = threading.Event()
        self.cancelled = CancelledRuns()  # runs here that a cancellation ended
        self.tasks: queue.Queue[Task | None] = queue.Queue()
        self.send_lock = threading.Lock()
        # (run id, status, due, lease token) of the executions that ended, to send
        self.outbox: list[tuple[str, str, str | None, str]] = []
        store.committer.after_group = self.send_done
        # step and run counts for the daemon's metrics, only if it serves them
        self.tally = StepTally(on_stale=self._send_stats) if cfg.http_address else None
        has_async = remote is not None or any(f.is_async for f in functions.values())
        self.loop = AsyncRuns(self) if has_async else None

    def serve(self) -> None:
        threads = [
            threading.Thread(
                target=self._execute_loop, args=(i,), name=f"executor-{i}", daemon=True
            )
            for i in range(self.cfg.concurrency)
        ]
        for thread in threads:
            thread.start()
        if self.loop is not None:
            self.loop.start()
        self._send(("ready",))
        while self._handle(self._receive()):
            pass
        for _ in threads:
            self.tasks.put(None)
        for thread in threads:
            thread.join()
        if self.loop is not None:
            self.loop.stop()
        # the ends the threads handed over: committed, and the daemon told, before exiting
        if not self.store.committer.drain(timeout=STOP_COMMIT_TIMEOUT):
            self.log.warning("runs' ends still uncommitted at stop; their leases go back")

    def _receive(self) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError):
            os._exit(1)  # the daemon is gone; its leases will be rescued
        return message

    def _handle(self, message: tuple[Any, ...]) -> bool:
        """Act on a message from the daemon; False once told to stop."""
        if message[0] == "run":  # each task as its fields (Task.wire)
            for fields in message[1]:
                self._dispatch(Task(*fields))
        elif message[0] == "cancel":  # (run id, lease token) of each execution to stop
            self.cancelled.mark(token for _, token in message[1])
            if self.loop is not None:
                self.loop.cancel([run_id for run_id, _ in message[1]])
        elif message[0] == "drain":
            self.draining.set()
        return bool(message[0] != "stop")

    def function(self, function_id: str, *, read: bool = False) -> Any:
        """The definition of a run's function: the app's, else an SDK-served one (`read`:
        read its row when the cached one is stale; else the cached one only)."""
        fdef = self.functions.get(function_id)
        if fdef is not None or self.remote is None:
            return fdef
        try:
            return self.remote.get(function_id) if read else self.remote.cached(function_id)
        except DatabaseError as exc:
            self.log.warning("could not read the function", function_id=function_id, error=str(exc))
            return self.remote.cached(function_id)

    def _dispatch(self, task: Task) -> None:
        fdef = self.function(task.function_id, read=True)
        if self.loop is not None and fdef is not None and fdef.is_async:
            self.loop.submit(task)
        else:
            self.tasks.put(task)

    def _execute_loop(self, slot: int) -> None:
        mark = self.marker(slot)
        while (task := self.tasks.get()) is not None:
            self.finished(task, run_sync(self.execute(task, mark, SyncFace())))

    def finished(self, task: Task, outcome: Outcome) -> None:
        """Tell the daemon how the run stopped. A run that ended is told once its end is
        committed: the committer thread settles a group's runs, then sends one message
        for them all (`send_done`)."""
        commit = outcome.commit
        if commit is None:
            self._done(task, outcome, send=True)
            return
        here = threading.get_ident()

        def committed(_: Any) -> None:
            # on the committer thread, which sends after the whole group; or here, at once,
            # if the commit was already done
            self._done(task, settled(outcome, self.log), send=threading.get_ident() == here)

        commit.add_done_callback(committed)

    def _done(self, task: Task, outcome: Outcome, *, send: bool) -> None:
        self.cancelled.discard(task.lease_token)
        due = outcome.due_at.isoformat() if outcome.due_at else None
        with self.send_lock:
            if self.tally is not None:
                self.tally.run_finished(task.function_id, outcome.status)
            self.outbox.append((outcome.run_id, outcome.status, due, task.lease_token))
        if send:
            self.send_done()

    def send_done(self) -> None:
        """Send the runs that stopped since the last message, in one message."""
        with self.send_lock:
            if not self.outbox:
                return
            done, self.outbox = self.outbox, []
            counts = self.tally.take() if self.tally is not None else None
            self._send_locked(("done", done, counts))

    def _send_stats(self) -> None:
        counts = self.tally.take() if self.tally is not None else None
        if counts is not None:
            self._send(("stats", counts))

    def marker(self, slot: int) -> Callable[[str | None], None]:
        """Writes which run this slot is executing a step body of into shared memory, so
        that if the process dies the daemon knows whom to blame (see pool._blame)."""
        start, end = slot * SLOT, (slot + 1) * SLOT
        busy = self.busy

        def mark(run_id: str | None) -> None:
            if busy is not None:
                busy[start:end] = (run_id or "").encode().ljust(SLOT, b"\0")

        return mark

    async def execute(self, task: Task, mark: Callable[[str | None], None], face: Face) -> Outcome:
        fdef = self.function(task.function_id)
        if fdef is None:
            self.log.error("function not in this worker's app", function_id=task.function_id)
            return Outcome(task.run_id, "abandoned")
        try:
            return await execute(
                task,
                fdef,
                self.store,
                limits=self.limits,
                draining=self.draining,
                log=self.log,
                on_body=mark,
                cancelled=self.cancelled,
                policies=self.policies,
                observer=self.tally or NOBODY,
                face=face,
                tracer=self.tracer,
            )
        except BaseException:  # KeyboardInterrupt raised by user code too: give the run back
            self.log.exception("execution abandoned", run_id=task.run_id)
            return Outcome(task.run_id, "abandoned")

    def _send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except (OSError, EOFError):
            os._exit(1)


class AsyncRuns:
    """The worker's event loop, on a thread of its own, and the async runs on it: each a
    task with its own face (engine/faces.py).

    Their step bodies are not marked in the shared `busy` array: hundreds await in bodies at
    once, and being in one says nothing of which crashed the process. A worker that dies hands
    its async runs back as interrupted (a recovery each), none of them singled out."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.loop = asyncio.new_event_loop()
        self.bodies = ThreadPoolExecutor(BODY_THREADS, thread_name_prefix="async-body")
        self.io = ThreadPoolExecutor(2 * IO_THREADS, thread_name_prefix="async-io")
        self.faces: dict[str, AsyncFace] = {}  # by run id, touched on the loop only
        self.thread = threading.Thread(target=self.loop.run_forever, name="loop", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, task: Task) -> None:
        done = asyncio.run_coroutine_threadsafe(self._run(task), self.loop)
        done.add_done_callback(lambda ran: self._check(task, ran))

    def _check(self, task: Task, ran: Any) -> None:
        error = None if ran.cancelled() else ran.exception()
        if error is not None:  # a bug past execute()'s own catch-all: say so, give the run back
            self.worker.log.error(
                "async run failed in the worker", run_id=task.run_id, exc_info=error
            )
            self.worker.finished(task, Outcome(task.run_id, "abandoned"))

    def cancel(self, run_ids: list[str]) -> None:
        self.loop.call_soon_threadsafe(self._cancel, run_ids)

    def _cancel(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            if (face := self.faces.get(run_id)) is not None:
                face.cancel()

    async def _run(self, task: Task) -> None:
        face = AsyncFace(bodies=self.bodies, io=self.io)
        face.adopt()
        self.faces[task.run_id] = face  # a run claimed again here after its lease was lost
        try:  # replaces its old execution's face: that one ends on its own (lease lost)
            outcome = await self.worker.execute(task, _unmarked, face)
        finally:
            if self.faces.get(task.run_id) is face:
                del self.faces[task.run_id]
        self.worker.finished(task, outcome)

    def stop(self, timeout: float = 5.0) -> None:
        """Let the runs on the loop end (a draining worker's stop at their next step)."""
        idle = asyncio.run_coroutine_threadsafe(self._idle(), self.loop)
        try:
            idle.result(timeout)
        except TimeoutError:
            self.worker.log.warning("async runs still executing at stop", runs=len(self.faces))
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _idle(self) -> None:
        while self.faces:
            await asyncio.sleep(0.01)


def _unmarked(run_id: str | None) -> None:
    return None
