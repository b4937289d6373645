"""`ctx.step.wait_for_event`: suspend until a matching event arrives, or a timeout.

A wait is race-free: it sees every matching event received since the previous step began,
including one that arrived before the wait was stored (see db/waits.py). With `lookback` it
also sees those received in that window before the step began (`"run"`: since the run was
created), skipping any event that an earlier step of the run consumed: the first of the rest,
in the order received, wins. Replay: a completed wait returns the event it recorded (None on a
timeout). A wait still pending when the run is picked up has timed out (or, picked up early,
waits on). `invoke` and `wait_for_any` wait the same way (engine/kinds/invoke.py,
engine/kinds/wait_any.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from orchestrator.db.steps import StepRecord, StepRow
from orchestrator.db.waits import Branch, Wait
from orchestrator.engine.execution import Execution
from orchestrator.engine.store import FOREVER
from orchestrator.errors import InvalidStepOptionError, Suspend
from orchestrator.expressions import compile_expression
from orchestrator.functions import WAIT_VARIABLES, check_match, match_value

Lookback = float | Literal["run"] | None  # seconds before the step began, or the whole run


@dataclass(frozen=True)
class WaitFor:
    """What `wait_for_event` (or an `OnEvent` entry of `wait_for_any`) was asked for."""

    event: str
    match: str | None
    if_: str | None
    timeout: float | None
    lookback: Lookback = None


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
    where = f"wait_for_event '{sid}'"
    accept = acceptor(execution, spec, where)
    if row is not None:  # still waiting: the run was picked up because the wait timed out
        await timed_out(execution, sid, position, row, kind="wait", cancel_runs=())
        return None
    await execution.boundary()
    branch = Branch(event_wait(execution, sid, spec, where, at=execution.db_now()), accept)
    _, found = await wait_or_suspend(execution, sid, position, (branch,), kind="wait")
    return found


def acceptor(execution: Execution, spec: WaitFor, where: str) -> Callable[[dict[str, Any]], bool]:
    """The wait's `if_` condition on an incoming event (compiled now: a bad one fails here)."""
    if spec.if_ is None:
        return _any
    expression = compile_expression(spec.if_, where=where, allowed=WAIT_VARIABLES)
    trigger = execution.trigger
    return lambda incoming: expression.matches({"event": trigger, "async": incoming})


def event_wait(
    execution: Execution,
    sid: str,
    spec: WaitFor,
    where: str,
    *,
    at: datetime,
    branch: int = 0,
) -> Wait:
    """The wait for `spec`'s event, begun at `at` (the database clock)."""
    expected = None
    if spec.match is not None:
        check_match(spec.match, where)
        expected = match_value(spec.match, execution.trigger.get("data") or {})
    return new_wait(
        execution,
        sid,
        name=spec.event,
        path=spec.match,
        expected=expected,
        expression=spec.if_,
        timeout=spec.timeout,
        since=looks_back_to(execution, spec.lookback, at),
        branch=branch,
    )


def looks_back_to(execution: Execution, lookback: Lookback, at: datetime) -> datetime:
    """Where a wait begun at `at` starts looking: the previous step's start, or further back
    with `lookback`."""
    if lookback is None:
        return execution.since
    if lookback == "run":
        return min(execution.since, execution.created_at)
    return min(execution.since, at - timedelta(seconds=lookback))


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
    since: datetime | None = None,
    branch: int = 0,
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
        since=execution.since if since is None else since,
        expires_at=expires,
        branch=branch,
    )


def _as_recorded(branch: int, event: dict[str, Any]) -> Any:
    return event


async def wait_or_suspend(
    execution: Execution,
    sid: str,
    position: int,
    branches: tuple[Branch, ...],
    *,
    kind: str,
    output: Callable[[int, dict[str, Any]], Any] = _as_recorded,
) -> tuple[int, dict[str, Any]]:
    """The event already received that ends one of the step's waits, with the index of its
    branch (recorded as the step's result: `output(branch, event)`), or the run suspended as
    waiting (`Suspend`)."""
    record = StepRecord(sid, position, kind, "waiting", 1)
    await execution.flush()
    # stored with the waits the worker's other runs reach now (engine/waiter.py)
    stored = execution.store.waiting(
        execution.lease,
        record,
        branches,
        state_json=execution.state_json(),  # written if it suspends, else with the checkpoint
    )
    found = await execution.face.settle(stored)
    if found is None:
        first = branches[0].wait
        until = first.expires_at
        execution.log.info(
            "run waiting", step=sid, event_name=first.event_name, until=until and until.isoformat()
        )
        execution.suspended_until = until
        if execution.trace is not None:
            said = {"orchestrator.step": sid, "event_name": first.event_name}
            execution.trace.event(kind, said | ({"until": until.isoformat()} if until else {}))
        raise Suspend(f"{kind} '{sid}'")
    branch, event = found
    execution.since = max(execution.since, execution.db_now())
    recorded = json.dumps(output(branch, event))
    await execution.checkpoint(
        StepRecord(sid, position, kind, "completed", 1, output_json=recorded, event_id=event["id"])
    )
    return found


async def timed_out(
    execution: Execution,
    sid: str,
    position: int,
    row: StepRow,
    *,
    kind: str,
    cancel_runs: tuple[str, ...],
) -> None:
    """The run was picked up while its wait was pending: it timed out (or, if picked up
    early, it waits on). `cancel_runs`: the runs it invoked, no longer awaited."""
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
    await execution.io(store.end_wait, lease, record, cancel_runs=cancel_runs, state_json=state)
    execution.log.info(f"{kind} timed out", step=sid)


def seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def lookback_of(value: Any, where: str) -> Lookback:
    """A `lookback` argument checked: a timedelta or seconds (not negative), `"run"`, or
    None."""
    if value is None or value == "run":
        return value  # type: ignore[no-any-return]
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidStepOptionError(
            f'{where}: lookback must be a timedelta, a number of seconds or "run", not '
            f"{type(value).__name__} {value!r}"
        )
    if not math.isfinite(value) or value < 0:
        raise InvalidStepOptionError(
            f"{where}: lookback must be a finite duration of zero or more, not {value!r}"
        )
    return float(value)
