"""Run Alembic migrations programmatically (`orchestrator migrate`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from orchestrator.errors import DatabaseNotReadyError, first_line


def migrations_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the schema is at; None when it was never migrated."""
    with engine.connect() as conn:
        if not conn.execute(text("SELECT to_regclass('orchestrator.alembic_version')")).scalar():
            return None
        current = conn.execute(text("SELECT version_num FROM orchestrator.alembic_version"))
        return current.scalar()


def pending(engine: Engine, revision: str = "head") -> list[str]:
    """The migrations `upgrade` would apply now, in order, by file name (`0016_trace_context`)."""
    current = current_revision(engine) or "base"
    scripts = ScriptDirectory.from_config(alembic_config()).iterate_revisions(revision, current)
    return [Path(script.path).stem for script in reversed(list(scripts))]


def upgrade(
    engine: Engine, revision: str = "head", *, on_step: Callable[[str], object] | None = None
) -> None:
    """Bring the schema to `revision`; idempotent, and safe when two processes run it at once.

    A schema already at this code's head is left alone, without DDL or locks, so a role that
    may only use the tables (the runtime role of `orchestrator roles`) can call this at
    start-up. A role that may not change the schema when it has to be changed gets a
    `DatabaseNotReadyError` saying what to do. `on_step(revision)` is called as each
    migration is applied (inside the one transaction of them all, which commits at the end)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            if on_step is not None:  # migrations/env.py hands it to Alembic
                cfg.attributes["on_version_apply"] = [_step_hook(on_step)]
            command.upgrade(cfg, revision)
    except sa_exc.DBAPIError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        current = current_revision(engine)
        if revision == "head" and current == head_revision():
            return  # another process migrated it meanwhile
        raise _not_permitted(engine, current, exc.orig) from None


def _step_hook(on_step: Callable[[str], object]) -> Callable[..., None]:
    def hook(*, step: MigrationInfo, **_: object) -> None:
        if step.up_revision_id is not None:
            on_step(step.up_revision_id)

    return hook


def _not_permitted(engine: Engine, current: str | None, error: BaseException) -> Exception:
    with engine.connect() as conn:
        role = conn.execute(text("SELECT current_user")).scalar()
    reason = first_line(error)
    return DatabaseNotReadyError(
        f"database schema is at {current or 'nothing'}, this code needs {head_revision()}, "
        f"and role {role!r} may not change it ({reason}); run `orchestrator migrate` as the "
        "role that owns the schema (see `orchestrator roles`), and set auto_migrate = false "
        "for daemons that connect as a role without DDL rights"
    )
