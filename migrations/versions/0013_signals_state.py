"""Signals to one run and run state visible from outside.

- `signals`: one row per signal sent to a run (`app.signal`, `orchestrator runs signal`, or
  `INSERT INTO orchestrator.signals (run_id, name, data)`): `id` (the order of sending),
  `run_id` (deleted with its run), `name` (1 to 200 characters), `data` (a JSON object, `{}`
  when none), `sent_at`, and once a `wait_for_signal` step took it, `consumed_at` and
  `consumed_by` (that step's id). `signals_pending` finds the oldest unconsumed signal of a
  name for a run; `signals_run` serves the cascade when runs are deleted (retention).
- The trigger `signals_sent` (BEFORE INSERT, per row) locks the run's row, refuses a signal
  to a finished run (a check violation of `signals_run_unfinished`), and wakes the run if it
  waits for a signal of that name (queued, due now, NOTIFY `orchestrator_runs`). Taking the
  run's row lock is what makes it race-free against a worker storing its wait, which holds
  that lock while it looks for signals and suspends the run (see orchestrator/db/signals.py).
- `steps.signal`: for a waiting `wait_for_signal` step, the name of the signal it waits for.
- `runs.state`: the key-value object the run published with `ctx.set_state` (`{}` until it
  does), written with the run's checkpoints, suspensions and end.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE orchestrator.runs ADD COLUMN state jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE orchestrator.runs ADD CONSTRAINT runs_state_is_object
    CHECK (jsonb_typeof(state) = 'object');
ALTER TABLE orchestrator.steps ADD COLUMN signal text;

CREATE TABLE orchestrator.signals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES orchestrator.runs (id) ON DELETE CASCADE,
    name        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    consumed_at timestamptz,
    consumed_by text,
    CONSTRAINT signals_name_length CHECK (length(name) BETWEEN 1 AND 200),
    CONSTRAINT signals_data_is_object CHECK (jsonb_typeof(data) = 'object')
);
CREATE INDEX signals_pending ON orchestrator.signals (run_id, name, id)
    WHERE consumed_at IS NULL;
CREATE INDEX signals_run ON orchestrator.signals (run_id);

CREATE FUNCTION orchestrator.signal_sent() RETURNS trigger LANGUAGE plpgsql AS $$
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
        UPDATE orchestrator.runs SET status = 'queued', due_at = now(), updated_at = now()
        WHERE id = NEW.run_id AND EXISTS (
            SELECT 1 FROM orchestrator.steps s
            WHERE s.run_id = NEW.run_id AND s.status = 'waiting' AND s.signal = NEW.name);
        IF FOUND THEN
            PERFORM pg_notify('orchestrator_runs', '');
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER signals_sent BEFORE INSERT ON orchestrator.signals
    FOR EACH ROW EXECUTE FUNCTION orchestrator.signal_sent();
"""

DOWNGRADE = """
DROP TABLE orchestrator.signals;
DROP FUNCTION orchestrator.signal_sent();
ALTER TABLE orchestrator.steps DROP COLUMN signal;
ALTER TABLE orchestrator.runs DROP CONSTRAINT runs_state_is_object;
ALTER TABLE orchestrator.runs DROP COLUMN state;
"""


def upgrade() -> None:
    if UPGRADE.strip():
        op.execute(UPGRADE)


def downgrade() -> None:
    if DOWNGRADE.strip():
        op.execute(DOWNGRADE)
