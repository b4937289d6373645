"""Which daemons serve which functions, so that runs nothing can execute are seen.

- `daemons.functions`: the ids of the functions the daemon serves, written once when it
  registers (a daemon's functions never change while it lives, so heartbeats do not touch
  it). NULL for daemons registered before this revision: what they serve is unknown, and
  they count as serving every function, so that nothing is called unserved on their account
  during a rolling upgrade.
- `functions.last_served_at`: when a daemon serving the function last stopped or was last
  seen alive before it was declared dead; kept after the daemon's own row is deleted.
- the view `run_queue` gives the reason `unserved` to due runs (and buffered events) of a
  function that no running daemon serves. Its columns do not change.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RUN_QUEUE = """
CREATE OR REPLACE VIEW orchestrator.run_queue AS
WITH running AS (
    SELECT function_id, concurrency_keys, count(*) AS n
    FROM orchestrator.runs WHERE status = 'running'
    GROUP BY function_id, concurrency_keys
){served}
SELECT r.function_id, r.id AS run_id, r.status, r.priority, r.due_at, r.created_at AS since,
       NULL::text AS key, 1::bigint AS events,
       CASE
           WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelling'{unserved_run}
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
       CASE{unserved_buffer} WHEN jsonb_typeof(f.options -> 'debounce') = 'object' THEN 'debouncing'
            ELSE 'batching' END
FROM orchestrator.buffered_events b
LEFT JOIN orchestrator.functions f ON f.id = b.function_id
GROUP BY b.function_id, b.key, f.options
"""

# The functions running daemons serve; a NULL row (a daemon that did not say) serves any.
SERVED = """,
served AS MATERIALIZED (
    SELECT DISTINCT unnest(coalesce(d.functions, ARRAY[NULL::text])) AS function_id
    FROM orchestrator.daemons d WHERE d.status = 'running'
)"""
UNSERVED_RUN = """
           WHEN NOT EXISTS (SELECT FROM served s
                            WHERE s.function_id IS NULL OR s.function_id = r.function_id)
               THEN 'unserved'"""
UNSERVED_BUFFER = """
            WHEN NOT EXISTS (SELECT FROM served s
                             WHERE s.function_id IS NULL OR s.function_id = b.function_id)
                THEN 'unserved'
           """
WITH_UNSERVED = RUN_QUEUE.format(
    served=SERVED, unserved_run=UNSERVED_RUN, unserved_buffer=UNSERVED_BUFFER
)

UPGRADE = f"""
ALTER TABLE orchestrator.daemons ADD COLUMN functions text[];
ALTER TABLE orchestrator.functions ADD COLUMN last_served_at timestamptz;
{WITH_UNSERVED};
"""

DOWNGRADE = f"""
{RUN_QUEUE.format(served="", unserved_run="", unserved_buffer="")};
ALTER TABLE orchestrator.functions DROP COLUMN last_served_at;
ALTER TABLE orchestrator.daemons DROP COLUMN functions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
