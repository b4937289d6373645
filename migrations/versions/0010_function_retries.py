"""Function-level retries: a function that raises outside any step is retried.

- `runs.retries`: how many function-level retries the run has taken (a retry re-executes the
  function after its back-off; completed steps replay from their records). While such a retry
  is pending (`status = 'queued' AND retries > 0`) and until the run ends, `runs.error` holds
  the error of the failed attempt; the run's end replaces it (NULL once it completes).
  `orchestrator runs resume` gives a resumed run a fresh budget (0).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE orchestrator.runs ADD COLUMN retries integer NOT NULL DEFAULT 0;
"""

DOWNGRADE = """
ALTER TABLE orchestrator.runs DROP COLUMN retries;
"""


def upgrade() -> None:
    if UPGRADE.strip():
        op.execute(UPGRADE)


def downgrade() -> None:
    if DOWNGRADE.strip():
        op.execute(DOWNGRADE)
