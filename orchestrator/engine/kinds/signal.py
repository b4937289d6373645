"""`ctx.step.wait_for_signal`: take the oldest signal of a name sent to this run, waiting for
one if none is pending, or None on a timeout.

Signals are sent to one run (`app.signal`, or an INSERT into `orchestrator.signals`) and kept
until a wait takes them, so one sent before the run reaches its wait is taken by it. Each is
taken once, in the order of sending: the worker takes it and records the step with its data
in one transaction, fenced on the run's lease (db/signals.py), so a crash either loses both
or neither.

Replay: a completed wait returns the data it recorded (None on a timeout). A wait still
pending when the run is picked up (a signal woke it, or its timeout came) tries again: it
takes a signal if there is one, records the timeout if it has passed, else waits on.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from orchestrator import codec
from orchestrator.db.signals import Taking
from orchestrator.engine.execution import Execution
from orchestrator.engine.store import FOREVER
from orchestrator.errors import InvalidSignalError, Suspend


def start(
    execution: Execution, step_id: str, name: str, timeout: float | None
) -> Coroutine[Any, Any, dict[str, Any] | None]:
    check_name(name)
    sid, position = execution.next_id(step_id, kind="wait_for_signal")
    return _wait_for_signal(execution, sid, position, name, timeout)


def check_name(name: Any) -> None:
    if not codec.storable_text(name, 200):
        raise InvalidSignalError(
            f"signal name must be a 1-200 character string without NUL characters, got {name!r}"
        )


async def _wait_for_signal(
    execution: Execution, sid: str, position: int, name: str, timeout: float | None
) -> dict[str, Any] | None:
    row = execution.recorded(sid, "signal", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        recorded: dict[str, Any] | None = row.output
        return recorded
    await execution.boundary()
    wake_at = _wake_at(execution, timeout) if row is None else row.wake_at
    taking = Taking(
        execution.lease.run_id,
        execution.lease.token,
        sid,
        position,
        name,
        expired=wake_at is not None and wake_at <= execution.db_now(),
        due=wake_at or FOREVER,
        wake_at=wake_at,
        state_json=execution.state_json(),
    )
    taken = await execution.io(execution.store.take_signal, taking)
    if taken.outcome == "waiting":
        until = wake_at and wake_at.isoformat()
        execution.log.info("run waiting for a signal", step=sid, signal=name, until=until)
        execution.suspended_until = wake_at
        raise Suspend(f"wait_for_signal '{sid}'")
    execution.take_state()  # written with the step
    execution.since = max(execution.since, execution.db_now())
    if taken.outcome == "timeout":
        execution.log.info("signal wait timed out", step=sid, signal=name)
    return taken.data


def _wake_at(execution: Execution, timeout: float | None) -> datetime | None:
    if timeout is None:
        return None
    return execution.db_now() + timedelta(seconds=timeout)
