"""Signals to one run and run state visible from outside.

(Columns and tables: to be described here.)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013"
down_revision = "0012"
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
