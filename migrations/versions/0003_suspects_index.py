"""Suspect runs: `runs.crashes` counts the worker processes that died while the run was inside
a step body; such runs execute in the quarantine process, indexed for their own claim.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orchestrator.runs ADD COLUMN crashes integer NOT NULL DEFAULT 0")
    op.execute(
        "CREATE INDEX runs_due_suspects ON orchestrator.runs (due_at, id) "
        "WHERE status IN ('queued', 'sleeping', 'waiting') AND crashes > 0"
    )


def downgrade() -> None:
    op.execute("DROP INDEX orchestrator.runs_due_suspects")
    op.execute("ALTER TABLE orchestrator.runs DROP COLUMN crashes")
