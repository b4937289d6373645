"""What the application-side calls decide, written once for their sync and async faces.

`Orchestrator.send`, `send_many`, `cancel`, `signal` and `run_state` and their `*_async`
twins are thin: they check
their input here, get an operation here (statements chained by plain code, see
orchestrator/db/ops.py), and hand it to the sync or the async runner of
orchestrator/db/outbox.py with a connection, the caller's or the library's own.

Event ids are made here (uuid4) when the caller gives none, so a batch's ids are known before
anything is written: `send_many` returns them in input order without reading them back, and
a retried transaction (after a lost connection) writes each event once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from orchestrator import tracecontext
from orchestrator.db import events, runs, signals
from orchestrator.db.ops import Op
from orchestrator.errors import (
    InvalidEventError,
    InvalidSignalError,
    OrchestratorError,
    RunNotFoundError,
)

BATCH_ROWS = 1000  # events per INSERT statement
BATCH_CHARS = 8 * 1024 * 1024  # and characters of data, so that a statement stays a sane size
EVENT_KEYS = frozenset({"name", "data", "id", "ts"})


def new_event(name: Any, data: Any, event_id: Any, ts: Any, limit: int) -> events.NewEvent:
    """Check one event and encode its data (`limit`: the configured max_event_bytes)."""
    from orchestrator.codec import validate_event

    data_json = validate_event(name, {} if data is None else data, event_id, limit)
    if ts is not None and not isinstance(ts, datetime):
        raise InvalidEventError(f"event ts must be a datetime or None, got {type(ts).__name__}")
    trace = tracecontext.current_json()  # the caller's span, if any (NULL otherwise)
    return events.NewEvent(event_id or str(uuid.uuid4()), name, data_json, ts, trace)


def new_events(items: Any, limit: int) -> list[events.NewEvent]:
    """Check every event of a `send_many` call before anything is written."""
    if isinstance(items, str | bytes | Mapping) or not hasattr(items, "__iter__"):
        raise TypeError(
            f"events must be a list of dicts like {{'name': ..., 'data': {{...}}}}, "
            f"got {type(items).__name__}"
        )
    return [_new_event_at(index, item, limit) for index, item in enumerate(items)]


def _new_event_at(index: int, item: Any, limit: int) -> events.NewEvent:
    if not isinstance(item, dict):
        raise TypeError(
            f"events[{index}] is a {type(item).__name__}; each event is a dict with the keys "
            "'name', 'data' and optionally 'id' and 'ts'"
        )
    unknown = sorted(map(str, item.keys() - EVENT_KEYS))
    if unknown or "name" not in item:
        problem = f"has unknown keys {unknown}" if unknown else "has no 'name'"
        raise InvalidEventError(f"events[{index}] {problem}; use 'name', 'data', 'id', 'ts'")
    try:
        return new_event(item["name"], item.get("data"), item.get("id"), item.get("ts"), limit)
    except OrchestratorError as exc:
        raise InvalidEventError(f"events[{index}]: {exc}") from exc


def batches(items: list[events.NewEvent]) -> Iterator[list[events.NewEvent]]:
    """Consecutive runs of `items`, each of at most BATCH_ROWS events and BATCH_CHARS of data
    (an event larger than that is a batch of its own)."""
    batch: list[events.NewEvent] = []
    size = 0
    for item in items:
        if batch and (len(batch) == BATCH_ROWS or size + len(item.data_json) > BATCH_CHARS):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item.data_json)
    if batch:
        yield batch


def send_op(items: list[events.NewEvent]) -> Op[list[str]]:
    """Record `items`, one statement per batch; returns their ids in input order. A duplicate
    id (recorded before, or repeated in `items`) creates nothing and is returned as given."""
    for batch in batches(items):
        yield from events.insert_op(batch)
    return [item.id for item in items]


def cancel_op(run_id: str, reason: str, children: bool = True) -> Op[str]:
    """Cancel a run, and with `children` its unfinished invoked runs; returns the run's
    status after."""
    run = yield from runs.get_op(run_id)
    if run is None:
        raise RunNotFoundError(f"no run with id {run_id!r}")
    changed = yield from runs.cancel_op([run.id], reason=reason, children=children)
    mine = [c.status for c in changed if c.id == run.id]
    return mine[0] if mine else run.status


def signal_data(name: Any, data: Any, limit: int) -> str:
    """Check a signal before it is sent; returns its data as JSON text (`{}` for None)."""
    from orchestrator.codec import encode
    from orchestrator.engine.kinds.signal import check_name

    check_name(name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidSignalError(
            f"signal data must be a JSON object (a dict) or None, got {type(data).__name__}"
        )
    return encode(data, what=f"signal '{name}' data", limit=limit)


def signal_op(run_id: str, name: str, data_json: str) -> Op[int]:
    """Send a signal to an unfinished run; returns its id."""
    return signals.send_op(run_id, name, data_json)


def run_state_op(run_id: str) -> Op[dict[str, Any]]:
    """The state a run published with `ctx.set_state`."""
    run = yield from runs.get_op(run_id)
    if run is None:
        raise RunNotFoundError(f"no run with id {run_id!r}")
    return run.state
