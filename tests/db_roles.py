"""Database roles for one test: names unique to the test (roles belong to the whole server,
which other test runs share), and a clean-up that leaves nothing behind them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import sql
from sqlalchemy.engine import make_url

from orchestrator.db import roles
from orchestrator.db.connect import libpq_url
from tests.conftest import admin


def unique_roles() -> roles.Roles:
    suffix = uuid.uuid4().hex[:10]
    return roles.Roles(
        owner=f"t_{suffix}_owner", runtime=f"t_{suffix}_runtime", readonly=f"t_{suffix}_ro"
    )


def as_role(url: str, role: str) -> str:
    """`url` connecting as `role` (no password: the test servers trust local connections)."""
    return libpq_url(
        make_url(url).set(username=role, password=None).render_as_string(hide_password=False)
    )


def names(of: roles.Roles) -> list[str]:
    return [of.owner, of.runtime, of.readonly]


def drop_roles(db_url: str, of: roles.Roles) -> None:
    """End the roles' sessions, hand what they own in `db_url`'s database back to the admin,
    drop their grants there (and on the database itself), then drop the roles."""
    with admin(db_url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
            (names(of),),
        )
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names(of),))
        existing = [sql.Identifier(row[0]) for row in rows.fetchall()]
        if existing:
            idents = sql.SQL(", ").join(existing)
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(idents))
            for ident in existing:  # one by one: together they trip over shared default ACLs
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(idents))


@contextmanager
def applied_roles(db_url: str, *, login: bool = True) -> Iterator[roles.Roles]:
    """Create the three roles in `db_url`'s database (as the admin), and drop them after."""
    made = unique_roles()
    try:
        with admin(db_url) as conn, conn.transaction():
            roles.apply(conn, made, login=login)
        yield made
    finally:
        drop_roles(db_url, made)
