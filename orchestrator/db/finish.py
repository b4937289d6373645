"""What every statement that ends runs also does, as CTEs to append to it.

A run ends in several statements: the workers' group write (completed, failed), cancellation
(of any active run, an executing one too), the recovery cap, unknown functions. Each of them
appends `after_finish(source, now)`, where `source` is a CTE of the changed runs with the columns
`id, function_id, status, output, error, events, parent_run_id`, and `now` is the SQL
of the current time in that statement's dialect (db/clock.py). For the runs of `source`
that ended, in the same transaction:

- their waits (cancellation conditions) are removed;
- a run with a parent (an invoked run) records the event `orchestrator/function.finished`,
  which resolves the parent's `invoke` step;
- a failed run records `orchestrator/function.failed`, which starts its `on_failure` handler.

The engine's events have deterministic ids (`finished:<run id>`, `failed:<run id>`), so a
statement retried after a lost connection records each once.
"""

from __future__ import annotations

from orchestrator.functions import FAILED_EVENT_NAME, FINISHED_EVENT_NAME

_ENDED = "('completed', 'failed', 'cancelled')"


def after_finish(source: str, now: str) -> str:
    """CTEs (to follow other CTEs, with a leading comma) for the runs of CTE `source`; the
    events it records are sent and received at `now`."""
    return f"""
    , {source}_unwait AS (
        DELETE FROM orchestrator.waits w USING {source} f
        WHERE w.run_id = f.id AND f.status IN {_ENDED}
    )
    , {source}_events AS (
        INSERT INTO orchestrator.events (id, name, data, ts, received_at)
        SELECT 'finished:' || f.id, '{FINISHED_EVENT_NAME}',
               jsonb_build_object('run_id', f.id::text, 'function_id', f.function_id,
                                  'parent_run_id', f.parent_run_id::text, 'status', f.status,
                                  'output', f.output, 'error', f.error), {now}, {now}
        FROM {source} f WHERE f.parent_run_id IS NOT NULL AND f.status IN {_ENDED}
        UNION ALL
        SELECT 'failed:' || f.id, '{FAILED_EVENT_NAME}',
               jsonb_build_object('run_id', f.id::text, 'function_id', f.function_id,
                                  'error', f.error, 'event', f.events -> 0), {now}, {now}
        FROM {source} f WHERE f.status = 'failed'
        ON CONFLICT (id) DO NOTHING
    )
    """
