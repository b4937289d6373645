"""The statuses a run can have: one list for the schema's CHECK constraint and the CLI's
choices. It imports nothing, so the CLI can offer them without loading SQLAlchemy."""

from __future__ import annotations

RUN_STATUSES = (
    "queued",
    "running",
    "sleeping",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "skipped",
)
