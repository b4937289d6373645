"""`ctx.step.invoke`: run another function as a child run and return its output.

An invoke is a child run plus a wait (engine/kinds/wait.py) for the event
`orchestrator/function.finished` that the child's end records; the child's id is derived
from the run and step, so a replay never starts it twice. Replay: a completed invoke returns
the child's recorded output, or raises its recorded failure. One still pending when the run
is picked up has timed out: the child is cancelled and `StepError` raised.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Coroutine
from typing import Any

from orchestrator import codec, tracecontext
from orchestrator.db.runs import NewRun
from orchestrator.db.waits import Branch, Wait
from orchestrator.engine.execution import Execution
from orchestrator.engine.kinds.wait import new_wait, timed_out, wait_or_suspend
from orchestrator.engine.tracer import spanned
from orchestrator.errors import InvokeTimeoutError, StepError
from orchestrator.flow import RunKeys
from orchestrator.functions import FINISHED_EVENT_NAME, INVOKED_EVENT_NAME

_CHILD_IDS = uuid.UUID("5f0c3f0e-8a7b-4d55-9a39-6f7263686573")


def start(
    execution: Execution, step_id: str, function_id: str, data: Any, timeout: float | None
) -> Coroutine[Any, Any, Any]:
    sid, position = execution.next_id(step_id, kind="invoke")
    return _invoke(execution, sid, position, function_id=function_id, data=data, timeout=timeout)


async def _invoke(
    execution: Execution,
    sid: str,
    position: int,
    *,
    function_id: str,
    data: Any,
    timeout: float | None,
) -> Any:
    """Start `function_id` as a child run with `data` and return its output."""
    row = execution.recorded(sid, "invoke", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        return outcome(sid, row.output)
    child_id = child_run_id(execution, sid)
    if row is not None:
        await timed_out(execution, sid, position, row, kind="invoke", cancel_runs=(child_id,))
        return outcome(sid, None)
    await execution.boundary()

    def invoking(trace_context: str | None) -> Coroutine[Any, Any, tuple[int, dict[str, Any]]]:
        child = child_run(execution, sid, child_id, function_id, data, trace_context=trace_context)
        branch = Branch(finish_wait(execution, sid, child_id, timeout), _any, child)
        return wait_or_suspend(execution, sid, position, (branch,), kind="invoke")

    # the child's spans continue the invoke's own span, when tracing is on
    span = execution.trace.step(sid, "invoke", 1) if execution.trace is not None else None
    _, found = await spanned(span, invoking)
    return outcome(sid, found)


def _any(event: dict[str, Any]) -> bool:
    return True


def child_run_id(execution: Execution, sid: str, branch: int | None = None) -> str:
    """The id of the run that step `sid` invokes (its entry `branch`, for wait_for_any)."""
    name = f"{execution.lease.run_id}:{sid}" + ("" if branch is None else f":{branch}")
    return str(uuid.uuid5(_CHILD_IDS, name))


def finish_wait(
    execution: Execution, sid: str, child_id: str, timeout: float | None, *, branch: int = 0
) -> Wait:
    """The wait for the end of run `child_id`."""
    return new_wait(
        execution,
        sid,
        name=FINISHED_EVENT_NAME,
        path="data.run_id",
        expected=child_id,
        expression=None,
        timeout=timeout,
        branch=branch,
    )


def child_run(
    execution: Execution,
    sid: str,
    child_id: str,
    function_id: str,
    data: Any,
    *,
    trace_context: str | None = None,
) -> NewRun:
    """The child run; its spans continue `trace_context` (JSON; default: the current span,
    the run attempt's when tracing is on)."""
    payload = codec.encode(data if data is not None else {}, what=f"invoke '{sid}' data")
    child_event = {
        "id": f"invoke:{child_id}",
        "name": INVOKED_EVENT_NAME,
        "data": json.loads(payload),
        "ts": execution.db_now().isoformat(),
    }
    policy = execution.policies.get(function_id)
    keys = policy.run_keys(child_event) if policy is not None and policy.claims else RunKeys()
    return NewRun(
        function_id,
        [child_event],
        parent_run_id=execution.lease.run_id,
        id=child_id,
        trace_context=trace_context or tracecontext.current_json(),
        **keys.fields(),
    )


def outcome(sid: str, finished: dict[str, Any] | None) -> Any:
    """What an invoke returns for the child's `finished` event: its output, or `StepError`
    for its failure (or for no event: the invoke timed out)."""
    if finished is None:
        error = InvokeTimeoutError(f"the run invoked by step '{sid}' did not finish in time")
        raise StepError(
            sid, {"type": "InvokeTimeoutError", "code": error.code, "message": str(error)}
        )
    data = finished.get("data") or {}
    if data.get("status") == "completed":
        return data.get("output")
    raise StepError(sid, data.get("error") or {"type": "RunFailed", "message": "child failed"})
