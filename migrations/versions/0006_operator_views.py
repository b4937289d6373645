"""Read-only views for operators: `run_overview` (one row per run, with its timings, error
and the step it reached) and `waiting_runs` (what each waiting run waits for). Their column
names are part of the documented SQL contract.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE VIEW orchestrator.run_overview AS
SELECT r.id AS run_id,
       r.function_id,
       r.status,
       r.events -> 0 ->> 'name' AS event_name,
       r.event_id,
       jsonb_array_length(r.events) AS event_count,
       r.attempts,
       r.recoveries,
       r.priority,
       r.parent_run_id,
       r.lease_owner AS daemon_id,
       r.created_at,
       r.started_at,
       r.finished_at,
       r.due_at,
       r.started_at - r.created_at AS queued_for,
       r.finished_at - r.started_at AS duration,
       r.error ->> 'code' AS error_code,
       r.error ->> 'type' AS error_type,
       r.error ->> 'message' AS error_message,
       r.cancel_requested_at,
       last.step_id AS last_step,
       last.kind AS last_step_kind,
       last.status AS last_step_status,
       coalesce(last.steps, 0) AS steps
FROM orchestrator.runs r
LEFT JOIN LATERAL (
    SELECT s.step_id, s.kind, s.status, count(*) OVER () AS steps
    FROM orchestrator.steps s WHERE s.run_id = r.id
    ORDER BY s.position DESC LIMIT 1
) last ON true;

CREATE VIEW orchestrator.waiting_runs AS
SELECT w.run_id,
       r.function_id,
       r.status,
       w.step_id,
       w.kind,
       w.event_name,
       nullif(w.match_path, '') AS match_path,
       CASE WHEN w.match_path = '' THEN NULL ELSE w.match_value END AS match_value,
       w.expression,
       w.since,
       w.expires_at,
       w.created_at AS waiting_since,
       now() - w.created_at AS waiting_for
FROM orchestrator.waits w
JOIN orchestrator.runs r ON r.id = w.run_id;
"""

DOWNGRADE = """
DROP VIEW orchestrator.waiting_runs;
DROP VIEW orchestrator.run_overview;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
