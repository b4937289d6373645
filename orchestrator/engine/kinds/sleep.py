"""`ctx.step.sleep` and `ctx.step.sleep_until`: suspend the run until a time, judged by the
database clock.

Replay: a completed sleep returns at once. A new sleep whose time has come is recorded as
completed and the function goes on; otherwise the run is suspended (`sleeping`, due at the
wake time) with the step recorded as sleeping, and the worker is freed. When the run is picked
up again the sleeping step's recorded wake time decides, so a restart neither shortens nor
lengthens the sleep.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from orchestrator.db.steps import StepRecord
from orchestrator.engine.execution import Execution
from orchestrator.errors import Suspend


def start(
    execution: Execution,
    step_id: str,
    *,
    seconds: float | None = None,
    until: datetime | None = None,
) -> Coroutine[Any, Any, None]:
    sid, position = execution.next_id(step_id, kind="sleep")
    return _sleep(execution, sid, position, seconds, until)


async def _sleep(
    execution: Execution, sid: str, position: int, seconds: float | None, until: datetime | None
) -> None:
    row = execution.recorded(sid, "sleep", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        return
    if row is not None and row.wake_at is not None:
        until, seconds = row.wake_at, None
    elif seconds is not None and seconds <= 0:
        until, seconds = execution.db_now(), None
    if until is not None and until <= execution.db_now():
        execution.since = max(execution.since, execution.db_now())
        await execution.checkpoint(
            StepRecord(sid, position, "sleep", "completed", 1, wake_at=until)
        )
        return
    # no drain check here: suspending already gives the run back, with its sleep recorded
    record = StepRecord(sid, position, "sleep", "sleeping", 1)
    due = await execution.io(
        execution.store.suspend,
        execution.lease,
        status="sleeping",
        delay=seconds or 0.0,
        until=until,
        record=record,
        state_json=execution.state_json(),
    )
    execution.log.info("run sleeping", step=sid, until=due.isoformat())
    if execution.trace is not None:
        execution.trace.event("sleep", {"orchestrator.step": sid, "until": due.isoformat()})
    execution.suspended_until = due
    raise Suspend(f"sleep '{sid}'")
