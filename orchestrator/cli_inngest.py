"""The commands of Inngest's protocol: the event keys of `POST /e/{key}` (and, beside them,
the SDK apps served by the daemon).

    orchestrator event-keys create NAME   (prints the key, once)
    orchestrator event-keys list
    orchestrator event-keys revoke NAME

Keys are 32 random bytes, url-safe base64; only their SHA-256 digest is stored, so a lost key
cannot be shown again: revoke it and create another. Give the key to an app as
`INNGEST_EVENT_KEY`. In dev mode (`inngest_dev = true`) the gateway accepts any key.

Everything heavy (the database layer) is imported when a command runs, so that
`orchestrator --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator.config import Config
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.db.database import Database

# The commands this module runs (orchestrator/cli.py dispatches them here). The SDK apps'
# commands (`apps sync URL`, `apps list`, `dev -u URL`) join this tuple and add_parsers.
COMMANDS = ("event-keys",)
KEY_NAME = "the key's name (to revoke it by): lowercase letters, digits and _.@- (at most 64)"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    _add_event_keys(sub, common)
    # -- SDK apps (`apps`, `dev`): add their parsers here --------------------------------


def _add_event_keys(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser(
        "event-keys", parents=[common], help="keys of the Inngest event API (POST /e/KEY)"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    create = keys_sub.add_parser("create", parents=[common], help="create a key (shown once)")
    create.add_argument("name", help=KEY_NAME)
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("name", help="the key's name")
    keys_sub.add_parser("list", parents=[common], help="list the keys (never the keys)")


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Run one of COMMANDS; `cfg` as loaded (the database URL is resolved here)."""
    import dataclasses

    from orchestrator.cli import database_url
    from orchestrator.db.connect import check_schema
    from orchestrator.db.database import Database

    cfg = dataclasses.replace(cfg, database_url=database_url(cfg, args, create=False))
    db = Database(cfg.database_url, pool_size=1, application_name="orchestrator-cli")
    try:
        check_schema(db.engine)
        return _event_keys(db, args)
    finally:
        db.dispose()


def _event_keys(db: Database, args: argparse.Namespace) -> int:
    from orchestrator.db import event_keys

    what = args.keys_command
    if what == "list":
        rows = [
            {
                "name": k.name,
                "created_at": _iso(k.created_at),
                "last_used_at": _iso(k.last_used_at),
                "revoked_at": _iso(k.revoked_at),
            }
            for k in db.run(event_keys.list_all)
        ]
        return _table(args, rows, ("name", "created_at", "last_used_at", "revoked_at"))
    if what == "create":
        key = db.run(lambda conn: event_keys.create(conn, args.name))
        if not args.json:
            print(f"event key {args.name}; it is shown this once:", file=sys.stderr)
        return _say(args, {"name": args.name, "key": key}, key)
    if not db.run(lambda conn: event_keys.revoke(conn, args.name)):
        raise OrchestratorError(f"no unrevoked event key named {args.name!r}")
    return _say(args, {"name": args.name, "revoked": True}, f"event key {args.name} revoked")


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(json.dumps(data) if args.json else text)
    return 0


def _table(args: argparse.Namespace, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> int:
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from orchestrator.cli import _print_table

    _print_table([k.upper() for k in keys], [[r[k] or "" for k in keys] for r in rows])
    return 0


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
