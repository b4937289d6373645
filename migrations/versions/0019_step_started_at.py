"""When a step's attempt began: `steps.started_at`.

- `steps.started_at`: when the attempt the row records began, on the database's clock as the
  worker read it (the claim's time moved on by the time since). NULL for steps that have no
  body (sleeps, waits, signals, invokes) and for rows written before this migration.

A `wait_for_event` looks back to when the step before it began. A run that resumes after an
interruption replays that step from its record; the start used to be estimated as
`updated_at - duration_ms`, which is later than the real start by the time the checkpoint
took to commit, so an event received in between could be missed on the resumed run.

Adding a nullable column without a default changes only the catalog: no rewrite, no scan.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orchestrator.steps ADD COLUMN started_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE orchestrator.steps DROP COLUMN started_at")
