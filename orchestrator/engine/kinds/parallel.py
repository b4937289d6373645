"""`ctx.step.parallel`: several step bodies at once, each memoized on its own.

The branches of `parallel("fetch", [...])` are steps `fetch[0]`, `fetch[1]`, … (or
`fetch[<id>]` for `(id, fn, args)` branches), at positions fixed by their order in the list,
so a replay is the same whatever order they finished in. A plain function's branches run in
threads; an async function's run concurrently on its loop (a plain body among them in a
thread). Each successful branch is checkpointed as it finishes, so a crash re-runs only the
unfinished ones. When every branch has finished: a branch out of retries raises `StepError`
(the first in list order); otherwise, if some branches failed, the run retries them after the
shortest of their back-offs, and the others are not run again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db.steps import StepRecord
from orchestrator.engine.execution import Execution, completed_run
from orchestrator.errors import StepError, Suspend

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
    error: BaseException | None = None  # a control signal or a database error: re-raised


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


def start(
    execution: Execution, step_id: str, items: Sequence[Any]
) -> Coroutine[Any, Any, list[Any]]:
    branches = branches_of(step_id, items)
    sid, first = execution.next_id(step_id, kind="parallel", positions=len(branches))
    return _parallel(execution, sid, first, branches)


async def _parallel(
    execution: Execution, sid: str, first: int, branches: list[Branch]
) -> list[Any]:
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
        await execution.boundary()
        results.update(await _run_pending(execution, branches, pending, first))
    await _settle(execution, sid, [results[i] for i in range(len(branches))])
    return [results[i].value for i in range(len(branches))]


async def _run_pending(
    execution: Execution,
    branches: list[Branch],
    pending: list[tuple[int, str, int]],
    first: int,
) -> dict[int, _Result]:
    began = execution.db_now()
    results = {i: _Result() for i, _, _ in pending}
    work = [
        _branch(
            execution,
            branches[i],
            results[i],
            bid=bid,
            position=first + i,
            attempt=attempt,
            began=began,
        )
        for i, bid, attempt in pending
    ]
    execution.on_body(execution.lease.run_id)
    try:
        await execution.face.gather(work)
    finally:
        execution.on_body(None)
    for out in results.values():
        if out.error is not None:
            raise out.error
    execution.since = max(execution.since, began)
    return results


async def _branch(
    execution: Execution,
    branch: Branch,
    out: _Result,
    *,
    bid: str,
    position: int,
    attempt: int,
    began: datetime,
) -> None:
    """Run one branch and record it. Its record's start is the group's (`began`): that is
    where the next wait looks back to, on a replay as when the group ran."""
    started = time.perf_counter()
    trace = execution.trace
    span = trace.step(bid, "parallel", attempt) if trace is not None else None
    status, error = "stopped", None  # what the branch span ends with
    try:
        try:
            text, out.value = await execution.body(bid, branch.fn, branch.args, {}, span=span)
        except BaseException as exc:
            if execution.passes(exc):
                raise
            # the branch's failure, recorded by _settle
            out.record, out.delay = execution.failure(
                bid, position, attempt, exc, started=started, began=began
            )
            status = out.record.status
            error = json.loads(out.record.error_json or "{}").get("type") or "Error"
            return
        record = completed_run(bid, position, attempt, text, started=started, began=began)
        await execution.checkpoint(record)
        status = "completed"
    except BaseException as exc:  # lease lost, cancelled, a database error: re-raised after
        out.error = exc
    finally:
        if span is not None:
            span.end(status, error)


async def _settle(execution: Execution, sid: str, results: list[_Result]) -> None:
    failed = [r.record for r in results if r.record is not None and r.delay is None]
    retrying = [r for r in results if r.record is not None and r.delay is not None]
    if failed:
        for record in failed:
            await execution.checkpoint(record)
        first = failed[0]
        raise StepError(first.step_id, json.loads(first.error_json or "{}"))
    if retrying:
        delay = min(r.delay for r in retrying if r.delay is not None)
        await execution.retry_later(
            delay, tuple(r.record for r in retrying if r.record is not None)
        )
        execution.log.info("parallel branches will retry", step=sid, branches=len(retrying))
        raise Suspend(f"retry of parallel '{sid}'")
