"""Cancellation that stops work: slots released at once; cancel without children.

- `runs.cancel_children` (boolean, default true): whether a cancellation cascades to the
  run's unfinished invoked runs. `app.cancel(run_id, children=False)` records false; an
  operator who requests a cancellation by hand sets it with `cancel_requested_at`:
  `UPDATE orchestrator.runs SET cancel_requested_at = now(), cancel_children = false
  WHERE id = ...` leaves the invoked runs running.

A cancellation now ends a running run too (status `cancelled`, lease cleared) in the
statement that cancels idle ones; no schema change is needed for that. Adding a column with a
constant default rewrites nothing (PostgreSQL 11+).

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
ALTER TABLE orchestrator.runs ADD COLUMN cancel_children boolean NOT NULL DEFAULT true;
"""

DOWNGRADE = """
ALTER TABLE orchestrator.runs DROP COLUMN cancel_children;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
