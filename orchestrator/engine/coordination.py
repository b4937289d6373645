"""Steps that coordinate with the world outside the run: waiting for an event, invoking
another function, sending events.

A wait is race-free: it sees every matching event received since the previous step began,
including one that arrived before the wait was stored (see db/waits.py). An invoke is a
child run plus a wait for the event `orchestrator/function.finished` that the child's end
records. Sent events have ids derived from the run and step, so a replay sends nothing twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from orchestrator import codec
from orchestrator.db.runs import NewRun
from orchestrator.db.steps import StepRecord, StepRow
from orchestrator.db.waits import Wait
from orchestrator.engine.execution import Execution
from orchestrator.engine.store import FOREVER
from orchestrator.errors import InvokeTimeoutError, StepError, Suspend
from orchestrator.expressions import compile_expression
from orchestrator.flow import RunKeys
from orchestrator.functions import (
    FINISHED_EVENT_NAME,
    INVOKED_EVENT_NAME,
    WAIT_VARIABLES,
    check_match,
    match_value,
)

_CHILD_IDS = uuid.UUID("5f0c3f0e-8a7b-4d55-9a39-6f7263686573")


def _any(event: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class WaitFor:
    """What `wait_for_event` was asked for."""

    event: str
    match: str | None
    if_: str | None
    timeout: float | None


def wait_for_event(execution: Execution, step_id: str, spec: WaitFor) -> dict[str, Any] | None:
    """The first matching event (as functions receive it), or None on timeout."""
    sid, position = execution.next_id(step_id, kind="wait_for_event")
    row = execution.recorded(sid, "wait", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        result: dict[str, Any] | None = row.output
        return result
    expression = None
    if spec.if_ is not None:
        expression = compile_expression(
            spec.if_, where=f"wait_for_event '{sid}'", allowed=WAIT_VARIABLES
        )
    if row is not None:  # still waiting: the run was picked up because the wait timed out
        _timed_out(execution, sid, position, row, kind="wait", cancel_run=None)
        return None
    execution.boundary()
    expected = None
    if spec.match is not None:
        check_match(spec.match, f"wait_for_event '{sid}'")
        expected = match_value(spec.match, execution.trigger.get("data") or {})
    trigger = execution.trigger

    def accept(incoming: dict[str, Any]) -> bool:
        return expression is None or expression.matches({"event": trigger, "async": incoming})

    wait = _wait(
        execution,
        sid,
        name=spec.event,
        path=spec.match,
        expected=expected,
        expression=spec.if_,
        timeout=spec.timeout,
    )
    return _wait_or_suspend(execution, sid, position, wait, kind="wait", accept=accept)


def invoke(
    execution: Execution, step_id: str, function_id: str, data: Any, timeout: float | None
) -> Any:
    """Start `function_id` as a child run with `data` and return its output."""
    sid, position = execution.next_id(step_id, kind="invoke")
    row = execution.recorded(sid, "invoke", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        return _invoke_result(sid, row.output)
    child_id = str(uuid.uuid5(_CHILD_IDS, f"{execution.lease.run_id}:{sid}"))
    if row is not None:
        _timed_out(execution, sid, position, row, kind="invoke", cancel_run=child_id)
        return _invoke_result(sid, None)
    execution.boundary()
    payload = codec.encode(data if data is not None else {}, what=f"invoke '{sid}' data")
    child_event = {
        "id": f"invoke:{child_id}",
        "name": INVOKED_EVENT_NAME,
        "data": json.loads(payload),
        "ts": execution.db_now().isoformat(),
    }
    policy = execution.policies.get(function_id)
    keys = policy.run_keys(child_event) if policy is not None and policy.claims else RunKeys()
    child = NewRun(
        function_id,
        [child_event],
        parent_run_id=execution.lease.run_id,
        id=child_id,
        **keys.fields(),
    )
    wait = _wait(
        execution,
        sid,
        name=FINISHED_EVENT_NAME,
        path="data.run_id",
        expected=child_id,
        expression=None,
        timeout=timeout,
    )
    found = _wait_or_suspend(execution, sid, position, wait, kind="invoke", child=child)
    return _invoke_result(sid, found)


def send_event(execution: Execution, step_id: str, batch: list[dict[str, Any]]) -> list[str]:
    """Send events once, whatever replays follow; returns their ids."""
    from orchestrator.app import validate_event

    sid, position = execution.next_id(step_id, kind="send_event")
    row = execution.recorded(sid, "send_event", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        ids: list[str] = row.output
        return ids
    execution.boundary()
    rows: list[tuple[str, str, str]] = []
    for i, item in enumerate(batch):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TypeError(
                f"send_event '{sid}': event {i} must be a dict with 'name' and 'data', got {item!r}"
            )
        event_id = item.get("id") or f"{execution.lease.run_id}:{sid}:{i}"
        data = item.get("data", {})
        text = validate_event(item["name"], data, event_id, execution.limits.max_event_bytes)
        rows.append((event_id, item["name"], text))
    began = execution.db_now()
    execution.store.send_events(rows)
    execution.since = max(execution.since, began)
    sent = [r[0] for r in rows]
    execution.store.checkpoint(
        execution.lease,
        StepRecord(sid, position, "send_event", "completed", 1, output_json=json.dumps(sent)),
    )
    return sent


def _wait(
    execution: Execution,
    sid: str,
    *,
    name: str,
    path: str | None,
    expected: Any,
    expression: str | None,
    timeout: float | None,
) -> Wait:
    now = execution.db_now()
    expires = None if timeout is None else now + timedelta(seconds=timeout)
    return Wait(
        execution.lease.run_id,
        sid,
        name,
        path,
        json.dumps(expected),
        expression,
        since=execution.since,
        expires_at=expires,
    )


def _wait_or_suspend(
    execution: Execution,
    sid: str,
    position: int,
    wait: Wait,
    *,
    kind: str,
    accept: Callable[[dict[str, Any]], bool] = _any,
    child: NewRun | None = None,
) -> dict[str, Any] | None:
    record = StepRecord(sid, position, kind, "waiting", 1)
    found = execution.store.wait(execution.lease, record, wait, accept=accept, child=child)
    if found is None:
        until = wait.expires_at
        execution.log.info(
            "run waiting", step=sid, event_name=wait.event_name, until=until and until.isoformat()
        )
        execution.suspended_until = until
        raise Suspend(f"{kind} '{sid}'")
    execution.since = max(execution.since, execution.db_now())
    execution.store.checkpoint(
        execution.lease,
        StepRecord(sid, position, kind, "completed", 1, output_json=json.dumps(found)),
    )
    return found


def _timed_out(
    execution: Execution,
    sid: str,
    position: int,
    row: StepRow,
    *,
    kind: str,
    cancel_run: str | None,
) -> None:
    """The run was picked up while its wait was pending: it timed out (or, if picked up
    early, it waits on)."""
    now = execution.db_now()
    if row.wake_at is None or row.wake_at > now:
        execution.store.suspend(execution.lease, status="waiting", until=row.wake_at or FOREVER)
        execution.suspended_until = row.wake_at
        raise Suspend(f"{kind} '{sid}' still waiting")
    execution.since = max(execution.since, now)
    execution.store.end_wait(
        execution.lease,
        StepRecord(sid, position, kind, "completed", 1, output_json="null"),
        cancel_run=cancel_run,
    )
    execution.log.info(f"{kind} timed out", step=sid)


def _invoke_result(sid: str, finished: dict[str, Any] | None) -> Any:
    if finished is None:
        error = InvokeTimeoutError(f"the run invoked by step '{sid}' did not finish in time")
        raise StepError(
            sid, {"type": "InvokeTimeoutError", "code": error.code, "message": str(error)}
        )
    data = finished.get("data") or {}
    if data.get("status") == "completed":
        return data.get("output")
    raise StepError(sid, data.get("error") or {"type": "RunFailed", "message": "child failed"})


def seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
