"""The dashboard's accounts and audit trail, and the indexes its pages read by.

- `ui_users`: who may log in to the dashboard: `name` (lowercase, 1-64 characters),
  `password_hash` (argon2id, never the password), `role` (`viewer` or `operator`).
- `ui_sessions`: one row per logged-in browser. `id_hash` is the sha256 digest of the cookie's
  32 random bytes (the cookie alone can be used; the table alone cannot), `csrf_token` the
  token its forms must carry, `expires_at` when it ends (`ui_sessions_expires` serves the
  purge). Deleted with their user.
- `ui_tokens`: API tokens: `token_hash` is the sha256 digest of the token, `revoked_at` set
  when revoked (the row stays, so the name stays taken and the audit trail readable).
- `ui_actions`: what was done from the dashboard, the API or the CLI, by whom: `actor`, `via`
  (`session`, `token`, `cli`), `action` (`cancel`, `replay`, `resume`, `fork`, `send`), the run
  acted on and the run or event it made. No foreign key: the history outlives retention.
  `ui_actions_run` lists a run's actions.

Indexes on `runs` for the runs page, newest first with keyset pagination on
(created_at, id): `runs_status_created` (a status), `runs_function_status_created` (a
function and a status), `runs_event_name_created` (the trigger event's name,
`events -> 0 ->> 'name'`), `runs_function_finished` (a function's completions by time, for
its durations and throughput). `runs_event` becomes a `text_pattern_ops` index, so an event
id prefix (`LIKE 'abc%'`) uses it whatever the database's collation; equality still does.
On `events`: `events_name_seq` (one name, newest first) and `events_parked` (parked events).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE orchestrator.ui_users (
    name          text PRIMARY KEY,
    password_hash text NOT NULL,
    role          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ui_users_name CHECK (name ~ '^[a-z0-9][a-z0-9_.@-]{0,63}$'),
    CONSTRAINT ui_users_role CHECK (role IN ('viewer', 'operator'))
);

CREATE TABLE orchestrator.ui_sessions (
    id_hash      bytea PRIMARY KEY,
    user_name    text NOT NULL REFERENCES orchestrator.ui_users (name) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ui_sessions_expires ON orchestrator.ui_sessions (expires_at);
CREATE INDEX ui_sessions_user ON orchestrator.ui_sessions (user_name);

CREATE TABLE orchestrator.ui_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL,
    token_hash   bytea NOT NULL,
    role         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT ui_tokens_name UNIQUE (name),
    CONSTRAINT ui_tokens_token_hash UNIQUE (token_hash),
    CONSTRAINT ui_tokens_role CHECK (role IN ('viewer', 'operator'))
);

CREATE TABLE orchestrator.ui_actions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    via        text NOT NULL,
    action     text NOT NULL,
    run_id     uuid,
    new_run_id uuid,
    event_id   text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT ui_actions_via CHECK (via IN ('session', 'token', 'cli')),
    CONSTRAINT ui_actions_action CHECK (action IN ('cancel', 'replay', 'resume', 'fork', 'send'))
);
CREATE INDEX ui_actions_run ON orchestrator.ui_actions (run_id, id);

CREATE INDEX runs_status_created ON orchestrator.runs (status, created_at);
CREATE INDEX runs_function_status_created ON orchestrator.runs (function_id, status, created_at);
CREATE INDEX runs_event_name_created ON orchestrator.runs (((events -> 0) ->> 'name'), created_at)
    WHERE ((events -> 0) ->> 'name') IS NOT NULL;
CREATE INDEX runs_function_finished ON orchestrator.runs (function_id, finished_at)
    INCLUDE (started_at) WHERE status = 'completed';
DROP INDEX orchestrator.runs_event;
CREATE INDEX runs_event ON orchestrator.runs (event_id text_pattern_ops)
    WHERE event_id IS NOT NULL;
CREATE INDEX events_name_seq ON orchestrator.events (name, seq);
CREATE INDEX events_parked ON orchestrator.events (seq) WHERE error IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX orchestrator.events_parked;
DROP INDEX orchestrator.events_name_seq;
DROP INDEX orchestrator.runs_event;
CREATE INDEX runs_event ON orchestrator.runs (event_id) WHERE event_id IS NOT NULL;
DROP INDEX orchestrator.runs_function_finished;
DROP INDEX orchestrator.runs_event_name_created;
DROP INDEX orchestrator.runs_function_status_created;
DROP INDEX orchestrator.runs_status_created;
DROP TABLE orchestrator.ui_actions;
DROP TABLE orchestrator.ui_tokens;
DROP TABLE orchestrator.ui_sessions;
DROP TABLE orchestrator.ui_users;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
