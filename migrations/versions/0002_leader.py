"""Leadership as a lease in a table, so a stalled leader loses it.

A session advisory lock stays held while its process is stopped (SIGSTOP, a paused VM), and
cron and rescues would stall with it. A row with an expiry that the leader renews passes to
another daemon once the leader stops renewing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE orchestrator.leader (
            name       text PRIMARY KEY DEFAULT 'leader',
            daemon_id  uuid NOT NULL,
            elected_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE orchestrator.leader")
