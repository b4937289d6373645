"""The initial schema: events, runs, steps, functions, schedules, daemons.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE orchestrator.events (
    id          text PRIMARY KEY DEFAULT (gen_random_uuid())::text,
    seq         bigint GENERATED ALWAYS AS IDENTITY NOT NULL,
    name        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ts          timestamptz NOT NULL DEFAULT now(),
    received_at timestamptz NOT NULL DEFAULT now(),
    ingested_at timestamptz,
    error       text,
    CONSTRAINT events_id_length CHECK (length(id) BETWEEN 1 AND 256),
    CONSTRAINT events_name_length CHECK (length(name) BETWEEN 1 AND 256),
    CONSTRAINT events_data_is_object CHECK (jsonb_typeof(data) = 'object')
);
CREATE UNIQUE INDEX events_seq ON orchestrator.events (seq);
CREATE INDEX events_pending ON orchestrator.events (seq) WHERE ingested_at IS NULL;

-- Wake the daemons when events arrive, once per statement (a bulk INSERT sends one hint).
CREATE FUNCTION orchestrator.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON orchestrator.events
    FOR EACH STATEMENT EXECUTE FUNCTION orchestrator.notify_events();

CREATE TABLE orchestrator.functions (
    id         text PRIMARY KEY,
    triggers   jsonb NOT NULL DEFAULT '[]'::jsonb,
    options    jsonb NOT NULL DEFAULT '{}'::jsonb,
    version    text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orchestrator.schedules (
    function_id   text PRIMARY KEY REFERENCES orchestrator.functions (id) ON DELETE CASCADE,
    cron          text NOT NULL,
    tz            text NOT NULL DEFAULT 'UTC',
    next_fire_at  timestamptz NOT NULL,
    last_fired_at timestamptz,
    last_run_id   uuid,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON orchestrator.schedules (next_fire_at);

CREATE TABLE orchestrator.daemons (
    id           uuid PRIMARY KEY,
    lock_key     integer GENERATED ALWAYS AS IDENTITY NOT NULL,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    app          text NOT NULL DEFAULT '',
    version      text NOT NULL DEFAULT '',
    workers      integer NOT NULL,
    concurrency  integer NOT NULL,
    status       text NOT NULL DEFAULT 'running',
    is_leader    boolean NOT NULL DEFAULT false,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    CONSTRAINT daemons_status CHECK (status IN ('running', 'stopping', 'stopped', 'dead'))
);
CREATE UNIQUE INDEX daemons_lock_key ON orchestrator.daemons (lock_key);

CREATE TABLE orchestrator.runs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    function_id      text NOT NULL,
    status           text NOT NULL DEFAULT 'queued',
    event_id         text,
    events           jsonb NOT NULL DEFAULT '[]'::jsonb,
    idempotency_key  text,
    parent_run_id    uuid,
    output           jsonb,
    error            jsonb,
    attempts         integer NOT NULL DEFAULT 0,
    recoveries       integer NOT NULL DEFAULT 0,
    due_at           timestamptz NOT NULL DEFAULT now(),
    lease_owner      uuid,
    lease_token      uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT runs_status CHECK (status IN
        ('queued', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled'))
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05,
        autovacuum_analyze_scale_factor = 0.05);
CREATE INDEX runs_due ON orchestrator.runs (due_at, id)
    WHERE status IN ('queued', 'sleeping', 'waiting');
CREATE INDEX runs_leased ON orchestrator.runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_lease_owner ON orchestrator.runs (lease_owner) WHERE status = 'running';
CREATE UNIQUE INDEX runs_idempotency ON orchestrator.runs (function_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_function_created ON orchestrator.runs (function_id, created_at);
CREATE INDEX runs_created ON orchestrator.runs (created_at);
CREATE INDEX runs_event ON orchestrator.runs (event_id) WHERE event_id IS NOT NULL;

CREATE TABLE orchestrator.steps (
    run_id      uuid NOT NULL REFERENCES orchestrator.runs (id) ON DELETE CASCADE,
    step_id     text NOT NULL,
    position    integer NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL,
    attempt     integer NOT NULL DEFAULT 1,
    output      jsonb,
    error       jsonb,
    wake_at     timestamptz,
    duration_ms integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT steps_pkey PRIMARY KEY (run_id, step_id),
    CONSTRAINT steps_status CHECK (status IN ('completed', 'failed', 'retrying', 'sleeping'))
) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);
"""

DOWNGRADE = """
DROP TABLE orchestrator.steps;
DROP TABLE orchestrator.runs;
DROP TABLE orchestrator.daemons;
DROP TABLE orchestrator.schedules;
DROP TABLE orchestrator.functions;
DROP TRIGGER events_notify ON orchestrator.events;
DROP FUNCTION orchestrator.notify_events();
DROP TABLE orchestrator.events;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
