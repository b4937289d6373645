"""Flow control: concurrency, throttle, rate limit, debounce, priority, batching, idempotency,
singleton.

- `runs`: `priority`, `concurrency_keys` (one key per concurrency constraint), `throttle_key`,
  `singleton_key` and `flow_key` (the key its function's runs take turns by), recorded when
  the run is created; status `skipped` (a run a rate limit
  or a singleton did not let start, with the reason in `error`).
- `runs_function_due`: a limited function's due runs, for its claim; `runs_flow_key`: the
  same by key, for a skip scan over the keys; `runs_running`: the
  runs executing now, by function, for counting them at claim time; `runs_singleton`: at most
  one active run per singleton key, enforced by the database.
- `limiters`: the state of each throttle and rate limit (per key): the theoretical arrival
  time of the generic cell rate algorithm.
- `buffered_events`: events waiting for a debounced or batched run to be made of them.
- `idempotency_keys`: the keys seen, until they expire.
- the view `run_queue`: every run due but not executing, and every debounce or batch being
  gathered, with the reason it is not running.

The status check is replaced NOT VALID, then validated, so the runs table is not locked
against writes while it is scanned.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RUN_QUEUE = """
CREATE VIEW orchestrator.run_queue AS
WITH running AS (
    SELECT function_id, concurrency_keys, count(*) AS n
    FROM orchestrator.runs WHERE status = 'running'
    GROUP BY function_id, concurrency_keys
)
SELECT r.function_id, r.id AS run_id, r.status, r.priority, r.due_at, r.created_at AS since,
       NULL::text AS key, 1::bigint AS events,
       CASE
           WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelling'
           WHEN EXISTS (
               SELECT FROM jsonb_array_elements(f.options -> 'concurrency')
                           WITH ORDINALITY AS c(spec, n)
               WHERE (SELECT coalesce(sum(x.n), 0) FROM running x
                      WHERE x.function_id = r.function_id
                        AND (c.spec ->> 'key' IS NULL
                             OR coalesce(x.concurrency_keys[c.n], '')
                                = coalesce(r.concurrency_keys[c.n], '')))
                     >= (c.spec ->> 'limit')::int
           ) THEN 'concurrency_limited'
           WHEN r.started_at IS NULL AND jsonb_typeof(f.options -> 'throttle') = 'object'
                AND EXISTS (
               SELECT FROM orchestrator.limiters l
               WHERE l.function_id = r.function_id AND l.kind = 'throttle'
                 AND l.key = coalesce(r.throttle_key, '')
                 AND l.tat > now() + make_interval(secs =>
                     ((f.options -> 'throttle' ->> 'burst')::int - 1)
                     * (f.options -> 'throttle' ->> 'period')::float8
                     / (f.options -> 'throttle' ->> 'limit')::int)
           ) THEN 'throttled'
           ELSE 'ready'
       END AS reason
FROM orchestrator.runs r
LEFT JOIN orchestrator.functions f ON f.id = r.function_id
WHERE r.status IN ('queued', 'sleeping', 'waiting') AND r.due_at <= now()
UNION ALL
SELECT b.function_id, NULL, 'buffered', 0, NULL, min(b.received_at), b.key, count(*),
       CASE WHEN jsonb_typeof(f.options -> 'debounce') = 'object' THEN 'debouncing'
            ELSE 'batching' END
FROM orchestrator.buffered_events b
LEFT JOIN orchestrator.functions f ON f.id = b.function_id
GROUP BY b.function_id, b.key, f.options
"""

UPGRADE = f"""
ALTER TABLE orchestrator.runs
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN concurrency_keys text[],
    ADD COLUMN throttle_key text,
    ADD COLUMN singleton_key text,
    ADD COLUMN flow_key text;
ALTER TABLE orchestrator.runs DROP CONSTRAINT runs_status;
ALTER TABLE orchestrator.runs ADD CONSTRAINT runs_status CHECK (status IN
    ('queued', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled', 'skipped'))
    NOT VALID;
ALTER TABLE orchestrator.runs VALIDATE CONSTRAINT runs_status;

CREATE INDEX runs_function_due ON orchestrator.runs (function_id, due_at, id)
    WHERE status IN ('queued', 'sleeping', 'waiting');
CREATE INDEX runs_running ON orchestrator.runs (function_id) WHERE status = 'running';
CREATE INDEX runs_flow_key ON orchestrator.runs (function_id, flow_key, due_at, id)
    WHERE flow_key IS NOT NULL AND status IN ('queued', 'sleeping', 'waiting');
CREATE UNIQUE INDEX runs_singleton ON orchestrator.runs (function_id, singleton_key)
    WHERE singleton_key IS NOT NULL AND cancel_requested_at IS NULL
      AND status IN ('queued', 'running', 'sleeping', 'waiting');

CREATE TABLE orchestrator.limiters (
    function_id text NOT NULL,
    kind        text NOT NULL,
    key         text NOT NULL,
    tat         timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT limiters_pkey PRIMARY KEY (function_id, kind, key),
    CONSTRAINT limiters_kind CHECK (kind IN ('throttle', 'rate_limit'))
);

CREATE TABLE orchestrator.buffered_events (
    function_id text NOT NULL,
    key         text NOT NULL DEFAULT '',
    event_id    text NOT NULL,
    seq         bigint NOT NULL,
    event       jsonb NOT NULL,
    received_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT buffered_events_pkey PRIMARY KEY (function_id, event_id)
);
CREATE INDEX buffered_events_key ON orchestrator.buffered_events (function_id, key, seq);

CREATE TABLE orchestrator.idempotency_keys (
    function_id text NOT NULL,
    key         text NOT NULL,
    event_id    text NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (function_id, key)
);
CREATE INDEX idempotency_keys_expires ON orchestrator.idempotency_keys (expires_at);
{RUN_QUEUE};
"""

DOWNGRADE = """
DROP VIEW orchestrator.run_queue;
DROP TABLE orchestrator.idempotency_keys;
DROP TABLE orchestrator.buffered_events;
DROP TABLE orchestrator.limiters;
DROP INDEX orchestrator.runs_singleton;
DROP INDEX orchestrator.runs_flow_key;
DROP INDEX orchestrator.runs_running;
DROP INDEX orchestrator.runs_function_due;
UPDATE orchestrator.runs SET status = 'cancelled' WHERE status = 'skipped';
ALTER TABLE orchestrator.runs DROP CONSTRAINT runs_status;
ALTER TABLE orchestrator.runs ADD CONSTRAINT runs_status CHECK (status IN
    ('queued', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled'));
ALTER TABLE orchestrator.runs
    DROP COLUMN flow_key,
    DROP COLUMN singleton_key,
    DROP COLUMN throttle_key,
    DROP COLUMN concurrency_keys,
    DROP COLUMN priority;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
