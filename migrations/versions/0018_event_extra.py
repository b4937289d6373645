"""The fields of an event that have no column of their own (Inngest's event format).

- `events.extra`: what the sender gave beyond `id`, `name`, `data` and `ts`, as an object;
  NULL when nothing. The Inngest gateway (`POST /e/{key}`) keeps an Inngest event's `user`
  and `v` here, so that the event an SDK function receives is the one that was sent.
  Functions written for this engine see `id`, `name`, `data` and `ts` as before.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orchestrator.events ADD COLUMN extra jsonb")
    op.execute(
        "ALTER TABLE orchestrator.events ADD CONSTRAINT events_extra_is_object "
        "CHECK (extra IS NULL OR jsonb_typeof(extra) = 'object')"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE orchestrator.events DROP COLUMN extra")
