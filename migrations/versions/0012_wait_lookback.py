"""Waits that look back and waits for any of several events.

(Columns and tables: to be described here.)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from alembic import op

revision = "0012"
down_revision = "0011"
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
