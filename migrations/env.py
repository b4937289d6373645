"""Alembic environment: one transaction, serialised by an advisory lock.

Two `orchestrator migrate` processes may start at once (two hosts deploying together); the
transaction-level advisory lock makes the second wait and then find the schema at head.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from orchestrator.db.schema import SCHEMA, metadata

MIGRATION_LOCK = 0x6F726368  # "orch"


def run_migrations_online() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=lambda name, type_, parent: type_ != "schema" or name == SCHEMA,
        # orchestrator/db/migrate.py: the progress of `orchestrator migrate`, step by step
        on_version_apply=context.config.attributes.get("on_version_apply", ()),
    )
    with context.begin_transaction():
        connection.execute(text("SET LOCAL lock_timeout = '30s'"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        context.run_migrations()


run_migrations_online()
