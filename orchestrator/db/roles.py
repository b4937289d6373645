"""Database roles for least privilege: the SQL that creates them and grants what each needs.

- **owner** owns the schema and every object in it; `orchestrator migrate` connects as it.
- **runtime** is what the daemon and the CLI need: USAGE on the schema; SELECT, INSERT,
  UPDATE and DELETE on its tables; SELECT only on the views and on `alembic_version`; USAGE
  on its sequences and EXECUTE on its functions. No CREATE, no TRUNCATE, no DDL; idle
  transactions are ended after a minute, since one held open stalls vacuum.
- **readonly** has USAGE and SELECT, and its transactions are read-only by default; it may
  not read the dashboard's credentials (`ui_users`, `ui_sessions`, `ui_tokens`).

Every statement is idempotent: roles are created only if missing (an existing role keeps its
LOGIN attribute and password, unless `login` asks for LOGIN), the schema and objects another
role owns are handed to the owner, and the grants are applied again. So the script can be
run again after each migration. `ALTER DEFAULT PRIVILEGES FOR ROLE owner` gives tables,
views, sequences and functions that the owner creates later the same grants.

Role names are plain lowercase identifiers, validated before any SQL is built, and quoted
in it all the same. No statement carries a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from orchestrator.db.direct import Conn, driver
from orchestrator.db.schema import SCHEMA
from orchestrator.errors import InvalidRoleNameError

DEFAULT_OWNER = "orchestrator_owner"
DEFAULT_RUNTIME = "orchestrator_runtime"
DEFAULT_READONLY = "orchestrator_readonly"
RUNTIME_IDLE_TIMEOUT = "1min"
READONLY_IDLE_TIMEOUT = "5min"
# Tables the read-only role may not read: the dashboard's credentials (migration 0015) and
# the digests of the Inngest event keys (migration 0017).
SECRET_TABLES = ("ui_users", "ui_sessions", "ui_tokens", "event_keys")

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names Postgres gives a meaning of its own where a role is expected.
_RESERVED = {"public", "none", "current_user", "current_role", "session_user"}


def validate_name(name: str) -> str:
    """`name` if it is a usable role name, else `InvalidRoleNameError` saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRoleNameError(
            f"role name {name!r} is not allowed; use 1-63 lowercase letters, digits and "
            "underscores, starting with a letter or underscore"
        )
    if name.startswith("pg_") or name in _RESERVED:
        raise InvalidRoleNameError(f"role name {name!r} is reserved by Postgres; choose another")
    return name


@dataclass(frozen=True)
class Roles:
    owner: str = DEFAULT_OWNER
    runtime: str = DEFAULT_RUNTIME
    readonly: str = DEFAULT_READONLY

    def __post_init__(self) -> None:
        names = (self.owner, self.runtime, self.readonly)
        for name in names:
            validate_name(name)
        if len(set(names)) != len(names):
            raise InvalidRoleNameError(
                f"the owner, runtime and read-only roles need three different names, got "
                f"{', '.join(names)}"
            )


def statements(roles: Roles, *, login: bool = False) -> list[sql.Composed]:
    """The statements that create the roles (if missing) and apply the grants, in order."""
    return [
        *(_create_role(name, login) for name in (roles.owner, roles.runtime, roles.readonly)),
        *_role_settings(roles),
        _database_grants(roles),
        *_schema_ownership(roles),
        *_runtime_grants(roles),
        *_readonly_grants(roles),
        *_default_privileges(roles),
    ]


def script(roles: Roles, *, login: bool = False) -> str:
    """`statements` as one SQL script for psql, with a header saying what it does."""
    login_note = (
        "Roles get LOGIN but no password: set one in psql with \\password ROLE, or use\n"
        "-- another authentication method (pg_hba.conf).\n"
        if login
        else "New roles are NOLOGIN: grant them to login roles (GRANT "
        f"{roles.runtime} TO myapp),\n-- or create them with `orchestrator roles --login`.\n"
    )
    header = (
        f"-- Database roles of the orchestrator schema {SCHEMA!r}: owner {roles.owner!r},\n"
        f"-- runtime {roles.runtime!r}, read-only {roles.readonly!r}.\n"
        "-- Run as a superuser, connected to the orchestrator's database. Idempotent: run it\n"
        "-- again after each migration, to re-apply the grants and hand the owner what other\n"
        "-- roles created.\n"
        f"-- {login_note}"
    )
    body = ";\n\n".join(stmt.as_string(None) for stmt in statements(roles, login=login))
    return f"{header}\nBEGIN;\n\n{body};\n\nCOMMIT;\n"


def apply(conn: Conn, roles: Roles, *, login: bool = False) -> None:
    """Run the statements on `conn`, in the caller's transaction."""
    raw = driver(conn)
    for stmt in statements(roles, login=login):
        raw.execute(stmt)


# -- the statements ----------------------------------------------------------------------


def _create_role(name: str, login: bool) -> sql.Composed:
    template = """DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {literal}) THEN
        CREATE ROLE {role} {login};
    ELSIF (SELECT rolsuper FROM pg_roles WHERE rolname = {literal}) THEN
        RAISE EXCEPTION 'role % is a superuser; choose another role name', {literal};{alter}
    END IF;
END $$"""
    alter = "\n    ELSE\n        ALTER ROLE {role} LOGIN;" if login else ""
    return sql.SQL(template.replace("{alter}", alter)).format(
        literal=sql.Literal(name),
        role=sql.Identifier(name),
        login=sql.SQL("LOGIN" if login else "NOLOGIN"),
    )


def _role_settings(roles: Roles) -> list[sql.Composed]:
    return [
        sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
            sql.Identifier(roles.runtime), sql.Literal(RUNTIME_IDLE_TIMEOUT)
        ),
        sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
            sql.Identifier(roles.readonly)
        ),
        sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
            sql.Identifier(roles.readonly), sql.Literal(READONLY_IDLE_TIMEOUT)
        ),
    ]


def _database_grants(roles: Roles) -> sql.Composed:
    # The owner needs CREATE on the database: migrations run CREATE SCHEMA IF NOT EXISTS,
    # which Postgres checks before it looks whether the schema exists.
    return sql.SQL(
        """DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I',
                   current_database(), {owner}, {runtime}, {readonly});
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), {owner});
END $$"""
    ).format(
        owner=sql.Literal(roles.owner),
        runtime=sql.Literal(roles.runtime),
        readonly=sql.Literal(roles.readonly),
    )


def _schema_ownership(roles: Roles) -> list[sql.Composed]:
    schema, owner = sql.Identifier(SCHEMA), sql.Identifier(roles.owner)
    # Sequences of identity and serial columns follow their table; indexes and triggers too.
    transfer = sql.SQL(
        """DO $$
DECLARE
    obj record;
BEGIN
    FOR obj IN
        SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                              WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind,
               c.oid::regclass::text AS name
        FROM pg_class c
        WHERE c.relnamespace = {schema_literal}::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND c.relowner <> {owner_literal}::regrole
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype IN ('a', 'i'))
    UNION ALL
        SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
                              ELSE 'FUNCTION' END,
               p.oid::regprocedure::text
        FROM pg_proc p
        WHERE p.pronamespace = {schema_literal}::regnamespace
          AND p.proowner <> {owner_literal}::regrole
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', obj.kind, obj.name, {owner_literal});
    END LOOP;
END $$"""
    ).format(schema_literal=sql.Literal(SCHEMA), owner_literal=sql.Literal(roles.owner))
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, owner),
        sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(schema, owner),
        transfer,
    ]


def _runtime_grants(roles: Roles) -> list[sql.Composed]:
    schema, runtime = sql.Identifier(SCHEMA), sql.Identifier(roles.runtime)
    users = sql.SQL(", ").join([runtime, sql.Identifier(roles.readonly)])
    # Views and the migration version table are read-only for the runtime role.
    read_only_relations = sql.SQL(
        """DO $$
DECLARE
    rel text;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass::text FROM pg_class c
        WHERE c.relnamespace = {schema_literal}::regnamespace
          AND (c.relkind IN ('v', 'm') OR c.relname = 'alembic_version')
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s FROM %I', rel, {runtime_literal});
    END LOOP;
END $$"""
    ).format(schema_literal=sql.Literal(SCHEMA), runtime_literal=sql.Literal(roles.runtime))
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, users),
        sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(schema, users),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
            schema, runtime
        ),
        read_only_relations,
        sql.SQL("REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {} FROM {}").format(
            schema, users
        ),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, runtime),
        sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(schema, runtime),
    ]


def _readonly_grants(roles: Roles) -> list[sql.Composed]:
    schema, readonly = sql.Identifier(SCHEMA), sql.Identifier(roles.readonly)
    # The dashboard's secrets (hashed passwords, session and token digests) are not for
    # readers; a table missing before migration 0015 is skipped.
    secrets = sql.SQL(
        """DO $$
DECLARE
    rel text;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass::text FROM pg_class c
        WHERE c.relnamespace = {schema_literal}::regnamespace
          AND c.relname = ANY({tables}) AND c.relkind = 'r'
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %I', rel, {readonly_literal});
    END LOOP;
END $$"""
    ).format(
        schema_literal=sql.Literal(SCHEMA),
        tables=sql.Literal(list(SECRET_TABLES)),
        readonly_literal=sql.Literal(roles.readonly),
    )
    return [
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, readonly),
        sql.SQL("REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} FROM {}").format(
            schema, readonly
        ),
        secrets,
    ]


def _default_privileges(roles: Roles) -> list[sql.Composed]:
    prefix = sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} ").format(
        sql.Identifier(roles.owner), sql.Identifier(SCHEMA)
    )
    runtime, readonly = sql.Identifier(roles.runtime), sql.Identifier(roles.readonly)
    grants = [
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(runtime),
        sql.SQL("GRANT USAGE, SELECT ON SEQUENCES TO {}").format(runtime),
        sql.SQL("GRANT EXECUTE ON FUNCTIONS TO {}").format(runtime),
        sql.SQL("GRANT SELECT ON TABLES TO {}").format(readonly),
    ]
    return [prefix + grant for grant in grants]
