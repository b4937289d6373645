"""`ctx.step.parallel`: several step bodies at once, each memoized on its own.

The branches of `parallel("fetch", [...])` are steps `fetch[0]`, `fetch[1]`, … (or
`fetch[<id>]` for `(id, fn, args)` branches), at positions fixed by their order in the list,
so a replay is the same whatever order they finished in. Branches run in threads; each
successful one is checkpointed as it finishes, so a crash re-runs only the unfinished ones.
When every branch has finished: a branch out of retries raises `StepError` (the first in list
order); otherwise, if some branches failed, the run retries them after the shortest of their
back-offs, and the others are not run again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.db.steps import StepRecord
from orchestrator.engine.execution import Execution, ms
from orchestrator.errors import ControlSignal, StepError, Suspend

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/")


@dataclass(frozen=True)
class Branch:
    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass
class _Result:
    value: Any = None
    record: StepRecord | None = None  # a failed attempt
    delay: float | None = None
    error: BaseException | None = None  # a control signal or bug from the branch thread


def branches_of(step_id: str, items: Sequence[Any]) -> list[Branch]:
    """Normalise `[fn, (id, fn, args), …]`; raises TypeError with the offending entry."""
    out: list[Branch] = []
    for i, item in enumerate(items):
        if callable(item):
            out.append(Branch(str(i), item, ()))
        elif isinstance(item, tuple) and len(item) in (2, 3) and callable(item[1]):
            key = item[0]
            if not isinstance(key, str) or not key or not set(key) <= _ID_CHARS:
                raise TypeError(f"parallel '{step_id}': branch id {key!r} must be a short name")
            out.append(Branch(key, item[1], tuple(item[2]) if len(item) == 3 else ()))
        else:
            raise TypeError(
                f"parallel '{step_id}': entry {i} must be a callable or (id, fn, args), "
                f"got {item!r}"
            )
    if len({b.key for b in out}) != len(out):
        raise TypeError(f"parallel '{step_id}': branch ids must be unique")
    return out


def parallel(execution: Execution, step_id: str, items: Sequence[Any]) -> list[Any]:
    branches = branches_of(step_id, items)
    sid, first = execution.next_id(step_id, kind="parallel", positions=len(branches))
    results: dict[int, _Result] = {}
    pending: list[tuple[int, str, int]] = []
    for i, branch in enumerate(branches):
        bid = f"{sid}[{branch.key}]"
        row = execution.recorded(bid, "run", first + i)
        if row is not None and row.status == "completed":
            execution.replayed(row)
            results[i] = _Result(value=row.output)
        elif row is not None and row.status == "failed":
            raise StepError(bid, row.error or {})
        else:
            pending.append((i, bid, row.attempt + 1 if row is not None else 1))
    if pending:
        execution.boundary()
        results.update(_run_pending(execution, branches, pending, first))
    _settle(execution, sid, [results[i] for i in range(len(branches))])
    return [results[i].value for i in range(len(branches))]


def _run_pending(
    execution: Execution,
    branches: list[Branch],
    pending: list[tuple[int, str, int]],
    first: int,
) -> dict[int, _Result]:
    began = execution.db_now()
    results = {i: _Result() for i, _, _ in pending}

    def work(i: int, bid: str, attempt: int) -> None:
        branch, out = branches[i], results[i]
        started = time.perf_counter()
        try:
            try:
                text, out.value = execution.body(bid, branch.fn, branch.args, {})
            except (ControlSignal, KeyboardInterrupt):
                raise
            except BaseException as exc:  # the branch's failure, recorded below
                out.record, out.delay = execution.failure(
                    bid, first + i, attempt, exc, started=started
                )
                return
            record = StepRecord(
                bid,
                first + i,
                "run",
                "completed",
                attempt,
                output_json=text,
                duration_ms=ms(started),
            )
            execution.store.checkpoint(execution.lease, record)
        except BaseException as exc:  # lease lost, cancelled, a database error: re-raised below
            out.error = exc

    threads = [threading.Thread(target=work, args=p, daemon=True) for p in pending]
    execution.on_body(execution.lease.run_id)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        execution.on_body(None)
    for out in results.values():
        if out.error is not None:
            raise out.error
    execution.since = max(execution.since, began)
    return results


def _settle(execution: Execution, sid: str, results: list[_Result]) -> None:
    failed = [r.record for r in results if r.record is not None and r.delay is None]
    retrying = [r for r in results if r.record is not None and r.delay is not None]
    if failed:
        for record in failed:
            execution.store.checkpoint(execution.lease, record)
        first = failed[0]
        raise StepError(first.step_id, json.loads(first.error_json or "{}"))
    if retrying:
        delay = min(r.delay for r in retrying if r.delay is not None)
        execution.retry_later(delay, tuple(r.record for r in retrying if r.record is not None))
        execution.log.info("parallel branches will retry", step=sid, branches=len(retrying))
        raise Suspend(f"retry of parallel '{sid}'")
