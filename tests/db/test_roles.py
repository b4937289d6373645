"""`orchestrator roles`: the owner, runtime and read-only roles, checked by connecting as each
and trying what it may and may not do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import errors
from psycopg.types.json import Jsonb

from orchestrator import cli, log
from orchestrator.db import events, migrate, roles
from orchestrator.db.database import Database
from orchestrator.errors import DatabaseNotReadyError
from tests.conftest import admin, with_database
from tests.db_roles import applied_roles, as_role, drop_roles, unique_roles

pytestmark = pytest.mark.timeout(90)

TABLES = [
    "events", "runs", "steps", "functions", "schedules", "daemons", "leader", "waits",
    "limiters", "buffered_events", "idempotency_keys", "alembic_version", "ui_actions",
]  # fmt: skip
VIEWS = ["run_overview", "waiting_runs", "run_queue"]


@pytest.fixture
def made(db_url: str) -> Iterator[roles.Roles]:
    with applied_roles(db_url) as names:
        yield names


@pytest.fixture
def in_process_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`cli.main` configures logging for its process: put it back afterwards."""
    monkeypatch.setattr(log._State, "payloads", False)
    monkeypatch.setattr(log._State, "secrets", frozenset())
    yield
    structlog.reset_defaults()


def connect(url: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(as_role(url, role), autocommit=True)


def refused(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> str:
    """Run `statement`, expecting a permission error; returns its message."""
    with pytest.raises(errors.InsufficientPrivilege) as info:
        conn.execute(statement, params)
    return str(info.value)


def test_roles__schema_and_every_object_are_handed_to_the_owner(db_url, made):
    with admin(db_url) as conn:
        schema_owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'orchestrator'"
        ).fetchone()
        owners = conn.execute(
            "SELECT DISTINCT relowner::regrole::text FROM pg_class "
            "WHERE relnamespace = 'orchestrator'::regnamespace"
        ).fetchall()
        functions = conn.execute(
            "SELECT DISTINCT proowner::regrole::text FROM pg_proc "
            "WHERE pronamespace = 'orchestrator'::regnamespace"
        ).fetchall()
    assert schema_owner == (made.owner,)
    assert owners == [(made.owner,)]  # tables, views, indexes, identity sequences
    assert functions == [(made.owner,)]  # the events trigger's function


def test_runtime__reads_and_writes_the_tables(db_url, made):
    with connect(db_url, made.runtime) as conn:
        for table in TABLES:
            conn.execute(f"SELECT * FROM orchestrator.{table} LIMIT 1")
        for view in VIEWS:
            conn.execute(f"SELECT * FROM orchestrator.{view} LIMIT 1")
        # identity column (events.seq) and the trigger that notifies the daemons
        conn.execute("LISTEN orchestrator_events")
        conn.execute(
            "INSERT INTO orchestrator.events (name, data) VALUES ('a/b', %s)", (Jsonb({}),)
        )
        assert [n.channel for n in conn.notifies(timeout=5, stop_after=1)] == [
            "orchestrator_events"
        ]
        conn.execute(
            "INSERT INTO orchestrator.daemons (id, hostname, pid, workers, concurrency) "
            "VALUES (gen_random_uuid(), 'h', 1, 1, 1)"
        )
        conn.execute("UPDATE orchestrator.events SET ingested_at = now()")
        conn.execute("DELETE FROM orchestrator.daemons")
        # the statements the daemon runs beyond plain reads and writes
        conn.execute("SELECT pg_advisory_lock(1, 2), pg_try_advisory_lock(1, 3)")
        conn.execute("SELECT pg_advisory_unlock(1, 2), pg_advisory_unlock(1, 3)")
        conn.execute("SELECT pg_notify('orchestrator_runs', '')")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7), pg_advisory_xact_lock_shared(8)")
            conn.execute("SELECT set_config('enable_sort', 'off', true)")
            conn.execute("SET LOCAL lock_timeout = '1s'")
        setting = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    assert setting == ("1min",)


def test_runtime__may_not_change_the_schema(db_url, made):
    with connect(db_url, made.runtime) as conn:
        assert "schema orchestrator" in refused(conn, "CREATE TABLE orchestrator.t (x int)")
        assert "must be owner" in refused(conn, "DROP TABLE orchestrator.steps")
        assert "must be owner" in refused(conn, "ALTER TABLE orchestrator.runs ADD COLUMN x int")
        assert "must be owner" in refused(conn, "CREATE INDEX i ON orchestrator.runs (status)")
        assert "must be owner" in refused(conn, "DROP VIEW orchestrator.run_overview")
        refused(conn, "CREATE VIEW orchestrator.v AS SELECT 1")
        refused(conn, "CREATE SCHEMA elsewhere")
        refused(conn, "TRUNCATE orchestrator.events")
        refused(conn, "UPDATE orchestrator.alembic_version SET version_num = 'x'")
        refused(conn, "DELETE FROM orchestrator.alembic_version")
        refused(conn, "ALTER FUNCTION orchestrator.notify_events() OWNER TO CURRENT_USER")


def test_readonly__selects_every_table_and_view(db_url, made, db):
    with db.transaction() as conn:  # something to read
        events.insert(conn, "shop/order", '{"n": 1}', event_id="e-1", ts=None)
    with connect(db_url, made.readonly) as conn:
        for relation in TABLES + VIEWS:
            conn.execute(f"SELECT * FROM orchestrator.{relation}").fetchall()
        assert conn.execute("SELECT id FROM orchestrator.events").fetchall() == [("e-1",)]
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


WRITES = [
    "INSERT INTO orchestrator.events (name) VALUES ('x/y')",
    "UPDATE orchestrator.runs SET status = 'failed'",
    "DELETE FROM orchestrator.steps",
    "CREATE TABLE orchestrator.t (x int)",
    "TRUNCATE orchestrator.events",
]


@pytest.mark.parametrize("statement", WRITES)
def test_readonly__every_write_is_refused(db_url, made, statement):
    with connect(db_url, made.readonly) as conn:
        # the role's transactions are read-only by default ...
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute(statement)
        # ... and switching that off does not help: it holds no write privilege
        conn.execute("SET default_transaction_read_only = off")
        message = refused(conn, statement)
    assert "permission denied" in message


def test_default_privileges__objects_the_owner_adds_later_get_the_grants(db_url, made):
    with admin(db_url) as conn:  # what a later migration, run as the owner, does
        conn.execute(f"SET ROLE {made.owner}")
        conn.execute("CREATE TABLE orchestrator.later (id bigint GENERATED ALWAYS AS IDENTITY)")
        conn.execute("CREATE VIEW orchestrator.later_view AS SELECT id FROM orchestrator.later")
    with connect(db_url, made.runtime) as conn:
        conn.execute("INSERT INTO orchestrator.later DEFAULT VALUES")
        conn.execute("DELETE FROM orchestrator.later")
    with connect(db_url, made.readonly) as conn:
        conn.execute("SELECT * FROM orchestrator.later_view").fetchall()
        conn.execute("SET default_transaction_read_only = off")
        refused(conn, "INSERT INTO orchestrator.later DEFAULT VALUES")


def test_roles_command__printed_sql_applies_twice(db_url, capsys, in_process_cli):
    made = unique_roles()
    argv = ["roles", "--owner", made.owner, "--runtime", made.runtime, "--readonly", made.readonly]
    assert cli.main(argv) == 0
    script = capsys.readouterr().out
    assert script.count("BEGIN;") == 1 and script.rstrip().endswith("COMMIT;")
    assert "NOLOGIN" in script and "PASSWORD" not in script.upper()
    try:
        with admin(db_url) as conn:
            conn.execute(script)
            conn.execute(script)
            logins = conn.execute(
                "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
                ([made.owner, made.runtime, made.readonly],),
            ).fetchall()
        assert logins == sorted((n, False) for n in (made.owner, made.runtime, made.readonly))
    finally:
        drop_roles(db_url, made)


def test_roles_command__apply_keeps_login_and_adds_it_when_asked(db_url, capsys, in_process_cli):
    made = unique_roles()
    argv = [
        "roles", "--database-url", db_url, "--apply",
        "--owner", made.owner, "--runtime", made.runtime, "--readonly", made.readonly,
    ]  # fmt: skip
    try:
        assert cli.main(argv) == 0
        assert "cannot log in" in capsys.readouterr().out
        assert cli.main([*argv, "--login"]) == 0
        assert "\\password" in capsys.readouterr().out
        assert cli.main(argv) == 0  # again without --login: LOGIN is kept
        with admin(db_url) as conn:
            logins = conn.execute(
                "SELECT bool_and(rolcanlogin) FROM pg_roles WHERE rolname = ANY(%s)",
                ([made.owner, made.runtime, made.readonly],),
            ).fetchone()
        assert logins == (True,)
    finally:
        drop_roles(db_url, made)


def test_roles__a_superuser_name_is_refused(db_url):
    with admin(db_url) as conn:
        me, superuser = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()  # type: ignore[misc]
    if not superuser:
        pytest.skip("the test server's admin role is not a superuser")
    with admin(db_url) as conn, pytest.raises(errors.RaiseException, match="is a superuser"):
        roles.apply(conn, roles.Roles(runtime=me))


def test_migrate__as_runtime__at_head_is_a_no_op(db_url, made):
    db = Database(as_role(db_url, made.runtime), pool_size=1)
    try:
        migrate.upgrade(db.engine)
        assert migrate.current_revision(db.engine) == migrate.head_revision()
    finally:
        db.dispose()


def test_migrate__as_runtime__behind_head_says_what_to_do(db_url, made):
    with admin(db_url) as conn:
        conn.execute("UPDATE orchestrator.alembic_version SET version_num = '0006'")
    db = Database(as_role(db_url, made.runtime), pool_size=1)
    try:
        with pytest.raises(DatabaseNotReadyError) as info:
            migrate.upgrade(db.engine)
    finally:
        db.dispose()
    message = str(info.value)
    assert f"role '{made.runtime}' may not change it" in message
    assert "run `orchestrator migrate` as the role that owns the schema" in message
    assert "auto_migrate = false" in message
    with admin(db_url) as conn:  # nothing was changed
        assert conn.execute("SELECT version_num FROM orchestrator.alembic_version").fetchone() == (
            "0006",
        )


def test_migrate__as_owner__on_a_new_database_after_roles(server_url):
    """The operator's order: roles first (on an empty database), then migrate as the owner;
    the runtime and read-only roles can use what the migrations created, and applying the
    roles again makes the version table (which default privileges cannot tell from the
    other tables) read-only for the runtime role."""
    name = f"orchestrator_roles_{uuid.uuid4().hex[:10]}"
    with admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        with applied_roles(url) as made:
            db = Database(as_role(url, made.owner), pool_size=1)
            try:
                migrate.upgrade(db.engine)
            finally:
                db.dispose()
            with connect(url, made.runtime) as conn:
                conn.execute("INSERT INTO orchestrator.events (name) VALUES ('a/b')")
                conn.execute("INSERT INTO orchestrator.runs (function_id) VALUES ('f')")
                conn.execute("SELECT * FROM orchestrator.run_queue").fetchall()
            with admin(url) as conn, conn.transaction():
                roles.apply(conn, made, login=True)
            with connect(url, made.runtime) as conn:
                refused(conn, "UPDATE orchestrator.alembic_version SET version_num = 'x'")
            with connect(url, made.readonly) as conn:
                assert conn.execute("SELECT count(*) FROM orchestrator.events").fetchone() == (1,)
                stored = conn.execute("SELECT id FROM orchestrator.runs").fetchall()
                shown = conn.execute("SELECT run_id FROM orchestrator.run_overview").fetchall()
                assert len(stored) == 1 and shown == stored
    finally:
        with admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("table", roles.SECRET_TABLES)
def test_readonly__may_not_read_the_dashboards_credentials(db_url, made, table):
    with connect(db_url, made.readonly) as conn:
        message = refused(conn, f"SELECT * FROM orchestrator.{table}")
        conn.execute("SELECT * FROM orchestrator.ui_actions").fetchall()  # the audit trail is
    assert "permission denied" in message
