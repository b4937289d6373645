"""The worker pool: `workers` processes, each running `concurrency` runs of plain functions
at once on threads, and `async_concurrency` runs of async ones on its event loop.

The pool knows which runs (and lease tokens) each process holds, so when a process dies — an
`os._exit`, a segfault, an OOM kill — its runs are handed back at once through `on_crash`
instead of waiting for their leases to expire, and the process is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from orchestrator.config import Config
from orchestrator.engine.executor import Task
from orchestrator.runtime.metrics import TallyDelta
from orchestrator.runtime.worker import SLOT, WorkerSpec, worker_main

# Workers fork from a fork server that has already imported the engine and the app: a
# replacement for a dead worker is ready in milliseconds, not the second a fresh interpreter
# takes, and the fork server is single-threaded, so forking it is safe.
_CTX = multiprocessing.get_context("forkserver")


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    inflight: dict[str, str] = field(default_factory=dict)  # run id -> lease token
    ready: bool = False
    eof: bool = False
    busy: Any = None  # shared memory: the run id each thread is executing a step body of
    threads: int = 1  # for runs of plain functions
    # runs of plain functions it may hold: its threads, plus those waiting for one
    # (`prefetch`); a run whose end is being committed holds no thread but counts until done
    capacity: int = 1
    async_capacity: int = 0  # runs of async functions at once on its loop
    async_runs: set[str] = field(default_factory=set)  # those of `inflight` on its loop
    # the lease tokens of executions here told of a cancellation (by token, not run id: a
    # resumed run may be handed here again while its cancelled execution still runs)
    cancelled: set[str] = field(default_factory=set)
    quarantine: bool = False

    def free(self, *, is_async: bool = False, ahead: bool = True) -> int:
        if not self.ready:
            return 0
        if is_async:
            return self.async_capacity - len(self.async_runs)
        room = self.capacity if ahead else self.threads
        return max(0, room - (len(self.inflight) - len(self.async_runs)))


class WorkerPool:
    def __init__(
        self,
        *,
        app_path: str,
        url: str,
        config: Config,
        on_done: Callable[[str, str, datetime | None], None],
        on_crash: Callable[[int, Handback], None],
        log: Any,
        on_stats: Callable[[TallyDelta], None] | None = None,
        async_ids: frozenset[str] = frozenset(),
    ) -> None:
        self.app_path = app_path
        self.async_ids = async_ids  # the app's async functions: their runs go to the loops
        self.url = url
        self.config = config
        self.quarantine_index = config.workers  # one more process, for suspect runs
        self.on_done = on_done
        self.on_crash = on_crash
        self.on_stats = on_stats  # what workers counted (metrics), riding on their messages
        self.log = log
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._draining = False
        self._supervisor = threading.Thread(target=self._supervise, name="pool", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        app_module = self.app_path.partition(":")[0]
        _CTX.set_forkserver_preload(
            ["orchestrator.runtime.forkserver_init", "orchestrator.runtime.worker", app_module]
        )
        for index in range(self.config.workers + 1):
            self._spawn(index)
        self._supervisor.start()

    def _spawn(self, index: int) -> None:
        quarantine = index == self.quarantine_index
        threads = 1 if quarantine else self.config.concurrency
        capacity = threads if quarantine else threads + self.config.prefetch
        async_capacity = 0
        if self.async_ids or self.config.inngest:  # SDK-served functions are async ones
            async_capacity = 1 if quarantine else self.config.async_concurrency
        config = asdict(self.config) | {
            "concurrency": threads,
            "async_concurrency": max(1, async_capacity),
        }
        parent_conn, child_conn = _CTX.Pipe()
        busy = _CTX.RawArray(ctypes.c_char, threads * SLOT)  # the threads' (see worker.py)
        process = _CTX.Process(
            target=worker_main,
            args=(WorkerSpec(index, self.app_path, self.url, config), child_conn, busy),
            name=f"orchestrator-worker-{index}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        with self._lock:
            self._workers[index] = _Worker(
                index,
                process,
                parent_conn,
                busy=busy,
                threads=threads,
                capacity=capacity,
                async_capacity=async_capacity,
                quarantine=quarantine,
            )
        self.log.info("worker started", worker=index, pid=process.pid, quarantine=quarantine)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(w.ready for w in self._workers.values()):
                    return True
            time.sleep(0.02)
        return False

    def drain(self) -> None:
        """Stop taking work: runs in flight suspend at their next step boundary."""
        with self._lock:
            self._draining = True
            workers = list(self._workers.values())
        for worker in workers:
            self._send(worker, ("drain",))

    def stop(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Stop every process (politely, then by force); returns leases still held."""
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for worker in workers:
            self._send(worker, ("stop",))
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
        self._supervisor.join(2)
        with self._lock:
            return [(rid, tok) for w in workers for rid, tok in w.inflight.items()]

    def kill(self) -> list[tuple[str, str]]:
        """Stop every process at once; returns the leases they held."""
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
        for worker in workers:
            worker.process.join(5)
        with self._lock:
            return [(rid, tok) for w in workers for rid, tok in w.inflight.items()]

    # -- dispatch ------------------------------------------------------------------------

    def free_slots(
        self, *, quarantine: bool = False, is_async: bool = False, ahead: bool = True
    ) -> int:
        """Free slots in ready processes, for runs of plain functions (threads) or of async
        ones (`is_async`): in the regular processes, or in the quarantine process that runs
        suspects (runs that were inside a step body when a worker died) one at a time, away
        from healthy runs. Without `ahead`, only idle threads count, not the room for runs
        claimed ahead (`prefetch`)."""
        with self._lock:
            if self._draining or self._stopping:
                return 0
            return sum(
                w.free(is_async=is_async, ahead=ahead)
                for w in self._workers.values()
                if w.quarantine == quarantine
            )

    def inflight(self) -> int:
        with self._lock:
            return sum(len(w.inflight) for w in self._workers.values())

    def held_leases(self) -> set[str]:
        """The runs executing here whose leases should hold (not those a cancellation
        ended, whose executions are stopping)."""
        with self._lock:
            return {
                rid
                for w in self._workers.values()
                for rid, token in w.inflight.items()
                if token not in w.cancelled
            }

    def submit(self, tasks: list[Task], *, quarantine: bool = False) -> None:
        """Hand tasks to the ready processes (of the kind asked for) with the most free slots,
        one message per process."""
        batches: dict[int, list[Task]] = {}
        with self._lock:
            workers = {w.index: w for w in self._workers.values() if w.quarantine == quarantine}
            for task in tasks:
                is_async = task.function_id in self.async_ids
                worker = max(workers.values(), key=lambda w: (w.free(is_async=is_async), w.ready))
                worker.inflight[task.run_id] = task.lease_token
                if is_async:
                    worker.async_runs.add(task.run_id)
                batches.setdefault(worker.index, []).append(task)
        for index, batch in batches.items():
            self._send(workers[index], ("run", [task.wire() for task in batch]))

    def cancel(self, run_ids: set[str]) -> None:
        """Tell the processes executing these runs that a cancellation ended them: an async
        run's task is cancelled at once, a plain one stops at its next step boundary (its
        step body can watch `ctx.cancelled`). Each run is told once."""
        batches: dict[int, list[tuple[str, str]]] = {}
        with self._lock:
            workers = dict(self._workers)
            for worker in workers.values():
                batch = [
                    (rid, token)
                    for rid in run_ids
                    if (token := worker.inflight.get(rid)) is not None
                    and token not in worker.cancelled
                ]
                worker.cancelled.update(token for _, token in batch)
                batches[worker.index] = batch
        for index, batch in batches.items():
            if batch:
                self._send(workers[index], ("cancel", batch))

    def _send(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        # a dying process refuses messages; the supervisor hands its runs back
        with contextlib.suppress(OSError, ValueError):
            worker.conn.send(message)

    # -- supervision ---------------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping and not any(w.process.is_alive() for w in self._workers.values()):
                    return
                waitables: dict[Any, _Worker] = {}
                for w in self._workers.values():
                    if not w.eof:
                        waitables[w.conn] = w
                    waitables[w.process.sentinel] = w
            for ready in wait(list(waitables), timeout=0.5):
                worker = waitables[ready]
                if ready is worker.conn:
                    self._receive(worker)
                else:
                    self._reap(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                self._handle(worker, message)
        except (EOFError, OSError):
            worker.eof = True  # the process is exiting; its sentinel fires when it is gone

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            worker.ready = True
            return
        if message[0] == "stats":
            self._stats(message[1])
            return
        _, done, stats = message
        self._stats(stats)  # before the runs are seen done, so a scrape after it counts them
        for run_id, status, due, ended in done:
            with self._lock:
                # the execution of this lease ended; a later one of the same run (resumed and
                # handed here while a cancelled execution still ran) stays in flight
                token = worker.inflight.get(run_id)
                if token == ended:
                    del worker.inflight[run_id]
                    worker.async_runs.discard(run_id)
                else:
                    token = None
                worker.cancelled.discard(ended)
            if status == "abandoned" and token is not None:
                # the worker gave up (an engine or database error it could not get past): an
                # interruption, but no crash to blame on the run
                handback = Handback(interrupted=[(run_id, token)], abandoned=True)
                self.on_crash(worker.index, handback)
            self.on_done(run_id, status, datetime.fromisoformat(due) if due else None)

    def _stats(self, delta: TallyDelta | None) -> None:
        if delta is not None and self.on_stats is not None:
            self.on_stats(delta)

    def _reap(self, worker: _Worker) -> None:
        with self._lock:
            if self._workers.get(worker.index) is not worker:
                return
            if worker.process.is_alive():
                return
            del self._workers[worker.index]
            respawn = not self._stopping
            # A process stop()/kill() ended is no crash: they hand its leases back (released,
            # no recovery counted), so leave them in `inflight` for them to collect.
            leases = list(worker.inflight.items()) if respawn else []
            if respawn:
                worker.inflight.clear()
                worker.async_runs.clear()
                worker.cancelled.clear()
        worker.process.join(1)
        if respawn:
            handback = _blame(leases, _busy_runs(worker.busy))
            self.log.error(
                "worker died",
                worker=worker.index,
                exitcode=worker.process.exitcode,
                runs_in_flight=len(leases),
                runs_in_step_bodies=len(handback.crashed),
            )
            if leases:
                self.on_crash(worker.index, handback)
            self._spawn(worker.index)
            if self._draining:
                self._send(self._workers[worker.index], ("drain",))


def _busy_runs(busy: Any) -> set[str]:
    raw = bytes(busy[:]) if busy is not None else b""
    ids = (raw[i : i + SLOT].rstrip(b"\0 ").decode() for i in range(0, len(raw), SLOT))
    return {run_id for run_id in ids if run_id}


@dataclass(frozen=True)
class Handback:
    """The runs (id, lease token) of a worker that died or gave up, by how they go back."""

    crashed: list[tuple[str, str]] = field(default_factory=list)  # a recovery and a crash
    interrupted: list[tuple[str, str]] = field(default_factory=list)  # a recovery
    released: list[tuple[str, str]] = field(default_factory=list)  # nothing counted
    abandoned: bool = False  # the worker gave up on the run; it did not die


def _blame(leases: list[tuple[str, str]], in_bodies: set[str]) -> Handback:
    """Sort a dead process's runs.

    The runs that were inside a step body when the process died are the suspects: they count
    a recovery and a crash (and run in quarantine from then on). The others were bystanders
    and go back without either, so a poison step cannot drag healthy runs sharing its process
    to the recovery cap. When no run was in a step body nobody can be singled out: each counts
    a recovery, none a crash.
    """
    suspects = [lease for lease in leases if lease[0] in in_bodies]
    if not suspects:
        return Handback(interrupted=leases)
    return Handback(
        crashed=suspects, released=[lease for lease in leases if lease[0] not in in_bodies]
    )
