"""`orchestrator ui`, `ui-user` and `ui-token`: the dashboard and who may use it.

    orchestrator ui [--address HOST:PORT]
    orchestrator ui-user add NAME --role viewer|operator [--password-stdin]
    orchestrator ui-user passwd NAME [--password-stdin]
    orchestrator ui-user role NAME viewer|operator
    orchestrator ui-user remove NAME
    orchestrator ui-user list
    orchestrator ui-token create NAME --role viewer|operator   (prints the token, once)
    orchestrator ui-token revoke NAME
    orchestrator ui-token list

Without --password-stdin the password is asked for twice on the terminal. Passwords have at
least 12 characters; they are stored as argon2id hashes, tokens as SHA-256 digests.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from orchestrator.cli_output import iso, say, table
from orchestrator.config import Config
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.db.database import Database

COMMANDS = ("ui", "ui-user", "ui-token")
ROLES = ("viewer", "operator")


USER_NAME = "the user's name: lowercase letters, digits and _.@- (at most 64)"
ROLE = "viewer: reads everything; operator: also cancels, replays, resumes, forks and sends"
STDIN = "read the password from standard input instead of asking twice"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    ui = sub.add_parser("ui", parents=[common], help="serve the dashboard and HTTP API")
    ui.add_argument("--address", help="HOST:PORT to listen on (default: ui_address)")
    users = sub.add_parser("ui-user", parents=[common], help="dashboard users")
    users_sub = users.add_subparsers(dest="ui_command", required=True, metavar="SUBCOMMAND")
    add = users_sub.add_parser("add", parents=[common], help="add a user")
    add.add_argument("name", help=USER_NAME)
    add.add_argument("--role", choices=ROLES, required=True, help=ROLE)
    add.add_argument("--password-stdin", action="store_true", help=STDIN)
    passwd = users_sub.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("name", help=USER_NAME)
    passwd.add_argument("--password-stdin", action="store_true", help=STDIN)
    role = users_sub.add_parser("role", parents=[common], help="change a user's role")
    role.add_argument("name", help=USER_NAME)
    role.add_argument("role", choices=ROLES, help=ROLE)
    remove = users_sub.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name", help=USER_NAME)
    users_sub.add_parser("list", parents=[common], help="list the users")
    tokens = sub.add_parser("ui-token", parents=[common], help="API tokens")
    tokens_sub = tokens.add_subparsers(dest="ui_command", required=True, metavar="SUBCOMMAND")
    create = tokens_sub.add_parser("create", parents=[common], help="create a token")
    create.add_argument("name", help="the token's name (to revoke it by)")
    create.add_argument("--role", choices=ROLES, required=True, help=ROLE)
    revoke = tokens_sub.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name", help="the token's name")
    tokens_sub.add_parser("list", parents=[common], help="list the tokens")


def run(cfg: Config, args: argparse.Namespace) -> int:
    import dataclasses

    from orchestrator import log
    from orchestrator.cli import database_url
    from orchestrator.redact import url_secrets

    for url in (cfg.ui_read_database_url, cfg.ui_act_database_url):
        log.hide(*url_secrets(url))
    cfg = dataclasses.replace(cfg, database_url=database_url(cfg, args, create=False))
    if args.command == "ui":
        from orchestrator.ui.server import serve

        serve(cfg, address=getattr(args, "address", None))
        return 0
    from orchestrator.db.connect import check_schema
    from orchestrator.db.database import Database

    db = Database(
        cfg.ui_act_database_url or cfg.database_url,
        pool_size=1,
        application_name="orchestrator-cli",
    )
    try:
        check_schema(db.engine)
        handler = _users if args.command == "ui-user" else _tokens
        return handler(db, args)
    finally:
        db.dispose()


def _users(db: Database, args: argparse.Namespace) -> int:
    from orchestrator.db import ui_auth
    from orchestrator.ui.auth import hash_password

    what = args.ui_command
    if what == "list":
        users = db.run(ui_auth.list_users)
        rows = [{"name": u.name, "role": u.role, "created_at": iso(u.created_at)} for u in users]
        return table(args, rows, ("name", "role", "created_at"))
    if what in ("add", "passwd"):
        hashed = hash_password(_password(args.password_stdin))
        if what == "add":
            db.run(lambda conn: ui_auth.add_user(conn, args.name, hashed, args.role))
            return say(args, {"name": args.name, "role": args.role}, f"user {args.name} added")
        done = db.run(lambda conn: ui_auth.set_password(conn, args.name, hashed))
        return _done(args, done, f"password of {args.name} changed")
    if what == "role":
        done = db.run(lambda conn: ui_auth.set_role(conn, args.name, args.role))
        return _done(
            args, done, f"{args.name} is now {'an' if args.role[0] == 'o' else 'a'} {args.role}"
        )
    done = db.run(lambda conn: ui_auth.remove_user(conn, args.name))
    return _done(args, done, f"user {args.name} removed (and logged out)")


def _tokens(db: Database, args: argparse.Namespace) -> int:
    from orchestrator.db import ui_auth
    from orchestrator.ui.auth import new_token

    what = args.ui_command
    if what == "list":
        rows = [
            {
                "name": t.name,
                "role": t.role,
                "created_at": iso(t.created_at),
                "last_used_at": iso(t.last_used_at),
                "revoked_at": iso(t.revoked_at),
            }
            for t in db.run(ui_auth.list_tokens)
        ]
        return table(args, rows, ("name", "role", "created_at", "last_used_at", "revoked_at"))
    if what == "create":
        plaintext, hashed = new_token()
        db.run(lambda conn: ui_auth.create_token(conn, args.name, hashed, args.role))
        data = {"name": args.name, "role": args.role, "token": plaintext}
        if not args.json:
            print(f"token {args.name} ({args.role}); it is shown this once:", file=sys.stderr)
        return say(args, data, plaintext)
    done = db.run(lambda conn: ui_auth.revoke_token(conn, args.name))
    return _done(args, done, f"token {args.name} revoked")


def _password(from_stdin: bool) -> str:
    from orchestrator.ui.auth import check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        if not sys.stdin.isatty():
            raise OrchestratorError("no terminal to ask the password on; use --password-stdin")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise OrchestratorError("the two passwords differ; nothing was changed")
    check_password(password)
    return password


def _done(args: argparse.Namespace, done: bool, text: str) -> int:
    if not done:
        raise OrchestratorError(f"no {args.command.removeprefix('ui-')} named {args.name!r}")
    return say(args, {"name": args.name, "done": True}, text)
