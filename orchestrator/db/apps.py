"""Statements on `orchestrator.apps`, the apps the Inngest SDKs serve, and on their functions.

An app is synced by its SDK (`POST /fn/register`, orchestrator/inngest/sync.py): its row
keeps what the SDK sent and what we refused of it; each of its functions is a row of
`orchestrator.functions` whose `options.inngest` names the app and the URL to call. A sync
notifies `orchestrator_apps`, on which daemons serving SDK apps reload their functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.db.functions import FunctionRow
from orchestrator.db.schema import ACTIVE_STATUSES

CHANNEL = "orchestrator_apps"
_NOW = clock.SQL_TEXT


@dataclass(frozen=True)
class AppRow:
    id: str
    url: str
    sdk: str | None
    framework: str | None
    functions: list[dict[str, Any]]
    refused: list[dict[str, Any]]
    created_at: datetime
    synced_at: datetime


_APP_COLUMNS = "id, url, sdk, framework, functions, refused, created_at, synced_at"
_FUNCTION_COLUMNS = "id, triggers, options, version, updated_at"


def upsert(
    conn: Connection,
    app_id: str,
    *,
    url: str,
    sdk: str | None,
    framework: str | None,
    functions: list[dict[str, Any]],
    refused: list[dict[str, Any]],
) -> bool:
    """Record an app as synced now; returns whether anything but the time changed."""
    before = get(conn, app_id, lock=True)
    conn.execute(
        text(
            "INSERT INTO orchestrator.apps (id, url, sdk, framework, functions, refused, "
            "created_at, synced_at) VALUES (:p_id, :p_url, :p_sdk, :p_framework, "
            f"CAST(:p_functions AS jsonb), CAST(:p_refused AS jsonb), {_NOW}, {_NOW}) "
            "ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, sdk = EXCLUDED.sdk, "
            "framework = EXCLUDED.framework, functions = EXCLUDED.functions, "
            "refused = EXCLUDED.refused, synced_at = EXCLUDED.synced_at"
        ),
        {
            "p_id": app_id,
            "p_url": url,
            "p_sdk": sdk,
            "p_framework": framework,
            "p_functions": json.dumps(functions),
            "p_refused": json.dumps(refused),
            "p_now": clock.current(),
        },
    )
    return before is None or (before.url, before.functions, before.refused) != (
        url,
        json.loads(json.dumps(functions)),
        json.loads(json.dumps(refused)),
    )


def get(conn: Connection, app_id: str, *, lock: bool = False) -> AppRow | None:
    lock_clause = " FOR UPDATE" if lock else ""
    row = conn.execute(
        text(f"SELECT {_APP_COLUMNS} FROM orchestrator.apps WHERE id = :p_id{lock_clause}"),
        {"p_id": app_id},
    ).first()
    return None if row is None else AppRow(*row)


def list_all(conn: Connection) -> list[AppRow]:
    rows = conn.execute(text(f"SELECT {_APP_COLUMNS} FROM orchestrator.apps ORDER BY id"))
    return [AppRow(*row) for row in rows]


def owners(conn: Connection, function_ids: list[str]) -> dict[str, str | None]:
    """Of these ids, those registered: the app serving each (None: a Python function)."""
    rows = conn.execute(
        text(
            "SELECT id, options->'inngest'->>'app' FROM orchestrator.functions "
            "WHERE id = ANY(CAST(:p_ids AS text[])) ORDER BY id FOR UPDATE"
        ),
        {"p_ids": function_ids},
    )
    return {str(fid): app for fid, app in rows}


def remove_stale(conn: Connection, app_id: str, keep: list[str]) -> tuple[list[str], list[str]]:
    """Delete the app's functions that its new sync no longer has, unless runs of them are
    still active (those stay, and run to their end). Returns (removed, kept)."""
    stale = conn.execute(
        text(
            "SELECT f.id, EXISTS (SELECT FROM orchestrator.runs r WHERE r.function_id = f.id "
            "AND r.status = ANY(CAST(:p_active AS text[]))) FROM orchestrator.functions f "
            "WHERE f.options->'inngest'->>'app' = :p_app "
            "AND NOT f.id = ANY(CAST(:p_keep AS text[])) ORDER BY f.id FOR UPDATE"
        ),
        {"p_app": app_id, "p_keep": keep, "p_active": list(ACTIVE_STATUSES)},
    ).all()
    removed = [fid for fid, busy in stale if not busy]
    conn.execute(
        text("DELETE FROM orchestrator.functions WHERE id = ANY(CAST(:p_ids AS text[]))"),
        {"p_ids": removed},
    )
    return removed, [fid for fid, busy in stale if busy]


def remote_functions(conn: Connection) -> list[FunctionRow]:
    """Every function an SDK app serves."""
    rows = conn.execute(
        text(
            f"SELECT {_FUNCTION_COLUMNS} FROM orchestrator.functions "
            "WHERE options ? 'inngest' ORDER BY id"
        )
    )
    return [FunctionRow(*row) for row in rows]


def remote_function(conn: Connection, function_id: str) -> FunctionRow | None:
    row = conn.execute(
        text(
            f"SELECT {_FUNCTION_COLUMNS} FROM orchestrator.functions "
            "WHERE id = :p_id AND options ? 'inngest'"
        ),
        {"p_id": function_id},
    ).first()
    return None if row is None else FunctionRow(*row)


def notify(conn: Connection) -> None:
    """Tell the daemons at commit: those serving SDK apps reload their functions, and every
    ingest reads the triggers again."""
    conn.execute(
        text(f"SELECT pg_notify('{CHANNEL}', ''), pg_notify('orchestrator_functions', '')")
    )
