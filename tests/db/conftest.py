"""Fixtures of the database-level tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.db.database import Database
from tests.db.executing import Harness


@pytest.fixture
def harness(db: Database) -> Iterator[Harness]:
    made = Harness(db)
    yield made
    made.close()
