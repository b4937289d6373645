"""A signal wakes its run at the time it was sent.

The trigger `signals_sent` (migration 0013) made a run woken by a signal due at `now()`. It
now uses the signal's `sent_at`: the same for a signal inserted by hand (the column's default
is `now()`, applied before the trigger runs), and the time the engine passed for one sent
through `app.signal` (orchestrator/db/clock.py), so a test's virtual clock reaches it too.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION orchestrator.signal_sent() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    run_status text;
BEGIN
    SELECT status INTO run_status FROM orchestrator.runs WHERE id = NEW.run_id
        FOR NO KEY UPDATE;
    IF run_status IN ('completed', 'failed', 'cancelled', 'skipped') THEN
        RAISE EXCEPTION 'run % has finished (%): a signal goes to an unfinished run',
            NEW.run_id, run_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'signals_run_unfinished',
                  TABLE = 'signals', SCHEMA = 'orchestrator';
    END IF;
    IF run_status = 'waiting' THEN
        UPDATE orchestrator.runs SET status = 'queued', due_at = {woken}, updated_at = {woken}
        WHERE id = NEW.run_id AND EXISTS (
            SELECT 1 FROM orchestrator.steps s
            WHERE s.run_id = NEW.run_id AND s.status = 'waiting' AND s.signal = NEW.name);
        IF FOUND THEN
            PERFORM pg_notify('orchestrator_runs', '');
        END IF;
    END IF;
    RETURN NEW;
END $$;
"""

UPGRADE = _FUNCTION.replace("{woken}", "NEW.sent_at")
DOWNGRADE = _FUNCTION.replace("{woken}", "now()")


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
