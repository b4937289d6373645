"""The commands of Inngest's protocol: the event keys of `POST /e/{key}` (and, beside them,
the SDK apps served by the daemon).

    orchestrator event-keys create NAME   (prints the key, once)
    orchestrator event-keys list
    orchestrator event-keys revoke NAME
    orchestrator apps sync URL            (asks the app serving at URL to sync with us)
    orchestrator apps list                (the synced apps, and what was refused of them)
    orchestrator dev -u URL [-u URL ...]  (the daemon in dev mode, syncing these apps)

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
from typing import TYPE_CHECKING, Any

from orchestrator.cli_output import iso, say, table
from orchestrator.config import Config
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.db.database import Database

# The commands this module runs (orchestrator/cli.py dispatches them here). The SDK apps'
# commands (`apps sync URL`, `apps list`, `dev -u URL`) join this tuple and add_parsers.
COMMANDS = ("event-keys", "apps", "dev")
KEY_NAME = "the key's name (to revoke it by): lowercase letters, digits and _.@- (at most 64)"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    _add_event_keys(sub, common)
    _add_apps(sub, common)


def _add_apps(sub: Any, common: argparse.ArgumentParser) -> None:
    apps = sub.add_parser("apps", parents=[common], help="the Inngest SDK apps served here")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True, metavar="SUBCOMMAND")
    sync = apps_sub.add_parser(
        "sync", parents=[common], help="ask the app serving at URL to sync its functions"
    )
    sync.add_argument("url", help="the app's serve URL, e.g. http://localhost:3000/api/inngest")
    apps_sub.add_parser("list", parents=[common], help="list the apps and what was refused")
    dev = sub.add_parser(
        "dev",
        parents=[common],
        help="run the daemon in Inngest dev mode, syncing the apps at -u URL as they come up",
    )
    dev.add_argument(
        "-u",
        "--url",
        action="append",
        default=[],
        dest="urls",
        metavar="URL",
        help="an app's serve URL to sync (repeatable)",
    )
    dev.add_argument("--app", help="a Python app to serve beside them (package.module:attr)")
    from orchestrator.cli import positive_int

    dev.add_argument("--workers", type=positive_int, help="worker processes")


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

    if args.command == "dev":
        return _dev(cfg, args)
    if args.command == "apps" and args.apps_command == "sync":
        return _apps_sync(cfg, args)
    cfg = dataclasses.replace(cfg, database_url=database_url(cfg, args, create=False))
    db = Database(cfg.database_url, pool_size=1, application_name="orchestrator-cli")
    handlers = {"event-keys": _event_keys, "apps": _apps_list}
    try:
        check_schema(db.engine)
        return handlers[args.command](db, args)
    finally:
        db.dispose()


def _apps_sync(cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.inngest.sync import sync_url

    kind = "dev" if cfg.inngest_dev else "cloud"
    key = None if cfg.inngest_dev else cfg.inngest_signing_key or None
    said = sync_url(args.url, server_kind=kind, signing_key=key, timeout=cfg.inngest_call_timeout)
    text = f"{args.url}: {said.get('message') or 'synced'} (modified: {said.get('modified')})"
    return say(args, said, text)


def _apps_list(db: Database, args: argparse.Namespace) -> int:
    from orchestrator.db import apps

    rows: list[dict[str, Any]] = [
        {
            "app": a.id,
            "url": a.url,
            "sdk": a.sdk,
            "functions": len(a.functions),
            "synced_at": iso(a.synced_at),
            "refused": a.refused,
        }
        for a in db.run(apps.list_all)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table(args, rows, ("app", "url", "sdk", "functions", "synced_at"))
    for row in rows:
        for r in row["refused"]:
            kept = "registered without it" if r.get("registered") else "not registered"
            print(f"refused: {r['function']} {r['option']}: {r['reason']} ({kept})")
    return 0


def _dev(cfg: Config, args: argparse.Namespace) -> int:
    """`run` with the gateway in dev mode, syncing each -u URL once it answers (and again
    whenever it comes back after going away)."""
    import dataclasses

    from orchestrator.cli import _cmd_run
    from orchestrator.inngest.devsync import DevSync

    app = args.app or cfg.app or "orchestrator.inngest.devapp:app"
    cfg = dataclasses.replace(cfg, app=app, inngest=True, inngest_dev=True)
    if args.workers:
        cfg = dataclasses.replace(cfg, workers=args.workers)
    syncer = DevSync(args.urls, timeout=cfg.inngest_call_timeout)
    print(
        f"dev server on http://{cfg.inngest_address}: point the apps at it with "
        f"INNGEST_DEV=1 INNGEST_BASE_URL=http://{cfg.inngest_address}",
        file=sys.stderr,
    )
    syncer.start()
    try:
        return _cmd_run(cfg, args)
    finally:
        syncer.stop()


def _event_keys(db: Database, args: argparse.Namespace) -> int:
    from orchestrator.db import event_keys

    what = args.keys_command
    if what == "list":
        rows = [
            {
                "name": k.name,
                "created_at": iso(k.created_at),
                "last_used_at": iso(k.last_used_at),
                "revoked_at": iso(k.revoked_at),
            }
            for k in db.run(event_keys.list_all)
        ]
        return table(args, rows, ("name", "created_at", "last_used_at", "revoked_at"))
    if what == "create":
        key = db.run(lambda conn: event_keys.create(conn, args.name))
        if not args.json:
            print(f"event key {args.name}; it is shown this once:", file=sys.stderr)
        return say(args, {"name": args.name, "key": key}, key)
    if not db.run(lambda conn: event_keys.revoke(conn, args.name)):
        raise OrchestratorError(f"no unrevoked event key named {args.name!r}")
    return say(args, {"name": args.name, "revoked": True}, f"event key {args.name} revoked")
