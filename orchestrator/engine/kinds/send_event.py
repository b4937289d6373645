"""`ctx.step.send_event`: send events once, whatever replays follow.

Each event's id is derived from the run, the step and its index (unless given), and the
events table skips ids it holds, so a crash between sending and recording sends nothing twice.
Replay: a completed step returns the ids it recorded.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

from orchestrator.db.steps import StepRecord
from orchestrator.engine.execution import Execution
from orchestrator.engine.tracer import spanned


def start(
    execution: Execution, step_id: str, batch: list[dict[str, Any]]
) -> Coroutine[Any, Any, list[str]]:
    sid, position = execution.next_id(step_id, kind="send_event")
    return _send_event(execution, sid, position, batch)


async def _send_event(
    execution: Execution, sid: str, position: int, batch: list[dict[str, Any]]
) -> list[str]:
    row = execution.recorded(sid, "send_event", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        ids: list[str] = row.output
        return ids
    await execution.boundary()
    rows = _rows(execution, sid, batch)
    began = execution.db_now()
    # the events carry this step's span (tracing on): the runs they start continue its trace
    span = execution.trace.step(sid, "send_event", 1) if execution.trace is not None else None
    await spanned(
        span, lambda trace: execution.io(execution.store.send_events, execution.lease, rows, trace)
    )
    execution.since = max(execution.since, began)
    sent = [r[0] for r in rows]
    await execution.checkpoint(
        StepRecord(
            sid,
            position,
            "send_event",
            "completed",
            1,
            output_json=json.dumps(sent),
            started_at=began,
        )
    )
    return sent


def _rows(
    execution: Execution, sid: str, batch: list[dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """(id, name, data JSON) of each event, validated."""
    from orchestrator.codec import validate_event

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
    return rows
