from __future__ import annotations

import ctypes
import multiprocessing

from orchestrator.runtime.pool import SLOT, Handback, _blame, _busy_runs, _Worker


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
