"""Operations: lineage of replayed and forked runs, a resume count, and autovacuum settings
for the hot tables that had none.

- `runs.origin` ('replay' or 'fork') and `runs.origin_run_id`: a run made by replaying or
  forking another run points at it (`parent_run_id` stays the invoke lineage).
- `runs.resumes`: how many times a failed or cancelled run was resumed.
- `run_overview` gains `origin`, `origin_run_id` and `resumes` (appended, so the earlier
  columns keep their order).
- Autovacuum: `events`, `waits`, `limiters`, `buffered_events` and `idempotency_keys` churn
  (insert then update or delete); `daemons` and `leader` are rewritten every heartbeat. They
  get a smaller scale factor, and the two tiny ones room for HOT updates.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OVERVIEW = """
CREATE OR REPLACE VIEW orchestrator.run_overview AS
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
       coalesce(last.steps, 0) AS steps{extra}
FROM orchestrator.runs r
LEFT JOIN LATERAL (
    SELECT s.step_id, s.kind, s.status, count(*) OVER () AS steps
    FROM orchestrator.steps s WHERE s.run_id = r.id
    ORDER BY s.position DESC LIMIT 1
) last ON true;
"""

CHURN = "autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05"

ORIGIN = ",\n       r.origin,\n       r.origin_run_id,\n       r.resumes"

UPGRADE = f"""
ALTER TABLE orchestrator.runs
    ADD COLUMN origin text,
    ADD COLUMN origin_run_id uuid,
    ADD COLUMN resumes integer NOT NULL DEFAULT 0;
ALTER TABLE orchestrator.runs
    ADD CONSTRAINT runs_origin CHECK (origin IN ('replay', 'fork')) NOT VALID;
ALTER TABLE orchestrator.runs VALIDATE CONSTRAINT runs_origin;
CREATE INDEX runs_origin_run ON orchestrator.runs (origin_run_id)
    WHERE origin_run_id IS NOT NULL;

ALTER TABLE orchestrator.events SET ({CHURN}, autovacuum_vacuum_insert_scale_factor = 0.05);
ALTER TABLE orchestrator.waits SET ({CHURN});
ALTER TABLE orchestrator.limiters SET (fillfactor = 70, {CHURN});
ALTER TABLE orchestrator.buffered_events SET ({CHURN});
ALTER TABLE orchestrator.idempotency_keys SET ({CHURN});
ALTER TABLE orchestrator.daemons SET (fillfactor = 50, autovacuum_vacuum_threshold = 200);
ALTER TABLE orchestrator.leader SET (fillfactor = 50, autovacuum_vacuum_threshold = 200);

{OVERVIEW.format(extra=ORIGIN)}"""

DOWNGRADE = f"""
DROP VIEW orchestrator.run_overview;
ALTER TABLE orchestrator.runs DROP COLUMN origin, DROP COLUMN origin_run_id,
    DROP COLUMN resumes;
ALTER TABLE orchestrator.events RESET (autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor, autovacuum_vacuum_insert_scale_factor);
ALTER TABLE orchestrator.waits RESET (autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor);
ALTER TABLE orchestrator.limiters RESET (fillfactor, autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor);
ALTER TABLE orchestrator.buffered_events RESET (autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor);
ALTER TABLE orchestrator.idempotency_keys RESET (autovacuum_vacuum_scale_factor,
    autovacuum_analyze_scale_factor);
ALTER TABLE orchestrator.daemons RESET (fillfactor, autovacuum_vacuum_threshold);
ALTER TABLE orchestrator.leader RESET (fillfactor, autovacuum_vacuum_threshold);
{OVERVIEW.format(extra="")}"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
