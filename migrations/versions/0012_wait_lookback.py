"""Waits that look back and waits for any of several events.

- `waits.branch`: which entry of a `wait_for_any` step a wait row is (0 for every other wait,
  and for `cancel_on` conditions). A `wait_for_any` step stores one row per entry; the
  primary key becomes (run_id, step_id, branch). Resolving the step deletes all its rows at
  once, under the run row's lock, so the first event to arrive wins and the others find
  nothing left to resolve.
- `steps.event_id`: the id of the event that ended a `wait_for_event`, `wait_for_any` or
  `invoke` step (null for any other step, and for a wait that timed out). A wait that looks
  back (`lookback=`) skips the events an earlier step of the same run consumed; the partial
  index `steps_event` makes that an index probe per candidate event.
- `waiting_runs` shows each row's `branch` (its last column).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE orchestrator.waits ADD COLUMN branch integer NOT NULL DEFAULT 0;
ALTER TABLE orchestrator.waits DROP CONSTRAINT waits_pkey;
ALTER TABLE orchestrator.waits ADD CONSTRAINT waits_pkey PRIMARY KEY (run_id, step_id, branch);
ALTER TABLE orchestrator.steps ADD COLUMN event_id text;
CREATE INDEX steps_event ON orchestrator.steps (run_id, event_id) WHERE event_id IS NOT NULL;
CREATE OR REPLACE VIEW orchestrator.waiting_runs AS
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
       now() - w.created_at AS waiting_for,
       w.branch
FROM orchestrator.waits w
JOIN orchestrator.runs r ON r.id = w.run_id;
"""

DOWNGRADE = """
DROP VIEW orchestrator.waiting_runs;
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
DROP INDEX orchestrator.steps_event;
ALTER TABLE orchestrator.steps DROP COLUMN event_id;
DELETE FROM orchestrator.waits WHERE branch <> 0;
ALTER TABLE orchestrator.waits DROP CONSTRAINT waits_pkey;
ALTER TABLE orchestrator.waits ADD CONSTRAINT waits_pkey PRIMARY KEY (run_id, step_id);
ALTER TABLE orchestrator.waits DROP COLUMN branch;
"""


def upgrade() -> None:
    if UPGRADE.strip():
        op.execute(UPGRADE)


def downgrade() -> None:
    if DOWNGRADE.strip():
        op.execute(DOWNGRADE)
