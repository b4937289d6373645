"""Function-level retries: a function that raises outside any step is retried.

(Columns and tables: to be described here.)

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
"""

DOWNGRADE = """
"""


def upgrade() -> None:
    if UPGRADE.strip():
        op.execute(UPGRADE)


def downgrade() -> None:
    if DOWNGRADE.strip():
        op.execute(DOWNGRADE)
