from __future__ import annotations

import ctypes
import multiprocessing
from typing import Any

from orchestrator.config import Config
from orchestrator.runtime.pool import SLOT, Handback, WorkerPool, _blame, _busy_runs, _Worker


def _busy(*run_ids: str) -> ctypes.Array[ctypes.c_char]:
    busy = multiprocessing.get_context("spawn").RawArray(ctypes.c_char, 4 * SLOT)
    for slot, run_id in enumerate(run_ids):
        busy[slot * SLOT : (slot + 1) * SLOT] = run_id.encode().ljust(SLOT, b"\0")
    return busy


def test_busy_runs__reads_the_ids_threads_wrote() -> None:
    a, b = "0" * 36, "1" * 36
    assert _busy_runs(_busy(a, "", b)) == {a, b}
    assert _busy_runs(None) == set()


def test_blame__only_runs_in_step_bodies_count_a_recovery() -> None:
    leases = [("a", "ta"), ("b", "tb"), ("c", "tc")]
    assert _blame(leases, {"b"}) == Handback(
        crashed=[("b", "tb")], released=[("a", "ta"), ("c", "tc")]
    )


def test_blame__everyone_interrupted_none_crashed_when_nobody_was_in_a_step_body() -> None:
    leases = [("a", "ta"), ("b", "tb")]
    assert _blame(leases, set()) == Handback(interrupted=leases)
    assert _blame(leases, {"someone-else"}) == Handback(interrupted=leases)


def test_worker_free__counts_prefetch_room_only_when_asked() -> None:
    worker = _Worker(0, process=None, conn=None, ready=True, threads=2, capacity=5)  # type: ignore[arg-type]
    worker.inflight = {"a": "ta", "b": "tb", "c": "tc"}  # three plain runs: one waits
    assert worker.free() == 2  # room ahead for two more
    assert worker.free(ahead=False) == 0  # but no idle thread: a flow-controlled run waits
    worker.inflight = {"a": "ta"}
    assert (worker.free(), worker.free(ahead=False)) == (4, 1)


class _Pipe:
    """What the pool sends a worker process."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        self.sent.append(message)


def _pool_with_one_worker() -> tuple[WorkerPool, _Worker, _Pipe, list[tuple[str, str]]]:
    ended: list[tuple[str, str]] = []
    pool = WorkerPool(
        app_path="app:app",
        url="postgresql://unused",
        config=Config(),
        on_done=lambda run_id, status, due: ended.append((run_id, status)),
        on_crash=lambda index, handback: None,
        log=None,
    )
    pipe = _Pipe()
    worker = _Worker(0, process=None, conn=pipe, ready=True, threads=2, capacity=2)  # type: ignore[arg-type]
    pool._workers[0] = worker
    return pool, worker, pipe, ended


def test_cancel__tells_the_execution_by_its_lease_and_stops_renewing_it() -> None:
    pool, worker, pipe, _ = _pool_with_one_worker()
    worker.inflight = {"a": "ta", "b": "tb"}
    pool.cancel({"a", "unknown"})
    pool.cancel({"a"})  # told once
    assert pipe.sent == [("cancel", [("a", "ta")])]
    assert pool.held_leases() == {"b"}


def test_done__of_a_cancelled_execution_leaves_the_resumed_one_of_the_same_run() -> None:
    """A cancelled run resumed and handed to the same worker while its cancelled execution
    still runs: the old execution's end neither stops nor forgets the new one."""
    pool, worker, pipe, ended = _pool_with_one_worker()
    worker.inflight = {"a": "old"}
    pool.cancel({"a"})
    worker.inflight["a"] = "new"  # the resumed run, claimed again under a new lease
    assert pool.held_leases() == {"a"}  # the new lease is renewed
    pool.cancel({"a"})
    assert pipe.sent[-1] == ("cancel", [("a", "new")])  # a new cancellation stops it
    worker.cancelled.discard("new")  # (as if that had not happened)
    pool._handle(worker, ("done", [("a", "stopped", None, "old")], None))
    assert worker.inflight == {"a": "new"} and pool.held_leases() == {"a"}
    pool._handle(worker, ("done", [("a", "completed", None, "new")], None))
    assert worker.inflight == {} and ended == [("a", "stopped"), ("a", "completed")]
