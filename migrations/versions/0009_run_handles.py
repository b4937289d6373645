"""Awaited runs: `RunHandle.result()` is woken by a notification when the run it awaits ends.

- `runs.awaited`: someone awaits the run's end (`app.start` makes its runs awaited, and
  `RunHandle.result()` marks the run it waits for). False for every other run.
- The row trigger `runs_finished_notify` sends `pg_notify('orchestrator_run_finished', id)`
  when an awaited run's status changes to `completed`, `failed`, `cancelled` or `skipped`,
  whichever statement ends it (the workers' group write, a cancellation, the recovery cap, a
  hand-written UPDATE). Its `WHEN` clause is evaluated without calling the function, so the
  runs nobody awaits pay one boolean test per status change and queue no trigger event; the
  notification is delivered when the ending transaction commits.

Adding a column with a constant default rewrites nothing (PostgreSQL 11+).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE orchestrator.runs ADD COLUMN awaited boolean NOT NULL DEFAULT false;

CREATE FUNCTION orchestrator.notify_run_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_run_finished', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER runs_finished_notify AFTER UPDATE OF status ON orchestrator.runs
    FOR EACH ROW
    WHEN (NEW.awaited AND NEW.status IN ('completed', 'failed', 'cancelled', 'skipped')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION orchestrator.notify_run_finished();
"""

DOWNGRADE = """
DROP TRIGGER runs_finished_notify ON orchestrator.runs;
DROP FUNCTION orchestrator.notify_run_finished();
ALTER TABLE orchestrator.runs DROP COLUMN awaited;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
