"""Cancellation that stops work: slots released at once; cancel without children.

(Columns and tables: to be described here.)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = "0011"
down_revision = "0010"
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
