from __future__ import annotations

import ctypes
import multiprocessing

from orchestrator.runtime.pool import SLOT, Handback, _blame, _busy_runs


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
