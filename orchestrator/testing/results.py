"""What a test asserts on: a run with its steps and the events it sent, as recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db import inspection
from orchestrator.db.runs import RunRow
from orchestrator.db.steps import StepRow


@dataclass(frozen=True)
class StepResult:
    """A step as the run recorded it (`orchestrator.steps`)."""

    id: str  # unique in the run: `charge`, `charge#1` for its second call
    kind: str  # run, sleep, wait, invoke, send_event, parallel, wait_any, signal
    status: str  # completed, failed, retrying, sleeping, waiting
    attempts: int
    output: Any
    error: dict[str, Any] | None
    wake_at: datetime | None  # a sleep's end, a wait's timeout, a retry's due time
    created_at: datetime  # first written (virtual time)
    updated_at: datetime  # last changed: for a completed step, when it completed


@dataclass(frozen=True)
class RunResult:
    """A run as recorded (`orchestrator.runs`), with its steps in order and the events it
    sent with `ctx.step.send_event`."""

    id: str
    function_id: str
    status: str  # queued, running, sleeping, waiting, completed, failed, cancelled
    output: Any
    error: dict[str, Any] | None
    events: list[dict[str, Any]]  # the events it received
    attempts: int
    recoveries: int
    retries: int
    state: dict[str, Any]
    parent_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: tuple[StepResult, ...]
    sent_events: tuple[inspection.EventRow, ...]

    @property
    def event(self) -> dict[str, Any]:
        """The event that started it."""
        return self.events[0] if self.events else {}

    def step(self, step_id: str) -> StepResult:
        """The step with this unique id; KeyError names the recorded ones otherwise."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(
            f"run {self.id} recorded no step '{step_id}'; it recorded: "
            + (", ".join(s.id for s in self.steps) or "none")
        )


def sent_ids(recorded: list[StepRow]) -> list[str]:
    """The ids of the events the run's completed `send_event` steps sent, in step order."""
    return [
        str(event_id)
        for s in sorted(recorded, key=lambda s: s.position)
        if s.kind == "send_event" and s.status == "completed" and isinstance(s.output, list)
        for event_id in s.output
    ]


def result_of(row: RunRow, recorded: list[StepRow], sent: list[inspection.EventRow]) -> RunResult:
    ordered = sorted(recorded, key=lambda s: s.position)
    return RunResult(
        id=row.id,
        function_id=row.function_id,
        status=row.status,
        output=row.output,
        error=row.error,
        events=row.events,
        attempts=row.attempts,
        recoveries=row.recoveries,
        retries=row.retries,
        state=row.state,
        parent_run_id=row.parent_run_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        steps=tuple(
            StepResult(
                s.step_id,
                s.kind,
                s.status,
                s.attempt,
                s.output,
                s.error,
                s.wake_at,
                s.created_at,
                s.updated_at,
            )
            for s in ordered
        ),
        sent_events=tuple(sent),
    )
