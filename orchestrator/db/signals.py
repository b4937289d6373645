"""Statements on `orchestrator.signals`: signals sent to one run, consumed in order by its
`wait_for_signal` steps.

Sending is an INSERT (`send_op`, or a user's own SQL). The trigger `signals_sent` (migrations
0013, 0014) locks the run's row first, refuses a finished run, and wakes the run if it waits
for a signal of that name, due at the signal's `sent_at`.

Consuming (`take`) is one transaction of the worker that holds the run's lease: lock the run
row (fenced on the lease token), take the oldest unconsumed signal of the name, and record
the step in the same commit, completed with the signal's data, or, when there is none,
completed with null (timed out) or waiting, with the run suspended. Race-freedom: the sender's
trigger and the worker both take the run row's lock, and the worker reads the signals only
once it holds it, in a statement of its own (a fresh snapshot). Whoever comes second sees what
the first committed: the worker finds the signal, or the trigger finds the run waiting.

A take is safe to repeat after a lost connection: when the step is already recorded as
completed (the commit went through, its answer was lost), its record is the answer, and no
second signal is consumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from orchestrator.db import clock, runs
from orchestrator.db.direct import Conn, driver
from orchestrator.db.ops import Op, Query
from orchestrator.errors import RunFinishedError, RunNotFoundError

ENDED = ("completed", "failed", "cancelled", "skipped")

# The state a write carries (a JSON object of the keys set, or NULL): merged into the run's.
MERGE_STATE = "coalesce(state || CAST(%(state)s AS jsonb), state)"


@dataclass(frozen=True)
class Taking:
    """A `wait_for_signal` step of a running run (fenced on `token`) that wants a signal
    called `name`: unless one is pending, it `expired` (record a timeout) or the run waits
    until `due` (`wake_at`: its timeout, or None). `state`: the run's state to merge."""

    run_id: str
    token: str
    step_id: str
    position: int
    name: str
    expired: bool
    due: datetime
    wake_at: datetime | None
    state_json: str | None = None


@dataclass(frozen=True)
class Taken:
    """What became of a `Taking`: `signal` (its data in `data`), `timeout`, `waiting` (the
    run suspended), or `lost` (the lease no longer held; nothing written)."""

    outcome: Literal["signal", "timeout", "waiting", "lost"]
    data: dict[str, Any] | None = None


def send_op(run_id: str, name: str, data_json: str) -> Op[int]:
    """Send a signal to a run that has not finished; returns its id (the order of sending)."""
    run = yield from runs.get_op(run_id)
    if run is None:
        raise RunNotFoundError(f"no run with id {run_id!r}; a signal goes to an existing run")
    if run.status in ENDED:
        raise RunFinishedError(
            f"run {run.id} has finished ({run.status}); nothing would ever receive signal "
            f"{name!r}. Signal a run that is still queued, running, sleeping or waiting"
        )
    rows = yield Query(
        "INSERT INTO orchestrator.signals (run_id, name, data, sent_at) "
        "VALUES (%(run)s::uuid, %(name)s, %(data)s::jsonb, "
        "        coalesce(%(now)s::timestamptz, now())) RETURNING id",
        {"run": run.id, "name": name, "data": data_json, "now": clock.current()},
    )
    signal_id: int = rows[0][0]
    return signal_id


_HOLD = """
    SELECT 1 FROM orchestrator.runs
    WHERE id = %(run)s::uuid AND lease_token = %(token)s::uuid AND status = 'running'
    FOR NO KEY UPDATE
    """
_RECORDED = """
    SELECT output FROM orchestrator.steps
    WHERE run_id = %(run)s::uuid AND step_id = %(step)s AND status = 'completed'
    """
_TAKE = """
    UPDATE orchestrator.signals SET consumed_at = coalesce(%(now)s::timestamptz, now()),
        consumed_by = %(step)s
    WHERE id = (SELECT id FROM orchestrator.signals
                WHERE run_id = %(run)s::uuid AND name = %(name)s AND consumed_at IS NULL
                ORDER BY id LIMIT 1 FOR UPDATE)
    RETURNING data
    """
_RECORD = """
    INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, output,
                                    wake_at, signal, created_at, updated_at)
    VALUES (%(run)s::uuid, %(step)s, %(position)s, 'signal', %(status)s, 1,
            CAST(%(output)s AS jsonb), %(wake)s, %(signal)s,
            coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now()))
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        kind = EXCLUDED.kind, status = EXCLUDED.status, attempt = EXCLUDED.attempt,
        output = EXCLUDED.output, error = NULL, wake_at = EXCLUDED.wake_at,
        signal = EXCLUDED.signal, updated_at = coalesce(%(now)s::timestamptz, now())
    """
_KEEP_RUNNING = f"""
    UPDATE orchestrator.runs SET state = {MERGE_STATE},
        updated_at = coalesce(%(now)s::timestamptz, now())
    WHERE id = %(run)s::uuid AND CAST(%(state)s AS jsonb) IS NOT NULL
    """
_SUSPEND = f"""
    UPDATE orchestrator.runs SET status = 'waiting', due_at = %(due)s,
        updated_at = coalesce(%(now)s::timestamptz, now()),
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        state = {MERGE_STATE}
    WHERE id = %(run)s::uuid
    """


def take(conn: Conn, taking: Taking) -> Taken:
    """Take the oldest pending signal for a step, or record its timeout, or suspend the run
    waiting for one, in the caller's transaction (see the module doc)."""
    db = driver(conn)
    params = _params(taking)
    if db.execute(_HOLD, params).fetchone() is None:
        return Taken("lost")
    recorded = db.execute(_RECORDED, params).fetchone()
    if recorded is not None:  # a repeat of a take that committed
        return Taken("timeout") if recorded[0] is None else Taken("signal", recorded[0])
    row = db.execute(_TAKE, params).fetchone()
    if row is not None or taking.expired:
        data: dict[str, Any] | None = None if row is None else row[0]
        output = json.dumps(data, separators=(",", ":"))
        db.execute(_RECORD, params | {"status": "completed", "output": output, "signal": None})
        db.execute(_KEEP_RUNNING, params)
        return Taken("timeout") if data is None else Taken("signal", data)
    db.execute(_RECORD, params | {"status": "waiting", "output": None})
    db.execute(_SUSPEND, params)
    return Taken("waiting")


def _params(taking: Taking) -> dict[str, Any]:
    return {
        "run": taking.run_id,
        "token": taking.token,
        "step": taking.step_id,
        "position": taking.position,
        "name": taking.name,
        "signal": taking.name,
        "due": taking.due,
        "wake": taking.wake_at,
        "state": taking.state_json,
        "now": clock.current(),
    }
