"""Events and coordination: waits, cancellation, run lineage.

- `waits`: what a waiting step (`wait_for_event`, `invoke`) or a declarative `cancel_on`
  waits for, keyed so that resolving a wait is an index lookup on
  (event_name, match_path, match_value).
- `events (name, received_at)`: a wait looks back at events received since the run's
  previous step, so none is missed in the moment before the wait is stored.
- `runs.cancel_requested_at`: cancellation as one documented UPDATE; `runs (parent_run_id)`
  finds the children of a cancelled parent.
- step status `waiting`; the events trigger wakes the daemons only when rows were inserted
  (an INSERT … SELECT of no rows sent a hint as well).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE orchestrator.waits (
    run_id      uuid NOT NULL REFERENCES orchestrator.runs (id) ON DELETE CASCADE,
    step_id     text NOT NULL,
    kind        text NOT NULL,
    event_name  text NOT NULL,
    match_path  text NOT NULL DEFAULT '',
    match_value jsonb NOT NULL DEFAULT 'null'::jsonb,
    expression  text,
    since       timestamptz NOT NULL,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT waits_pkey PRIMARY KEY (run_id, step_id),
    CONSTRAINT waits_kind CHECK (kind IN ('event', 'cancel'))
);
CREATE INDEX waits_match ON orchestrator.waits (event_name, match_path, match_value);

CREATE INDEX events_name_received ON orchestrator.events (name, received_at);

ALTER TABLE orchestrator.runs ADD COLUMN cancel_requested_at timestamptz;
CREATE INDEX runs_parent ON orchestrator.runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_cancel_requested ON orchestrator.runs (id)
    WHERE cancel_requested_at IS NOT NULL
      AND status IN ('queued', 'running', 'sleeping', 'waiting');

ALTER TABLE orchestrator.steps DROP CONSTRAINT steps_status;
ALTER TABLE orchestrator.steps ADD CONSTRAINT steps_status
    CHECK (status IN ('completed', 'failed', 'retrying', 'sleeping', 'waiting'));

DROP TRIGGER events_notify ON orchestrator.events;
CREATE OR REPLACE FUNCTION orchestrator.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted) THEN
        PERFORM pg_notify('orchestrator_events', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON orchestrator.events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION orchestrator.notify_events();
"""

DOWNGRADE = """
DROP TRIGGER events_notify ON orchestrator.events;
CREATE OR REPLACE FUNCTION orchestrator.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON orchestrator.events
    FOR EACH STATEMENT EXECUTE FUNCTION orchestrator.notify_events();
ALTER TABLE orchestrator.steps DROP CONSTRAINT steps_status;
ALTER TABLE orchestrator.steps ADD CONSTRAINT steps_status
    CHECK (status IN ('completed', 'failed', 'retrying', 'sleeping'));
DROP INDEX orchestrator.runs_cancel_requested;
DROP INDEX orchestrator.runs_parent;
ALTER TABLE orchestrator.runs DROP COLUMN cancel_requested_at;
DROP INDEX orchestrator.events_name_received;
DROP TABLE orchestrator.waits;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
