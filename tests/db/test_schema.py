from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from orchestrator.db import migrate
from orchestrator.db.connect import check_schema
from orchestrator.db.database import Database
from orchestrator.db.schema import SCHEMA, metadata
from orchestrator.errors import DatabaseNotReadyError

pytestmark = pytest.mark.timeout(120)


def test_models_match_migrations(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "version_table_schema": SCHEMA,
                "include_name": lambda name, type_, parent: type_ != "schema" or name == SCHEMA,
                "compare_server_default": False,
            },
        )
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_migrate__idempotent(db: Database) -> None:
    migrate.upgrade(db.engine)
    migrate.upgrade(db.engine)
    check_schema(db.engine)


def test_migrate__two_at_once_on_an_empty_database(empty_database: str) -> None:
    env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=empty_database)
    # separate processes, as on two hosts deploying at once (Alembic's context is per process)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    db = Database(empty_database, pool_size=1)
    try:
        check_schema(db.engine)
    finally:
        db.dispose()


def test_check_schema__unmigrated_database_names_the_fix(empty_database: str) -> None:
    db = Database(empty_database, pool_size=1)
    try:
        with pytest.raises(DatabaseNotReadyError, match="orchestrator migrate"):
            check_schema(db.engine)
    finally:
        db.dispose()
