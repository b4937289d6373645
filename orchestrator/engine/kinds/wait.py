"""`ctx.step.wait_for_event`: suspend until a matching event arrives, or a timeout.

A wait is race-free: it sees every matching event received since the previous step began,
including one that arrived before the wait was stored (see db/waits.py). Replay: a completed
wait returns the event it recorded (None on a timeout). A wait still pending when the run is
picked up has timed out (or, picked up early, waits on). `invoke` waits the same way, for its
child's end (engine/kinds/invoke.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from orchestrator.db.runs import NewRun
from orchestrator.db.steps import StepRecord, StepRow
from orchestrator.db.waits import Wait
from orchestrator.engine.execution import Execution
from orchestrator.engine.store import FOREVER
from orchestrator.errors import Suspend
from orchestrator.expressions import compile_expression
from orchestrator.functions import WAIT_VARIABLES, check_match, match_value


@dataclass(frozen=True)
class WaitFor:
    """What `wait_for_event` was asked for."""

    event: str
    match: str | None
    if_: str | None
    timeout: float | None


def start(
    execution: Execution, step_id: str, spec: WaitFor
) -> Coroutine[Any, Any, dict[str, Any] | None]:
    sid, position = execution.next_id(step_id, kind="wait_for_event")
    return _wait_for_event(execution, sid, position, spec)


async def _wait_for_event(
    execution: Execution, sid: str, position: int, spec: WaitFor
) -> dict[str, Any] | None:
    """The first matching event (as functions receive it), or None on timeout."""
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
        await timed_out(execution, sid, position, row, kind="wait", cancel_run=None)
        return None
    await execution.boundary()
    expected = None
    if spec.match is not None:
        check_match(spec.match, f"wait_for_event '{sid}'")
        expected = match_value(spec.match, execution.trigger.get("data") or {})
    trigger = execution.trigger

    def accept(incoming: dict[str, Any]) -> bool:
        return expression is None or expression.matches({"event": trigger, "async": incoming})

    wait = new_wait(
        execution,
        sid,
        name=spec.event,
        path=spec.match,
        expected=expected,
        expression=spec.if_,
        timeout=spec.timeout,
    )
    return await wait_or_suspend(execution, sid, position, wait, kind="wait", accept=accept)


def _any(event: dict[str, Any]) -> bool:
    return True


def new_wait(
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


async def wait_or_suspend(
    execution: Execution,
    sid: str,
    position: int,
    wait: Wait,
    *,
    kind: str,
    accept: Callable[[dict[str, Any]], bool] = _any,
    child: NewRun | None = None,
) -> dict[str, Any] | None:
    """The event already received that ends the wait (recorded as the step's result), or
    the run suspended as waiting (`Suspend`)."""
    record = StepRecord(sid, position, kind, "waiting", 1)
    await execution.flush()
    # stored with the waits the worker's other runs reach now (engine/waiter.py)
    stored = execution.store.waiting(
        execution.lease,
        record,
        wait,
        accept=accept,
        child=child,
        state_json=execution.state_json(),  # written if it suspends, else with the checkpoint
    )
    found = await execution.face.settle(stored)
    if found is None:
        until = wait.expires_at
        execution.log.info(
            "run waiting", step=sid, event_name=wait.event_name, until=until and until.isoformat()
        )
        execution.suspended_until = until
        raise Suspend(f"{kind} '{sid}'")
    execution.since = max(execution.since, execution.db_now())
    await execution.checkpoint(
        StepRecord(sid, position, kind, "completed", 1, output_json=json.dumps(found))
    )
    return found


async def timed_out(
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
    store, lease = execution.store, execution.lease
    if row.wake_at is None or row.wake_at > now:
        until = row.wake_at or FOREVER
        state = execution.state_json()
        await execution.io(store.suspend, lease, status="waiting", until=until, state_json=state)
        execution.suspended_until = row.wake_at
        raise Suspend(f"{kind} '{sid}' still waiting")
    execution.since = max(execution.since, now)
    record = StepRecord(sid, position, kind, "completed", 1, output_json="null")
    await execution.flush()
    state = execution.take_state()
    await execution.io(store.end_wait, lease, record, cancel_run=cancel_run, state_json=state)
    execution.log.info(f"{kind} timed out", step=sid)


def seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
