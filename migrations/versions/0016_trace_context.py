"""Trace context on events and runs (OpenTelemetry, W3C Trace Context).

- `events.trace_context`: the sender's trace context when the event was sent (`app.send`,
  its async form, the outbox, the HTTP event API), as a W3C carrier object
  (`{"traceparent": "00-…", "tracestate": "…"}`); NULL when nothing was traced. A plain
  `INSERT` may set it too.
- `runs.trace_context`: the context a run's spans are children of: its triggering event's,
  the invoking step's for an invoked run, the caller's for `app.start`. Replays and forks
  keep the original's and link to it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orchestrator.events ADD COLUMN trace_context jsonb")
    op.execute("ALTER TABLE orchestrator.runs ADD COLUMN trace_context jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE orchestrator.runs DROP COLUMN trace_context")
    op.execute("ALTER TABLE orchestrator.events DROP COLUMN trace_context")
