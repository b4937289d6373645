"""Statements behind `app.start` and `RunHandle`: a run started directly, awaited runs, and
the notification of their end.

Every operation here is an operation of db/ops.py: a generator of commands — a `Query` to
execute, or a `Pause` to wait for notifications — that receives each command's reply. The
decisions are plain code in the generators; db/outbox.py runs them on a sync or an async
connection, so the sync and async faces of the client share every statement, every decision
and the loop.

Awaiting a run's end (see migration 0009): a run whose `awaited` flag is set makes the
trigger `runs_finished_notify` send `pg_notify('orchestrator_run_finished', <run id>)` when
its status changes to an ended one, in the transaction that ends it. A waiter LISTENs
first, then marks the run awaited, then reads its status: a run that ended before the mark
is seen by the read, and one that ends after it notifies a waiter already listening.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from orchestrator.db import clock
from orchestrator.db.connect import libpq_url
from orchestrator.db.ops import Op, Query
from orchestrator.db.runs import CancelWatch, NewRun, insert_cancel_watches, watch_params

T = TypeVar("T")

CHANNEL = "orchestrator_run_finished"
ENDED = ("completed", "failed", "cancelled", "skipped")
_ACTIVE = "status IN ('queued', 'running', 'sleeping', 'waiting')"


@dataclass(frozen=True)
class RunState:
    """What a waiter reads of a run."""

    status: str
    output: Any
    error: Any

    @property
    def ended(self) -> bool:
        return self.status in ENDED


NOW = clock.SQL

# -- starting a run ----------------------------------------------------------------------

# The run, due `delay` seconds from now and awaited, with its function's cancellation
# conditions (as `runs.create_many` records them). A run with this id already there is left
# as it is: the statement then returns nothing.
_START = f"""
    WITH made AS (
        INSERT INTO orchestrator.runs
            (id, function_id, events, priority, concurrency_keys, throttle_key, flow_key,
             due_at, awaited, created_at, updated_at, trace_context)
        VALUES (%(id)s::uuid, %(fid)s, %(events)s::jsonb, %(priority)s, %(ckeys)s::text[],
                %(tkey)s, %(fkey)s, {NOW} + make_interval(secs => %(delay)s::float8), true,
                {NOW}, {NOW}, %(trace)s::jsonb)
        ON CONFLICT DO NOTHING
        RETURNING id, events
    ),
    watch AS (
        {insert_cancel_watches("m", NOW, NOW)}
        FROM made m, unnest(%(c_ns)s::int[], %(c_events)s::text[], %(c_paths)s::text[],
                            %(c_exprs)s::text[], %(c_timeouts)s::float8[])
                     AS c(n, ev, path, expr, timeout)
    )
    SELECT id::text FROM made
    """
_FUNCTION_OF = "SELECT function_id FROM orchestrator.runs WHERE id = %(id)s::uuid"
_WAKE = "SELECT pg_notify('orchestrator_runs', '')"
_OPTIONS = "SELECT options FROM orchestrator.functions WHERE id = %(id)s"


def function_options(function_id: str) -> Op[dict[str, Any] | None]:
    """The options a daemon registered for the function (None: no daemon ever did)."""
    rows = yield Query(_OPTIONS, {"id": function_id})
    return dict(rows[0][0]) if rows else None


def start(run: NewRun, watches: list[CancelWatch], delay: float) -> Op[str | None]:
    """Create `run` (its `id` set), due in `delay` seconds and awaited, with `watches` (its
    function's `cancel_on` conditions), and wake the daemons. Returns None when it was made;
    else the function of the run that has this id already (None too if that run is gone
    meanwhile)."""
    params = {
        "id": run.id,
        "fid": run.function_id,
        "events": json.dumps(run.events, separators=(",", ":")),
        "priority": run.priority,
        "ckeys": run.concurrency_keys,
        "tkey": run.throttle_key,
        "fkey": run.flow_key,
        "trace": run.trace_context,
        "delay": delay,
        "now": clock.current(),
        **watch_params(watches),
    }
    if (yield Query(_START, params)):
        yield Query(_WAKE, {})  # delivered at commit
        return None
    existing = yield Query(_FUNCTION_OF, {"id": run.id})  # a statement of its own: it sees
    return str(existing[0][0]) if existing else None  # a start that committed meanwhile


# -- awaiting a run ------------------------------------------------------------------------

_LISTEN = f"LISTEN {CHANNEL}"
_MARK = (
    f"UPDATE orchestrator.runs SET awaited = true WHERE id = %(id)s::uuid AND NOT awaited "
    f"AND {_ACTIVE}"
)
_READ = "SELECT status, output, error FROM orchestrator.runs WHERE id = %(id)s::uuid"


def read(run_id: str) -> Op[RunState | None]:
    """The run's status and outcome (None: no such run)."""
    rows = yield Query(_READ, {"id": run_id})
    return RunState(*rows[0]) if rows else None


def watch(run_id: str) -> Op[RunState | None]:
    """Listen for the end of awaited runs, mark this run awaited, then read it. Each is a
    statement of its own, in this order (see the module doc), on a connection in autocommit."""
    yield Query(_LISTEN, {})
    yield Query(_MARK, {"id": run_id})
    return (yield from read(run_id))


# -- connections of its own ---------------------------------------------------------------


def listening(url: str) -> psycopg.Connection[Any]:
    """A connection of its own for a waiter (in autocommit, as `watch` needs)."""
    return psycopg.connect(libpq_url(url), autocommit=True, application_name="orchestrator-waiter")


async def listening_async(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        libpq_url(url), autocommit=True, application_name="orchestrator-waiter"
    )
